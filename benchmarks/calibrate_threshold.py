"""Calibrate the match threshold on a dev benchmark: the lowest score at which `dedup`'s groups reach
the target pairwise precision, with the recall that gives and the whole curve.

    python benchmarks/calibrate_threshold.py BENCH_DIR [--model PATH] [--target-precision 0.99]
        [--candidates 20 | --exhaustive] [--work DIR] [--out calibration.json]

BENCH_DIR is what `ausil-search bench make` writes (see benchmarks/run_dev.py). Every query and
database video is indexed into WORK/dedup-index (incremental: a rerun reuses it), then scored
exactly as `ausil-search dedup` scores a collection (dedup.find_duplicate_groups: recall of
--candidates per video, AuSiL rerank with the shorter video as the query; scores kept in the index).

Truth, two ways (both reported): 'groups' — each benchmark group (a query and its `DA` positives)
is one set of duplicates, every other pair is not; 'spans' (the default for calibrating) — also the
pairs that transforms.json shows sharing >= 5 s of a source recording (distractors cut from
overlapping parts of one recording, unlabelled by the generator). Two curves over the threshold t:
- pairs: precision and recall of "score >= t" over all pairs (unscored pairs count as misses);
- groups: pairwise precision and recall of the groups `dedup` forms at t (connected components,
  so a chain of matches also joins pairs that were never scored) — what the issue's target is on.
The calibrated threshold is the lowest t whose group precision is >= the target (the most recall
at that precision). Put it into ausil_search/decision.py (DEFAULT_MATCH_THRESHOLD) or a model's
metadata (`match_threshold`) and record the recall in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from run_dev import Benchmark, load_or_make_model  # noqa: E402

from ausil_search.atomic import write_json_atomic  # noqa: E402
from ausil_search.cli.progress import ProgressDisplay  # noqa: E402

MIN_SHARED_S = 5.0  # the generator's own rule: a positive shares >= 5 s with its query
TRUTHS = ("spans", "groups")


def group_pairs(bench: Benchmark) -> set[tuple[str, str]]:
    """Pairs inside a benchmark group (a query and its `DA` positives): the labelled duplicates."""
    pairs = set()
    for query, labels in bench.annotation.items():
        members = sorted({query, *labels.get("DA", [])})
        pairs |= {(a, b) for i, a in enumerate(members) for b in members[i + 1:]}
    return pairs


def materials(video: dict) -> list[tuple[str, float, float]]:
    """(source, start, end) of the full-level audio a video is made of: its own material, and the
    unrelated recordings it was embedded in. Mixed-in audio at -6 dB or lower is not counted."""
    found = [(video["source"], *video["span_s"])]
    for step in video.get("chain") or []:
        found += [(path, *span) for path, span in step.get("background", [])] if isinstance(step, dict) else []
    return found


def span_pairs(bench: Benchmark, min_shared_s: float = MIN_SHARED_S) -> set[tuple[str, str]]:
    """The labelled pairs plus every pair whose materials share >= min_shared_s seconds of one source
    recording (transforms.json). Distractors are cut from the same recordings and can overlap each
    other; those pairs are duplicates too, only not labelled, and a small benchmark has many."""
    pairs = group_pairs(bench)
    by_source: dict[str, list[tuple[float, float, str]]] = {}
    for video_id, video in bench.transforms.items():
        for source, start, end in materials(video):
            by_source.setdefault(source, []).append((start, end, video_id))
    for spans in by_source.values():
        for i, (start_a, end_a, a) in enumerate(spans):
            for start_b, end_b, b in spans[i + 1:]:
                if a != b and min(end_a, end_b) - max(start_a, start_b) >= min_shared_s:
                    pairs.add((min(a, b), max(a, b)))
    return pairs


def pair_curve(scores: np.ndarray, positive: np.ndarray, total_positive: int) -> list[dict]:
    """Precision and recall of `score >= t` at every distinct score t, highest first."""
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    hits = np.cumsum(positive)
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each distinct score
    return [{"threshold": float(scores[i]), "precision": float(hits[i] / (i + 1)),
             "recall": float(hits[i] / total_positive) if total_positive else 0.0} for i in last]


def group_curve(edges: list[tuple[float, int, int]], truth: set[tuple[int, int]]) -> list[dict]:
    """Pairwise precision and recall of the connected components at every distinct threshold.

    Edges are added strongest first (as dedup does); when two components merge, the true pairs
    between them are counted from the smaller one's truth neighbours.
    """
    neighbours: dict[int, set[int]] = {}
    for a, b in truth:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    component: dict[int, set[int]] = {}
    predicted = true = 0
    curve = []
    for index, (score, a, b) in enumerate(edges):
        group_a, group_b = component.setdefault(a, {a}), component.setdefault(b, {b})
        if group_a is not group_b:
            small, large = sorted((group_a, group_b), key=len)
            predicted += len(small) * len(large)
            true += sum(len(neighbours.get(x, set()) & large) for x in small)
            large |= small
            for x in small:
                component[x] = large
        if index + 1 == len(edges) or edges[index + 1][0] != score:
            curve.append({"threshold": score, "precision": true / predicted if predicted else 1.0,
                          "recall": true / len(truth) if truth else 0.0,
                          "predicted_pairs": predicted, "true_pairs": true})
    return curve


def lowest_reaching(curve: list[dict], target: float) -> dict | None:
    """The point of lowest threshold whose precision is >= target."""
    reaching = [point for point in curve if point["precision"] >= target]
    return min(reaching, key=lambda p: p["threshold"]) if reaching else None


def at(curve: list[dict], threshold: float) -> dict | None:
    """The curve's point for `score >= threshold`."""
    above = [p for p in curve if p["threshold"] >= threshold]
    return min(above, key=lambda p: p["threshold"]) if above else None


