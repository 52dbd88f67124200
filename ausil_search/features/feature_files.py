"""The release's per-video feature files: segment descriptors stored by `extract` (`.npz` with the key
`features`, or a plain `.npy`), read back as they are instead of being computed from media."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

FEATURE_KEY = "features"
FEATURE_SUFFIXES = (".npz", ".npy")


def is_feature_file(path: Path) -> bool:
    return Path(path).suffix.lower() in FEATURE_SUFFIXES


def stored_descriptors(path: Path) -> np.ndarray | None:
    """A feature file's descriptors as stored, or None when `path` is media (to be computed): the one
    place that tells the two apart (InputError for a feature file that cannot be read)."""
    return load_feature_file(path) if is_feature_file(path) else None


def load_feature_file(path: Path) -> np.ndarray:
    """Segment descriptors (N × D float32) from a release `.npz` (key `features`) or a `.npy`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature file not found")
    try:
        if path.suffix.lower() == ".npy":
            features = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                if FEATURE_KEY not in data:
                    raise InputError(f"{path}: no '{FEATURE_KEY}' array in the file")
                features = data[FEATURE_KEY]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable feature file ({exc})") from None
    if features.ndim != 2 or features.shape[0] == 0:
        raise InputError(f"{path}: expected a non-empty N × D matrix, got shape {features.shape}")
    return features.astype(np.float32, copy=False)
