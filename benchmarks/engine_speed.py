"""Retrieval-engine numbers: indexing speed, query latency against 10,000 videos, memory, disk.

    python benchmarks/engine_speed.py [--source DIR] [--videos 10000] [--queries 20] [--model PATH]
                                      [--long-hours 1,3] [--memory-only] [--work DIR] [--json]

1. Indexing: `SearchEngine.index_paths` over the audio files in --source (default: the Debian
   wesnoth-1.16-music folder), in a fresh process each, reporting x realtime, peak RSS of the main
   process and of its decoding workers, and index bytes per hour of audio.
2. Query latency: a --videos index made from the stored (real) segment matrices of step 1, cut
   into excerpts of 30-240 s with fresh ids (its bytes per hour of audio and recall windows are
   reported), then, in a fresh process: the cold start (loading the model, then opening the index,
   timed apart, and the first query) and 30-s query clips (re-encoded mp3 excerpts of the source
   files), warm, top 10: p50/p95 of the whole query and of its stages for several --candidates
   values, agreement of the top-10 with --exhaustive on --exhaustive-queries of them, and the
   process's peak RSS (and peak anonymous memory, without the LMDB pages it touched).
3. Bounded memory: files of --long-hours hours (the source audio looped, AAC in .m4a) each indexed
   in a fresh process, against a 10-minute file: peak RSS must not grow with the length
   (--memory-only runs this step alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path("/usr/share/games/wesnoth/1.16/data/core/music")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


ANON_SAMPLER = (  # the peak of anonymous memory (RssAnon), sampled in a thread: what a run really holds
    "import threading, time\n"
    "peak = [0]\n"
    "def sample():\n"
    "    while True:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('RssAnon:'): peak[0] = max(peak[0], int(line.split()[1]))\n"
    "        time.sleep(0.05)\n"
    "threading.Thread(target=sample, daemon=True).start()\n"
)


def run_index_process(paths: list[Path], index_dir: Path, model: Path) -> dict:
    """Index in a fresh interpreter, so that peak RSS belongs to this run alone."""
    # Peak RSS counts the index's memory-mapped LMDB pages the run touched (page cache the kernel can
    # drop); a sampler also tracks the peak of anonymous memory (RssAnon), what the run really holds.
    code = (
        ANON_SAMPLER +
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from ausil_search.engine import SearchEngine\n"
        "index_dir, model, *paths = sys.argv[1:]\n"
        "with SearchEngine(Path(index_dir), model, writable=True) as engine:\n"
        "    report = engine.index_paths([Path(p) for p in paths])\n"
        "    info = engine.info()\n"
        "print(json.dumps({'audio_s': report.audio_seconds, 'seconds': report.seconds, 'added': report.added,\n"
        "    'skipped': len(report.skipped), 'disk_bytes': info['disk_bytes'],\n"
        "    'rss_main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
        "    'anon_main_mib': peak[0] / 1024,\n"
        "    'rss_worker_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(index_dir), str(model), *map(str, paths)],
                         check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def audio_files(source: Path) -> list[Path]:
    exts = {".ogg", ".opus", ".mp3", ".wav", ".flac", ".m4a", ".mp4", ".mkv", ".webm"}
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in exts)


def build_large_index(src_index: Path, dst_index: Path, n_videos: int, seed: int) -> float:
    """n_videos excerpts (30-240 s) of the real stored segment matrices, under new synthetic paths."""
    from ausil_search.engine import SearchEngine
    from ausil_search.stores import VideoFile

    shutil.copytree(src_index, dst_index)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with SearchEngine(dst_index, writable=True) as engine:
        sources = [(r.id, r.n_segments) for r in engine.records()]

        def excerpts():
            for i in range(n_videos - len(sources)):
                vid, n = sources[rng.integers(len(sources))]
                length = int(min(n, rng.integers(30, 241)))
                start = int(rng.integers(0, n - length + 1))
                record = VideoFile(path=f"/synthetic/excerpt-{i:05d}.mp4", size=0, mtime_ns=0, fingerprint=f"x{i}",
                                   duration_s=float(length))
                yield record, engine.store.segments(vid)[start:start + length]

        engine.add_embedded(excerpts())
    return time.perf_counter() - started


def write_queries(files: list[Path], out: Path, n: int, seconds: float, seed: int) -> list[Path]:
    from ausil_search.audio import load_audio
    from media import write_audio_file

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    queries = []
    for i in range(n):
        samples = None
        while samples is None or len(samples) < seconds * 44_100:
            samples = load_audio(files[rng.integers(len(files))])
        start = int(rng.integers(0, len(samples) - int(seconds * 44_100) + 1))
        path = out / f"query-{i:03d}.mp3"
        write_audio_file(path, samples[start:start + int(seconds * 44_100)], 44_100, bitrate=96_000)
        queries.append(path)
    return queries


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(index_dir: Path, model: Path, queries: list[Path], candidate_counts: list[int], exhaustive_queries: int,
            compile: bool = False) -> dict:
    """Cold start, then warm query numbers, in a fresh process (so that its peak RSS is the query side's alone)."""
    code = (
        ANON_SAMPLER +
        "import json, resource, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from engine_speed import measure_queries\n"
        "result = measure_queries(*json.loads(sys.argv[1]))\n"
        "result['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "result['peak_anon_mib'] = peak[0] / 1024\n"
        "print(json.dumps(result))\n"
    )
    arguments = json.dumps([str(index_dir), str(model), [str(q) for q in queries], candidate_counts, exhaustive_queries,
                            compile])
    out = subprocess.run([sys.executable, "-c", code, arguments], check=True, capture_output=True, text=True,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_queries(index_dir: str, model_path: str, queries: list[str], candidate_counts: list[int],
                    exhaustive_queries: int, compile: bool = False) -> dict:
    """The query process as `ausil-search query` (compile=False) or `serve` (compile=True) runs it:
    NumPy's BLAS on one thread in both (devices.one_blas_thread)."""
    from ausil_search.devices import one_blas_thread
    from ausil_search.engine import SearchEngine
    from ausil_search.model import AuSiLModel

    one_blas_thread()

    clock = time.perf_counter()
    model = AuSiLModel.load(Path(model_path))
    cold = {"load_model_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    engine = SearchEngine(Path(index_dir), model, workers=0, compile=compile)
    cold["open_index_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    engine.query(queries[0], candidates=10)  # the first query also builds the extractor
    cold["first_query_s"] = time.perf_counter() - clock
    results: dict = {"cold_start": cold, "videos": len(engine.store), "global_index": engine.info()["global_index"],
                     "compiled": compile}
    with engine:
        exhaustive = {}
        t_exh = []
        for q in queries[:exhaustive_queries]:
            r = engine.query(q, top_k=10, exhaustive=True)
            exhaustive[q] = [m.video_id for m in r.matches]
            t_exh.append(sum(r.timings.values()))
        for k in candidate_counts:
            totals, stages, top1, overlap = [], {"extract_s": [], "recall_s": [], "rerank_s": []}, [], []
            for q in queries:
                clock = time.perf_counter()
                r = engine.query(q, top_k=10, candidates=k)
                totals.append(time.perf_counter() - clock)
                for s in stages:
                    stages[s].append(r.timings[s])
                if q in exhaustive:
                    ids = [m.video_id for m in r.matches]
                    top1.append(ids[:1] == exhaustive[q][:1])
                    overlap.append(len(set(ids) & set(exhaustive[q])) / len(exhaustive[q]))
            results[str(k)] = {
                "p50_s": statistics.median(totals), "p95_s": pct(totals, 95),
                **{f"{s}_p50": statistics.median(v) for s, v in stages.items()},
                "top1_agrees": float(np.mean(top1)) if top1 else None,
                "top10_overlap": float(np.mean(overlap)) if overlap else None,
            }
        if t_exh:
            results["exhaustive"] = {"p50_s": statistics.median(t_exh), "p95_s": pct(t_exh, 95), "queries": len(t_exh)}
    return results


def write_long_file(files: list[Path], path: Path, hours: float) -> None:
    """The source audio looped to `hours`, encoded as AAC block by block (never whole in memory)."""
    import av
    from ausil_search.audio import load_audio

    target = int(hours * 3600 * 44_100)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44_100, layout="mono")
        stream.bit_rate = 64_000
        written, i = 0, 0
        while written < target:
            samples = load_audio(files[i % len(files)])[: target - written]
            i += 1
            for start in range(0, len(samples), 44_100 * 10):
                block = samples[start:start + 44_100 * 10]
                frame = av.AudioFrame.from_ndarray(block[None, :].astype(np.float32), format="fltp", layout="mono")
                frame.sample_rate = 44_100
                for packet in stream.encode(frame):
                    container.mux(packet)
            written += len(samples)
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--query-seconds", type=float, default=30.0)
    parser.add_argument("--candidates", default="25,50,100,200")
    parser.add_argument("--exhaustive-queries", type=int, default=5,
                        help="queries also run exhaustively, for the top-10 agreement (each reranks every video)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: a seeded random model)")
    parser.add_argument("--long-hours", default="3", help="comma-separated lengths; 0 skips the bounded-memory check")
    parser.add_argument("--memory-only", action="store_true", help="run only the bounded-memory check")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep step 1's index from an earlier run in --work")
    parser.add_argument("--compile", action="store_true",
                        help="queries with the backbone compiled, as `serve` runs them (default: as `query` runs them)")
    args = parser.parse_args()

    from ausil_search.model import AuSiLModel

    work = args.work or Path(tempfile.mkdtemp(prefix="ausil-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = audio_files(args.source)
    if not files:
        sys.exit(f"no audio files under {args.source}")
    model = args.model
    if model is None:
        model = work / "model.safetensors"
        AuSiLModel.initialise(seed=0).save(model)
    report: dict = {"source": str(args.source), "files": len(files), "cpu_count": os.cpu_count()}

    small = work / "index-source"
    if args.memory_only:
        pass
    elif not (args.reuse and (small / "manifest.json").exists()):
        shutil.rmtree(small, ignore_errors=True)
        r = run_index_process(files, small, model)
        report["indexing"] = {**r, "x_realtime": r["audio_s"] / r["seconds"],
                              "bytes_per_audio_hour": r["disk_bytes"] / (r["audio_s"] / 3600)}
        print(f"indexing: {r['added']} files, {r['audio_s'] / 3600:.2f} h of audio in {r['seconds']:.1f} s = "
              f"{r['audio_s'] / r['seconds']:.0f}x realtime; peak RSS main {r['rss_main_mib']:.0f} MiB, "
              f"workers {r['rss_worker_mib']:.0f} MiB; {r['disk_bytes'] / (r['audio_s'] / 3600) / 2**20:.1f} MiB on disk per hour",
              flush=True)

    if not args.memory_only:
        query_numbers(args, work, files, small, model, report)
    hours = [float(h) for h in args.long_hours.split(",") if float(h) > 0]
    if hours:
        short_file = work / "short.m4a"
        write_long_file(files, short_file, 10 / 60)
        mem = {}
        for name, path in [("10 min", short_file)] + [(f"{h:g} h", work / f"long-{h:g}h.m4a") for h in hours]:
            if not path.exists():
                write_long_file(files, path, float(name.split()[0]))
            shutil.rmtree(work / "index-long", ignore_errors=True)
            mem[name] = run_index_process([path], work / "index-long", model)
            m = mem[name]
            print(f"memory: {name} file indexed in {m['seconds']:.1f} s ({m['audio_s'] / m['seconds']:.0f}x realtime); "
                  f"peak RSS main {m['rss_main_mib']:.0f} MiB (anonymous {m['anon_main_mib']:.0f} MiB), "
                  f"workers {m['rss_worker_mib']:.0f} MiB", flush=True)
        report["memory"] = mem
    (work / "engine_speed.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"full report: {work / 'engine_speed.json'}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))


def query_numbers(args, work: Path, files: list[Path], small: Path, model: Path, report: dict) -> None:
    large = work / "index-large"
    shutil.rmtree(large, ignore_errors=True)
    build_s = build_large_index(small, large, args.videos, seed=1)
    queries = write_queries(files, work / "queries", args.queries, args.query_seconds, seed=2)
    counts = [int(c) for c in args.candidates.split(",")]
    lat = latency(large, model, queries, counts, args.exhaustive_queries, args.compile)
    disk = index_disk(large)
    report["query"] = {"videos": lat["videos"], "build_s": build_s, "disk": disk, "by_candidates": lat}
    g, cold = lat["global_index"], lat["cold_start"]
    print(f"index: {lat['videos']} videos, {disk['audio_hours']:.1f} h; {g['ntotal']} recall windows "
          f"({g['ntotal'] / lat['videos']:.2f} per video, FAISS {g['type']}); per hour of audio: "
          f"segments {disk['segments_bytes'] / disk['audio_hours'] / 2**20:.2f} MiB, "
          f"FAISS {disk['faiss_bytes'] / disk['audio_hours'] / 2**20:.2f} MiB")
    print(f"cold start: load the model {cold['load_model_s']:.2f} s, open the index {cold['open_index_s']:.2f} s, "
          f"first query {cold['first_query_s']:.2f} s; peak RSS {lat['peak_rss_mib']:.0f} MiB "
          f"(anonymous {lat['peak_anon_mib']:.0f} MiB)")
    print(f"query: {args.queries} queries of {args.query_seconds:.0f} s against {lat['videos']} videos (warm, top 10, "
          f"{'compiled backbone, as serve' if args.compile else 'as the query command'})")
    print("  candidates   p50 s   p95 s   extract  recall   rerank   top-1=exh  top-10 overlap")
    for k in counts:
        x = lat[str(k)]
        agree = "" if x["top1_agrees"] is None else f"   {x['top1_agrees']:8.2f}  {x['top10_overlap']:8.2f}"
        print(f"  {k:>10} {x['p50_s']:7.3f} {x['p95_s']:7.3f}  {x['extract_s_p50']:7.3f} {x['recall_s_p50'] * 1000:6.2f}ms"
              f" {x['rerank_s_p50']:7.3f}{agree}")
    if "exhaustive" in lat:
        print(f"  exhaustive {lat['exhaustive']['p50_s']:7.3f} {lat['exhaustive']['p95_s']:7.3f}")


def index_disk(index_dir: Path) -> dict:
    """Bytes on disk (allocated blocks: LMDB files are sparse) of the segment store, the FAISS file and the rest."""
    from ausil_search.stores import SegmentStore

    with SegmentStore(index_dir / "segments", readonly=True) as store:
        hours = store.stats().total_duration_s / 3600
    allocated = {f: f.stat().st_blocks * 512 for f in index_dir.rglob("*") if f.is_file()}
    faiss = sum(b for f, b in allocated.items() if f.suffix == ".faiss")
    segments = sum(b for f, b in allocated.items() if f.parent.name == "segments")
    return {"audio_hours": hours, "segments_bytes": segments, "faiss_bytes": faiss,
            "other_bytes": sum(allocated.values()) - faiss - segments}


if __name__ == "__main__":
    main()
