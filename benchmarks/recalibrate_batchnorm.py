"""Recompute a backbone's BatchNorm running statistics over another view recipe's batches, every weight kept.

    python benchmarks/recalibrate_batchnorm.py IN.safetensors OUT.safetensors SOURCES... [--views JSON|FILE]
        [--batches 8] [--seed 0]

`train-backbone` ends by recomputing the statistics over fresh batches of the run's own recipe, so a
run on heavy views (much mixing and noise) normalises every input, clean or speed-changed, with
statistics of those views. This recomputes them over batches of the shipped recipe (default) or of
--views, to tell what the statistics cost from what the weights learnt (BENCHMARKS.md, "A backbone
aimed at mixing and noise"). SOURCES as for `train-backbone` (folders, files, .txt lists).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--views", default=None, help="View-recipe fields (JSON or a file), as train-backbone --views.")
    parser.add_argument("--batches", type=int, default=8, help="Batches averaged (train-backbone --calibration-batches).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from ausil_search.model import AuSiLModel
    from ausil_search.train.backbone_trainer import BackboneTrainer
    from ausil_search.train.backbone_views import AudioCorpus, ViewBatches
    from ausil_search.train.configs import BackboneTrainConfig, ViewRecipe, read_view_overrides

    model = AuSiLModel.load(args.model)
    recipe = ViewRecipe().with_overrides(read_view_overrides(args.views)) if args.views else ViewRecipe()
    config = BackboneTrainConfig(calibration_batches=args.batches, seed=args.seed, recipe=recipe)
    corpus = AudioCorpus.from_sources(args.sources)
    batches = ViewBatches(corpus, recipe, model.frontend, config.seed, config.batch_size, workers=0)
    BackboneTrainer(model.backbone, batches, corpus, config, torch.device("cpu")).recalibrate_batch_norm()
    model.backbone.to("cpu", memory_format=torch.contiguous_format).eval()
    model.metadata["batch_norm_recalibrated"] = {"from": model.identity, "recipe": recipe.to_dict(),
                                                 "batches": args.batches, "seed": args.seed}
    model.save(args.output)
    print(f"{args.output}: {model.identity} (BatchNorm statistics over {args.batches} batches of {len(corpus)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
