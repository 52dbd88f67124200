"""Writes to the index from the service: index jobs and removals, one at a time, each in a child process.

Why a child process: LMDB allows an environment to be opened once per process, and the server keeps
its read-only one open for queries; a writable one must live elsewhere. The child opens a writable
`SearchEngine`, which takes the index's writer lock exactly as `ausil-search index` does, so a CLI run
and a server job exclude each other, and a killed child loses at most its uncommitted batch.

Protocol: the parent writes one JSON line (the task) to the child's stdin and later, to stop a job,
the line `stop` (or closes stdin, e.g. when the server dies). The child prints JSON events on stdout:
`{"event": "plan", "total": n}`, `{"event": "file", "path", "error", "audio_s"}`, then `{"event": "done",
"report": {...}}` or `{"event": "error", "error": "..."}`. A stop is honoured between files: the
engine commits what was extracted (its interruption path) and reports `interrupted`.

Run as `python -m ausil_search.service.writer` (by the server only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..search.engine import SEGMENTS_DIR
from ..errors import AusilError, IndexStoreError
from ..search.stores import WriterLock

KEEP_FINISHED_JOBS = 100
STOP_WAIT_S = 30.0


class WriterBusy(AusilError):
    """The index is being written (a job of this server, or another process such as a CLI `index`)."""


@dataclass
class Job:
    """An index job's progress as the server reports it (`GET /jobs/{id}`)."""

    id: str
    paths: list[str]
    state: str = "starting"  # starting, running, stopping, done, stopped, failed
    files_total: int | None = None
    files_done: int = 0
    audio_seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)
    error: str | None = None
    report: dict | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def to_dict(self) -> dict:
        return {
            "id": self.id, "state": self.state, "paths": self.paths, "files_total": self.files_total,
            "files_done": self.files_done, "audio_seconds": round(self.audio_seconds, 3), "errors": list(self.errors),
            "error": self.error, "report": self.report, "started": self.started, "finished": self.finished,
        }


