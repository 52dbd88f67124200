"""Backbone descriptors of training media, through the frozen backbone, cached in HDF5.

The cache is keyed by what produced a descriptor (backbone tensors and front-end), so reruns and
resumed runs skip extraction, and a changed backbone never reads stale descriptors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import AusilError
from ..features.backbone import SegmentEncoder, WeakMxH64
from ..features.extraction import path_descriptors, signal_descriptors
from ..features.feature_files import stored_descriptors
from ..features.spectrogram import FrontEnd
from ..media.scan import fingerprint
from .reports import ExtractionStats


def backbone_fingerprint(backbone: WeakMxH64, frontend: FrontEnd) -> str:
    """What determines a descriptor besides the audio: backbone tensors and front-end parameters."""
    digest = hashlib.sha256(json.dumps(frontend.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class DescriptorCache:
    """An HDF5 file of descriptor matrices, one group per backbone fingerprint, one dataset per key.

    Every write is flushed, so an interrupted run keeps what it extracted. `path=None` is an
    in-memory cache (nothing persists).
    """

    def __init__(self, path: Path | None, backbone_id: str):
        self.path = Path(path) if path else None
        self.backbone_id = backbone_id
        self._memory: dict[str, np.ndarray] = {}
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file = h5py.File(self.path, "a")
            except OSError as exc:
                raise AusilError(f"{self.path}: cannot open the descriptor cache ({exc}); delete it to start afresh") from None

    def _name(self, key: str) -> str:
        return f"{self.backbone_id}/{hashlib.sha1(key.encode()).hexdigest()}"

    def get(self, key: str) -> np.ndarray | None:
        if self._file is None:
            return self._memory.get(key)
        name = self._name(key)
        if name not in self._file:
            return None
        stored = self._file[name][()]
        return stored if stored.dtype == np.float64 else stored.astype(np.float32)

    def put(self, key: str, descriptors: np.ndarray, **attrs: object) -> None:
        if self._file is None:
            self._memory[key] = descriptors
            return
        name = self._name(key)
        if name in self._file:
            del self._file[name]
        # float64 stays float64 (exact bookkeeping numbers); descriptors are stored as float32
        data = descriptors if descriptors.dtype == np.float64 else np.asarray(descriptors, np.float32)
        dataset = self._file.create_dataset(name, data=data)
        dataset.attrs["key"] = key
        for attr, value in attrs.items():
            dataset.attrs[attr] = json.dumps(value, default=str)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DescriptorCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DescriptorSource:
    """Descriptors of training media through the frozen backbone, cached: whole files (or their first
    seconds) through :func:`~ausil_search.features.extraction.path_descriptors`, the pipeline index and
    query use, in-memory signals (augmented excerpts) through
    :func:`~ausil_search.features.extraction.signal_descriptors`; feature files as stored (not cached)."""

    def __init__(
        self,
        backbone: WeakMxH64,
        frontend: FrontEnd,
        cache: DescriptorCache,
        device: str | torch.device | None = None,
        precision: str = "fused",
        batch_size: int = 16,
    ):
        self.frontend = frontend
        self.cache = cache
        self.encoder = SegmentEncoder(backbone, device=device, batch_size=batch_size, precision=precision)
        self.segments = 0
        self.seconds = 0.0  # time spent extracting (decode, augment, log-mel, backbone)
        self.cache_hits = 0

    def _cached(self, key: str, compute: Callable[[], tuple[np.ndarray, dict]]) -> np.ndarray:
        cached = self.cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        started = time.perf_counter()
        descriptors, attrs = compute()
        self.cache.put(key, descriptors, **attrs)
        self.segments += len(descriptors)
        self.seconds += time.perf_counter() - started
        return descriptors

    def of_signal(self, key: str, make_signal: Callable[[], tuple[np.ndarray, dict]]) -> np.ndarray:
        """Descriptors for `key`; on a miss `make_signal()` gives (samples at the front-end rate, attrs)."""

        def compute() -> tuple[np.ndarray, dict]:
            samples, attrs = make_signal()
            return signal_descriptors(samples, self.encoder, self.frontend), attrs

        return self._cached(key, compute)

    def of_file(self, path: Path, max_seconds: float | None = None) -> np.ndarray:
        """A whole media file (or its first `max_seconds`), or a feature file (`.npz`/`.npy`) as stored."""
        path = Path(path)
        stored = stored_descriptors(path)
        if stored is not None:
            return stored
        return self._cached(f"file:{fingerprint(path)}:{max_seconds}", lambda: (
            path_descriptors(path, self.encoder, self.frontend, max_seconds or None).descriptors, {"path": str(path)}))

    @property
    def segments_per_second(self) -> float:
        return self.segments / self.seconds if self.seconds else 0.0

    def stats(self) -> ExtractionStats:
        return ExtractionStats(segments_extracted=self.segments, seconds=round(self.seconds, 2),
                               segments_per_s=round(self.segments_per_second, 1), cache_hits=self.cache_hits)
