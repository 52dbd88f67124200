"""Does normalising AuSiL scores against a cohort of unrelated audio rank and decide better?

    python benchmarks/score_norm.py BENCH_DIR --work WORK [--model PATH] [--cohort 64] [--cohort-seconds 15]
        [--calibration CAL_WORK]

Some database videos score high against everything (dense, steady music: "hubs"), and some copies
score low against everything (a copy mixed under other sound). A raw score threshold and a raw
ranking treat both alike. Speaker verification's answer is score normalisation: score each video
against a fixed cohort of audio it cannot share, and express a pair's score in units of that
video's cohort distribution (z = (s − μ) / σ).

The cohort is `--cohort` windows of `--cohort-seconds` cut from *training* recordings
(bench-data/sources/train.txt), never from the benchmark's audio. For each database video b the
cohort windows are scored as queries against it (μ_b, σ_b: how high b scores against audio it does
not share); for each video as a query, against the cohort windows (μ_q, σ_q).

- Ranking (engine run, WORK/engine.json, WORK/index): each query's candidates are re-ordered by
  variants of the database-side z score; mAP and per-transformation rows as run_dev.py prints them.
- Deciding (`--calibration`: a calibrate_threshold.py --work folder with a scored dedup index): the
  pairs it scored, rescored with the symmetric z score, and the recall reachable at precision
  0.99 / 0.95 / 0.90 (decision_scores.py's table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import calibrate_threshold as cal  # noqa: E402
from run_dev import Benchmark, load_or_make_model, score_run  # noqa: E402


def cohort_windows(engine, sources: list[Path], count: int, seconds: float, seed: int) -> list:
    """`count` embedded windows, one per training recording of at least 2 × `seconds`."""
    from ausil_search.errors import InputError
    from ausil_search.media.audio import probe

    rng = np.random.default_rng(seed)
    windows = []
    extractor = engine.extractor()
    width = int(round(seconds))  # one segment per second
    for i in rng.permutation(len(sources)):
        path = sources[int(i)]
        try:
            duration = probe(path).duration_s or 0.0
        except InputError:
            continue
        if duration < 2 * seconds:
            continue
        video = extractor.descriptors(path, max_seconds=120.0)
        if not video.ok or len(video.descriptors) < 2 * width:
            continue
        embedded = engine.embed(video.descriptors)
        start = int(rng.integers(0, len(embedded) - width + 1))
        windows.append(embedded[start:start + width].clone())
        if len(windows) == count:
            break
    return windows


def cohort_stats(scores: np.ndarray, top: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean and std of the row's cohort scores (of its `top` highest when given: AS-norm)."""
    if top:
        scores = -np.sort(-scores, axis=1)[:, :top]
    return scores.mean(axis=1), np.maximum(scores.std(axis=1), 1e-3)


