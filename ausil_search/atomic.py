"""Files that appear whole or not at all: a crash mid-write leaves the previous version, never half
of a new one (model files, FAISS indexes, feature files, manifests, reports)."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


LOW_DISK_BYTES = 64 << 20  # a failed write with less free space than this is reported as a full disk


def write_failure_reason(directory: str | os.PathLike[str], error: BaseException) -> str:
    """Why a write under `directory` failed, in a few words for a one-line message. A full disk is
    named as such: LMDB reports a short write as EIO and FAISS as a bare failed fwrite."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or os.strerror(errno.ENOSPC) in str(error)
    if full or (free is not None and free < LOW_DISK_BYTES):
        return "the disk is full" + ("" if free is None else f": {free >> 20} MiB free")
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return first if free is None else f"{first}; {free >> 20} MiB free on its disk"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], durable: bool = False, sole_writer: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside `path` for a writer that wants a file name (FAISS, HDF5);
    it replaces `path` when the block ends without error and is deleted otherwise.

    `durable` also fsyncs the file and its directory, so the rename survives a power cut.
    `sole_writer` (the caller holds a lock on `path`) first deletes what killed writes left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sole_writer:
        for stale in path.parent.glob(f".{path.name}.*.part"):
            stale.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        yield partial
        if durable:
            _fsync(partial)
        os.replace(partial, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: str | os.PathLike[str], durable: bool = False, sole_writer: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle (`.name` is its temporary path) that appears at `path` once complete."""
    with atomic_path(path, durable, sole_writer) as partial, partial.open("xb") as handle:  # permissions follow the umask
        yield handle


def write_json_atomic(path: str | os.PathLike[str], payload: object, indent: int | None = 1) -> None:
    with atomic_output(path) as handle:
        handle.write(json.dumps(payload, indent=indent).encode("utf-8"))


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_paths(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Swap two directory entries in one step (Linux `renameat2(RENAME_EXCHANGE)`), so that a crash
    leaves either both as they were or both swapped. False where the system or the filesystem cannot
    (the caller then needs a recoverable sequence of plain renames); other failures raise OSError."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        _fsync(Path(first).parent)
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first))
