"""Would two models together rank better than one? Late fusion of two engine runs' scores.

    python benchmarks/fuse_runs.py BENCH_DIR RUN_A.json RUN_B.json [--weights 0.3,0.5]

RUN_A/RUN_B are the similarity files run_dev.py --mode engine writes (WORK/engine.json: each
query's reranked candidates). The fused score of a candidate is (1 − w)·a + w·b; a candidate that
only one run recalled gets the other run's lowest score for that query. Prints mAP, recall@1, the
paired difference to A (95 % bootstrap interval over queries) and the per-transformation rows for A,
B and each weight w: what an ensemble of the two models (two backbones at indexing time, twice the
cost) would give, optimistically, since the weight is picked on the same queries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from compare_runs import paired_difference  # noqa: E402
from run_dev import Benchmark, score_run  # noqa: E402


def fuse(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], weight: float) -> dict[str, dict[str, float]]:
    fused = {}
    for query in a.keys() | b.keys():
        x, y = a.get(query, {}), b.get(query, {})
        floor_x, floor_y = min(x.values(), default=0.0), min(y.values(), default=0.0)
        fused[query] = {v: (1 - weight) * x.get(v, floor_x) + weight * y.get(v, floor_y) for v in x.keys() | y.keys()}
    return fused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--weights", default="0.3,0.5", help="Weights w of run B, comma-separated.")
    args = parser.parse_args(argv)

    bench = Benchmark(args.bench_dir)
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (args.run_a, args.run_b))
    rows = {"A": score_run(bench, a), "B": score_run(bench, b)}
    for w in (float(x) for x in args.weights.split(",")):
        rows[f"w={w:g}"] = score_run(bench, fuse(a, b, w))
    transforms = sorted({t for r in rows.values() for t in r["per_transform"]})
    print(f"A = {args.run_a}\nB = {args.run_b}")
    print(f"{'':8s} {'mAP':>6s} {'R@1':>5s} {'vs A, 95 % interval':>24s} " + " ".join(f"{t[:8]:>8s}" for t in transforms))
    for label, r in rows.items():
        d = paired_difference(rows["A"]["average_precision"], r["average_precision"])
        versus = "" if label == "A" else f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        print(f"{label:8s} {r['mAP']:6.3f} {r['recall@1']:5.2f} {versus:>24s} "
              + " ".join(f"{r['per_transform'].get(t, {}).get('mAP', float('nan')):8.3f}" for t in transforms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
