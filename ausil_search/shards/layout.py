"""The sharded index's manifest (`shards.json`) and which shard holds a file.

A sharded index is a directory with `shards.json` naming S ordinary index directories (relative
to it, or absolute when a shard lives on another disk). A file belongs to shard
`blake2b(resolved path) mod S`: stable across runs, machines and Python versions, so an
incremental run finds a file's record where the first run put it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import IndexStoreError

SHARDS_MANIFEST = "shards.json"
SHARDS_FORMAT = "ausil-search sharded index"
SHARDS_FORMAT_VERSION = 1
ROUTING = "blake2b-64 of the resolved path, mod shards"
MAX_SHARDS = 4096


def shard_of(path: str, shards: int) -> int:
    """The shard of a file keyed by `path` (the engine keys files by their resolved path)."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_name(number: int) -> str:
    return f"shard-{number:03d}"


def is_sharded(index_dir: Path) -> bool:
    return (Path(index_dir) / SHARDS_MANIFEST).is_file()


@dataclass(frozen=True)
class ShardLayout:
    """Where a sharded index's shards are and which model built them (None until the first write)."""

    root: Path
    shard_dirs: tuple[Path, ...]
    model_sha256: str | None
    model_identity: str | None

    @property
    def count(self) -> int:
        return len(self.shard_dirs)

    def shard_for(self, resolved_path: str) -> int:
        return shard_of(resolved_path, self.count)

    @classmethod
    def new(cls, root: Path, shards: int) -> "ShardLayout":
        if not 1 <= shards <= MAX_SHARDS:
            raise IndexStoreError(f"--shards must be between 1 and {MAX_SHARDS}, got {shards}")
        root = Path(root)
        return cls(root, tuple(root / shard_name(i) for i in range(shards)), None, None)

    @classmethod
    def read(cls, root: Path) -> "ShardLayout":
        root = Path(root)
        path = root / SHARDS_MANIFEST
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexStoreError(f"{root} is not a sharded index (no {SHARDS_MANIFEST})") from None
        except json.JSONDecodeError:
            raise IndexStoreError(f"{path}: damaged manifest (not JSON)") from None
        except OSError as error:
            raise IndexStoreError(f"cannot read {path}: {error.strerror}") from None
        if not isinstance(payload, dict) or payload.get("format") != SHARDS_FORMAT:
            raise IndexStoreError(f"{path}: not a sharded-index manifest")
        if payload.get("version") != SHARDS_FORMAT_VERSION:
            raise IndexStoreError(f"{path}: sharded-index format {payload.get('version')}, "
                                  f"this program reads {SHARDS_FORMAT_VERSION}")
        shards = payload.get("shards")
        if not isinstance(shards, list) or not shards or not all(isinstance(s, str) and s for s in shards):
            raise IndexStoreError(f"{path}: damaged manifest (no list of shards)")
        model = payload.get("model") or {}
        return cls(root, tuple(root / s for s in shards), model.get("sha256"), model.get("identity"))

    def with_model(self, sha256: str, identity: str) -> "ShardLayout":
        return ShardLayout(self.root, self.shard_dirs, sha256, identity)

    def write(self) -> None:
        """Written last when an index is created (after its shards), so a killed creation leaves
        shard directories that a rerun opens again, never a manifest naming shards that do not exist."""
        payload = {
            "format": SHARDS_FORMAT,
            "version": SHARDS_FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "routing": ROUTING,
            "model": {"identity": self.model_identity, "sha256": self.model_sha256},
            "shards": [_relative(d, self.root) for d in self.shard_dirs],
        }
        write_json_atomic(self.root / SHARDS_MANIFEST, payload, indent=2)


def _relative(shard_dir: Path, root: Path) -> str:
    try:
        return str(shard_dir.relative_to(root))
    except ValueError:
        return str(shard_dir.absolute())
