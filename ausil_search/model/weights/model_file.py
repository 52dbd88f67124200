"""The project's model file: one `.safetensors` file holding backbone and head tensors plus metadata.

safetensors loads without executing code and is readable by other tools; the metadata (name,
version, front-end parameters, provenance) travels in its header as one JSON document under the
key `ausil_search`. A model's identity is its name, version and the SHA-256 of the file, so that an
index can tell exactly which weights built it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ausil_search.atomic import atomic_output
from ausil_search.features.backbone import DESCRIPTOR_DIM
from ausil_search.errors import WeightsError

FORMAT = "ausil-search-model"
FORMAT_VERSION = 1
METADATA_KEY = "ausil_search"

# Head tensors every model file must carry, with their shapes (PCA used as x @ W, convs OIHW). The
# whitening may keep only its top components: `pca_weights` (DESCRIPTOR_DIM, width) and `context`
# (width,), the width read from the file (see `head_width`).
REQUIRED_HEAD_TENSORS: dict[str, tuple[int, ...]] = {
    "head.pca_mean": (DESCRIPTOR_DIM,),
    "head.comparator.conv1.weight": (32, 1, 3, 3),
    "head.comparator.conv1.bias": (32,),
    "head.comparator.conv2.weight": (64, 32, 3, 3),
    "head.comparator.conv2.bias": (64,),
    "head.comparator.conv3.weight": (128, 64, 3, 3),
    "head.comparator.conv3.bias": (128,),
    "head.comparator.fconv.weight": (1, 128, 1, 1),
    "head.comparator.fconv.bias": (1,),
}

# First and last feature convs of weak_mxh64_1024: enough to tell its state dict from another
# network's; the backbone module checks every tensor when it loads them.
BACKBONE_SIGNATURE: dict[str, tuple[int, ...]] = {
    "layer1.0.weight": (16, 1, 3, 3),
    "layer18.0.weight": (1024, 512, 2, 2),
}
BACKBONE_PREFIX = "backbone."

_STORED_DTYPES = {None: torch.float32, torch.float32: torch.float32, torch.float16: torch.float16}
_HASH_CHUNK = 1 << 20


@dataclass
class ModelFile:
    """A loaded model file: float tensors upcast to float32, its metadata, and its checksum."""

    tensors: dict[str, torch.Tensor]
    metadata: dict
    sha256: str
    path: Path

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.version}@{self.sha256[:12]}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def head_width(tensors: Mapping[str, torch.Tensor]) -> int:
    """Width of the head's embedded segments: the column count of its whitening (the full width when
    the tensor is missing or not a matrix, which `_layout_problems` then reports)."""
    weights = tensors.get("head.pca_weights")
    if weights is None or weights.ndim != 2 or not 1 <= weights.shape[1] <= DESCRIPTOR_DIM:
        return DESCRIPTOR_DIM
    return int(weights.shape[1])


def _layout_problems(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `tensors` from being a model: missing or misshapen head or backbone signature tensors."""
    width = head_width(tensors)
    required = {
        "head.pca_mean": REQUIRED_HEAD_TENSORS["head.pca_mean"],
        "head.pca_weights": (DESCRIPTOR_DIM, width),
        "head.context": (width,),
        **REQUIRED_HEAD_TENSORS,
        **{BACKBONE_PREFIX + name: shape for name, shape in BACKBONE_SIGNATURE.items()},
    }
    problems = []
    for name, shape in required.items():
        if name not in tensors:
            problems.append(f"missing {name}")
        elif tuple(tensors[name].shape) != shape:
            problems.append(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    return problems


def save_model_file(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, object],
    dtype: torch.dtype | None = None,
) -> str:
    """Write a model file atomically; returns its SHA-256.

    `metadata` needs `name`, `version` and `frontend`; format fields, `descriptor_dim`,
    `embedding_dim` (the head's width), `tensor_dtype` and (unless given) `created` are filled in. `dtype=torch.float16` stores the
    float tensors at half size; integer tensors (BatchNorm step counters) keep their type.
    """
    if dtype not in _STORED_DTYPES:
        raise ValueError(f"dtype must be None, torch.float32 or torch.float16, got {dtype}")
    missing = [key for key in ("name", "version", "frontend") if key not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {', '.join(missing)}")
    problems = _layout_problems(tensors)
    if problems:
        raise WeightsError(f"{path}: not saving an incomplete model ({'; '.join(problems)})")
    stored_dtype = _STORED_DTYPES[dtype]
    document = {
        "description": "",
        "source": "",
        **metadata,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "descriptor_dim": DESCRIPTOR_DIM,
        "embedding_dim": head_width(tensors),
        "created": metadata.get("created") or _dt.date.today().isoformat(),
        "tensor_dtype": str(stored_dtype).removeprefix("torch."),
    }
    stored = {
        name: tensor.detach().to("cpu", stored_dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        for name, tensor in tensors.items()
    }
    data = safetensors.torch.save(stored, metadata={METADATA_KEY: json.dumps(document)})
    with atomic_output(Path(path)) as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def _read_document(data: bytes, path: Path) -> dict:
    """The ausil-search metadata of safetensors bytes; the header is a length-prefixed JSON object."""
    not_safetensors = WeightsError(f"{path}: not a safetensors model file")
    header_length = int.from_bytes(data[:8], "little")
    if len(data) < 8 or header_length > len(data) - 8:
        raise not_safetensors
    try:
        header = json.loads(data[8:8 + header_length])
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise not_safetensors from None
    packed = (header.get("__metadata__") or {}).get(METADATA_KEY) if isinstance(header, dict) else None
    if packed is None:
        raise WeightsError(f"{path}: a safetensors file without ausil-search metadata (not a model file)")
    try:
        document = json.loads(packed)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise WeightsError(f"{path}: metadata does not describe an {FORMAT} file")
    version = document.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise WeightsError(
            f"{path}: model file format version {version!r}; this ausil-search reads version {FORMAT_VERSION} "
            "(upgrade ausil-search for newer files)"
        )
    missing = [key for key in ("name", "version") if key not in document]
    if missing:
        raise WeightsError(f"{path}: model metadata lacks {', '.join(missing)}")
    return document


def load_model_file(path: str | Path) -> ModelFile:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: model file not found") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read model file ({exc.strerror})") from None
    metadata = _read_document(data, path)
    try:
        tensors = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise WeightsError(f"{path}: corrupt safetensors data ({str(exc).splitlines()[0]})") from None
    problems = _layout_problems(tensors)
    if problems:
        raise WeightsError(f"{path}: incomplete model file ({'; '.join(problems)})")
    tensors = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}
    return ModelFile(tensors=tensors, metadata=metadata, sha256=hashlib.sha256(data).hexdigest(), path=path)
