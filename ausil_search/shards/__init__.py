"""Sharded indexes: S ordinary index directories behind one manifest, queried and indexed as one."""

from .layout import SHARDS_MANIFEST, ShardLayout, is_sharded, shard_of
from .sharded_index import ShardedIndex, ShardedQueryResult, ShardMatch, open_index

__all__ = ["SHARDS_MANIFEST", "ShardLayout", "ShardMatch", "ShardedIndex", "ShardedQueryResult", "is_sharded",
           "open_index", "shard_of"]
