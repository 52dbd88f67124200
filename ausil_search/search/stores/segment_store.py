"""The segment store: the source of truth of an index, one LMDB environment.

Per video it holds the file facts (to tell later whether the file changed), the AuSiL segment
matrix (what reranking reads) and the global descriptor (what the FAISS index is built from, so
the FAISS file can always be rebuilt from here).

Named sub-databases, all keyed by the video id as 8 big-endian bytes (so key order is id order):
  videos    id -> metadata JSON (path, size, mtime_ns, fingerprint, duration_s, n_segments, extra)
  segments  id -> segment matrix in the store's record form (`segment_codec`: int8 codes with a scale
            per segment, or float16/float32 values; the width is the store's `segment_dim`)
  globals   id -> global descriptor, raw float32 bytes
  paths     blake2b-128(path bytes) -> id (LMDB keys are limited to 511 bytes, paths are not)
  meta      format version, next id, dtype, dimensions, running totals

Ids are never reused. Re-adding a path that is already stored removes the old record and gives
the new one a fresh id: an id therefore names one exact content, so a FAISS file whose id set
equals the store's is in sync with it (see `GlobalIndex.load_or_rebuild`).

Every batch is one write transaction: after a crash (kill -9, power loss, full disk) the store
holds exactly the batches that committed. Readers never block the writer (LMDB MVCC); writers
exclude each other with a `WriterLock` taken when the store is opened for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import lmdb
import numpy as np

from ausil_search.atomic import atomic_path, write_failure_reason
from ausil_search.errors import IndexStoreError
from ausil_search.search.stores.lock import MapGuard, WriterLock
from ausil_search.search.stores.segment_codec import SEGMENT_DTYPES, PackedSegments, pack, unpack

# 2: int8 segments by default (version 1 stores hold float16 or float32 and are rebuilt, not read).
FORMAT_VERSION = 2
DEFAULT_SEGMENT_DTYPE = "int8"
DEFAULT_MAP_SIZE = 1 << 30  # grows by doubling; the file is sparse, only written pages use disk
HDF5_FORMAT = "ausil-search-segments"

_DB_NAMES = ("videos", "segments", "globals", "paths", "meta")
_ITER_CHUNK = 1024  # records per read transaction while iterating
_ATTRIBUTE_PREFIX = b"attr:"  # meta keys of `get_attribute` values, apart from the store's own
# LMDB meta page layout (64-bit builds): a 16-byte page header, then magic, version, address,
# map size, the free DB (whose first field holds the page size), the main DB, last page, txn id.
_LMDB_MAGIC = 0xBEEFC0DE
_META_MAGIC_AT, _META_PAGE_SIZE_AT, _META_LAST_PAGE_AT, _META_TXNID_AT, _META_END = 16, 40, 136, 144, 152


class StoreFormatError(IndexStoreError):
    """The store was written in another format version (`version`)."""

    def __init__(self, message: str, version: object) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True, kw_only=True)
class VideoFile:
    """A source file as the indexer saw it; size, mtime and fingerprint tell later whether it changed."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class VideoRecord(VideoFile):
    """A stored video: the file facts plus what the store assigned and measured."""

    id: int
    n_segments: int


@dataclass(frozen=True)
class AddResult:
    """`ids[i]` is the new id of the i-th added item; `replaced` lists the ids of records that were
    dropped because their path was added again (remove those from the FAISS index)."""

    ids: list[int]
    replaced: list[int]


@dataclass(frozen=True)
class StoreStats:
    videos: int
    total_duration_s: float
    total_segments: int
    disk_bytes: int  # blocks actually allocated (data.mdb is sparse)
    map_size_bytes: int


