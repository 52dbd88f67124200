"""One writer per index: an advisory `flock` on a file in the index directory.

LMDB would serialise two writers by blocking the second one; a user starting a second
`ausil-search index` deserves an immediate, clear message instead. The kernel drops the lock
when the holder dies (even on `kill -9`), so a stale lock file never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
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
