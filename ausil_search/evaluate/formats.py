"""The release's file formats: video lists, per-video feature files, similarity JSON.

Staying byte-compatible with them lets features and similarities move between this project and the
original AuSiL scripts (and the FIVR evaluation tools) without conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from ..atomic import atomic_output
from ..errors import AusilError
from ..features.feature_files import FEATURE_KEY, FEATURE_SUFFIXES, is_feature_file, load_feature_file  # noqa: F401
from ..media.sources import ListEntry, read_video_list  # noqa: F401  (the release's list format)

FEATURE_FILE_NAME = "wlaf.npz"


def read_ids(ids_path: Path) -> list[str]:
    """Dataset ids: the first token of each non-empty line (plain id files and video lists both work)."""
    ids_path = Path(ids_path)
    if not ids_path.is_file():
        raise AusilError(f"{ids_path}: ids file not found")
    return [line.split()[0] for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def feature_path(output_dir: Path, video_id: str) -> Path:
    return Path(output_dir) / video_id / FEATURE_FILE_NAME


def save_feature_file(path: Path, features: np.ndarray) -> None:
    """Write `features` as the release does (compressed npz), atomically so a crash leaves no half file."""
    with atomic_output(path) as handle:
        np.savez_compressed(handle, **{FEATURE_KEY: features.astype(np.float32, copy=False)})


class HDF5FeatureWriter:
    """One HDF5 file with a dataset per video id: the bulk exchange format for other tools."""

    def __init__(self, path: Path, attrs: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "a")
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._file

    def write(self, video_id: str, features: np.ndarray) -> None:
        if video_id in self._file:
            del self._file[video_id]
        self._file.create_dataset(video_id, data=features.astype(np.float32, copy=False), compression="gzip")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "HDF5FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_hdf5_features(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    with h5py.File(path, "r") as handle:
        for video_id in handle:
            yield video_id, np.asarray(handle[video_id], dtype=np.float32)


def load_json(path: Path, what: str) -> object:
    path = Path(path)
    if not path.is_file():
        raise AusilError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AusilError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_similarities(path: Path) -> dict[str, dict[str, float]]:
    data = load_json(path, "similarities")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise AusilError(f"{path}: expected {{query_id: {{db_id: similarity}}}}")
    return data  # type: ignore[return-value]


def chunked(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