def decision_table(args, bench: Benchmark, model, cohort: list) -> dict:
    """Recall reachable at each precision by the raw and the normalised pair scores."""
    import torch

    from decision_scores import recall_table
    from ausil_search.dedup import DedupStore
    from ausil_search.engine import SearchEngine

    index = args.calibration / "dedup-index"
    with SearchEngine(index, model, workers=0) as engine:
        video_of = cal.video_names(engine, bench.videos)
        with DedupStore(index, engine.model.sha256) as store:
            queries, databases, chamfer = store.pairs()
        ids = [r.id for r in engine.records()]
        segments = [torch.from_numpy(s) for s in engine.store.segments_many(ids)]
        head = engine.model.head
        clock = time.perf_counter()
        with torch.inference_mode():
            as_db = np.stack([head.score_many(c, segments).float().numpy() for c in cohort], axis=1)
            as_query = np.stack([head.score_many(s, cohort).float().numpy() for s in segments])
        print(f"decision: {len(ids)} videos against the cohort both ways in {time.perf_counter() - clock:.0f} s",
              flush=True)
    row = {video: i for i, video in enumerate(ids)}
    length = {video: len(s) for video, s in zip(ids, segments)}
    short = np.array([q if length[q] <= length[d] else d for q, d in zip(queries.tolist(), databases.tolist())])
    long_ = np.array([d if length[q] <= length[d] else q for q, d in zip(queries.tolist(), databases.tolist())])
    qi, di = np.array([row[v] for v in short]), np.array([row[v] for v in long_])
    s = chamfer.astype(np.float64)
    variants = {"raw (AuSiL)": s}
    for top in (None, 10):
        tag = "" if top is None else f", top {top}"
        mq, sq = cohort_stats(as_query, top)
        md, sd = cohort_stats(as_db, top)
        variants[f"z query side{tag}"] = (s - mq[qi]) / sq[qi]
        variants[f"z database side{tag}"] = (s - md[di]) / sd[di]
        variants[f"z both{tag}"] = 0.5 * ((s - mq[qi]) / sq[qi] + (s - md[di]) / sd[di])
        variants[f"s - mean(mu){tag}"] = s - 0.5 * (mq[qi] + md[di])
    return recall_table(bench, args.bench_dir, args.calibration / "source-cache", video_of, variants, queries,
                        databases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="run_dev.py --mode engine's --work folder.")
    parser.add_argument("--model", default=None, help="The model the runs used (default: the default model).")
    parser.add_argument("--cohort", type=int, default=64, help="Number of cohort windows.")
    parser.add_argument("--cohort-seconds", type=float, default=15.0, help="Length of each cohort window.")
    parser.add_argument("--sources", type=Path, default=Path("bench-data/sources/train.txt"),
                        help="List of training recordings to cut the cohort from (never the benchmark's audio).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=Path, default=None,
                        help="A calibrate_threshold.py --work folder: also rescore its pairs as dedup decisions.")
    parser.add_argument("--out", type=Path, default=None, help="Write the tables as JSON here.")
    args = parser.parse_args(argv)

    import torch

    from ausil_search.engine import SearchEngine

    torch.set_num_threads(2)
    bench = Benchmark(args.bench_dir)
    model, _ = load_or_make_model(args.model, args.work)
    sources = [Path(line.strip()) for line in args.sources.read_text().splitlines() if line.strip()]
    clock = time.perf_counter()
    out: dict = {"bench": str(args.bench_dir), "model": model.identity, "cohort": args.cohort,
                 "cohort_seconds": args.cohort_seconds, "seed": args.seed}
    with SearchEngine(args.work / "index", model, workers=0) as engine:
        cohort = cohort_windows(engine, sources, args.cohort, args.cohort_seconds, args.seed)
        print(f"cohort: {len(cohort)} windows in {time.perf_counter() - clock:.0f} s", flush=True)
        name_of = cal.video_names(engine, bench.videos)
        ids = list(name_of)
        segments = [torch.from_numpy(s) for s in engine.store.segments_many(ids)]
        clock = time.perf_counter()
        head = engine.model.head
        with torch.inference_mode():
            as_db = np.stack([head.score_many(c, segments).float().numpy() for c in cohort], axis=1)
        print(f"database side: {as_db.shape} scores in {time.perf_counter() - clock:.0f} s", flush=True)
    similarities = json.loads((args.work / "engine.json").read_text())
    rows = {}
    for top in (None, 10, 5):
        mu, sigma = cohort_stats(as_db, top)
        stats = {name_of[i]: (m, d) for i, m, d in zip(ids, mu, sigma)}
        tag = "" if top is None else f"-top{top}"
        for label, scaled in ((f"z{tag}", True), (f"s-mu{tag}", False)):
            sims = {q: {v: float((s - stats[v][0]) / (stats[v][1] if scaled else 1.0))
                        for v, s in cands.items() if v in stats}
                    for q, cands in similarities.items()}
            rows[label] = score_run(bench, sims)
    rows = {"raw": score_run(bench, similarities), **rows}
    transforms = sorted({t for r in rows.values() for t in r["per_transform"]})
    print(f"{'variant':14s} mAP   R@1   " + " ".join(f"{t[:7]:>7s}" for t in transforms))
    for label, r in rows.items():
        print(f"{label:14s} {r['mAP']:.3f} {r['recall@1']:.2f}  "
              + " ".join(f"{r['per_transform'].get(t, {}).get('mAP', float('nan')):7.3f}" for t in transforms))
    out["ranking"] = {k: {kk: v[kk] for kk in ("mAP", "recall@1", "groups", "per_transform", "average_precision")}
                      for k, v in rows.items()}
    if args.calibration:
        out["decision"] = decision_table(args, bench, model, cohort)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
