"""Put one model file's backbone under another's head, to screen a new backbone without training a head.

    python benchmarks/swap_backbone.py BACKBONE.safetensors HEAD.safetensors OUT.safetensors [--name NAME]

A head takes an hour of descriptor extraction on 2 cores; a continued backbone that stays near the one the
head learnt on (`train-backbone --anchor`) can be judged under that head at once with `run_dev.py
--model OUT`. Run the control too: the head's own backbone after the same treatment (for example
`recalibrate_batchnorm.py`) should score what the head's model scores (BENCHMARKS.md, "A backbone aimed
at mixing and noise", run b1). The output keeps HEAD's metadata and records both sources.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", type=Path, help="Model file whose backbone (and BatchNorm statistics) to take.")
    parser.add_argument("head", type=Path, help="Model file whose head (whitening, attention, comparator) to take.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--name", default=None, help="Name for the output (default: HEAD's name + '-swapped').")
    args = parser.parse_args(argv)

    from ausil_search.model import AuSiLModel

    source, target = AuSiLModel.load(args.backbone), AuSiLModel.load(args.head)
    if source.frontend != target.frontend:
        parser.error(f"{args.backbone} and {args.head} have different front-ends "
                     f"({source.frontend.to_dict()} against {target.frontend.to_dict()}): the head would see other segments")
    target.backbone.load_state_dict(source.backbone.state_dict())
    target.metadata.update(name=args.name or f"{target.name}-swapped",
                           swapped={"backbone_from": source.identity, "head_from": target.identity})
    target.metadata.pop("created", None)
    target.save(args.output)
    print(f"{args.output}: {target.identity} (backbone of {source.identity}, head of {target.metadata['swapped']['head_from']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
