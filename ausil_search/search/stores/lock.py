"""One writer per index: an advisory `flock` on a file in the index directory.

LMDB would serialise two writers by blocking the second one; a user starting a second
`ausil-search index` deserves an immediate, clear message instead. The kernel drops the lock
when the holder dies (even on `kill -9`), so a stale lock file never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ausil_search.errors import IndexStoreError

LOCK_FILE_NAME = "writer.lock"


class WriterLock:
    """Exclusive, non-blocking writer lock on `<directory>/writer.lock`, held until `release()`."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise IndexStoreError(
                f"index {self.path.parent} is being written by another process (pid {holder}); "
                "wait for it to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The pid is only informative (for the message above); the flock is what excludes. On a
        # full disk it may not fit, which must not stop a command that only reads or removes.
        try:
            os.pwrite(fd, f"{os.getpid()}\n".ljust(16).encode("ascii"), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. The file stays: unlinking it would let two writers lock different inodes."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class MapGuard:
    """Shared/exclusive lock over one process's LMDB memory map.

    LMDB allows `mdb_env_set_mapsize` (growing the map, or adopting one another process grew) only
    while no transaction of this process is active, and does not check; py-lmdb invalidates every
    open transaction when it happens, so a reader thread would fail mid-read. Transactions hold the
    guard shared, a remap holds it exclusive; a waiting remap keeps new transactions out so that a
    steady stream of readers cannot starve it. A thread already holding it shared may take it
    again (a read inside a write body) without waiting.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._remapping = False
        self._waiting_remaps = 0
        self._held = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        with self._condition:
            if depth == 0:
                self._condition.wait_for(lambda: not self._remapping and not self._waiting_remaps)
            self._active += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            with self._condition:
                self._active -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._waiting_remaps += 1
            self._condition.wait_for(lambda: not self._remapping and self._active == 0)
            self._waiting_remaps -= 1
            self._remapping = True
        try:
            yield
        finally:
            with self._condition:
                self._remapping = False
                self._condition.notify_all()