def _check_not_truncated(data_file: Path) -> None:
    """Refuse a `data.mdb` shorter than its last committed page reaches.

    LMDB memory-maps the file and reads pages in place, so a page past the end of a truncated file
    is a SIGBUS that kills the process before any error can be shown. The two meta pages (the
    newer by transaction id is current) give the page size and the last used page number.
    """
    if struct.calcsize("P") != 8:
        return  # the offsets below are those of 64-bit builds
    try:
        size = data_file.stat().st_size
        with open(data_file, "rb") as handle:
            first = handle.read(_META_END)
            if len(first) < _META_END or struct.unpack_from("<I", first, _META_MAGIC_AT)[0] != _LMDB_MAGIC:
                return  # not an LMDB file at all: LMDB itself says so, without mapping anything
            page_size = struct.unpack_from("<I", first, _META_PAGE_SIZE_AT)[0]
            handle.seek(page_size)
            second = handle.read(_META_END)
    except FileNotFoundError:
        return
    except OSError as error:
        raise IndexStoreError(f"cannot read segment store {data_file.parent}: {error.strerror}") from None
    metas = [
        meta
        for meta in (first, second)
        if len(meta) == _META_END and struct.unpack_from("<I", meta, _META_MAGIC_AT)[0] == _LMDB_MAGIC
    ]
    current = max(metas, key=lambda meta: struct.unpack_from("<Q", meta, _META_TXNID_AT)[0])
    needed = (struct.unpack_from("<Q", current, _META_LAST_PAGE_AT)[0] + 1) * page_size
    if size < needed or len(second) < _META_END:
        raise IndexStoreError(
            f"segment store {data_file.parent} is damaged: data.mdb holds {size} bytes but its last "
            f"committed page ends at byte {needed} (truncated copy?); restore it or rebuild the index"
        )


def _id_key(video_id: int) -> bytes:
    return int(video_id).to_bytes(8, "big")


def _path_key(path: str) -> bytes:
    return hashlib.blake2b(os.fsencode(path), digest_size=16).digest()


def _duration_us(duration_s: float) -> int:
    """Totals are kept in integer microseconds so that adding and removing a record cancel exactly."""
    return round(duration_s * 1e6)


class SegmentStore:
    """LMDB store of per-video segment matrices, global descriptors and file facts.

    `dtype` applies when the store is created (int8 with a scale per segment by default, see
    `segment_codec`); an existing store keeps its own, and asking for another one is an error.
    Opening for writing takes the writer lock for the lifetime of the object. Open a given store at
    most once per process (an LMDB rule). `any_version` opens a store of another format version
    (to read its records and rebuild it); otherwise that is a `StoreFormatError`.
    """

    def __init__(
        self,
        path: Path,
        readonly: bool = False,
        dtype: str | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        any_version: bool = False,
    ) -> None:
        self.path = Path(path)
        self._any_version = any_version
        self.readonly = readonly
        self._lock: WriterLock | None = None
        self._map_guard = MapGuard()
        if dtype is not None and dtype not in SEGMENT_DTYPES:
            raise ValueError(f"segment dtype must be one of {SEGMENT_DTYPES}, not {dtype!r}")
        if readonly:
            if not (self.path / "data.mdb").is_file():
                raise IndexStoreError(f"no segment store at {self.path}")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.path)
            self._lock.acquire()
        _check_not_truncated(self.path / "data.mdb")
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(_DB_NAMES),
                readonly=readonly,
                readahead=False,
                meminit=False,
            )
            self._dbs = self._open_dbs()
            self._meta = self._read_meta()
            self._check_format(dtype)
        except lmdb.Error as error:
            self.close()
            raise IndexStoreError(f"cannot open segment store {self.path}: {error}") from None
        except BaseException:
            self.close()
            raise
        self.dtype = np.dtype(self._meta["segment_dtype"])
        self.format_version = self._meta["format_version"]

    # ---------------------------------------------------------------- lifecycle

    def _open_dbs(self) -> dict[str, Any]:
        if self.readonly:
            try:
                return {name: self._env.open_db(name.encode(), create=False) for name in _DB_NAMES}
            except lmdb.NotFoundError:
                raise IndexStoreError(f"{self.path} is not a segment store") from None
        with self._env.begin(write=True) as txn:
            return {name: self._env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}

    def _read_meta(self) -> dict[str, Any]:
        with self._read_txn() as txn:
            return self._txn_meta(txn)

    def _check_format(self, dtype: str | None) -> None:
        if not self._meta:
            if self.readonly:
                raise IndexStoreError(f"{self.path} is not a segment store")
            self._meta = {
                "format_version": FORMAT_VERSION,
                "next_id": 1,
                "segment_dtype": dtype or DEFAULT_SEGMENT_DTYPE,
                "segment_dim": None,
                "global_dim": None,
                "total_segments": 0,
                "total_duration_us": 0,
            }
            self._write(lambda txn: self._put_meta(txn, self._meta))
            return
        version = self._meta.get("format_version")
        if version != FORMAT_VERSION and not self._any_version:
            raise StoreFormatError(
                f"segment store {self.path} has format version {version}; "
                f"this program reads version {FORMAT_VERSION}",
                version,
            )
        if dtype is not None and dtype != self._meta["segment_dtype"]:
            raise IndexStoreError(
                f"segment store {self.path} holds {self._meta['segment_dtype']} segments, not {dtype}"
            )

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
            self._env = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> SegmentStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def _read_txn(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; adopts a map that another process (the writer) has grown meanwhile,
        once no other thread of this process is inside a transaction (`MapGuard`)."""
        while True:
            with self._map_guard.shared():
                try:
                    txn = self._env.begin(buffers=True)
                except lmdb.MapResizedError:
                    txn = None
                if txn is not None:
                    with txn:
                        yield txn
                    return
            with self._map_guard.exclusive():
                try:
                    self._env.begin(buffers=True).abort()  # another thread may have adopted it already
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)

    def _write(self, body: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run `body` in one write transaction, doubling the map and retrying while it is full.

        `body` must read everything it depends on through `txn`: a retry starts from scratch.
        """
        if self.readonly:
            raise IndexStoreError(f"segment store {self.path} is open read-only")
        while True:
            with self._map_guard.shared():
                txn = self._env.begin(write=True)
                try:
                    result = body(txn)
                    txn.commit()
                    return result
                except lmdb.MapFullError:
                    txn.abort()
                except lmdb.Error as error:
                    txn.abort()
                    raise IndexStoreError(self._write_failure_message(error)) from None
                except BaseException:
                    txn.abort()
                    raise
            with self._map_guard.exclusive():
                self._env.set_mapsize(2 * self._env.info()["map_size"])

    def _write_failure_message(self, error: lmdb.Error) -> str:
        return (
            f"writing segment store {self.path} failed ({write_failure_reason(self.path, error)}); the batch "
            "in progress was not stored, everything committed before it is intact"
        )

    def get_attribute(self, name: str) -> Any:
        """A JSON value the store's owner keeps with the data (None when unset); the engine keeps a
        copy of its manifest here, so the model that built the vectors is known from the store itself."""
        with self._read_txn() as txn:
            value = txn.get(_ATTRIBUTE_PREFIX + name.encode(), db=self._dbs["meta"])
            return None if value is None else json.loads(bytes(value))

    def set_attribute(self, name: str, value: Any) -> None:
        """Set an attribute in its own transaction (see `get_attribute`)."""
        encoded = json.dumps(value).encode()
        self._write(lambda txn: txn.put(_ATTRIBUTE_PREFIX + name.encode(), encoded, db=self._dbs["meta"]))

    def _put_meta(self, txn: lmdb.Transaction, meta: dict[str, Any]) -> None:
        for key, value in meta.items():
            txn.put(key.encode(), json.dumps(value).encode(), db=self._dbs["meta"])

    def _txn_meta(self, txn: lmdb.Transaction) -> dict[str, Any]:
        cursor = txn.cursor(db=self._dbs["meta"])
        return {
            bytes(key).decode(): json.loads(bytes(value))
            for key, value in cursor.iternext()
            if not bytes(key).startswith(_ATTRIBUTE_PREFIX)
        }

    # ---------------------------------------------------------------- writes

    def add_videos(self, items: Sequence[tuple[VideoFile, np.ndarray | PackedSegments, np.ndarray]],
                   ids: Sequence[int] | None = None) -> AddResult:
        """Store a batch of `(file, segments, global descriptor (G,))` atomically; segments are an
        (N, D) float matrix or already packed in this store's form (`segment_codec.SegmentPacker`).

        A path already in the store is replaced: its old record is removed and the new one gets a
        fresh id (listed in `AddResult.replaced`), never a recycled one. `ids` gives the records the
        ids they had in another store (a rebuild keeps them); they must not be in use here.
        """
        if not items:
            return AddResult(ids=[], replaced=[])
        if ids is not None and (len(ids) != len(items) or min(ids) < 1):
            raise ValueError("explicit ids must be positive, one per item")
        paths = [video.path for video, _, _ in items]
        if len(set(paths)) != len(paths):
            raise ValueError("a batch must not contain the same path twice")
        first = items[0][1]
        segment_dim = self._meta["segment_dim"] or (first.dim if isinstance(first, PackedSegments) else np.shape(first)[-1])
        global_dim = self._meta["global_dim"] or np.shape(items[0][2])[-1]
        encoded = [
            self._encode(video, segments, global_vector, segment_dim, global_dim)
            for video, segments, global_vector in items
        ]

        def body(txn: lmdb.Transaction) -> tuple[AddResult, dict[str, Any]]:
            meta = self._txn_meta(txn)
            replaced = []
            for path in paths:
                old_id = txn.get(_path_key(path), db=self._dbs["paths"])
                if old_id is not None:
                    replaced.append(self._delete(txn, int.from_bytes(old_id, "big"), meta))
            added = []
            for number, (path, (metadata, n_segments, duration_us, segment_bytes, global_bytes)) in enumerate(
                zip(paths, encoded)
            ):
                video_id = meta["next_id"] if ids is None else int(ids[number])
                key = _id_key(video_id)
                if ids is not None and txn.get(key, db=self._dbs["videos"]) is not None:
                    raise ValueError(f"id {video_id} is already in use")
                last = video_id >= meta["next_id"]  # keys in ascending order can be appended
                meta["next_id"] = max(meta["next_id"], video_id + 1)
                txn.put(key, metadata, db=self._dbs["videos"], append=last)
                txn.put(key, segment_bytes, db=self._dbs["segments"], append=last)
                txn.put(key, global_bytes, db=self._dbs["globals"], append=last)
                txn.put(_path_key(path), key, db=self._dbs["paths"])
                meta["total_segments"] += n_segments
                meta["total_duration_us"] += duration_us
                added.append(video_id)
            meta["segment_dim"], meta["global_dim"] = int(segment_dim), int(global_dim)
            self._put_meta(txn, meta)
            return AddResult(ids=added, replaced=replaced), meta

        result, self._meta = self._write(body)
        return result

    def update_mtimes(self, updates: Sequence[tuple[str, int]]) -> int:
        """Note new mtimes of files whose content is unchanged (touched), in one transaction, so
        later runs skip them without reading. Ids stay: the content, hence the FAISS file, is the same."""

        def body(txn: lmdb.Transaction) -> int:
            return sum(self._update_metadata(txn, path, mtime_ns=int(mtime_ns)) for path, mtime_ns in updates)

        return self._write(body)

    def rename_paths(self, renames: Sequence[tuple[str, str]]) -> int:
        """Re-key records from old to new paths in one transaction (a path already taken is left
        alone); ids and contents stay. Returns how many were renamed."""

        def body(txn: lmdb.Transaction) -> int:
            count = 0
            for old, new in renames:
                taken = txn.get(_path_key(new), db=self._dbs["paths"]) is not None
                if not taken and self._update_metadata(txn, old, path=new):
                    txn.put(_path_key(new), txn.pop(_path_key(old), db=self._dbs["paths"]), db=self._dbs["paths"])
                    count += 1
            return count

        return self._write(body)

    def _update_metadata(self, txn: lmdb.Transaction, stored_path: str, **changes: Any) -> bool:
        """Change fields of the metadata of the record of `stored_path`; False if there is none."""
        key = txn.get(_path_key(stored_path), db=self._dbs["paths"])
        if key is None:
            return False
        metadata = json.loads(txn.get(key, db=self._dbs["videos"]))
        txn.put(key, json.dumps({**metadata, **changes}).encode(), db=self._dbs["videos"])
        return True

    def _encode(
        self,
        video: VideoFile,
        segments: np.ndarray | PackedSegments,
        global_vector: np.ndarray,
        segment_dim: int,
        global_dim: int,
    ) -> tuple[bytes, int, int, memoryview, bytes]:
        if not isinstance(segments, PackedSegments):
            shape = np.shape(segments)
            if len(shape) != 2 or shape[0] == 0 or shape[1] != segment_dim:
                raise ValueError(f"{video.path}: segments must have shape (N >= 1, {segment_dim}), not {shape}")
            try:
                segments = pack(segments, str(self.dtype))
            except ValueError as error:
                raise ValueError(f"{video.path}: {error}") from None
        if segments.dtype != str(self.dtype) or segments.dim != segment_dim or segments.n_segments == 0:
            raise ValueError(f"{video.path}: packed segments ({segments.n_segments} x {segments.dim} {segments.dtype}) "
                             f"do not fit this store (N >= 1 x {segment_dim} {self.dtype})")
        vector = np.ascontiguousarray(global_vector, dtype=np.float32)
        if vector.shape != (global_dim,):
            raise ValueError(
                f"{video.path}: global descriptor must have shape ({global_dim},), not {vector.shape}"
            )
        if not np.isfinite(vector).all():
            raise ValueError(f"{video.path}: global descriptor is not finite")
        metadata = {
            "path": video.path,
            "size": int(video.size),
            "mtime_ns": int(video.mtime_ns),
            "fingerprint": video.fingerprint,
            "duration_s": float(video.duration_s),
            "n_segments": segments.n_segments,
            "extra": video.extra,
        }
        return (
            json.dumps(metadata).encode(),
            segments.n_segments,
            _duration_us(video.duration_s),
            memoryview(segments.payload),  # LMDB copies it into its pages: no second copy here
            vector.tobytes(),
        )

    def _delete(self, txn: lmdb.Transaction, video_id: int, meta: dict[str, Any]) -> int:
        key = _id_key(video_id)
        metadata = json.loads(bytes(txn.get(key, db=self._dbs["videos"])))
        for name in ("videos", "segments", "globals"):
            txn.delete(key, db=self._dbs[name])
        txn.delete(_path_key(metadata["path"]), db=self._dbs["paths"])
        meta["total_segments"] -= metadata["n_segments"]
        meta["total_duration_us"] -= _duration_us(metadata["duration_s"])
        return video_id

    def remove(self, ids: Iterable[int]) -> list[int]:
        """Remove records by id in one transaction; returns the ids that were present."""
        wanted = list(dict.fromkeys(int(i) for i in ids))

        def body(txn: lmdb.Transaction) -> tuple[list[int], dict[str, Any]]:
            meta = self._txn_meta(txn)
            present = [i for i in wanted if txn.get(_id_key(i), db=self._dbs["videos"]) is not None]
            removed = [self._delete(txn, i, meta) for i in present]
            self._put_meta(txn, meta)
            return removed, meta

        removed, self._meta = self._write(body)
        return removed

    def remove_paths(self, paths: Iterable[str]) -> list[int]:
        """Remove records by path in one transaction; returns the ids removed."""
        ids = [i for i in (self.id_for_path(p) for p in paths) if i is not None]
        return self.remove(ids)

    # ---------------------------------------------------------------- reads

    def __len__(self) -> int:
        with self._read_txn() as txn:
            return txn.stat(self._dbs["videos"])["entries"]

    @property
    def segment_dim(self) -> int | None:
        """Width of the segment matrices; None until the first video is stored."""
        with self._read_txn() as txn:
            return self._dim(txn, "segment_dim")

    @property
    def global_dim(self) -> int | None:
        with self._read_txn() as txn:
            return self._dim(txn, "global_dim")

    def _dim(self, txn: lmdb.Transaction, name: str) -> int | None:
        """A dimension, fixed by the first stored video (which a reader may see after opening)."""
        if self._meta[name] is None:
            value = txn.get(name.encode(), db=self._dbs["meta"])
            self._meta[name] = json.loads(bytes(value))
        return self._meta[name]

    def id_for_path(self, path: str) -> int | None:
        with self._read_txn() as txn:
            key = txn.get(_path_key(path), db=self._dbs["paths"])
            return None if key is None else int.from_bytes(key, "big")

    def record_for_path(self, path: str) -> VideoRecord | None:
        """The stored record of `path`, or None: what an incremental run compares the file against."""
        with self._read_txn() as txn:
            key = txn.get(_path_key(path), db=self._dbs["paths"])
            if key is None:
                return None
            return self._record(int.from_bytes(key, "big"), txn.get(key, db=self._dbs["videos"]))

    def get(self, video_id: int) -> VideoRecord:
        with self._read_txn() as txn:
            metadata = txn.get(_id_key(video_id), db=self._dbs["videos"])
            if metadata is None:
                raise KeyError(video_id)
            return self._record(video_id, metadata)

    @staticmethod
    def _record(video_id: int, metadata: bytes) -> VideoRecord:
        return VideoRecord(id=int(video_id), **json.loads(bytes(metadata)))

    def segments(self, video_id: int) -> np.ndarray:
        """The (N, D) float32 segment matrix of one video."""
        return self.segments_many([video_id])[0]

    def segments_many(self, ids: Sequence[int]) -> list[np.ndarray]:
        """Segment matrices of several videos from one consistent snapshot (float32 copies)."""
        matrices = []
        with self._read_txn() as txn:
            for video_id in ids:
                raw = txn.get(_id_key(video_id), db=self._dbs["segments"])
                if raw is None:
                    raise KeyError(video_id)
                matrices.append(unpack(raw, str(self.dtype), self._dim(txn, "segment_dim")))
        return matrices

    def iter_records(self) -> Iterator[VideoRecord]:
        """All records in id order. Reads in chunks of short transactions, so the caller may write
        (e.g. remove what it finds) while iterating; records added meanwhile may or may not appear."""
        start = b""
        while True:
            with self._read_txn() as txn:
                cursor = txn.cursor(db=self._dbs["videos"])
                if not cursor.set_range(start):
                    return
                chunk = []
                for key, metadata in cursor:
                    chunk.append(self._record(int.from_bytes(key, "big"), metadata))
                    if len(chunk) == _ITER_CHUNK:
                        break
            yield from chunk
            if len(chunk) < _ITER_CHUNK:
                return
            start = _id_key(chunk[-1].id + 1)

    def ids(self) -> np.ndarray:
        """Ids of all stored videos, ascending, as int64."""
        with self._read_txn() as txn:
            keys = b"".join(txn.cursor(db=self._dbs["globals"]).iternext(keys=True, values=False))
        return np.frombuffer(keys, dtype=">u8").astype(np.int64)

    def globals(self, ids: Sequence[int]) -> np.ndarray:
        """Global descriptors of `ids`, (len(ids), G) float32, from one snapshot."""
        with self._read_txn() as txn:
            vectors = np.empty((len(ids), self._dim(txn, "global_dim") or 0), dtype=np.float32)
            for row, video_id in enumerate(ids):
                raw = txn.get(_id_key(video_id), db=self._dbs["globals"])
                if raw is None:
                    raise KeyError(int(video_id))
                vectors[row] = np.frombuffer(raw, dtype=np.float32)
        return vectors

    def all_globals(self) -> tuple[np.ndarray, np.ndarray]:
        """Every global descriptor at once: (ids int64 (n,), vectors float32 (n, G))."""
        ids = self.ids()
        return ids, self.globals(ids)

    def stats(self) -> StoreStats:
        with self._read_txn() as txn:
            meta = self._txn_meta(txn)
            count = txn.stat(self._dbs["videos"])["entries"]
        disk_bytes = sum(f.stat().st_blocks * 512 for f in self.path.glob("*.mdb"))
        return StoreStats(
            videos=count,
            total_duration_s=meta["total_duration_us"] / 1e6,
            total_segments=meta["total_segments"],
            disk_bytes=disk_bytes,
            map_size_bytes=self._env.info()["map_size"],
        )

    # ---------------------------------------------------------------- HDF5 exchange

    def export_hdf5(self, path: Path) -> int:
        """Write every video to an HDF5 file; returns the number written.

        Layout: root attributes `format`, `format_version`; one group `/videos/<id>` per video
        with datasets `features` (N, D) and `global` (G,; float32) and attributes path, size,
        mtime_ns, fingerprint, duration_s, extra (JSON). `features` are plain floats that other
        tools can read: float16/float32 stores export their values as stored, int8 stores the
        float32 values their codes stand for (code × scale), which an int8 store imports back to
        the same codes. The file appears under its name only once complete.
        """
        count = 0
        with atomic_path(path) as partial, h5py.File(partial, "w") as file:
            file.attrs["format"] = HDF5_FORMAT
            file.attrs["format_version"] = FORMAT_VERSION
            videos = file.create_group("videos")
            for record in self.iter_records():
                group = videos.create_group(str(record.id))
                with self._read_txn() as txn:
                    key = _id_key(record.id)
                    raw = txn.get(key, db=self._dbs["segments"])
                    width = self._dim(txn, "segment_dim")
                    if self.dtype == np.int8:
                        features = unpack(raw, "int8", width)
                    else:
                        features = np.frombuffer(raw, self.dtype).reshape(-1, width)
                    group.create_dataset("features", data=features)
                    group.create_dataset(
                        "global", data=np.frombuffer(txn.get(key, db=self._dbs["globals"]), np.float32)
                    )
                try:
                    group.attrs["path"] = record.path
                except UnicodeEncodeError:  # undecodable bytes in a POSIX file name
                    group.attrs["path"] = np.bytes_(os.fsencode(record.path))
                group.attrs["size"] = record.size
                group.attrs["mtime_ns"] = record.mtime_ns
                group.attrs["fingerprint"] = record.fingerprint
                group.attrs["duration_s"] = record.duration_s
                group.attrs["extra"] = json.dumps(record.extra)
                count += 1
        return count

    def import_hdf5(self, path: Path, batch_size: int = 256) -> AddResult:
        """Add every video of a file written by `export_hdf5`, with fresh ids (paths already
        stored are replaced). Batches commit one by one, like an indexing run."""
        ids: list[int] = []
        replaced: list[int] = []
        try:
            with h5py.File(path, "r") as file:
                if file.attrs.get("format") != HDF5_FORMAT:
                    raise IndexStoreError(f"{path} is not an ausil-search segment export")
                videos = file["videos"]
                groups = [videos[name] for name in sorted(videos, key=int)]
                for start in range(0, len(groups), batch_size):
                    batch = [_video_from_hdf5(g) for g in groups[start : start + batch_size]]
                    result = self.add_videos(batch)
                    ids += result.ids
                    replaced += result.replaced
        except (OSError, KeyError, ValueError) as error:
            raise IndexStoreError(f"cannot import {path}: {error}") from None
        return AddResult(ids=ids, replaced=replaced)


def _video_from_hdf5(group: h5py.Group) -> tuple[VideoFile, np.ndarray, np.ndarray]:
    attrs = group.attrs
    path = attrs["path"]
    video = VideoFile(
        path=os.fsdecode(path) if isinstance(path, bytes) else str(path),
        size=int(attrs["size"]),
        mtime_ns=int(attrs["mtime_ns"]),
        fingerprint=str(attrs["fingerprint"]),
        duration_s=float(attrs["duration_s"]),
        extra=json.loads(attrs["extra"]),
    )
    return video, group["features"][()], group["global"][()]
