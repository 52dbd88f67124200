"""Recall windows: the global descriptors FAISS holds, one per window of a video's segments.

One descriptor pooled over a whole video dilutes a short clip inside a long video, so a long
video is described by overlapping windows of its embedded segments (a short one keeps one window
over everything). Windows are computed from the stored segments, so the FAISS index stays derived
data: it can always be rebuilt from the segment store.

A window's FAISS id carries its video: `video_id << WINDOW_BITS | window number`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

WINDOW_BITS = 20  # windows per video < 2**20 (at a 15-s hop, over 4,000 hours of audio)
Pooling = Literal["mean", "max"]


@dataclass(frozen=True)
class WindowLayout:
    """Windows of `size` segments every `hop` segments; videos of at most `size` segments get one."""

    size: int
    hop: int
    pooling: Pooling = "mean"

    def __post_init__(self) -> None:
        if self.size < 1 or not 1 <= self.hop <= self.size:
            raise ValueError(f"need 1 <= hop <= size, got size {self.size}, hop {self.hop}")
        if self.pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be 'mean' or 'max', not {self.pooling!r}")

    @classmethod
    def from_seconds(cls, window_s: float, hop_s: float, segment_step_s: float, pooling: Pooling) -> WindowLayout:
        """The layout closest to windows of `window_s` every `hop_s` for segments `segment_step_s` apart."""
        size = max(1, round(window_s / segment_step_s))
        return cls(size=size, hop=min(size, max(1, round(hop_s / segment_step_s))), pooling=pooling)

    def starts(self, n_segments: int) -> np.ndarray:
        """First segment of each window: every `hop`, plus one flush with the end so the tail is covered."""
        if n_segments <= self.size:
            return np.zeros(1, dtype=np.int64)
        last = n_segments - self.size
        starts = np.arange(0, last + 1, self.hop, dtype=np.int64)
        return starts if starts[-1] == last else np.append(starts, last)

    def count(self, n_segments: int) -> int:
        return len(self.starts(n_segments))

    def pool(self, segments: np.ndarray) -> np.ndarray:
        """(W, D) float32 L2-normalised window descriptors of an (N, D) segment matrix."""
        segments = np.asarray(segments, dtype=np.float32)
        if segments.ndim != 2 or len(segments) == 0:
            raise ValueError(f"need a non-empty (N, D) segment matrix, got shape {segments.shape}")
        starts = self.starts(len(segments))
        if self.count(len(segments)) > 1 << WINDOW_BITS:
            raise ValueError(f"{len(starts)} windows exceed the {1 << WINDOW_BITS} a video may have")
        # Window by window: a cumulative sum of a long video would hold several copies of its segments.
        ends = np.minimum(starts + self.size, len(segments))
        pooled = np.empty((len(starts), segments.shape[1]), dtype=np.float32)
        for row, (start, end) in enumerate(zip(starts, ends)):
            window = segments[start:end]
            pooled[row] = window.mean(0, dtype=np.float64) if self.pooling == "mean" else window.max(0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        np.divide(pooled, norms, out=pooled, where=norms > 0)
        return pooled

    def describe(self) -> dict:
        return {"window_segments": self.size, "hop_segments": self.hop, "pooling": self.pooling}


def window_ids(video_id: int, count: int) -> np.ndarray:
    """FAISS ids of a video's `count` windows."""
    return (np.int64(video_id) << WINDOW_BITS) | np.arange(count, dtype=np.int64)


def video_of(ids: np.ndarray) -> np.ndarray:
    """The video id of each window id (negative ids, FAISS's 'no result', stay negative)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids >= 0, ids >> WINDOW_BITS, -1)


def best_per_video(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best distinct videos among window hits (any shape): each video scored by its best
    window, best first. Returns (video ids int64, scores float32)."""
    videos, scores = video_of(ids).reshape(-1), np.asarray(scores, np.float32).reshape(-1)
    keep = videos >= 0
    videos, scores = videos[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    videos, scores = videos[order], scores[order]
    _, first = np.unique(videos, return_index=True)  # the first hit of a video is its best
    first = np.sort(first)[:k]
    return videos[first], scores[first]
