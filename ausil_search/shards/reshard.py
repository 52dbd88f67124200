"""Copy an index (sharded or not) into a sharded index of another shard count, without re-extracting.

Stored segments and global descriptors are copied as they are, with each file's facts (size,
mtime, fingerprint, when it was indexed), so the copy answers exactly as the source and a later
`index` run sees every file as unchanged. Batches are committed as they fill: a killed run keeps
what it copied and a rerun copies only what is missing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import IndexStoreError
from ..progress import Progress, Stage, silent
from ..search.engine import COMMIT_EVERY_VIDEOS, SearchEngine
from ..search.stores import VideoFile, VideoRecord
from .layout import shard_of
from .sharded_index import ShardedIndex, open_index

READ_CHUNK = 64  # records whose segments are read from the source at a time


@dataclass
class ReshardReport:
    copied: int = 0
    unchanged: int = 0  # already in the destination with the same content (a resumed run)
    shards: int = 0
    videos_per_shard: list[int] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def reshard(source: Path, destination: Path, shards: int, progress: Progress = silent) -> ReshardReport:
    """Copy every video of `source` into the sharded index `destination` (created with `shards`).

    `progress` (:mod:`ausil_search.progress`) hears of one stage, `reshard`, counting the source's
    videos: each as it is committed to the destination, or found already there."""
    started = time.perf_counter()
    if Path(source).resolve() == Path(destination).resolve():
        raise IndexStoreError("reshard needs another destination directory than its source")
    report = ReshardReport(shards=shards)
    with open_index(source, writable=False, workers=0) as src:
        engines = _every_shard(src)
        with ShardedIndex(destination, src.model, writable=True, shards=shards, workers=0,
                          pooling=engines[0].pooling) as dst:
            for number, engine in dst.engines.items():
                if (engine.store.dtype, engine.pooling) != (engines[0].store.dtype, engines[0].pooling):
                    raise IndexStoreError(f"shard {number} of {destination} holds {engine.store.dtype} segments pooled "
                                          f"by {engine.pooling}, {source} {engines[0].store.dtype} by "
                                          f"{engines[0].pooling}: use a new destination")
            batches: dict[int, list] = {number: [] for number in dst.engines}
            stage = Stage(progress, "reshard", sum(len(engine.store) for engine in engines))
            for engine in engines:
                records = engine.records()
                for start in range(0, len(records), READ_CHUNK):
                    chunk = [r for r in records[start:start + READ_CHUNK] if not _copied(dst, r, report, stage)]
                    if not chunk:
                        continue
                    ids = [r.id for r in chunk]
                    for record, segments, pooled in zip(chunk, engine.store.segments_many(ids), engine.store.globals(ids)):
                        target = shard_of(record.path, shards)
                        batches[target].append((_file_facts(record), segments, pooled))
                        if len(batches[target]) >= COMMIT_EVERY_VIDEOS:
                            _commit(dst, target, batches, report, stage)
            for target in batches:
                _commit(dst, target, batches, report, stage)
    with ShardedIndex(destination, writable=True, workers=0) as dst:  # opening a writer saves each shard's FAISS file
        report.videos_per_shard = [len(engine.store) for engine in dst.engines.values()]
    report.seconds = time.perf_counter() - started
    return report


def _every_shard(index: SearchEngine | ShardedIndex) -> list[SearchEngine]:
    if isinstance(index, SearchEngine):
        return [index]
    if index.failed:
        raise IndexStoreError(f"{index.index_dir}: shards {sorted(index.failed)} cannot be opened; "
                              "a copy would lose their videos")
    return list(index.engines.values())


def _copied(dst: ShardedIndex, record: VideoRecord, report: ReshardReport, stage: Stage) -> bool:
    held = dst.engines[dst.layout.shard_for(record.path)].store.record_for_path(record.path)
    if held is not None and (held.fingerprint, held.size) == (record.fingerprint, record.size):
        report.unchanged += 1
        stage.advance(record.path)
        return True
    return False


def _file_facts(record: VideoRecord) -> VideoFile:
    return VideoFile(**{f.name: getattr(record, f.name) for f in fields(VideoFile)})


def _commit(dst: ShardedIndex, target: int, batches: dict[int, list], report: ReshardReport, stage: Stage) -> None:
    batch = batches[target]
    if batch:
        dst.engines[target].store.add_videos(batch)
        report.copied += len(batch)
        for facts, _, _ in batch:
            stage.advance(facts.path)
    batches[target] = []
