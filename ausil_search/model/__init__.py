"""The complete AuSiL model: front-end parameters, backbone and head, loaded from one model file.

A model has an identity (name, version and the SHA-256 of its file) so that an index can record
which model built it and refuse to mix features of two models.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..features.backbone import DESCRIPTOR_DIM, WeakMxH64
from ..errors import WeightsError
from .head import AuSiLHead
from ..features.spectrogram import FrontEnd
from .weights.model_file import head_width, load_model_file, save_model_file
from .weights.official import cache_dir

OFFICIAL_MODEL_FILE = "ausil-official.safetensors"
BUNDLED_MODEL = Path(__file__).parents[1] / "models" / "default.safetensors"

NO_MODEL_HELP = (
    "no model available: pass --model PATH (a model file), or get the official weights with "
    "`ausil-search weights download` (online) or `ausil-search weights convert` (from files you have), "
    "or make a random one for testing with `ausil-search weights init -o model.safetensors`"
)


@dataclass
class AuSiLModel:
    backbone: WeakMxH64
    head: AuSiLHead
    frontend: FrontEnd
    metadata: dict = field(default_factory=dict)
    sha256: str | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "unnamed"))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def identity(self) -> str:
        digest = (self.sha256 or "unsaved")[:12]
        return f"{self.name}-{self.version}@{digest}"

    @classmethod
    def load(cls, path: Path) -> "AuSiLModel":
        model_file = load_model_file(Path(path))
        meta = model_file.metadata
        backbone = WeakMxH64()
        head = AuSiLHead.identity(int(meta.get("descriptor_dim", DESCRIPTOR_DIM)), width=head_width(model_file.tensors))
        parts = {"backbone.": {}, "head.": {}}
        for key, tensor in model_file.tensors.items():
            for prefix, bucket in parts.items():
                if key.startswith(prefix):
                    bucket[key[len(prefix):]] = tensor
        for module, prefix in ((backbone, "backbone."), (head, "head.")):
            try:
                module.load_state_dict(parts[prefix], strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise WeightsError(f"{path}: {prefix.rstrip('.')} tensors do not fit the architecture ({first})") from None
        frontend = FrontEnd.from_dict(meta["frontend"]) if "frontend" in meta else FrontEnd()
        return cls(backbone.eval(), head.eval(), frontend, dict(meta), model_file.sha256, Path(path))

    @classmethod
    def initialise(cls, seed: int = 0, name: str = "ausil-init", frontend: FrontEnd | None = None) -> "AuSiLModel":
        """A starting model: seeded random backbone, identity whitening, neutral attention,
        and a comparator that passes the similarity matrix through (so Chamfer is meaningful before training)."""
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            backbone = WeakMxH64()
        finally:
            torch.random.set_rng_state(generator_state)
        head = AuSiLHead.identity(DESCRIPTOR_DIM, seed=seed)
        head.init_passthrough_comparator(seed=seed)
        metadata = {
            "name": name,
            "version": f"seed{seed}",
            "description": "Randomly initialised backbone, identity whitening, neutral attention, pass-through comparator.",
            "source": f"ausil-search weights init --seed {seed}",
        }
        return cls(backbone.eval(), head.eval(), frontend or FrontEnd(), metadata)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return tensors

    def save(self, path: Path, float16: bool = False) -> str:
        """Write the model file; returns (and adopts) the file's SHA-256 identity."""
        metadata = {
            **self.metadata,
            "frontend": self.frontend.to_dict(),
            "descriptor_dim": DESCRIPTOR_DIM,
            "created": self.metadata.get("created") or _dt.date.today().isoformat(),
        }
        save_model_file(Path(path), self.state_tensors(), metadata, dtype=torch.float16 if float16 else None)
        reloaded = load_model_file(Path(path))
        self.metadata, self.sha256, self.path = reloaded.metadata, reloaded.sha256, Path(path)
        return reloaded.sha256

    def to(self, device: torch.device | str) -> "AuSiLModel":
        self.backbone.to(device)
        self.head.to(device)
        return self

    def parameter_counts(self) -> dict[str, int]:
        return {
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "head": sum(p.numel() for p in self.head.parameters()),
        }


def official_model_path() -> Path:
    return cache_dir() / OFFICIAL_MODEL_FILE


def resolve_model_path(spec: str | Path | None) -> Path:
    """`None` → the bundled default model, else the converted official weights; `official` → the latter."""
    if spec is None:
        for candidate in (BUNDLED_MODEL, official_model_path()):
            if candidate.is_file():
                return candidate
        raise WeightsError(NO_MODEL_HELP)
    if str(spec) == "official":
        path = official_model_path()
        if not path.is_file():
            raise WeightsError(
                f"the official weights are not in {path.parent}: run `ausil-search weights download`, "
                "or `ausil-search weights convert --cnn PKL --tf-ckpt DIR -o " + str(path) + "`"
            )
        return path
    path = Path(spec)
    if not path.is_file():
        raise WeightsError(f"{path}: model file not found")
    return path


def load_model(spec: str | Path | None = None) -> AuSiLModel:
    return AuSiLModel.load(resolve_model_path(spec))
