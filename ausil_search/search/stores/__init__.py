"""Index storage: the LMDB segment store (source of truth) and the FAISS global index derived from it."""

from ausil_search.search.stores.global_index import GlobalIndex
from ausil_search.search.stores.lock import WriterLock
from ausil_search.search.stores.segment_store import (
    AddResult,
    SegmentStore,
    StoreStats,
    VideoFile,
    VideoRecord,
)

__all__ = [
    "AddResult",
    "GlobalIndex",
    "SegmentStore",
    "StoreStats",
    "VideoFile",
    "VideoRecord",
    "WriterLock",
]
