"""Which pair score makes the best yes/no decision: the whole-video AuSiL score against the best local
window of the comparator's output, on the pairs a calibration run scored.

    python benchmarks/decision_scores.py BENCH_DIR --work WORK [--model PATH] [--windows 2,3,5,8]

Run benchmarks/calibrate_threshold.py with the same BENCH_DIR, --work and --model first: this reads
its index (WORK/dedup-index), the pairs it scored and BENCH_DIR/audio_pairs.json.

The AuSiL score is the comparator map's Chamfer similarity: the mean over the shorter video's rows
of each row's best match. A copy that shares only part of the shorter video scores low by
construction, so a decision on it loses partial duplicates. The local score is the mean of the same
row maxima over the best run of k consecutive map rows (a map row covers 4 segments, about 4 s):
"somewhere, k rows in a row match". Also collection-relative
scores, which need no model: each pair's score minus a background of both videos' scores against the
rest of the collection (the mean of their k best, as CSLS does for word translation; or the median of
their 10th-30th best), for videos that score high or low against everything. For each score and truth
(`groups`, `audio`; see calibrate_threshold.py) it prints the recall reachable at pair precision and at
group precision 0.99 / 0.95 / 0.90 (lowest threshold with that precision).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import calibrate_threshold as cal  # noqa: E402
from run_dev import Benchmark, load_or_make_model  # noqa: E402

TARGETS = (0.99, 0.95, 0.90)


def best_window_mean(values: np.ndarray, k: int) -> float:
    """The highest mean of `k` consecutive values (all of them when there are fewer)."""
    k = min(k, len(values))
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return float((sums[k:] - sums[:-k]).max() / k)


def collection_relative(scores: np.ndarray, queries: np.ndarray, databases: np.ndarray) -> dict[str, np.ndarray]:
    """Each pair's score minus a background from both videos' scores against the rest of the collection."""
    ids, where = np.unique(np.r_[queries, databases], return_inverse=True)
    q, d = where[:len(queries)], where[len(queries):]
    ranked = [[] for _ in ids]
    for score, a, b in zip(scores.tolist(), q.tolist(), d.tolist()):
        ranked[a].append(score)
        ranked[b].append(score)
    ranked = [np.sort(np.array(values))[::-1] for values in ranked]
    variants = {}
    for k in (10, 20):
        best = np.array([values[:k].mean() for values in ranked])
        variants[f"minus mean of {k} best (CSLS)"] = scores - 0.5 * (best[q] + best[d])
    middle = np.array([np.median(values[10:30]) if len(values) > 10 else values[-1] for values in ranked])
    variants["minus median of 10th-30th"] = scores - 0.5 * (middle[q] + middle[d])
    return variants


def comparator_row_maxima(engine, queries: np.ndarray, databases: np.ndarray):
    """Each pair's comparator map (shorter video as the query, the scoring's tiling rules), reduced to
    its row maxima: what the Chamfer score averages."""
    import torch

    from ausil_search.model.head import MIN_COMPARATOR_SEGMENTS, MIN_DATABASE_SEGMENTS, tile_segments

    ids = sorted(set(queries.tolist()) | set(databases.tolist()))
    segments = {i: torch.from_numpy(m) for i, m in zip(ids, engine.store.segments_many(ids))}
    head = engine.model.head
    with torch.inference_mode():
        for a, b in zip(queries.tolist(), databases.tolist()):
            x, y = segments[a], segments[b]
            if len(x) > len(y):
                x, y = y, x
            grid = head.comparator_map(tile_segments(x, MIN_COMPARATOR_SEGMENTS), tile_segments(y, MIN_DATABASE_SEGMENTS))
            yield grid.max(dim=1).values.double().numpy()


def reachable(scores: np.ndarray, queries: np.ndarray, databases: np.ndarray, truth: set[tuple[int, int]]) -> dict:
    edges = sorted(zip(scores.tolist(), queries.tolist(), databases.tolist()), reverse=True)
    curves, _ = cal.curves_for(edges, truth)
    found = {}
    for kind, curve in curves.items():
        for target in TARGETS:
            point = cal.lowest_reaching(curve, target)
            found[f"{kind}@{target}"] = {"threshold": point["threshold"], "recall": point["recall"]} if point else None
    return found


def recall_table(bench: Benchmark, bench_dir: Path, source_cache: Path, video_of: dict[int, str],
                 variants: dict[str, np.ndarray], queries: np.ndarray, databases: np.ndarray) -> dict:
    """Print, per truth (`groups`, `audio`) and per pair score, the recall reachable at each target
    precision, pairs | single-linkage groups | average-linkage groups; return the points as {"truth: score": reachable(...)}."""
    truths = {"groups": cal.group_pairs(bench), "audio": cal.cached_audio_pairs(bench, bench_dir, source_cache)}
    width = max(map(len, variants)) + 2
    table = {}
    for truth_name, named in truths.items():
        truth = cal.indexed_truth(named, video_of)
        print(f"\ntruth '{truth_name}' ({len(truth)} pairs, {len(queries)} scored): recall at precision "
              + " / ".join(map(str, TARGETS)) + ", pairs | groups (single linkage) | groups (average linkage)")
        for label, scores in variants.items():
            found = table[f"{truth_name}: {label}"] = reachable(scores, queries, databases, truth)
            cells = [" / ".join(f"{(found[f'{kind}@{t}'] or {'recall': 0.0})['recall']:.3f}" for t in TARGETS)
                     for kind in ("pairs", "groups", "average")]
            print(f"  {label:{width}s} " + "  |  ".join(cells))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="calibrate_threshold.py's --work folder.")
    parser.add_argument("--model", default=None, help="The model the calibration run used (default: the default model).")
    parser.add_argument("--windows", default="2,3,5,8", help="Local window lengths k, in comparator-map rows.")
    args = parser.parse_args(argv)

    import torch

    from ausil_search.dedup import DedupStore
    from ausil_search.engine import SearchEngine

    torch.set_num_threads(1)
    bench = Benchmark(args.bench_dir)
    model, _ = load_or_make_model(args.model, args.work)
    audio = args.bench_dir / "audio_pairs.json"
    if not audio.is_file():
        parser.error(f"{audio} is missing: run calibrate_threshold.py on {args.bench_dir} first")
    started = time.perf_counter()
    with SearchEngine(args.work / "dedup-index", model, workers=0) as engine:
        video_of = cal.video_names(engine, bench.videos)
        with DedupStore(args.work / "dedup-index", engine.model.sha256) as store:
            queries, databases, chamfer = store.pairs()
        if not len(chamfer):
            parser.error("no scored pairs in the index: run calibrate_threshold.py with this --work and --model first")
        maxima = list(comparator_row_maxima(engine, queries, databases))
    windows = [int(k) for k in args.windows.split(",")]
    variants = {"whole video (AuSiL)": chamfer.astype(np.float64),
                **{f"best {k} rows": np.array([best_window_mean(m, k) for m in maxima]) for k in windows},
                **collection_relative(chamfer.astype(np.float64), queries, databases)}
    print(f"{args.bench_dir}: {len(chamfer)} scored pairs, model {model.identity}, maps in "
          f"{time.perf_counter() - started:.1f} s")
    recall_table(bench, args.bench_dir, args.work / "source-cache", video_of, variants, queries, databases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
