"""Sharded-index numbers (issue 15): indexing throughput on a local Ray cluster with 1 and 2
network workers, and query latency of a sharded index against the same videos in one index.

    python benchmarks/shard_speed.py [--source DIR] [--files 8] [--videos 1000] [--shards 4]
                                     [--queries 20] [--model PATH] [--work DIR] [--out JSON]

1. Indexing: the first --files audio files of --source indexed into a fresh 2-shard index with
   `--ray local`, once per worker count, each in a fresh process (so each run starts its own local
   cluster; the cluster start is reported apart), and once in one process without Ray.
2. Query latency: a --videos index made of excerpts of the stored (real) segments of step 1
   (as engine_speed.py builds it), resharded into --shards shards (no extraction), then --queries
   30-s clips in one warm process: p50/p95 against the one index and the sharded one (in-process),
   with --candidates per shard equal to the one index's and divided by the shard count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_speed import DEFAULT_SOURCE, audio_files, build_large_index, pct, write_queries  # noqa: E402

INDEX_ON_RAY = (
    "import json, sys, time\n"
    "from pathlib import Path\n"
    "clock = time.perf_counter()\n"
    "import ray\n"
    "for attempt in range(5):  # Ray gives its processes 30 s to come up, which a loaded machine can miss\n"
    "    try:\n"
    "        ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False)\n"
    "        break\n"
    "    except Exception:\n"
    "        ray.shutdown()\n"
    "        clock = time.perf_counter()\n"
    "started = time.perf_counter() - clock\n"
    "from ausil_search.shards.cluster import index_on_cluster\n"
    "index_dir, model, workers, *paths = sys.argv[1:]\n"
    "report = index_on_cluster(Path(index_dir), [Path(p) for p in paths], 'local', Path(model), shards=2,\n"
    "                          workers=int(workers))\n"
    "ray.shutdown()\n"
    "print(json.dumps({'audio_s': report.audio_seconds, 'seconds': report.seconds, 'added': report.added,\n"
    "                  'cluster_start_s': started}))\n"
)
INDEX_IN_PROCESS = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from ausil_search.search.engine import SearchEngine\n"
    "index_dir, model, *paths = sys.argv[1:]\n"
    "with SearchEngine(Path(index_dir), model, writable=True) as engine:\n"
    "    report = engine.index_paths([Path(p) for p in paths])\n"
    "print(json.dumps({'audio_s': report.audio_seconds, 'seconds': report.seconds, 'added': report.added}))\n"
)


def run_script(code: str, *args) -> dict:
    output = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if output.returncode:
        sys.exit(f"failed: {output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def timed_queries(index, queries: list[Path], candidates: int) -> dict:
    index.query(queries[0], candidates=candidates)  # warm-up: model, extractor, page cache
    totals, reranks, tops = [], [], []
    for query in queries:
        clock = time.perf_counter()
        result = index.query(query, top_k=10, candidates=candidates)
        totals.append(time.perf_counter() - clock)
        reranks.append(result.timings["rerank_s"])
        tops.append([m.path for m in result.matches])
    return {"candidates": candidates, "p50_s": statistics.median(totals), "p95_s": pct(totals, 95),
            "rerank_p50_s": statistics.median(reranks), "top10": tops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--model", type=Path, default=None, help="default: a seeded random model")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ray-files", type=int, default=None, help="files indexed on Ray (default: --files)")
    parser.add_argument("--skip-indexing", action="store_true", help="reuse --work's one-process index")
    parser.add_argument("--skip-latency", action="store_true", help="only the indexing runs")
    args = parser.parse_args()

    from ausil_search.search.engine import SearchEngine
    from ausil_search.model import AuSiLModel
    from ausil_search.shards import ShardedIndex
    from ausil_search.shards.reshard import reshard

    work = args.work or Path(tempfile.mkdtemp(prefix="shard-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or work / "model.safetensors"
    if not model.exists():
        AuSiLModel.initialise(seed=7, name="bench-random").save(model)
    files = audio_files(args.source)[: args.files]
    report: dict = {"files": len(files), "cpus": os.cpu_count(), "load_average": os.getloadavg()}

    small = work / "one-process"
    if not args.skip_indexing:
        if not small.exists():
            report["in_process"] = run_script(INDEX_IN_PROCESS, small, model, *files)
        ray_files = files[: args.ray_files or len(files)]
        for workers in (1, 2):
            report[f"ray_{workers}_workers"] = run_script(INDEX_ON_RAY, work / f"ray-{workers}-{len(ray_files)}", model,
                                                          workers, *ray_files)
        for key in ("in_process", "ray_1_workers", "ray_2_workers"):
            if key in report:
                report[key]["x_realtime"] = report[key]["audio_s"] / report[key]["seconds"]
                print(key, json.dumps(report[key]), flush=True)
    if args.skip_latency:
        print(json.dumps(report, indent=2))
        return

    big, sharded = work / f"one-{args.videos}", work / f"sharded-{args.videos}"
    if not big.exists():
        report["build_s"] = build_large_index(small, big, args.videos, seed=0)
    if not sharded.exists():
        report["reshard"] = reshard(big, sharded, args.shards).to_dict()
    queries = write_queries(files, work / "queries", args.queries, 30.0, seed=1)
    with SearchEngine(big) as one:
        report["videos"] = len(one.records())
        report["one_index"] = timed_queries(one, queries, args.candidates)
    with ShardedIndex(sharded) as index:
        report["sharded_same_per_shard"] = timed_queries(index, queries, args.candidates)
        report["sharded_split"] = timed_queries(index, queries, max(1, args.candidates // args.shards))
    expected = report["one_index"].pop("top10")
    for key in ("sharded_same_per_shard", "sharded_split"):
        tops = report[key].pop("top10")
        report[key]["top10_equal_to_one_index"] = sum(a == b for a, b in zip(tops, expected)) / len(expected)
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
