"""Triplet pools: videos as descriptor matrices, (anchor, positive) pairs, and each pair's negatives.

From self-supervised examples or a release-style annotation; split for validation by group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import AusilError
from .examples import Example


@dataclass
class TripletPool:
    """Videos as descriptor matrices, (anchor, positive) pairs, and the allowed negatives of each pair.

    The anchor plays the query side of Chamfer similarity, positive and negatives the database side.
    """

    videos: list[np.ndarray]
    names: list[str]
    pairs: np.ndarray  # (P, 2) int: anchor video, positive video
    negatives: list[np.ndarray]  # per pair: indices of videos allowed as negatives
    same_group: list[np.ndarray] = field(default_factory=list)  # per pair: bool mask over `negatives`

    def __post_init__(self) -> None:
        if not self.same_group:
            self.same_group = [np.zeros(len(n), bool) for n in self.negatives]

    def __len__(self) -> int:
        return len(self.pairs)

    def fingerprint(self) -> str:
        digest = hashlib.sha1()
        for name, video in zip(self.names, self.videos):
            digest.update(f"{name}:{video.shape}".encode())
        digest.update(self.pairs.tobytes())
        return digest.hexdigest()[:16]

    def stats(self) -> dict:
        return {
            "videos": len(self.videos),
            "segments": int(sum(len(v) for v in self.videos)),
            "pairs": len(self.pairs),
            "mean_negatives": float(np.mean([len(n) for n in self.negatives])) if self.negatives else 0.0,
        }


def examples_pool(examples: Sequence[Example]) -> TripletPool:
    """Anchor = augmented query, positive = its clean window; negatives = every window of another
    recording and every window of the same recording that does not overlap the query's source span."""
    videos, names, pairs, groups, spans = [], [], [], [], []
    for number, example in enumerate(examples):
        videos += [example.query, example.database]
        names += [f"{example.group}:{number}:query", f"{example.group}:{number}:database"]
        pairs.append((2 * number, 2 * number + 1))
        groups.append(example.group)
        spans.append(example.database_span)
    groups_arr = np.array(groups)
    starts, ends = np.array([s[0] for s in spans]), np.array([s[1] for s in spans])
    negatives, same = [], []
    for example in examples:
        q0, q1 = example.query_span
        same_group = groups_arr == example.group
        allowed = ~same_group | (ends <= q0) | (starts >= q1)
        windows = np.flatnonzero(allowed)
        negatives.append(2 * windows + 1)
        same.append(same_group[windows])
    return TripletPool(videos, names, np.array(pairs, dtype=np.int64).reshape(-1, 2), negatives, same)


def annotation_pool(
    annotation: dict,
    descriptors: dict[str, np.ndarray],
    relevant_labels: Sequence[str] = ("DA",),
) -> TripletPool:
    """Pairs (query, relevant video) from a release-style annotation ``{query: {label: [ids]}}``.

    Negatives of a query are the videos it does not label at all (a video under another label,
    e.g. a visual near-duplicate, is neither positive nor negative).
    """
    ids = sorted(descriptors)
    index = {video_id: number for number, video_id in enumerate(ids)}
    pairs, negatives = [], []
    for query, labels in annotation.items():
        if query not in index or not isinstance(labels, dict):
            continue
        labelled = {index[v] for values in labels.values() for v in values if v in index} | {index[query]}
        allowed = np.setdiff1d(np.arange(len(ids)), sorted(labelled))
        for label in relevant_labels:
            for video in labels.get(label, []):
                if video in index and video != query:
                    pairs.append((index[query], index[video]))
                    negatives.append(allowed)
    if not pairs:
        raise AusilError("the annotation gives no (query, relevant video) pair whose videos both have descriptors")
    return TripletPool([descriptors[i] for i in ids], ids, np.array(pairs, dtype=np.int64), negatives)


def split_pool(pool: TripletPool, val_pairs: np.ndarray) -> tuple[TripletPool, TripletPool]:
    """Train and validation pools by pair; no video of one side serves as a negative on the other."""
    mask = np.zeros(len(pool), bool)
    mask[val_pairs] = True
    train_idx, val_idx = np.flatnonzero(~mask), np.flatnonzero(mask)

    def take(selected: np.ndarray, forbidden: np.ndarray) -> TripletPool:
        negatives, same = [], []
        for i in selected:
            keep = ~np.isin(pool.negatives[i], forbidden)
            negatives.append(pool.negatives[i][keep])
            same.append(pool.same_group[i][keep])
        return TripletPool(pool.videos, pool.names, pool.pairs[selected], negatives, same)

    train_videos, val_videos = np.unique(pool.pairs[train_idx]), np.unique(pool.pairs[val_idx])
    return take(train_idx, val_videos), take(val_idx, train_videos)


def merge_pools(first: TripletPool, second: TripletPool) -> TripletPool:
    """Both pools' pairs over one video list; negatives stay within their own pool."""
    offset = len(first.videos)
    return TripletPool(
        first.videos + second.videos,
        first.names + second.names,
        np.concatenate([first.pairs, second.pairs + offset]),
        first.negatives + [n + offset for n in second.negatives],
        first.same_group + second.same_group,
    )


def validation_pairs(groups: Sequence[str], fraction: float) -> np.ndarray:
    """Indices of pairs held out: whole groups (recordings, or queries), chosen by a hash of their name."""
    if fraction <= 0:
        return np.zeros(0, np.int64)
    unique = sorted(set(groups), key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    count = min(max(2, round(fraction * len(unique))), len(unique) - 2)
    if count < 2:
        raise AusilError(f"a validation split needs at least 4 recordings or queries, got {len(unique)}")
    held_out = set(unique[:count])
    return np.array([i for i, g in enumerate(groups) if g in held_out], np.int64)
