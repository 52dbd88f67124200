"""Index storage: the LMDB segment store (source of truth) and the FAISS global index derived from it."""

from ausil_search.search.stores.global_index import GlobalIndex
from ausil_search.search.stores.lock import WriterLock
from ausil_search.search.stores.segment_codec import PackedSegments, SegmentPacker
from ausil_search.search.stores.segment_store import (
    AddResult,
    SegmentStore,
    StoreFormatError,
    StoreStats,
    VideoFile,
    VideoRecord,
)

__all__ = [
    "AddResult",
    "GlobalIndex",
    "PackedSegments",
    "SegmentPacker",
    "SegmentStore",
    "StoreFormatError",
    "StoreStats",
    "VideoFile",
    "VideoRecord",
    "WriterLock",
]
