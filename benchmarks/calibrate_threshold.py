"""Calibrate the match threshold on a dev benchmark: the lowest score at which `dedup`'s groups reach
the target pairwise precision, with the recall that gives and the whole curve.

    python benchmarks/calibrate_threshold.py BENCH_DIR [--model PATH] [--target-precision 0.99]
        [--candidates 20 | --exhaustive] [--work DIR] [--out calibration.json]

BENCH_DIR is what `ausil-search bench make` writes (see benchmarks/run_dev.py). Every query and
database video is indexed into WORK/dedup-index (incremental: a rerun reuses it), then scored
exactly as `ausil-search dedup` scores a collection (dedup.find_duplicate_groups: recall of
--candidates per video, AuSiL rerank with the shorter video as the query; scores kept in the index).

Truth, three ways (all reported): 'groups' — each benchmark group (a query and its `DA` positives)
is one set of duplicates, every other pair is not; 'spans' — also the pairs that transforms.json shows
sharing >= 5 s of a source recording (distractors cut from overlapping parts of one recording,
unlabelled by the generator); 'audio' (the default for calibrating) — also the pairs sharing >= 5 s of
the same audio anywhere in the sources (loops), by the generator's own material check. Two curves
over the threshold t:
- pairs: precision and recall of "score >= t" over all pairs (unscored pairs count as misses);
- groups: pairwise precision and recall of the groups `dedup` forms at t (connected components,
  so a chain of matches also joins pairs that were never scored) — what the issue's target is on.
- average: pairwise precision and recall of the groups `dedup`'s default average linkage forms at
  level t (the mean score over all pairs between two groups, unscored pairs counting 0).
The calibrated threshold is the lowest t whose group precision is >= the target (the most recall
at that precision), for each linkage. Put them into ausil_search/search/decision.py
(DEFAULT_MATCH_THRESHOLD, DEFAULT_GROUP_THRESHOLD) or a model's metadata (`match_threshold`,
`group_threshold`) and record the recall in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from run_dev import Benchmark, load_or_make_model  # noqa: E402

from ausil_search.atomic import write_json_atomic  # noqa: E402
from ausil_search.cli.progress import ProgressDisplay  # noqa: E402

MIN_SHARED_S = 5.0  # the generator's own rule: a positive shares >= 5 s with its query
TRUTHS = ("audio", "spans", "groups")


def group_pairs(bench: Benchmark) -> set[tuple[str, str]]:
    """Pairs inside a benchmark group (a query and its `DA` positives): the labelled duplicates."""
    pairs = set()
    for query, labels in bench.annotation.items():
        members = sorted({query, *labels.get("DA", [])})
        pairs |= {(a, b) for i, a in enumerate(members) for b in members[i + 1:]}
    return pairs


def materials(video: dict) -> list[tuple[str, float, float]]:
    """(source, start, end) of the full-level audio a video is made of: its own material, the other
    recording looped around it by an `embed` step, and the unrelated recordings it was embedded in.
    Mixed-in audio at -6 dB or lower is not counted."""
    found = [(video["source"], *video["span_s"])]
    for step in video.get("chain") or []:
        if not isinstance(step, dict):
            continue
        found += [(path, *span) for path, span in step.get("background", [])]
        if step.get("name") == "embed" and "other_source" in step:
            start, end = step["other_span_s"]
            pad = video.get("duration_s", 0.0) * step["pad_factor"] / (1.0 + step["pad_factor"])
            if pad >= end - start:  # the padding loops the whole excerpt
                found.append((step["other_source"], start, end))
            else:  # only part of it, from other_start_frac on (the wrap-around is ignored)
                first = start + step.get("other_start_frac", 0.0) * (end - start)
                found.append((step["other_source"], first, min(end, first + pad)))
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


def audio_pairs(bench: Benchmark, cache_dir: Path, min_shared_s: float = MIN_SHARED_S) -> set[tuple[str, str]]:
    """`span_pairs` plus every pair whose materials hold >= min_shared_s of the same audio, wherever it
    sits in the source recordings. Game music loops: a distractor cut from minute 9 of a track can
    hold the bars of minute 7, and such pairs are duplicates that time spans cannot see.

    "Same audio" is the benchmark generator's own rule (`MaterialIndex`: 1-s log-mel blocks, a coarse
    and a frame-accurate cosine), the one that kept group material out of negatives. Each video's
    footprint is its materials plus every place they occur again; a pair shares audio when the two
    footprints overlap by >= min_shared_s (so two loops of one passage elsewhere count too).
    """
    from ausil_search.evaluate.benchmark import MaterialIndex, decode_recordings

    by_video = {video_id: materials(video) for video_id, video in bench.transforms.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    recordings = decode_recordings(sorted({m[0] for found in by_video.values() for m in found}), cache_dir)
    number = {recording.path: i for i, recording in enumerate(recordings)}
    index = MaterialIndex(recordings)
    first_cell = np.cumsum([0] + [len(cells) for cells in index.cells])
    footprints = []
    for found in by_video.values():
        cells: set[int] = set()
        for path, start, end in found:
            if path in number:
                for recording, a, b in index.matches(number[path], start, end):
                    lo, hi = int(a / index.cell_s), min(math.ceil(b / index.cell_s), len(index.cells[recording]))
                    cells.update(range(first_cell[recording] + lo, first_cell[recording] + hi))
        footprints.append(np.fromiter(cells, np.int64, len(cells)))
    used, counts = np.unique(np.concatenate(footprints), return_counts=True)
    shared = used[counts >= 2]  # cells in two or more footprints: the only ones a pair can share
    member = np.zeros((len(footprints), len(shared)), np.float32)
    for row, cells in enumerate(footprints):
        member[row, np.searchsorted(shared, cells[np.isin(cells, shared)])] = 1.0
    overlap_s = (member @ member.T) * index.cell_s
    ids = list(by_video)
    pairs = span_pairs(bench, min_shared_s)
    for i, j in zip(*np.nonzero(np.triu(overlap_s >= min_shared_s, k=1))):
        pairs.add((min(ids[i], ids[j]), max(ids[i], ids[j])))
    return pairs


def cached_audio_pairs(bench: Benchmark, bench_dir: Path, cache_dir: Path) -> set[tuple[str, str]]:
    """`audio_pairs`, kept in BENCH_DIR/audio_pairs.json for the benchmark's exact transforms.json (the
    check takes minutes and does not depend on the model)."""
    import hashlib
    import json

    key = hashlib.sha256((bench_dir / "transforms.json").read_bytes()).hexdigest()
    path = bench_dir / "audio_pairs.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("transforms_sha256") == key and saved.get("min_shared_s") == MIN_SHARED_S:
            return {tuple(pair) for pair in saved["pairs"]}
    except (OSError, ValueError):
        pass
    pairs = audio_pairs(bench, cache_dir)
    write_json_atomic(path, {"transforms_sha256": key, "min_shared_s": MIN_SHARED_S, "pairs": sorted(pairs)})
    return pairs


def video_names(engine, videos: list) -> dict[int, str]:
    """The index's ids of the benchmark's videos, mapped to the benchmark's names for them."""
    by_path = {str(Path(v.path).absolute()): v.video_id for v in videos}
    return {r.id: by_path[r.path] for r in engine.records() if r.path in by_path}


