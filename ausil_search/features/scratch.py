"""Per-run scratch directories for temporary files (the spilled spectrograms of long files), and
worker processes that die with their parent.

A run's temporary files live in `<TMPDIR>/ausil-run-<pid>-<random>/`, which holds an `owner.lock`
that the run keeps locked (`flock`) while it lives. The kernel drops that lock when its holder dies,
even on `kill -9`, so the next run removes every scratch directory whose lock it can take: what a
killed run left behind never outlives the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import write_failure_reason
from ..errors import DiskFullError

PREFIX = "ausil-run-"
LOCK_NAME = "owner.lock"
UNLOCKED_GRACE_S = 60.0  # a directory without a lock file yet may be one being created right now

_swept: set[Path] = set()


class ScratchDir:
    """A fresh scratch directory under `parent` (default: the system temporary directory), removed
    on `cleanup()` / at the end of a `with` block; stale ones of dead runs are removed first."""

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        parent = Path(parent or tempfile.gettempdir())
        sweep_stale_once(parent)
        self._fd: int | None = None
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
            self._fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as error:
            self.cleanup()
            raise DiskFullError(
                f"cannot create a temporary directory in {parent} ({write_failure_reason(parent, error)}); "
                "set TMPDIR to a disk with room"
            ) from None

    def cleanup(self) -> None:
        if getattr(self, "path", None) is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def sweep_stale_once(parent: str | os.PathLike[str] | None = None) -> None:
    """:func:`sweep_stale` the first time this process asks for `parent` (default: the temp directory).

    An index run calls it at its start, so that a run with nothing left to extract (which makes no
    scratch directory of its own) still removes what a killed run left behind.
    """
    parent = Path(parent or tempfile.gettempdir())
    if parent not in _swept:
        _swept.add(parent)
        sweep_stale(parent)


def sweep_stale(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove the scratch directories under `parent` whose owner is gone; returns them."""
    removed = []
    for entry in Path(parent).glob(PREFIX + "*"):
        try:
            fd = os.open(entry / LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:
            try:
                stale = time.time() - entry.stat().st_mtime > UNLOCKED_GRACE_S
            except OSError:
                continue
            if stale and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            continue
        except OSError:  # another user's, or not a directory of ours
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            os.close(fd)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextmanager
def spill_writes(directory: str | os.PathLike[str] | None) -> Iterator[None]:
    """Turn a full disk while writing temporary files under `directory` into one clear error. It
    stops the run rather than skipping the file: every long file after it would fail the same way."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = directory or tempfile.gettempdir()
        raise DiskFullError(
            f"the temporary directory {where} is full ({error.strerror}) while spilling a long file's "
            "spectrogram; set TMPDIR to a disk with room"
        ) from None


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when `parent_pid`, its parent, dies, even by SIGKILL.

    A pool worker otherwise waits forever on its task queue after the parent is killed (every
    worker holds the queue's write end too, so it never sees end-of-file). Linux delivers a signal
    on the parent's death (PR_SET_PDEATHSIG); elsewhere a thread watches the parent pid.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the request took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
