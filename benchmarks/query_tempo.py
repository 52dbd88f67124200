"""Would searching with tempo-changed copies of the query find tempo-changed copies better?

    python benchmarks/query_tempo.py BENCH_DIR --index WORK/index [--model PATH]
        [--factors 0.87,0.9,0.93,1,1.07,1.1,1.15] [--scores scores.json]

Tempo is the weakest time transformation on every dev set, while a resampled copy (speed and pitch
moved together) is found well. A query-side remedy costs nothing at indexing time: stretch the query
(phase vocoder, pitch kept, the benchmark's own `tempo_change`) by a few factors, score every
database video with each, and fuse the scores. This script measures that on an index `run_dev.py
--mode engine` built (WORK/index): for every query and factor it reranks all database videos
exhaustively, then prints mAP, per group and per transformation, and the paired difference against
the plain query (factor 1) with a 95 % bootstrap interval, for several factor sets and three fusions
(max; mean; mean of the best two). The per-factor scores go to --scores, so fusions can be rescored
without extracting again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from calibrate_threshold import video_names  # noqa: E402
from compare_runs import paired_difference  # noqa: E402
from run_dev import Benchmark, score_run  # noqa: E402

FUSIONS = {
    "max": np.max,
    "mean": np.mean,
    "best2": lambda scores: np.mean(np.sort(scores)[-2:]),
}
FACTOR_SETS = {
    "±7%": (0.93, 1.0, 1.07),
    "±10%": (0.9, 1.0, 1.1),
    "±7%, ±10%": (0.9, 0.93, 1.0, 1.07, 1.1),
    "±7%, ±10%, ±13–15%": (0.87, 0.9, 0.93, 1.0, 1.07, 1.1, 1.15),
}


def factor_scores(bench: Benchmark, index: Path, model: str | None, factors: list[float]) -> dict:
    """{query: {factor: {database video: AuSiL score}}} for the query stretched by each factor."""
    from ausil_search.engine import SearchEngine
    from ausil_search.features.extraction import signal_descriptors
    from ausil_search.media.audio import load_audio
    from ausil_search.media.augment import tempo_change

    out: dict[str, dict[str, dict[str, float]]] = {}
    began = time.monotonic()
    with SearchEngine(index, model, writable=False, workers=0) as engine:
        ids = engine.store.ids()
        video_of = video_names(engine, bench.database)
        names = [video_of.get(int(i)) for i in ids]
        rate = engine.frontend.sample_rate
        encoder = engine.extractor().encoder
        for n, entry in enumerate(bench.queries, 1):
            samples = load_audio(entry.path, rate)
            out[entry.video_id] = {}
            for factor in factors:
                signal = samples if factor == 1 else tempo_change(samples, rate, factor)
                scores = engine._rerank(engine.embed(signal_descriptors(signal, encoder, engine.frontend)), ids)
                out[entry.video_id][str(factor)] = {v: float(s) for v, s in zip(names, scores) if v is not None}
            print(f"query {n}/{len(bench.queries)} {entry.video_id}, {time.monotonic() - began:.0f} s", file=sys.stderr)
    return out


def fused(scores: dict, factors: tuple[float, ...], fusion) -> dict[str, dict[str, float]]:
    return {q: {v: float(fusion([per[str(f)][v] for f in factors])) for v in per[str(1.0)]}
            for q, per in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--index", type=Path, required=True, help="The index run_dev.py --mode engine built (WORK/index).")
    parser.add_argument("--model", default=None, help="Model file; default: the index's own.")
    parser.add_argument("--factors", default="0.87,0.9,0.93,1,1.07,1.1,1.15")
    parser.add_argument("--scores", type=Path, default=None, help="Per-factor scores: written, or read when it exists.")
    args = parser.parse_args(argv)

    bench = Benchmark(args.bench_dir)
    factors = [float(f) for f in args.factors.split(",")]
    if 1.0 not in factors:
        parser.error("--factors must include 1 (the plain query, the base of every comparison)")
    if args.scores and args.scores.exists():
        scores = json.loads(args.scores.read_text())
    else:
        scores = factor_scores(bench, args.index, args.model, factors)
        if args.scores:
            args.scores.write_text(json.dumps(scores))
    have = {float(f) for f in next(iter(scores.values()))}
    base = score_run(bench, fused(scores, (1.0,), np.max))
    print(f"plain query: mAP {base['mAP']:.3f}, " + ", ".join(f"{g} {v['mAP']:.3f}" for g, v in base["groups"].items())
          + f", tempo {base['per_transform'].get('tempo', {}).get('mAP', float('nan')):.3f}")
    print("| factors | fusion | mAP | difference [95 % interval] | better / worse | " + " | ".join(base["groups"]) + " | tempo |")
    print("|---|---|---|---|---|" + "---|" * (len(base["groups"]) + 1))
    for label, chosen in FACTOR_SETS.items():
        if not set(chosen) <= have:
            continue
        for name, fusion in FUSIONS.items():
            run = score_run(bench, fused(scores, chosen, fusion))
            d = paired_difference(base["average_precision"], run["average_precision"])
            groups = " | ".join(f"{run['groups'][g]['mAP']:.3f}" for g in base["groups"])
            tempo = run["per_transform"].get("tempo", {}).get("mAP", float("nan"))
            print(f"| {label} | {name} | {run['mAP']:.3f} | {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
                  f"| {d['better']} / {d['worse']} | {groups} | {tempo:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
