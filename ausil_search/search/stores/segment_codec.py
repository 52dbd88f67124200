"""The stored form of a video's embedded segments, and its conversion to and from float32.

`int8` (the default of new stores) keeps each segment as int8 codes with one float32 scale per
segment (symmetric, max-abs: ``x ≈ code · scale``, ``scale = max|x| / 127``): a quarter of float32,
and the rerank's scores move by far less than the differences between candidates (BENCHMARKS.md).
`float16` and `float32` store the values as they are. One record is one buffer: for int8 the N
scales come first, then the N×D codes, so that its length alone gives N.

`SegmentPacker` fills a record chunk by chunk, so that a long file's segments are never held as a
float matrix: the indexer packs each embedded chunk as it comes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEGMENT_DTYPES = ("int8", "float16", "float32")
INT8_MAX = 127
_SCALE_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True)
class PackedSegments:
    """A video's segments already in a store's record form (what `SegmentStore.add_videos` writes as is)."""

    payload: np.ndarray  # 1-D uint8, the record's bytes
    n_segments: int
    dim: int
    dtype: str


def record_bytes(dtype: str, n_segments: int, dim: int) -> int:
    """Length of the record of `n_segments` segments of width `dim`."""
    if dtype == "int8":
        return n_segments * (_SCALE_DTYPE.itemsize + dim)
    return n_segments * dim * np.dtype(dtype).itemsize


class SegmentPacker:
    """Builds one record of `n_segments` rows of width `dim`, filled in order by `add`."""

    def __init__(self, dtype: str, n_segments: int, dim: int) -> None:
        if dtype not in SEGMENT_DTYPES:
            raise ValueError(f"segment dtype must be one of {SEGMENT_DTYPES}, not {dtype!r}")
        self.dtype, self.n_segments, self.dim = dtype, n_segments, dim
        self._payload = np.empty(record_bytes(dtype, n_segments, dim), np.uint8)
        if dtype == "int8":
            split = n_segments * _SCALE_DTYPE.itemsize
            self._scales = self._payload[:split].view(_SCALE_DTYPE)
            self._values = self._payload[split:].view(np.int8).reshape(n_segments, dim)
        else:
            self._values = self._payload.view(dtype).reshape(n_segments, dim)
        self._filled = 0

    def add(self, rows: np.ndarray) -> None:
        """Append (n, dim) float rows; refuses non-finite values (and float16 overflow)."""
        rows = np.asarray(rows)
        end = self._filled + len(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim or end > self.n_segments:
            raise ValueError(f"segments must have shape (n, {self.dim}) and fit the {self.n_segments} rows, "
                             f"not {rows.shape} after {self._filled}")
        if not np.isfinite(rows).all():
            raise ValueError("segments are not finite")
        target = self._values[self._filled:end]
        if self.dtype == "int8":
            scales = np.abs(rows).max(axis=1).astype(np.float32) / INT8_MAX
            safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
            target[:] = np.clip(np.rint(rows / safe[:, None]), -INT8_MAX, INT8_MAX)
            self._scales[self._filled:end] = scales
        else:
            with np.errstate(over="ignore"):  # overflow becomes inf, refused below
                target[:] = rows
            if not np.isfinite(target).all():
                raise ValueError(f"segments overflow {self.dtype}")
        self._filled = end

    def packed(self) -> PackedSegments:
        if self._filled != self.n_segments:
            raise ValueError(f"only {self._filled} of {self.n_segments} segments were added")
        return PackedSegments(self._payload, self.n_segments, self.dim, self.dtype)


def pack(matrix: np.ndarray, dtype: str) -> PackedSegments:
    """A whole (N, D) matrix in record form."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"segments must be an (N, D) matrix, not of shape {matrix.shape}")
    packer = SegmentPacker(dtype, matrix.shape[0], matrix.shape[1])
    packer.add(matrix)
    return packer.packed()


def unpack(record: bytes | memoryview, dtype: str, dim: int) -> np.ndarray:
    """The (N, dim) float32 segments of a record."""
    if dtype == "int8":
        n_segments = len(record) // (_SCALE_DTYPE.itemsize + dim)
        scales = np.frombuffer(record, _SCALE_DTYPE, count=n_segments)
        codes = np.frombuffer(record, np.int8, offset=n_segments * _SCALE_DTYPE.itemsize).reshape(n_segments, dim)
        return codes.astype(np.float32) * scales[:, None]
    return np.frombuffer(record, dtype).reshape(-1, dim).astype(np.float32)