class IndexWriter:
    """Starts, watches and stops the writer children of one index; `on_commit` runs when a child has finished
    (queries also notice commits by themselves, see `search.WarmSearch.refresh`)."""

    def __init__(self, index_dir: Path, model: str | None, roots: tuple[Path, ...], workers: int | None,
                 device: str | None, on_commit: Callable[[], None] = lambda: None) -> None:
        self.index_dir = Path(index_dir)
        self.base_task = {"index": str(self.index_dir), "model": model, "roots": [str(r) for r in roots],
                          "workers": workers, "device": device}
        self.on_commit = on_commit
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: tuple[Job | None, subprocess.Popen] | None = None

    # ---------------------------------------------------------------- children

    def _spawn(self, task: dict) -> subprocess.Popen:
        """A child for `task`; the caller holds `_lock` and has checked that no writer is active."""
        self._check_lock_free()
        child = subprocess.Popen(
            [sys.executable, "-m", "ausil_search.service.writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True,  # a Ctrl-C at the server's terminal reaches the server only
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        child.stdin.write(json.dumps({**self.base_task, **task}) + "\n")
        child.stdin.flush()
        return child

    def _check_lock_free(self) -> None:
        """Fail fast with 'busy' when another process writes; the child takes the lock for real."""
        if self._active is not None:
            raise WriterBusy("an index job of this server is running; wait for it or stop it (DELETE /jobs/{id})")
        probe = WriterLock(self.index_dir / SEGMENTS_DIR)
        try:
            probe.acquire()
        except IndexStoreError as exc:
            raise WriterBusy(str(exc)) from None
        probe.release()

    # ---------------------------------------------------------------- index jobs

    def start_index(self, paths: list[Path]) -> Job:
        with self._lock:
            job = Job(id=uuid.uuid4().hex[:12], paths=[str(p) for p in paths])
            child = self._spawn({"action": "index", "paths": job.paths})
            self._active = (job, child)
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_FINISHED_JOBS and not next(iter(self._jobs.values())).active:
                self._jobs.popitem(last=False)
        threading.Thread(target=self._follow, args=(job, child), name=f"job-{job.id}", daemon=True).start()
        return job

    def _follow(self, job: Job, child: subprocess.Popen) -> None:
        """Read the child's events into `job` until it exits."""
        for line in child.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                self._apply(job, event)
        code = child.wait()
        with self._lock:  # final only now: until the child has exited (and dropped the lock) the job is active
            if job.error is not None:
                job.state = "failed"
            elif job.report is not None:
                job.state = "stopped" if job.report.get("interrupted") else "done"
            else:
                job.state, job.error = "failed", f"the writer process exited with code {code}"
            job.finished = time.time()
            self._active = None
        self.on_commit()

    @staticmethod
    def _apply(job: Job, event: dict) -> None:
        kind = event.get("event")
        if kind == "plan":
            job.files_total = event["total"]
            if job.state == "starting":
                job.state = "running"
        elif kind == "file":
            job.files_done += 1
            job.audio_seconds += event.get("audio_s") or 0.0
            if event.get("error"):
                job.errors.append({"path": event["path"], "error": event["error"]})
        elif kind == "skip":
            job.errors.append({"path": event["path"], "error": event["error"]})
        elif kind == "done":
            job.report = event["report"]
            job.audio_seconds = job.report.get("audio_seconds", job.audio_seconds)
        elif kind == "error":
            job.error = event["error"]

    def jobs(self) -> list[dict]:
        with self._lock:
            return [job.to_dict() for job in self._jobs.values()]

    def job(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.to_dict()

    def stop(self, job_id: str, wait_s: float = STOP_WAIT_S) -> dict | None:
        """Ask the job to stop after the file in progress; waits up to `wait_s` for it to finish."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            active = self._active
            if job.active and active is not None and active[0] is job:
                job.state = "stopping"
                try:
                    active[1].stdin.write("stop\n")
                    active[1].stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._lock:
                if not job.active:
                    break
            time.sleep(0.05)
        with self._lock:
            return job.to_dict()

    # ---------------------------------------------------------------- removals

    def remove(self, paths: list[str]) -> list[str]:
        """Remove these stored paths in a child (which takes the writer lock); waits for it."""
        with self._lock:
            child = self._spawn({"action": "remove", "paths": paths})
            self._active = (None, child)
        try:
            output, _ = child.communicate()
        finally:
            with self._lock:
                self._active = None
        self.on_commit()
        events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        for event in events:
            if event.get("event") == "error":
                raise WriterBusy(event["error"]) if "being written" in event["error"] else AusilError(event["error"])
            if event.get("event") == "removed":
                return event["paths"]
        raise AusilError(f"the writer process exited with code {child.returncode}")

    def close(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop a running job (server shutdown); a child that does not stop in time is killed."""
        with self._lock:
            active = self._active
        if active is None:
            return
        job, child = active
        if job is not None:
            self.stop(job.id, wait_s)
        try:
            child.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            child.kill()  # LMDB commits are atomic: at most the batch in progress is lost
            child.wait()


# -------------------------------------------------------------------- the child process


class StopRequested(KeyboardInterrupt):
    """Raised in the engine's callbacks: the engine handles it as an interruption (commit, then report)."""


def _emit(**event) -> None:
    print(json.dumps(event), flush=True)


def _watch_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()  # 'stop', or stdin closed because the server went away


def _index(engine, task: dict, stop: threading.Event) -> None:
    """Index the task's paths, keeping only files that resolve under the roots (links are followed by the walk)."""
    from ..search.engine import has_audio_stream
    from ..media.scan import walk_media

    from .config import Roots

    roots = Roots([Path(r) for r in task["roots"]])
    skipped: dict[str, str] = {}

    def skip(path: Path, reason: str) -> None:
        skipped[str(path)] = reason
        _emit(event="skip", path=str(path), error=reason)

    files = []
    for path in walk_media([Path(p) for p in task["paths"]], has_audio_stream, on_skip=skip):
        if stop.is_set():
            raise StopRequested
        if roots.contains(path.resolve()):
            files.append(path)
        else:
            skip(path, "refused: a link that leads outside the --root directories")

    def progress(stage: str, completed: int, total: int | None = None, *, item: str | None = None,
                 skipped: str | None = None, metrics=None) -> None:
        if stage != "index":
            return
        if item is None:  # the stage starts: how many files need work
            _emit(event="plan", total=total)
        else:
            from ..media.audio import probe

            seconds = None
            if skipped is None:
                try:
                    seconds = probe(item).duration_s
                except AusilError:
                    pass
            _emit(event="file", path=item, error=skipped, audio_s=seconds)
        if stop.is_set():
            raise StopRequested

    report = engine.index_paths(files, progress=progress)
    report.skipped.update(skipped)
    _emit(event="done", report=report.to_dict())


def main() -> None:
    task = json.loads(sys.stdin.readline())
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    try:
        from ..search.engine import SearchEngine

        with SearchEngine(Path(task["index"]), task["model"], writable=True, device=task["device"],
                          workers=task["workers"]) as engine:
            if task["action"] == "remove":
                _emit(event="removed", paths=engine.remove([Path(p) for p in task["paths"]]))
            else:
                _index(engine, task, stop)
    except StopRequested:  # stopped before any file was extracted
        _emit(event="done", report={"interrupted": True, "added": 0})
    except AusilError as exc:
        _emit(event="error", error=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
