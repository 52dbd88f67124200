"""`GET /dedup`: duplicate groups over the served index, computed in the background.

Scoring every pair of a big index takes minutes, far longer than a request may wait, so a request
that finds no result for the index as it is now starts a run in a thread of its own and answers at
once with its progress (202); later requests get that progress, then the groups a page at a time.
One run at a time (the index's dedup data has its own writer lock, shared with `ausil-search dedup`);
queries keep being answered meanwhile. A result is kept per set of parameters until the index
changes, and the next run after a change is incremental: only pairs with new videos are scored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..search.dedup import DedupResult, find_duplicate_groups, parse_since
from ..errors import AusilError, IndexStoreError

log = logging.getLogger("ausil_search.service")
KEEP_RESULTS = 4  # parameter sets whose last result is kept


class DedupBusy(AusilError):
    """Another dedup run (other parameters) is in progress."""


class _Stopped(Exception):
    """Raised inside a run's progress callback when the server shuts down."""


@dataclass(frozen=True)
class DedupParams:
    threshold: float | None
    candidates: int
    since: str | None  # as given (`7d` means seven days before the run starts)
    linkage: str = "average"


@dataclass
class DedupRun:
    params: DedupParams
    stamp: tuple  # the index's state when the run started
    state: str = "running"  # running, done, failed
    pairs_total: int | None = None
    pairs_scored: int = 0  # pairs looked at: scored, or skipped because their videos were already joined
    pairs_skipped: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    conflict: bool = False  # failed because another process holds the index's dedup data
    result: DedupResult | None = None

    def progress(self) -> dict:
        return {"status": self.state, "pairs_total": self.pairs_total, "pairs_scored": self.pairs_scored,
                "pairs_skipped": self.pairs_skipped,
                "started": self.started, "finished": self.finished, "error": self.error}


class DedupRuns:
    """At most one background dedup run over a `WarmSearch`'s engine, and the latest results."""

    def __init__(self, search) -> None:
        self.search = search
        self._lock = threading.Lock()
        self._results: OrderedDict[DedupParams, DedupRun] = OrderedDict()
        self._running: DedupRun | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def get(self, params: DedupParams) -> DedupRun:
        """The finished run for `params` on the index as it is now, else the run in progress for them
        (started here if none is); DedupBusy while a run with other parameters is going."""
        self.search.refresh()
        stamp = self.search.index_stamp()
        with self._lock:
            running = self._running
            if running is not None:
                if running.params != params:
                    raise DedupBusy("another dedup run is in progress (other parameters); try again when it ends")
                return running
            finished = self._results.get(params)
            if finished is not None and (finished.stamp == stamp or finished.state == "failed"):
                if finished.state == "failed":
                    del self._results[params]  # reported once; the next request tries again
                return finished
            run = self._running = DedupRun(params, stamp)
            self._thread = threading.Thread(target=self._run, args=(run,), name="ausil-dedup", daemon=True)
            self._thread.start()
            return run

    def _run(self, run: DedupRun) -> None:
        def progress(stage: str, completed: int, total: int | None = None, metrics=None, **_) -> None:
            if stage == "dedup":
                run.pairs_total, run.pairs_scored = total, completed
                run.pairs_skipped = int((metrics or {}).get("pairs_skipped", run.pairs_skipped))
            if self._stop.is_set():
                raise _Stopped

        try:
            run.result = find_duplicate_groups(
                self.search.engine, run.params.threshold, candidates=run.params.candidates,
                since=parse_since(run.params.since) if run.params.since else None,
                progress=progress, linkage=run.params.linkage)
            run.state = "done"
        except _Stopped:
            run.state, run.error = "failed", "the server is shutting down"
        except AusilError as exc:
            run.state, run.error, run.conflict = "failed", str(exc), isinstance(exc, IndexStoreError)
        except Exception:
            log.exception("dedup run failed")
            run.state, run.error = "failed", "internal error (details in the server log)"
        finally:
            run.finished = time.time()
            with self._lock:
                self._running = None
                self._results[run.params] = run
                self._results.move_to_end(run.params)
                while len(self._results) > KEEP_RESULTS:
                    self._results.popitem(last=False)

    def close(self) -> None:
        """Stop a run in progress (its scores so far stay stored) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