def calibrate(bench_dir: Path, model_spec: str | None, work: Path, candidates: int | None, target: float,
              truth: str = "spans", device: str | None = None, workers: int | None = None) -> dict:
    from ausil_search.dedup import DedupStore, find_duplicate_groups
    from ausil_search.engine import SearchEngine

    bench = Benchmark(bench_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, random_model = load_or_make_model(model_spec, work)
    entries = bench.database + [q for q in bench.queries if q.video_id not in set(bench.database_ids)]
    index_dir = work / "dedup-index"
    started = time.perf_counter()
    with SearchEngine(index_dir, model, writable=True, device=device, workers=workers) as engine, \
            ProgressDisplay() as display:
        engine.index_paths([e.path for e in entries], progress=display)
    with SearchEngine(index_dir, model, device=device, workers=0) as engine:
        by_path = {str(Path(e.path).absolute()): e.video_id for e in entries}
        video_of = {r.id: by_path[r.path] for r in engine.records() if r.path in by_path}
        depth = len(video_of) if candidates is None else candidates
        # A threshold above any score, every pair scored: the run only scores and stores pairs; the sweep below groups.
        with ProgressDisplay() as display:
            stats = find_duplicate_groups(engine, threshold=2.0, candidates=depth, progress=display, all_pairs=True).stats
        with DedupStore(index_dir, engine.model.sha256) as store:
            queries, databases, scores = store.pairs()
    truth_by_name = {"groups": group_pairs(bench), "spans": span_pairs(bench)}
    index_of = {name: vid for vid, name in video_of.items()}
    edges = sorted(zip(scores.tolist(), queries.tolist(), databases.tolist()), reverse=True)
    report = {
        "benchmark": str(bench_dir), "model": model.identity, "random_model": random_model,
        "videos": len(video_of), "candidates": depth, "target_precision": target, "truth": truth,
        "scored_pairs": len(edges), "pairs_scored_this_run": stats.pairs_scored,
        "seconds": round(time.perf_counter() - started, 1), "by_truth": {},
    }
    for name, named_pairs in truth_by_name.items():
        pairs = {tuple(sorted((index_of[a], index_of[b]))) for a, b in named_pairs if a in index_of and b in index_of}
        positive = np.array([(min(q, d), max(q, d)) in pairs for _, q, d in edges], bool)
        curves = {"groups": group_curve(edges, pairs),
                  "pairs": pair_curve(np.array([e[0] for e in edges]), positive, len(pairs))}
        report["by_truth"][name] = {"true_pairs": len(pairs), "scored_true_pairs": int(positive.sum()), "curve": curves}
    chosen = lowest_reaching(report["by_truth"][truth]["curve"]["groups"], target)
    report["threshold"] = chosen["threshold"] if chosen else None
    for entry in report["by_truth"].values():
        entry["at_threshold"] = {kind: at(curve, report["threshold"]) if chosen else None
                                 for kind, curve in entry["curve"].items()}
    return report


def print_report(report: dict, rows: int = 12) -> None:
    print(f"{report['benchmark']}: {report['videos']} videos, {report['scored_pairs']} pairs scored "
          f"(recall depth {report['candidates']}); model {report['model']}"
          + (" (RANDOM model: pipeline check only)" if report["random_model"] else ""))
    threshold = report["threshold"]
    for name, entry in report["by_truth"].items():
        groups, pairs = entry["curve"]["groups"], entry["curve"]["pairs"]
        print(f"\ntruth '{name}': {entry['true_pairs']} duplicate pairs, {entry['scored_true_pairs']} of them scored")
        print("threshold  group precision  group recall  pair precision  pair recall")
        lowest = min((p["threshold"] for p in groups), default=0.0)
        marks = {round(x, 2) for x in np.linspace(max(lowest, -1.0), 1.0, rows)} | ({threshold} if threshold is not None else set())
        for mark in sorted(marks, reverse=True):
            g, p = at(groups, mark), at(pairs, mark)
            if g and p:
                print(f"{mark:9.4f}  {g['precision']:15.3f}  {g['recall']:12.3f}  {p['precision']:14.3f}  {p['recall']:11.3f}"
                      + ("   <- calibrated" if mark == threshold else ""))
    if threshold is None:
        print(f"\nno threshold reaches group precision {report['target_precision']} (truth '{report['truth']}')")
        return
    print(f"\ncalibrated threshold {threshold:.4f} (group precision >= {report['target_precision']}, truth '{report['truth']}'):")
    for name, entry in report["by_truth"].items():
        g = entry["at_threshold"]["groups"]
        print(f"  truth '{name}': group precision {g['precision']:.3f}, recall {g['recall']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--model", default=None, help="Model file or 'official'; default: the default model.")
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--candidates", type=int, default=20, help="Recall depth per video, as `dedup --candidates`.")
    parser.add_argument("--exhaustive", action="store_true", help="Score every pair (no recall stage).")
    parser.add_argument("--truth", choices=TRUTHS, default="spans",
                        help="What the threshold is calibrated on: 'groups' (the labelled groups only) or 'spans' "
                             "(also unlabelled pairs whose material overlaps >= 5 s; see span_pairs). Both are reported.")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None, help="Decoding processes for indexing.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default BENCH_DIR/work).")
    parser.add_argument("--out", type=Path, default=None, help="Write the report with both curves as JSON here.")
    args = parser.parse_args(argv)
    report = calibrate(args.bench_dir, args.model, args.work or args.bench_dir / "work",
                       None if args.exhaustive else args.candidates, args.target_precision, args.truth, args.device,
                       args.workers)
    if args.out:
        write_json_atomic(args.out, report)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
