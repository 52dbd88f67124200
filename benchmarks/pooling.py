"""Which global pooling recalls duplicates best: max, mean or GeM over a video's embedded segments.

    python benchmarks/pooling.py FEATURES.h5 BENCH_DIR MODEL

FEATURES.h5: per-video backbone descriptors of the benchmark's database and queries (written by
`benchmarks/run_dev.py --ablation`, or `ausil-search extract --format hdf5`); MODEL: the model whose
head embeds them. Prints, per pooling, the share of positives ranked in the top 100 by the global
descriptor alone (what the engine's FAISS stage hands to the reranker) and the global-only mAP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from ausil_search.engine import pool_segments
from ausil_search.model import AuSiLModel


def pool(embedded: torch.Tensor, how: str) -> torch.Tensor:
    """max and mean exactly as the engine pools; gem<p> (signed) as a candidate."""
    if how in ("max", "mean"):
        return torch.from_numpy(pool_segments(embedded, how))
    p = float(how[3:])
    g = embedded.clamp_min(0).pow(p).mean(0).pow(1 / p) - (-embedded).clamp_min(0).pow(p).mean(0).pow(1 / p)
    return g / g.norm().clamp_min(1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("bench", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()
    model = AuSiLModel.load(args.model)
    annotation = json.loads((args.bench / "annotation.json").read_text())
    database = [line.split()[0] for line in (args.bench / "database.txt").read_text().splitlines() if line.strip()]
    with h5py.File(args.features) as f, torch.inference_mode():
        embedded = {k: model.head.embed(torch.from_numpy(np.asarray(f[k], dtype=np.float32))) for k in database + list(annotation)}
    for how in ("max", "mean", "gem3"):
        stacked = torch.stack([pool(embedded[k], how) for k in database])
        recall, aps = [], []
        for query, labels in annotation.items():
            order = np.argsort(-(stacked @ pool(embedded[query], how)).numpy())
            positives = set(labels["DA"])
            ranks = sorted(i for i, j in enumerate(order) if database[j] in positives)
            recall.append(np.mean([r < args.candidates for r in ranks]))
            aps.append(np.mean([(n + 1) / (r + 1) for n, r in enumerate(ranks)]))
        print(f"{how:5s} positives in top {args.candidates}: {np.mean(recall):.3f}   global-only mAP {np.mean(aps):.3f}")


if __name__ == "__main__":
    main()
