"""The official AuSiL weights: download them verified, and convert them into one model file.

The release stores them as plain git blobs at a fixed commit, so each file is checked against its
git blob id (the SHA-1 git itself uses) both after a download and when found in the cache.
The backbone is a PyTorch state dict; the head a TensorFlow 1 checkpoint, read by `tf_bundle`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ausil_search.features.backbone import DESCRIPTOR_DIM, strip_module_prefix
from ausil_search.errors import WeightsError

from .model_file import BACKBONE_PREFIX, BACKBONE_SIGNATURE, atomic_output
from .tf_bundle import read_bundle

RELEASE_REPO = "mever-team/ausil"
RELEASE_COMMIT = "51dc3b87bc412cd231aa7fc40703b8f4f582d2ec"
BASE_URL = f"https://raw.githubusercontent.com/{RELEASE_REPO}/{RELEASE_COMMIT}/"
# Kumar et al.'s own repository holds the same `.pkl` blob at its root (its extractor loads it from there).
BACKBONE_MIRROR_URL = "https://raw.githubusercontent.com/anuragkr90/weak_feature_extractor/master/mx-h64-1024_0d3-1.17.pkl"
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class OfficialFile:
    """One release file: where it is in the release repository, where it goes locally, its blob id."""

    key: str
    release_path: str
    local_path: str  # relative to the download directory
    git_blob_sha1: str
    size: int | None = None  # bytes, where known; shown as the progress total if the server sends none
    mirrors: tuple[str, ...] = ()


OFFICIAL_FILES: tuple[OfficialFile, ...] = (
    OfficialFile(
        "cnn", "feature_extraction/mx-h64-1024_0d3-1.17.pkl", "mx-h64-1024_0d3-1.17.pkl",
        "18f7764281ba48a5f0d5eff8dfd3792f44911839", mirrors=(BACKBONE_MIRROR_URL,),
    ),
    OfficialFile("tf_index", "ckpt/model.index", "ckpt/model.index", "a42726a9cf5c2daa5fa9e2e4ce971ab1208ab355", size=1317),
    OfficialFile(
        "tf_data", "ckpt/model.data-00000-of-00001", "ckpt/model.data-00000-of-00001",
        "d7abe97198b8bc17a5f821d63a268a27c6ee719a", size=26_717_212,
    ),
)

OFFICIAL_METADATA: dict = {
    "name": "ausil-official",
    "version": "2020.icpr",
    "description": (
        "AuSiL as released with the ICPR 2020 paper: the weak_mxh64_1024 backbone (Kumar et al., "
        "ICASSP 2018) and the AuSiL whitening, attention and comparator from the release checkpoint."
    ),
    "frontend": {
        "sample_rate": 44100, "n_fft": 1024, "hop_length": 512, "n_mels": 128, "top_db": 80.0,
        "step_frames": 87, "window_frames": 174, "pad_value": 0.0,
    },
    "source": {
        "repository": f"https://github.com/{RELEASE_REPO}",
        "commit": RELEASE_COMMIT,
        "files": {
            file.release_path: {"url": BASE_URL + file.release_path, "git_blob_sha1": file.git_blob_sha1}
            for file in OFFICIAL_FILES
        },
    },
}

DIM = DESCRIPTOR_DIM  # keeps the table below readable
# Release checkpoint variable -> (model file tensor, expected shape in the checkpoint).
_HEAD_VARIABLES: dict[str, tuple[str, tuple[int, ...]]] = {
    "PCA/mean_sift": ("head.pca_mean", (DIM,)),
    "PCA/weights": ("head.pca_weights", (DIM, DIM)),
    "attention_layer/context_vector": ("head.context", (DIM, 1)),
    "video_comparator/conv2d/kernel": ("head.comparator.conv1.weight", (3, 3, 1, 32)),
    "video_comparator/conv2d/bias": ("head.comparator.conv1.bias", (32,)),
    "video_comparator/conv2d_1/kernel": ("head.comparator.conv2.weight", (3, 3, 32, 64)),
    "video_comparator/conv2d_1/bias": ("head.comparator.conv2.bias", (64,)),
    "video_comparator/conv2d_2/kernel": ("head.comparator.conv3.weight", (3, 3, 64, 128)),
    "video_comparator/conv2d_2/bias": ("head.comparator.conv3.bias", (128,)),
    "video_comparator/conv2d_3/kernel": ("head.comparator.fconv.weight", (1, 1, 128, 1)),
    "video_comparator/conv2d_3/bias": ("head.comparator.fconv.bias", (1,)),
}
_HASH_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where ausil-search keeps downloaded and converted weights: `$AUSIL_SEARCH_HOME` or ~/.cache/ausil-search."""
    return Path(os.environ.get("AUSIL_SEARCH_HOME") or Path.home() / ".cache" / "ausil-search")


