"""How long `dedup` takes over N indexed videos, and how much memory: the issue's target is 10,000
videos in <= 15 minutes on 2 cores, memory bounded.

    python benchmarks/dedup_speed.py [--videos 10000] [--candidates 20] [--source DIR] [--model PATH]
                                     [--work DIR] [--reuse]

The collection is built as benchmarks/engine_speed.py builds its query index (its helpers, reused):
the audio files under --source are indexed for real, then N videos are made of excerpts (30-240 s)
of their stored segment matrices under new ids; excerpts of one source overlap, so there are many
true duplicate groups. Then `find_duplicate_groups` runs in a fresh process (peak RSS is its own)
twice: the first run scores every pair, the second finds them all stored and only groups.
Model: --model, else the bundled default model, else a seeded random one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from engine_speed import DEFAULT_SOURCE, audio_files, build_large_index, run_index_process  # noqa: E402

DEDUP_CODE = """
import json, resource, sys, time
from pathlib import Path
from ausil_search.dedup import find_duplicate_groups
from ausil_search.engine import SearchEngine
index_dir, candidates = sys.argv[1], int(sys.argv[2])
def anon_mib():
    status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines() if ':' in line)
    return int(status.get('RssAnon', '0 kB').split()[0]) / 1024
samples = []
def progress(stage, completed, total=None, **_):  # anonymous memory at every tenth of the pairs: flat means bounded
    if len(samples) < completed * 10 // max(total or 0, 1):
        samples.append([completed, round(anon_mib())])
started = time.perf_counter()
with SearchEngine(Path(index_dir), workers=0) as engine:
    result = find_duplicate_groups(engine, candidates=candidates, progress=progress)
print(json.dumps({'seconds': time.perf_counter() - started, 'groups': len(result.groups),
    'rss_anon_mib_at_end': anon_mib(), 'rss_anon_mib_by_pairs_scored': samples,
    'grouped_videos': sum(len(g.members) for g in result.groups), 'threshold': result.threshold,
    'stats': result.stats.__dict__, 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_dedup_process(index_dir: Path, candidates: int) -> dict:
    out = subprocess.run([sys.executable, "-c", DEDUP_CODE, str(index_dir), str(candidates)], check=True,
                         capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=20, help="Recall depth per video (dedup --candidates).")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--reuse", action="store_true", help="Keep the source index of an earlier run in --work.")
    args = parser.parse_args()

    from ausil_search.model import BUNDLED_MODEL, AuSiLModel

    work = args.work or Path(tempfile.mkdtemp(prefix="ausil-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or (BUNDLED_MODEL if BUNDLED_MODEL.is_file() else None)
    if model is None:
        model = work / "model.safetensors"
        AuSiLModel.initialise(seed=0).save(model)
    small = work / "index-source"
    if not (args.reuse and (small / "manifest.json").exists()):
        shutil.rmtree(small, ignore_errors=True)
        files = audio_files(args.source)
        if not files:
            sys.exit(f"no audio files under {args.source}")
        indexed = run_index_process(files, small, model)
        print(f"source index: {indexed['added']} files, {indexed['audio_s'] / 3600:.2f} h of audio", flush=True)
    large = work / f"index-{args.videos}"
    shutil.rmtree(large, ignore_errors=True)
    build_s = build_large_index(small, large, args.videos, seed=1)
    print(f"collection: {args.videos} videos from stored segments in {build_s:.0f} s; model {model}", flush=True)
    report = {"videos": args.videos, "candidates": args.candidates, "model": str(model), "cpu_count": os.cpu_count()}
    for name in ("first run", "rerun"):
        r = report[name] = run_dedup_process(large, args.candidates)
        s = r["stats"]
        print(f"{name}: {r['seconds']:.1f} s, {s['pairs_scored']} pairs scored ({s['pairs_scored'] / max(r['seconds'], 1e-9):.0f}/s), "
              f"{s['pairs_stored']} stored; {r['groups']} groups holding {r['grouped_videos']} videos at threshold "
              f"{r['threshold']:.2f}; peak RSS {r['rss_mib']:.0f} MiB (mapped index pages included; anonymous at the end "
              f"{r['rss_anon_mib_at_end']:.0f} MiB)", flush=True)
        if r["rss_anon_mib_by_pairs_scored"]:
            print("  anonymous MiB by pairs scored: " + ", ".join(f"{n}: {m}" for n, m in r["rss_anon_mib_by_pairs_scored"]))
    (work / "dedup_speed.json").write_text(json.dumps(report, indent=2))
    print(f"report: {work / 'dedup_speed.json'}")


if __name__ == "__main__":
    main()