def indexed_truth(named_pairs: set[tuple[str, str]], video_of: dict[int, str]) -> set[tuple[int, int]]:
    """A truth's pairs of names as (smaller, larger) index-id pairs, where both videos are indexed."""
    index_of = {name: video for video, name in video_of.items()}
    return {tuple(sorted((index_of[a], index_of[b]))) for a, b in named_pairs if a in index_of and b in index_of}


def curves_for(edges: list[tuple[float, int, int]], truth: set[tuple[int, int]]) -> tuple[dict, np.ndarray]:
    """The curves of scored `edges` (strongest first) against `truth`, and which edges are true:
    `groups` (connected components: `dedup --linkage single`), `pairs`, and `average` (the groups of
    `dedup`'s default average linkage over the level at which they join)."""
    from ausil_search.search.dedup import average_linkage

    positive = np.array([(min(q, d), max(q, d)) in truth for _, q, d in edges], bool)
    merges, _ = average_linkage(((q, d, score) for score, q, d in edges), floor=-np.inf)
    return {"groups": group_curve(edges, truth),
            "pairs": pair_curve(np.array([e[0] for e in edges]), positive, len(truth)),
            "average": group_curve([(m.level, m.a, m.b) for m in merges], truth)}, positive


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
              truth: str = "audio", device: str | None = None, workers: int | None = None,
              source_cache: Path | None = None) -> dict:
    from ausil_search.dedup import DedupStore, find_duplicate_groups
    from ausil_search.engine import SearchEngine

    bench = Benchmark(bench_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, random_model = load_or_make_model(model_spec, work)
    entries = bench.videos
    index_dir = work / "dedup-index"
    started = time.perf_counter()
    with SearchEngine(index_dir, model, writable=True, device=device, workers=workers) as engine, \
            ProgressDisplay() as display:
        engine.index_paths([e.path for e in entries], progress=display)
    with SearchEngine(index_dir, model, device=device, workers=0) as engine:
        video_of = video_names(engine, entries)
        depth = len(video_of) if candidates is None else candidates
        # A threshold above any score, every pair scored: the run only scores and stores pairs; the sweep below groups.
        with ProgressDisplay() as display:
            stats = find_duplicate_groups(engine, threshold=2.0, candidates=depth, progress=display, all_pairs=True).stats
        with DedupStore(index_dir, engine.model.sha256) as store:
            queries, databases, scores = store.pairs()
    truth_by_name = {"groups": group_pairs(bench), "spans": span_pairs(bench),
                     "audio": cached_audio_pairs(bench, bench_dir, source_cache or work / "source-cache")}
    edges = sorted(zip(scores.tolist(), queries.tolist(), databases.tolist()), reverse=True)
    report = {
        "benchmark": str(bench_dir), "model": model.identity, "random_model": random_model,
        "videos": len(video_of), "candidates": depth, "target_precision": target, "truth": truth,
        "scored_pairs": len(edges), "pairs_scored_this_run": stats.pairs_scored,
        "seconds": round(time.perf_counter() - started, 1), "by_truth": {},
    }
    for name, named_pairs in truth_by_name.items():
        pairs = indexed_truth(named_pairs, video_of)
        curves, positive = curves_for(edges, pairs)
        report["by_truth"][name] = {"true_pairs": len(pairs), "scored_true_pairs": int(positive.sum()), "curve": curves}
    chosen = lowest_reaching(report["by_truth"][truth]["curve"]["groups"], target)
    report["threshold"] = chosen["threshold"] if chosen else None
    chosen_level = lowest_reaching(report["by_truth"][truth]["curve"]["average"], target)
    report["group_threshold"] = chosen_level["threshold"] if chosen_level else None
    for entry in report["by_truth"].values():
        entry["at_threshold"] = {kind: at(curve, report["threshold"]) if chosen else None
                                 for kind, curve in entry["curve"].items() if kind != "average"}
        entry["at_threshold"]["average"] = at(entry["curve"]["average"], report["group_threshold"]) if chosen_level else None
    score_of = {(min(video_of[q], video_of[d]), max(video_of[q], video_of[d])): score for score, q, d in edges}
    report["recall_by_overlap"] = recall_by_overlap(bench, truth_by_name, score_of)
    return report


OVERLAP_BINS = ((0.0, 0.5), (0.5, 0.75), (0.75, float("inf")))
RECALL_MARKS = (0.5, 0.65, 0.8)


def shared_seconds(a: dict, b: dict) -> float:
    """Seconds of one source recording the two videos' materials share (by time spans)."""
    return sum(max(0.0, min(end_a, end_b) - max(start_a, start_b))
               for source_a, start_a, end_a in materials(a) for source_b, start_b, end_b in materials(b)
               if source_a == source_b)


def recall_by_overlap(bench: Benchmark, truth_by_name: dict, score_of: dict) -> list[dict]:
    """How often the `spans` pairs score >= a few thresholds, by the share of the shorter video their
    common material covers, labelled and unlabelled apart: where the whole-video score loses recall."""
    labelled = truth_by_name["groups"]
    rows = []
    for a, b in truth_by_name["spans"]:
        va, vb = bench.transforms[a], bench.transforms[b]
        shorter = min(va.get("duration_s") or va["span_s"][1] - va["span_s"][0],
                      vb.get("duration_s") or vb["span_s"][1] - vb["span_s"][0])
        rows.append((shared_seconds(va, vb) / max(shorter, 1e-9), score_of.get((a, b)), (a, b) in labelled))
    table = []
    for low, high in OVERLAP_BINS:
        for is_labelled in (True, False):
            scores = [score for fraction, score, lab in rows if low <= fraction < high and lab == is_labelled]
            if scores:
                table.append({"covers": [low, None if high == float("inf") else high], "labelled": is_labelled, "pairs": len(scores),
                              "scored": sum(s is not None for s in scores),
                              "at_least": {str(t): sum(s is not None and s >= t for s in scores) / len(scores)
                                           for t in RECALL_MARKS}})
    return table


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
    if report.get("recall_by_overlap"):
        print("\n'spans' pairs scoring at least " + " / ".join(map(str, RECALL_MARKS))
              + ", by the share of the shorter video their common material covers:")
        for row in report["recall_by_overlap"]:
            low, high = row["covers"]
            share = f">= {low:.0%}" if high is None else f"{low:.0%}-{high:.0%}"
            print(f"  {share:>8} {'labelled' if row['labelled'] else 'unlabelled':>10}: {row['pairs']:4d} pairs, "
                  + " / ".join(f"{v:.2f}" for v in row["at_least"].values()))
    level = report.get("group_threshold")
    print(f"\naverage linkage (dedup's default), truth '{report['truth']}': level  group precision  group recall")
    curve = report["by_truth"][report["truth"]]["curve"]["average"]
    for mark in sorted({round(x, 2) for x in np.linspace(0.05, 1.0, rows)} | ({level} if level is not None else set()),
                       reverse=True):
        g = at(curve, mark)
        if g:
            print(f"{mark:9.4f}  {g['precision']:15.3f}  {g['recall']:12.3f}" + ("   <- calibrated" if mark == level else ""))
    for kind, value, name in (("groups", threshold, "match threshold (single linkage)"),
                              ("average", level, "group threshold (average linkage)")):
        if value is None:
            print(f"\nno {name} reaches group precision {report['target_precision']} (truth '{report['truth']}')")
            continue
        print(f"\ncalibrated {name} {value:.4f} (group precision >= {report['target_precision']}, truth '{report['truth']}'):")
        for truth_name, entry in report["by_truth"].items():
            g = entry["at_threshold"][kind]
            print(f"  truth '{truth_name}': group precision {g['precision']:.3f}, recall {g['recall']:.3f}")


def _default_source_cache(bench_dir: Path) -> Path | None:
    shared = bench_dir.resolve().parent / "cache"
    return shared if shared.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--model", default=None, help="Model file or 'official'; default: the default model.")
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--candidates", type=int, default=20, help="Recall depth per video, as `dedup --candidates`.")
    parser.add_argument("--exhaustive", action="store_true", help="Score every pair (no recall stage).")
    parser.add_argument("--truth", choices=TRUTHS, default="audio",
                        help="What the threshold is calibrated on: 'groups' (the labelled groups only), 'spans' "
                             "(also unlabelled pairs whose material overlaps >= 5 s; see span_pairs) or 'audio' (also "
                             "pairs sharing >= 5 s of the same audio anywhere, loops included; see audio_pairs). "
                             "All three are reported.")
    parser.add_argument("--source-cache", type=Path, default=None,
                        help="The decoded-source cache `bench make --cache` used (default: BENCH_DIR/../cache when it "
                             "exists, else WORK/source-cache); the audio truth reads the sources' band features there.")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None, help="Decoding processes for indexing.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default BENCH_DIR/work).")
    parser.add_argument("--out", type=Path, default=None, help="Write the report with both curves as JSON here.")
    args = parser.parse_args(argv)
    report = calibrate(args.bench_dir, args.model, args.work or args.bench_dir / "work",
                       None if args.exhaustive else args.candidates, args.target_precision, args.truth, args.device,
                       args.workers, args.source_cache or _default_source_cache(args.bench_dir))
    if args.out:
        write_json_atomic(args.out, report)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
