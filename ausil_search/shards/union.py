"""A sharded index seen as one index by the commands that match every video against all the others
(`dedup`): the shards' stores and recall indexes behind the interface those commands use, with ids
made global (`shard number × ID_STRIDE + the shard's id`).

Global ids are stable (a shard never reuses an id, and a video stays in the shard its path routes
to), so the pair scores and decisions `dedup` keeps in the sharded index's own directory stay valid
across runs. A video is recalled from every shard, each shard's answer mapped to global ids and
the best `k` kept: the same candidates one index of all the videos would recall, up to ties.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError
from ..search.stores import VideoRecord
from .sharded_index import ShardedIndex

ID_STRIDE = 1 << 24  # ids per shard; `dedup` packs two ids into one int64, so a global id stays below 2**31


def global_id(shard: int, video_id: int) -> int:
    if video_id >= ID_STRIDE:
        raise IndexStoreError(f"shard {shard} has ids beyond {ID_STRIDE}: too large to deduplicate across shards")
    return shard * ID_STRIDE + int(video_id)


def split_id(video: int) -> tuple[int, int]:
    """(shard, the shard's id) of a global id."""
    return divmod(int(video), ID_STRIDE)


class UnionStore:
    """The shards' segment stores as one read-only store with global ids."""

    def __init__(self, stores: dict[int, object]):
        self._stores = stores

    def _gather(self, ids: Sequence[int], read) -> list:
        """`read(store, local ids)` per shard, the values put back in the order of `ids`."""
        by_shard: dict[int, list[tuple[int, int]]] = defaultdict(list)  # shard -> (position, local id)
        for position, video in enumerate(ids):
            shard, local = split_id(video)
            by_shard[shard].append((position, local))
        out: list = [None] * len(ids)
        for shard, entries in by_shard.items():
            if shard not in self._stores:
                raise KeyError(int(ids[entries[0][0]]))
            for (position, _), value in zip(entries, read(self._stores[shard], [local for _, local in entries])):
                out[position] = value
        return out

    def segments_many(self, ids: Sequence[int]) -> list[np.ndarray]:
        return self._gather(ids, lambda store, local: store.segments_many(local))

    def globals(self, ids: Sequence[int]) -> np.ndarray:
        rows = self._gather(ids, lambda store, local: list(store.globals(local)))
        return np.stack(rows) if rows else np.empty((0, 0), np.float32)

    def iter_records(self) -> Iterator[VideoRecord]:
        for shard, store in self._stores.items():
            for record in store.iter_records():
                yield dataclasses.replace(record, id=global_id(shard, record.id))

    def record_for_path(self, path: str) -> VideoRecord | None:
        for shard, store in self._stores.items():
            record = store.record_for_path(path)
            if record is not None:
                return dataclasses.replace(record, id=global_id(shard, record.id))
        return None


class UnionRecall:
    """The shards' recall indexes as one: each answers with its own videos, the best `k` are kept."""

    def __init__(self, indexes: dict[int, object]):
        self._indexes = indexes

    def search_videos_many(self, queries: Sequence[np.ndarray], k: int, nprobe: int | None = None,
                           exclude: Sequence[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        merged: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in queries]
        for shard, index in self._indexes.items():
            own = None if exclude is None else [local if owner == shard else -1
                                                for owner, local in map(split_id, exclude)]
            for answers, (videos, scores) in zip(merged, index.search_videos_many(queries, k, nprobe, exclude=own)):
                answers.append((np.asarray(videos, np.int64) + shard * ID_STRIDE, np.asarray(scores, np.float32)))
        out = []
        for answers in merged:
            videos = np.concatenate([v for v, _ in answers]) if answers else np.empty(0, np.int64)
            scores = np.concatenate([s for _, s in answers]) if answers else np.empty(0, np.float32)
            best = np.argsort(-scores, kind="stable")[:k]
            out.append((videos[best], scores[best]))
        return out


class ShardUnion:
    """What `dedup` reads of an engine, over every shard of a sharded index (all must be open)."""

    def __init__(self, index: ShardedIndex):
        if len(index.engines) != index.layout.count:
            missing = sorted(set(range(index.layout.count)) - set(index.engines))
            raise IndexStoreError(f"dedup needs every shard of {index.index_dir}; shards {missing} cannot be opened")
        first = next(iter(index.engines.values()))
        self.index_dir: Path = Path(index.index_dir)
        self.model, self.device, self.layout = index.model, index.device, first.layout
        self.store = UnionStore({n: engine.store for n, engine in index.engines.items()})
        self.global_index = UnionRecall({n: engine.global_index for n, engine in index.engines.items()})
