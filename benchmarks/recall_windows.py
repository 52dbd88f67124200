"""Choose the recall window layout by measurement: engine mAP on a dev set for several layouts.

    python benchmarks/recall_windows.py BENCH_DIR --index INDEX [--windows 0,20,30,45,60]
        [--hops 0.5] [--candidates 100] [--cache FILE.npz] [--scores-from RUN.json] [--exhaustive] [--json]

INDEX is an index of BENCH_DIR's database (what `run_dev.py` builds under --work). The queries are
embedded once; a layout's engine run is then exact without rerunning the pipeline: its rerank
scores are AuSiL's, restricted to the `candidates` videos whose best window (recalled with the
query's own windows, brute force) ranks highest. Scores are computed only for the pairs some
layout recalls (or for every pair with --exhaustive), kept in --cache, and may be seeded with the
similarities of an earlier run of the same model on the same index (--scores-from, e.g. a
`run_dev.py` engine.json). Window 0 is one descriptor per video (the recall before windows).
Reports mAP, the share of positives recalled and windows per video per layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from run_dev import Benchmark, score_run  # noqa: E402


class Scores:
    """AuSiL scores of (query, database video) pairs, computed on demand and cached."""

    def __init__(self, bench: Benchmark, engine, names: list[str], cache: Path | None, seed: Path | None) -> None:
        self.engine, self.names, self.cache = engine, names, cache
        self.queries = [e.video_id for e in bench.queries]
        self.matrix = np.full((len(self.queries), len(names)), np.nan, np.float32)
        data = np.load(cache, allow_pickle=False) if cache is not None and cache.is_file() else None
        if data is not None and "matrix" in data:
            self.matrix = data["matrix"]
            self.embedded = [data[f"q{i}"] for i in range(len(self.queries))]
        else:
            self.embedded = []
            for done, entry in enumerate(bench.queries, 1):
                descriptors = engine.extractor().descriptors(Path(entry.path)).descriptors
                self.embedded.append(engine.embed(descriptors).float().numpy())
                print(f"{done}/{len(bench.queries)} queries embedded", file=sys.stderr)
        if seed is not None:
            column = {name: i for i, name in enumerate(names)}
            for q, query in enumerate(self.queries):
                for name, score in json.loads(seed.read_text()).get(query, {}).items():
                    if name in column:
                        self.matrix[q, column[name]] = score
        self.save()

    def save(self) -> None:
        if self.cache is not None:
            np.savez(self.cache, matrix=self.matrix, **{f"q{i}": q for i, q in enumerate(self.embedded)})

    def ensure(self, q: int, rows: np.ndarray) -> None:
        """Compute the missing scores of query `q` against database rows `rows`."""
        import torch

        missing = rows[np.isnan(self.matrix[q, rows])]
        videos = self.engine.store.ids()
        query = torch.from_numpy(self.embedded[q])
        with torch.inference_mode():
            for start in range(0, len(missing), 128):
                chunk = missing[start:start + 128]
                matrices = [torch.from_numpy(m) for m in self.engine.store.segments_many(videos[chunk].tolist())]
                self.matrix[q, chunk] = self.engine.model.head.score_many(query, matrices).float().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--windows", default="0,20,30,45,60", help="Window lengths in seconds; 0 = one per video.")
    parser.add_argument("--hops", default="0.5", help="Hops as fractions of the window.")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=None, help="Embedded queries and computed scores (npz).")
    parser.add_argument("--scores-from", type=Path, default=None,
                        help="Release-format similarities of the same model and database to start from.")
    parser.add_argument("--exhaustive", action="store_true", help="Also score every pair (the exhaustive row).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from ausil_search.engine import SearchEngine
    from ausil_search.stores.windows import WINDOW_BITS, WindowLayout, best_per_video

    bench = Benchmark(args.bench_dir)
    with SearchEngine(args.index, writable=False, workers=0) as engine:
        videos = engine.store.ids()
        path_to_id = {str(Path(e.path).absolute()): e.video_id for e in bench.database}
        names = [path_to_id[engine.store.get(int(v)).path] for v in videos]
        scores = Scores(bench, engine, names, args.cache, args.scores_from)
        segments = engine.store.segments_many(videos.tolist())
        step_s, pooling = engine.frontend.step_seconds, engine.pooling
        results = []
        if args.exhaustive:
            for q in range(len(scores.queries)):
                scores.ensure(q, np.arange(len(names)))
            scores.save()
            results.append({"layout": "exhaustive", **_scored(bench, scores, None)})
        for window_s in [float(w) for w in args.windows.split(",")]:
            for hop in [float(h) for h in args.hops.split(",")] if window_s else [1.0]:
                if window_s:
                    layout = WindowLayout.from_seconds(window_s, hop * window_s, step_s, pooling)
                else:  # one window over any video
                    layout = WindowLayout(size=1 << 30, hop=1 << 30, pooling=pooling)
                pooled = [layout.pool(s) for s in segments]
                database = np.concatenate(pooled)
                owner = np.repeat(np.arange(len(videos)), [len(p) for p in pooled]) << WINDOW_BITS  # as window ids
                chosen = []
                for q, query in enumerate(scores.embedded):
                    window_scores = layout.pool(query) @ database.T
                    rows, _ = best_per_video(window_scores, np.broadcast_to(owner, window_scores.shape), args.candidates)
                    scores.ensure(q, rows)
                    chosen.append(rows)
                scores.save()
                result = _scored(bench, scores, chosen)
                result.update(layout=f"{window_s:g} s / hop {hop:g}" if window_s else "one per video",
                              windows_per_video=len(database) / len(videos), windows=len(database))
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print("| layout | mAP | positives recalled | windows per video |\n|---|---|---|---|")
        for r in results:
            print(f"| {r['layout']} | {r['mAP']:.3f} | {r['positives_recalled']:.3f} | {r.get('windows_per_video', 0):.2f} |")
    return 0


def _scored(bench: Benchmark, scores: Scores, chosen: list[np.ndarray] | None) -> dict:
    """mAP of the rerank restricted to each query's recalled rows, and the share of positives recalled."""
    sims, found, total = {}, 0, 0
    for q, query in enumerate(scores.queries):
        rows = np.arange(len(scores.names)) if chosen is None else chosen[q]
        sims[query] = {scores.names[r]: float(scores.matrix[q, r]) for r in rows}
        positives = bench.positives(query)
        found += len(positives & set(sims[query]))
        total += len(positives)
    run = score_run(bench, sims)
    return {"mAP": run["mAP"], "groups": {g: v["mAP"] for g, v in run["groups"].items()},
            "positives_recalled": found / max(total, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
