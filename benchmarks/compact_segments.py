"""What compact segments cost: rerank score changes, mAP and bytes per hour of audio (issue 11).

    python benchmarks/compact_segments.py BENCH_DIR --index INDEX [--queries N] [--widths 1024,512,256]
        [--model PATH] [--work DIR] [--json]

INDEX is an index of BENCH_DIR's database built with float16 segments (format version 1, or a
float16 store of version 2; it is only read), e.g. `run_dev.py`'s work index. N queries (every k-th
of the list) are each embedded by the model and scored exhaustively against every stored
video (AuSiL rerank scores, the engine's `score_many`) with the stored segments as:

- `float16`: as stored (the reference);
- `int8`: the store's int8 form (codes with a max-abs scale per segment), dequantised on read;
- `pca<D>+int8`: a post-hoc proxy for a head of width D: the stored segments and the query projected
  on the top D principal directions of the stored segments (uncentred), then int8. A head trained
  at width D does better than this; it stands for the size, and bounds the loss from above.

For each: the largest absolute score change against `float16`, FIVR mAP (overall and per group),
and the bytes per hour of database audio of a real index in that form: the LMDB store's allocated
blocks, the FAISS file and the manifest, written under --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from ausil_search.features.extraction import Extractor  # noqa: E402
from ausil_search.model import load_model  # noqa: E402
from ausil_search.search.engine import RECALL_HOP_S, RECALL_WINDOW_S, default_pooling  # noqa: E402
from ausil_search.search.stores import GlobalIndex, SegmentStore, VideoFile  # noqa: E402
from ausil_search.search.stores.segment_codec import pack, unpack  # noqa: E402
from ausil_search.search.stores.windows import WindowLayout  # noqa: E402
from run_dev import Benchmark, score_run  # noqa: E402

PCA_SAMPLE_ROWS = 20_000


def stored_segments(index: Path, bench: Benchmark) -> tuple[list[str], list[np.ndarray], list[float]]:
    """(database ids, float32 copies of the stored segments, durations) of the videos of `bench` in `index`."""
    by_path = {str(Path(e.path).resolve()): e.video_id for e in bench.database}  # the store keys resolved paths
    ids, matrices, durations = [], [], []
    with SegmentStore(index / "segments", readonly=True, any_version=True) as store:
        if store.dtype != np.float16:
            raise SystemExit(f"{index}: expected a float16 store, found {store.dtype}")
        for record in store.iter_records():
            path = str(Path(record.path).resolve())
            if path in by_path:
                ids.append(by_path[path])
                matrices.append(store.segments(record.id))
                durations.append(record.duration_s)
    return ids, matrices, durations


def principal_directions(matrices: list[np.ndarray], width: int, seed: int = 0) -> np.ndarray:
    """(D_in, width) top right-singular vectors of a row sample of the stored segments."""
    if not matrices:
        raise SystemExit("no video of the benchmark's database is in the index")
    rows = np.concatenate(matrices)
    rng = np.random.default_rng(seed)
    if len(rows) > PCA_SAMPLE_ROWS:
        rows = rows[rng.choice(len(rows), PCA_SAMPLE_ROWS, replace=False)]
    _, _, vt = np.linalg.svd(rows.astype(np.float64), full_matrices=False)
    return vt[:width].T.astype(np.float32)


def int8_round_trip(matrix: np.ndarray) -> np.ndarray:
    return unpack(memoryview(pack(matrix, "int8").payload), "int8", matrix.shape[1])


def scores(head, queries: dict[str, torch.Tensor], database: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return np.stack([head.score_many(q, database).numpy() for q in queries.values()])


def index_bytes(work: Path, name: str, matrices: list[np.ndarray], dtype: str, audio_s: float,
                layout: WindowLayout) -> dict:
    """Write the segments as a real store (plus the FAISS file of its recall windows, pooled from the
    stored segments as the engine does, and a manifest-sized file); bytes per hour."""
    import shutil

    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    with SegmentStore(folder / "segments", dtype=dtype) as store:
        items = []
        for number, matrix in enumerate(matrices):
            pooled = matrix.mean(0)
            pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
            video = VideoFile(path=f"/v/{number}", size=1, mtime_ns=1, fingerprint="x" * 32, duration_s=1.0,
                              extra={"indexed_at": 0.0})
            items.append((video, matrix, pooled))
        for start in range(0, len(items), 16):
            store.add_videos(items[start:start + 16])
        faiss_path = folder / f"windows-{layout.size}-{layout.hop}.faiss"
        index, _ = GlobalIndex.load_or_rebuild(faiss_path, store, layout, matrices[0].shape[1])
        index.save(faiss_path)
        store_bytes = store.stats().disk_bytes
    faiss_bytes = faiss_path.stat().st_size
    manifest_bytes = 700  # manifest.json of a real index (its size does not grow with the collection)
    total = store_bytes + faiss_bytes + manifest_bytes
    hours = audio_s / 3600
    return {"segments_mib_per_h": round(store_bytes / hours / 2**20, 3), "faiss_mib_per_h": round(faiss_bytes / hours / 2**20, 3),
            "total_mib_per_h": round(total / hours / 2**20, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--index", type=Path, required=True, help="float16 index of the benchmark's database")
    parser.add_argument("--queries", type=int, default=25, help="first N queries (default 25)")
    parser.add_argument("--widths", default="1024,512,256")
    parser.add_argument("--model", default=None)
    parser.add_argument("--work", type=Path, default=Path("compact-work"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    bench = Benchmark(args.bench)
    model = load_model(args.model)
    layout = WindowLayout.from_seconds(RECALL_WINDOW_S, RECALL_HOP_S, model.frontend.step_seconds, default_pooling(model))
    db_ids, stored, durations = stored_segments(args.index, bench)
    audio_s = float(sum(durations))
    extractor = Extractor(model, workers=0)
    queries = {}
    for entry in bench.queries[::max(1, len(bench.queries) // args.queries)][:args.queries]:
        with torch.inference_mode():
            queries[entry.video_id] = model.head.embed(torch.from_numpy(extractor.descriptors(entry.path).descriptors))
    variants = {"float16": (stored, queries, "float16"), "int8": ([int8_round_trip(m) for m in stored], queries, "int8")}
    widths = [int(w) for w in args.widths.split(",") if w]
    directions = principal_directions(stored, max(widths)) if widths else None
    for width in widths:
        basis = np.ascontiguousarray(directions[:, :width])
        projected = [int8_round_trip(m @ basis) for m in stored]
        variants[f"pca{width}+int8"] = (projected, {k: q @ torch.from_numpy(basis) for k, q in queries.items()}, "int8")
    report: dict = {"bench": str(args.bench), "index": str(args.index), "model": model.identity, "queries": len(queries),
                    "database_videos": len(db_ids), "database_hours": round(audio_s / 3600, 3), "variants": {}}
    reference = None
    args.work.mkdir(parents=True, exist_ok=True)
    for name, (matrices, query_vectors, dtype) in variants.items():
        matrix = scores(model.head, query_vectors, [torch.from_numpy(m) for m in matrices])
        reference = matrix if reference is None else reference
        similarities = {q: dict(zip(db_ids, map(float, row))) for q, row in zip(query_vectors, matrix)}
        run = score_run(bench, similarities)
        report["variants"][name] = {
            "max_abs_score_change": round(float(np.abs(matrix - reference).max()), 5),
            "mAP": round(run["mAP"], 4),
            "groups": {g: round(v["mAP"], 4) for g, v in run["groups"].items()},
            **index_bytes(args.work, name.replace("+", "_"), matrices, dtype, audio_s, layout),
        }
        if not args.json:
            print(name, json.dumps(report["variants"][name]), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