def git_blob_sha1(path: str | Path) -> str:
    """The id git gives the file's content: SHA-1 of `blob <size>\\0` followed by the bytes."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _ChecksumMismatch(Exception):
    pass


def _fetch(url: str, target: Path, file: OfficialFile, progress: bool) -> None:
    """Download `url` to `target`, which only appears if the content has the file's blob id."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        with atomic_output(target) as handle, tqdm(
            total=int(length) if length else file.size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=target.name, disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(_HASH_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
            handle.flush()
            actual = git_blob_sha1(handle.name)
            if actual != file.git_blob_sha1:
                raise _ChecksumMismatch(f"content has git blob id {actual}, expected {file.git_blob_sha1}")


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def download_official(
    dest: str | Path | None = None,
    progress: bool = True,
    *,
    base_url: str | None = None,
    files: Sequence[OfficialFile] = OFFICIAL_FILES,
) -> dict[str, Path]:
    """Fetch the release files into `dest` (default `cache_dir()`), verified by git blob id.

    Files already there with the right blob id are kept; wrong ones are downloaded again. Returns
    local paths: `cnn` (the backbone `.pkl`), `tf_index`, `tf_data`, and `tf_ckpt`, the checkpoint
    folder that `convert_official` takes.
    """
    dest = Path(dest) if dest is not None else cache_dir()
    base_url = base_url or BASE_URL
    paths, failures = {}, []
    for file in files:
        target = dest / file.local_path
        paths[file.key] = target
        if target.is_file() and git_blob_sha1(target) == file.git_blob_sha1:
            continue
        urls = [base_url + file.release_path, *file.mirrors]
        reasons = []
        for url in urls:
            try:
                _fetch(url, target, file, progress)
                break
            except (OSError, http.client.HTTPException, _ChecksumMismatch) as exc:  # URLError is an OSError
                reasons.append(f"{url}: {_failure_reason(exc)}")
        else:
            failures.append((file, urls[0], reasons))
    paths["tf_ckpt"] = paths["tf_index"].parent
    if failures:
        wanted = ", ".join(f"{url} -> {dest / file.local_path}" for file, url, _ in failures)
        raise WeightsError(
            f"could not download the official weights ({failures[0][2][0]}); fetch by hand: {wanted}; "
            "or convert copies you already have with `ausil-search weights convert`"
        )
    return paths


def _torch_load_failure(exc: Exception) -> str:
    """One line on why torch.load failed; its weights-only refusals put the cause after a long preamble."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_backbone_pkl(path: str | Path) -> dict[str, torch.Tensor]:
    """The official backbone state dict, `module.` prefixes (from nn.DataParallel) removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: backbone weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, EOF, weights-only refusals)
        raise WeightsError(f"{path}: not a PyTorch state dict ({_torch_load_failure(exc)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"{path}: not a PyTorch state dict of tensors")
    state = strip_module_prefix(state)
    # Checkpoints from before PyTorch 0.4.1 have no BatchNorm step counters; inference never reads them.
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0, dtype=torch.long))
    for name, shape in BACKBONE_SIGNATURE.items():
        if name not in state or tuple(state[name].shape) != shape:
            found = tuple(state[name].shape) if name in state else "missing"
            raise WeightsError(f"{path}: not the weak_mxh64_1024 backbone ({name} expected {shape}, found {found})")
    return state


def convert_official(cnn_pkl: str | Path, tf_ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Model-file tensors from the release: backbone from the `.pkl`, head from the checkpoint.

    Keras stores conv kernels HWIO, PyTorch wants OIHW; the context vector loses its unit column.
    Adam slots and step counters are training state and are left behind.
    """
    tensors = {BACKBONE_PREFIX + name: value for name, value in load_backbone_pkl(cnn_pkl).items()}
    variables = read_bundle(tf_ckpt, names=list(_HEAD_VARIABLES))
    for variable, (name, shape) in _HEAD_VARIABLES.items():
        value = variables[variable]
        if value.shape != shape or value.dtype != np.float32:
            raise WeightsError(f"{tf_ckpt}: {variable} is {value.dtype} {value.shape}, expected float32 {shape}")
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif name == "head.context":
            value = value[:, 0]
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors
