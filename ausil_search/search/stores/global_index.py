"""The global index: the recall windows of every video in FAISS, for the recall stage.

Each video has one or more window descriptors (`windows.py`: a long video one per overlapping
window, a short one a single window), keyed by ids that carry the video id, so the recall maps
window hits to distinct videos (`search_videos`) and a video's removal drops all its windows.
Everything below counts windows, not videos.

Policy (measured on 2,528-d clustered synthetic descriptors, 2 CPU cores):
- Below `IVF_MIN_SIZE` windows: exact search (`IndexFlatIP` in an `IndexIDMap2`), so small
  collections get exact results. It stays affordable there (a lone query scans n·dim floats:
  ~15 ms at 10k, ~30 ms at 20k; batched ~1.5-2.7 ms per query), and IVF with nlist ≈ 4·√n cannot
  be trained properly below ~20k anyway (k-means wants >= 39 points per list).
- From `IVF_MIN_SIZE` on: `IndexIVFFlat`, nlist = the power of two nearest to 4·√n (kept <= n/39),
  k-means on at most 64 points per list. nprobe is calibrated on the data at build time: the
  smallest power of two at which the IVF top-100 holds the exact top-10 for `CALIBRATION_TARGET`
  of 1,000 leave-one-out database vectors. That estimate tracked held-out queries within ~1% at
  20k and 100k; the default depends on how clustered the data is (16 or 64 of 512 lists at 20k,
  8 or 64 of 1024 at 100k, without/with 5% off-cluster vectors). FAISS keeps nprobe in the file.
- `needs_rebuild()` says when the collection has outgrown that choice (nlist would change, i.e.
  about 4x growth, or the index crossed a size threshold); the engine then rebuilds from the
  segment store, whose segments give every window: this index is derived data.

Vectors are L2-normalised on the way in, so scores are cosine similarities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ausil_search.atomic import atomic_path, write_failure_reason
from ausil_search.errors import IndexStoreError
from ausil_search.search.stores.segment_store import SegmentStore
from ausil_search.search.stores.windows import WindowLayout, best_per_video, video_of, window_ids

IVF_MIN_SIZE = 20_000  # collections from this size on use IVF
FLAT_RETURN_SIZE = 10_000  # an IVF index that shrinks below this goes back to exact search
MIN_POINTS_PER_LIST = 39  # below this k-means centroids are poorly estimated (FAISS warns)
TRAIN_POINTS_PER_LIST = 64
MAX_NLIST = 65_536
CALIBRATION_QUERIES = 1000
CALIBRATION_TARGET = 0.995  # the requirement is 0.99 on queries; the margin covers sampling noise
RECALL_DEPTH, EXACT_DEPTH = 100, 10  # "IVF top-100 contains the exact top-10"
GPU_MAX_K = 2048  # FAISS GPU search limit; larger k searches on the CPU
_BUILD_CHUNK = 16_384  # vectors per read while building (166 MB at 2528-d)
_SEED = 1234
_VIDEOS_PER_READ = 64  # videos whose segments are read at a time while computing windows
_DEPTH_PER_VIDEO = 4  # windows searched per wanted video at first (deepened while too few videos come back)

# Rows of the collection -> their vectors (raw, not yet normalised); `slice` for sequential reads.
VectorSource = Callable[[np.ndarray | slice], np.ndarray]


def nlist_for(n: int) -> int:
    """Number of IVF lists for `n` vectors: the power of two nearest (in log scale) to 4·√n."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return min(nlist, MAX_NLIST)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    matrix = np.array(vectors, dtype=np.float32, ndmin=2, order="C")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def _gpu_resources() -> Any | None:
    """FAISS GPU resources when this FAISS build has GPU support and sees a GPU, else None."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


_GPU_RESOURCES: Any | None = None


class GlobalIndex:
    """Inner-product search over L2-normalised window descriptors, keyed by window ids."""

    def __init__(self, index: faiss.Index) -> None:
        """Wrap an `IndexIDMap2(IndexFlatIP)` or an `IndexIVFFlat` with inner-product metric;
        use `build`, `from_store` or `load` rather than calling this."""
        self._index = index
        self._gpu_index: faiss.Index | None = None

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray) -> GlobalIndex:
        """An index of `vectors` (n, dim) under `ids` (n,), its type chosen from n."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"need (n, dim) vectors for {len(ids)} ids, got {vectors.shape}")
        return cls._build(np.asarray(ids, dtype=np.int64), vectors.shape[1], vectors.__getitem__)

    @classmethod
    def from_store(cls, store: SegmentStore, layout: WindowLayout, dim: int | None = None) -> GlobalIndex:
        """An index of the recall windows of every video in `store`, computed from its segments a
        chunk at a time. `dim` is the width of an index of an empty store."""
        windows = StoreWindows(store, layout, [(r.id, r.n_segments) for r in store.iter_records()])
        return cls._build(windows.ids, store.segment_dim or dim or 0, windows)

    @classmethod
    def _build(cls, ids: np.ndarray, dim: int, source: VectorSource) -> GlobalIndex:
        n = len(ids)
        if n < IVF_MIN_SIZE:
            index = cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
            index._add_rows(ids, source)
            return index
        nlist = nlist_for(n)
        # Calibration queries come from the end of the permutation: outside the training sample
        # whenever the collection is large enough, so the centroids have not seen them.
        order = np.random.default_rng(_SEED).permutation(n)
        train_rows = np.sort(order[: TRAIN_POINTS_PER_LIST * nlist])
        query_rows = np.sort(order[-CALIBRATION_QUERIES:])
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        ivf.train(_normalised(source(train_rows)))
        index = cls(ivf)
        index._add_rows(ids, source)
        queries = _normalised(source(query_rows))
        neighbours = _exact_neighbours(queries, query_rows, n, source)
        ivf.nprobe = index._calibrate_nprobe(queries, ids[query_rows], ids[neighbours])
        return index

    def _add_rows(self, ids: np.ndarray, source: VectorSource) -> None:
        for start in range(0, len(ids), _BUILD_CHUNK):
            rows = slice(start, start + _BUILD_CHUNK)
            self.add(ids[rows], source(rows))

    def _calibrate_nprobe(self, queries: np.ndarray, query_ids: np.ndarray, exact_ids: np.ndarray) -> int:
        """Smallest power-of-two nprobe at which the IVF top-100 holds the exact top-10 for
        `CALIBRATION_TARGET` of the queries. Each query is a database vector whose own entry is
        ignored on both sides (leave-one-out), so it stands for an unseen video."""
        nlist = self._index.nlist
        nprobe = 1
        while nprobe < nlist:
            _, found = self.search(queries, RECALL_DEPTH + 1, nprobe=nprobe)
            hits = np.mean(
                [
                    np.isin(want, got[got != own][:RECALL_DEPTH]).all()
                    for want, got, own in zip(exact_ids, found, query_ids)
                ]
            )
            if hits >= CALIBRATION_TARGET:
                break
            nprobe *= 2
        return nprobe

    # ---------------------------------------------------------------- updates

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ids that are not in the index yet (remove an id before re-adding it)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = _normalised(vectors)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"need ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        self._index.add_with_ids(vectors, ids)
        self._gpu_index = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        removed = self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu_index = None
        return int(removed)

    def needs_rebuild(self, n: int | None = None) -> bool:
        """True when the collection size (now, or `n` windows) calls for another index type or number of lists."""
        n = self.ntotal if n is None else n
        if self.nlist is None:
            return n >= IVF_MIN_SIZE
        return n < FLAT_RETURN_SIZE or nlist_for(max(n, IVF_MIN_SIZE)) != self.nlist

    # ---------------------------------------------------------------- queries

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine scores and ids per query, best first: (Q, k) float32 and int64.
        Where fewer than k videos exist, ids are -1 and scores -inf."""
        queries = _normalised(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries must have {self.dim} columns, not {queries.shape[1]}")
        params = None
        if self.nlist is not None and nprobe is not None:
            params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        scores, ids = self._searcher(k).search(queries, k, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    def search_videos(
        self, windows: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best distinct videos for a query described by one or more `windows` (W, dim),
        each video scored by its best window against any query window, best first: (video ids
        int64, scores float32)."""
        return self.search_videos_many([windows], k, nprobe)[0]

    def search_videos_many(
        self, queries: Sequence[np.ndarray], k: int, nprobe: int | None = None, exclude: Sequence[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search_videos` for several queries in one FAISS search; `exclude[i]` is a video left out
        of query i's answer (a dedup query's own). The window search deepens until every query has
        k videos or every window was returned."""
        bounds = np.cumsum([0] + [len(q) for q in queries])
        stacked = np.concatenate(queries) if queries else np.empty((0, self.dim), np.float32)
        depth = min(self.ntotal, (k + 1) * _DEPTH_PER_VIDEO)
        while True:
            answers = []
            scores, ids = self.search(stacked, depth, nprobe) if depth else (None, None)
            for i in range(len(queries)):
                if depth == 0:
                    answers.append((np.empty(0, np.int64), np.empty(0, np.float32)))
                    continue
                hits = ids[bounds[i] : bounds[i + 1]]
                if exclude is not None:
                    hits = np.where(video_of(hits) == exclude[i], -1, hits)
                answers.append(best_per_video(scores[bounds[i] : bounds[i + 1]], hits, k))
            if depth >= self.ntotal or all(len(videos) >= k for videos, _ in answers):
                return answers
            depth = min(self.ntotal, depth * _DEPTH_PER_VIDEO)

    def _searcher(self, k: int) -> faiss.Index:
        """The GPU copy of the index where FAISS can use a GPU for this k, else the index itself."""
        resources = _gpu_resources()
        if resources is None or k > GPU_MAX_K:
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self._index)
        return self._gpu_index

    def ids(self) -> np.ndarray:
        """Every id in the index (order unspecified), int64."""
        if self.nlist is None:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        lists = self._index.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(self.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def video_ids(self) -> np.ndarray:
        """Ids of the videos that have windows in the index, ascending."""
        return np.unique(video_of(self.ids()))

    # ---------------------------------------------------------------- description

    @property
    def dim(self) -> int:
        return self._index.d

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def __len__(self) -> int:
        return self._index.ntotal

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists; None for the exact (flat) index."""
        return self._index.nlist if isinstance(self._index, faiss.IndexIVF) else None

    @property
    def nprobe(self) -> int | None:
        """Lists searched by default; None for the exact (flat) index."""
        return self._index.nprobe if isinstance(self._index, faiss.IndexIVF) else None

    def describe(self) -> dict[str, Any]:
        return {
            "type": "flat" if self.nlist is None else "ivf",
            "dim": self.dim,
            "ntotal": self.ntotal,  # windows
            "videos": len(self.video_ids()),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "gpu": _gpu_resources() is not None,
        }

    # ---------------------------------------------------------------- persistence

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves either the previous file or the new one, never half."""
        try:
            with atomic_path(path, durable=True, sole_writer=True) as partial:
                faiss.write_index(self._index, str(partial))
        except (RuntimeError, OSError) as error:
            raise IndexStoreError(
                f"cannot save the global index {path} ({write_failure_reason(Path(path).parent, error)}); "
                "it is derived data, rebuilt from the segment store at the next open"
            ) from None

    @classmethod
    def load(cls, path: Path) -> GlobalIndex:
        path = Path(path)
        if not path.is_file():
            raise IndexStoreError(f"no global index file at {path}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise IndexStoreError(f"cannot read global index {path}: {first_line}") from None
        flat = isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlatIP
        )
        ivf = isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
        if not (flat or ivf):
            raise IndexStoreError(f"{path} is not a global index of this program")
        loaded = cls(index)
        if not loaded._finite():
            raise IndexStoreError(f"{path} holds non-finite (NaN or inf) vectors")
        return loaded

    def _finite(self) -> bool:
        """Whether every stored vector is finite. A NaN scores NaN against every query and takes a
        place in the top-k that belongs to a real match, so such a file counts as damaged."""
        if self.nlist is None:
            flat = faiss.downcast_index(self._index.index)
            blocks = [faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * self.dim)] if self.ntotal else []
        else:
            lists = self._index.invlists
            blocks = [
                faiss.rev_swig_ptr(lists.get_codes(i), lists.list_size(i) * lists.code_size).view(np.float32)
                for i in range(self.nlist)
                if lists.list_size(i)
            ]
        step = _BUILD_CHUNK * self.dim
        return all(np.isfinite(b[i : i + step]).all() for b in blocks for i in range(0, len(b), step))

    @classmethod
    def load_or_rebuild(
        cls, path: Path, store: SegmentStore, layout: WindowLayout, dim: int | None = None
    ) -> tuple[GlobalIndex, bool]:
        """The index at `path` brought in line with `store`; the flag says whether it changed
        (a writer should then `save` it; a reader can simply use it).

        A missing or unreadable file, or one of another width than the store's segments, is rebuilt
        from the store. Otherwise the windows of videos the store no longer has are removed and
        those of videos it gained are added: since the store never gives new content an old id,
        equal video sets mean equal contents. An index that has outgrown its type or list count is
        rebuilt. The layout is not in the file: the caller names the file after it.
        """
        width = store.segment_dim or dim or 0
        try:
            index = cls.load(path)
        except IndexStoreError:
            return cls.from_store(store, layout, dim), True
        present = index.ids()
        if index.dim != width or len(np.unique(present)) != len(present):
            return cls.from_store(store, layout, dim), True
        present_videos = np.unique(video_of(present))
        stored = store.ids()
        stale = np.setdiff1d(present_videos, stored, assume_unique=True)
        missing = np.setdiff1d(stored, present_videos, assume_unique=True)
        if stale.size:
            index.remove(present[np.isin(video_of(present), stale)])
        if missing.size:
            windows = StoreWindows(store, layout, [(int(i), store.get(int(i)).n_segments) for i in missing])
            if index.needs_rebuild(index.ntotal + len(windows.ids)):  # skip adding what a rebuild redoes
                return cls.from_store(store, layout, dim), True
            index._add_rows(windows.ids, windows)
        if index.needs_rebuild():
            return cls.from_store(store, layout, dim), True
        return index, bool(stale.size or missing.size)


class StoreWindows:
    """The recall windows of some of a store's videos: their FAISS ids, and their vectors by row
    (a `VectorSource`), pooled from the stored segments a few videos at a time."""

    def __init__(self, store: SegmentStore, layout: WindowLayout, videos: list[tuple[int, int]]) -> None:
        """`videos`: (video id, number of segments) pairs."""
        self._store, self._layout = store, layout
        self._videos = np.array([video_id for video_id, _ in videos], dtype=np.int64)
        counts = np.array([layout.count(n) for _, n in videos], dtype=np.int64)
        self._owner = np.repeat(np.arange(len(videos)), counts)  # row -> position in `videos`
        self._first_row = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.ids = np.concatenate([window_ids(v, c) for v, c in zip(self._videos, counts)]) if videos else np.empty(
            0, np.int64
        )

    def __call__(self, rows: np.ndarray | slice) -> np.ndarray:
        rows = np.arange(len(self.ids))[rows]
        out = np.empty((len(rows), self._store.segment_dim or 0), dtype=np.float32)
        order = np.argsort(self._owner[rows], kind="stable")
        owners = self._owner[rows][order]
        needed = np.unique(owners)
        bounds = np.searchsorted(owners, np.append(needed, len(self._videos)))
        for start in range(0, len(needed), _VIDEOS_PER_READ):
            chunk = needed[start : start + _VIDEOS_PER_READ]
            for i, segments in enumerate(self._store.segments_many(self._videos[chunk].tolist()), start):
                mine = order[bounds[i] : bounds[i + 1]]
                out[mine] = self._layout.pool(segments)[rows[mine] - self._first_row[needed[i]]]
        return out


def _exact_neighbours(queries: np.ndarray, query_rows: np.ndarray, n: int, source: VectorSource) -> np.ndarray:
    """Rows of the exact top-`EXACT_DEPTH` neighbours of each (normalised) query other than its
    own row, by brute force over the collection a chunk at a time."""
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, n, _BUILD_CHUNK):
        scores = queries @ _normalised(source(slice(start, start + _BUILD_CHUNK))).T
        own = (query_rows >= start) & (query_rows < start + scores.shape[1])
        scores[own, query_rows[own] - start] = -np.inf
        depth = min(EXACT_DEPTH, scores.shape[1])
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        rows = np.concatenate([best_rows, top + start], axis=1)
        depth = min(EXACT_DEPTH, scores.shape[1])
        keep = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    return best_rows
