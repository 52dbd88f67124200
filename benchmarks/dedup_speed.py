"""How long `dedup` takes over N indexed videos, and how much memory: the issue's target is 10,000
videos in <= 15 minutes on 2 cores, memory bounded.

    python benchmarks/dedup_speed.py [--videos 10000] [--candidates 20] [--linkage average|single] [--all-pairs]
                                     [--threads N]
                                     [--source-index DIR | --source DIR [--model PATH]]
                                     [--work DIR] [--reuse] [--json]

The collection is built by benchmarks/engine_speed.py's builder (`build_large_index`): a copy of a
source index plus excerpts (30-240 s) of its stored (real) segment matrices under new ids, up to N
videos; excerpts of one source overlap, so there are many true duplicate groups. The source index is
--source-index (an existing index, such as a dev benchmark's work dir; only copied), else the audio
files under --source indexed here as engine_speed.py does (model: --model, else the bundled default,
else a seeded random one). Then `find_duplicate_groups` runs in a fresh process (its peak RSS is its
own) twice: the first run scores or skips every pair, the rerun finds them stored and only groups.
Each run reports wall and CPU seconds (all threads), pairs scored and skipped, the groups, peak RSS
and peak anonymous memory (engine_speed.py's sampler), and anonymous memory every tenth of the pairs.
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

from engine_speed import ANON_SAMPLER, DEFAULT_SOURCE, audio_files, build_large_index, run_index_process  # noqa: E402

DEDUP_CODE = ANON_SAMPLER + """
import json, resource, sys, time
from pathlib import Path
import torch
from ausil_search.search.dedup import find_duplicate_groups
from ausil_search.search.engine import SearchEngine
index_dir, candidates, all_pairs, threads, linkage = (sys.argv[1], int(sys.argv[2]), sys.argv[3] == "all", int(sys.argv[4]),
                                                      sys.argv[5])
if threads:
    torch.set_num_threads(threads)
def anon_mib():
    status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines() if ':' in line)
    return int(status.get('RssAnon', '0 kB').split()[0]) / 1024
samples = []
def progress(stage, completed, total=None, **_):  # anonymous memory at every tenth of the pairs: flat means bounded
    if stage == 'dedup' and len(samples) < completed * 10 // max(total or 0, 1):
        samples.append([completed, round(anon_mib())])
started, cpu_started = time.perf_counter(), time.process_time()
with SearchEngine(Path(index_dir), workers=0) as engine:
    result = find_duplicate_groups(engine, candidates=candidates, progress=progress, all_pairs=all_pairs, linkage=linkage)
print(json.dumps({'seconds': time.perf_counter() - started, 'linkage': result.linkage, 'cpu_seconds': time.process_time() - cpu_started,
    'groups': len(result.groups), 'grouped_videos': sum(len(g.members) for g in result.groups),
    'threshold': result.threshold, 'stats': result.stats.__dict__, 'torch_threads': torch.get_num_threads(),
    'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'anon_peak_mib': peak[0] / 1024,
    'anon_mib_at_end': anon_mib(), 'anon_mib_by_pairs': samples}))
"""


def run_dedup_process(index_dir: Path, candidates: int, all_pairs: bool, threads: int, linkage: str = "average") -> dict:
    command = [sys.executable, "-c", DEDUP_CODE, str(index_dir), str(candidates), "all" if all_pairs else "skip", str(threads),
               linkage]
    out = subprocess.run(command,
                         check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def source_index(args, work: Path) -> Path:
    """The index whose stored segments the collection is cut from (indexed here unless given)."""
    if args.source_index is not None:
        if not (args.source_index / "manifest.json").is_file():
            sys.exit(f"{args.source_index}: not an index (no manifest.json)")
        return args.source_index
    from ausil_search.model import BUNDLED_MODEL, AuSiLModel

    small = work / "index-source"
    if args.reuse and (small / "manifest.json").exists():
        return small
    model = args.model or (BUNDLED_MODEL if BUNDLED_MODEL.is_file() else None)
    if model is None:
        model = work / "model.safetensors"
        AuSiLModel.initialise(seed=0).save(model)
    shutil.rmtree(small, ignore_errors=True)
    files = audio_files(args.source)
    if not files:
        sys.exit(f"no audio files under {args.source}")
    indexed = run_index_process(files, small, model)
    print(f"source index: {indexed['added']} files, {indexed['audio_s'] / 3600:.2f} h of audio", flush=True)
    return small


def collection(args, work: Path, source: Path) -> tuple[Path, float | None]:
    """The N-video index and the seconds its build took (None: an earlier run's, its dedup data dropped)."""
    from ausil_search.search.dedup import DEDUP_DIR

    large, built = work / f"index-{args.videos}", work / f"index-{args.videos}.built"
    if args.reuse and built.exists():
        shutil.rmtree(large / DEDUP_DIR, ignore_errors=True)
        return large, None
    built.unlink(missing_ok=True)
    shutil.rmtree(large, ignore_errors=True)
    seconds = build_large_index(source, large, args.videos, seed=1)
    built.write_text(str(source))
    return large, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=20, help="Recall depth per video (dedup --candidates).")
    parser.add_argument("--all-pairs", action="store_true", help="Score every pair (dedup --all-pairs; single linkage).")
    parser.add_argument("--linkage", choices=("average", "single"), default="average", help="dedup --linkage.")
    parser.add_argument("--threads", type=int, default=0,
                        help="Torch threads of the dedup process (default: torch's own choice, one per core).")
    parser.add_argument("--source-index", type=Path, default=None,
                        help="Cut the collection from this index's stored segments (copied, never changed).")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Audio files to index as the source instead.")
    parser.add_argument("--model", type=Path, default=None, help="Model for indexing --source.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep the source index and the N-video collection of an earlier run in --work.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON at the end.")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="ausil-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    source = source_index(args, work)
    large, build_s = collection(args, work, source)
    built = "reused" if build_s is None else f"built in {build_s:.0f} s"
    print(f"collection: {args.videos} videos from the stored segments of {source} ({built})", flush=True)
    report = {"videos": args.videos, "candidates": args.candidates, "all_pairs": args.all_pairs, "linkage": args.linkage,
              "source_index": str(source),
              "build_s": build_s, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    for name in ("first run", "rerun"):
        r = report[name] = run_dedup_process(large, args.candidates, args.all_pairs, args.threads, args.linkage)
        s = r["stats"]
        print(f"{name}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s of CPU, {r['torch_threads']} torch threads); {s['candidate_pairs']} pairs: "
              f"{s['pairs_scored']} scored ({s['pairs_scored'] / max(r['seconds'], 1e-9):.1f}/s), {s['pairs_skipped']} "
              f"skipped (already joined); {s['pairs_stored']} stored; {r['groups']} groups holding {r['grouped_videos']} "
              f"videos at threshold {r['threshold']:.2f}; peak RSS {r['rss_mib']:.0f} MiB (mapped index pages included), "
              f"anonymous peak {r['anon_peak_mib']:.0f} MiB", flush=True)
        if r["anon_mib_by_pairs"]:
            print("  anonymous MiB by pairs looked at: " + ", ".join(f"{n}: {m}" for n, m in r["anon_mib_by_pairs"]))
    (work / "dedup_speed.json").write_text(json.dumps(report, indent=2))
    print(f"report: {work / 'dedup_speed.json'}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
