"""How every command shows progress: the one implementation of :mod:`ausil_search.progress`.

On a terminal, a tqdm bar per stage on stderr. Anywhere else (stderr sent to a log file) a plain
`progress:` line at most every LOG_INTERVAL_S seconds, and one when such a stage ends, so the log
of a long run shows how far it got while short runs stay quiet. What was skipped is printed either
way, one `skipped:` line each.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from ..progress import STAGE_UNITS
from .base import fmt_time

LOG_INTERVAL_S = 10.0


class ProgressDisplay:
    """A progress callable for the library; a context manager that closes the last bar or line."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = LOG_INTERVAL_S, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s, self.clock = interval_s, clock
        self.stage: str | None = None
        self.completed, self.total = 0, None
        self.metrics: Mapping[str, float] = {}
        self._bar = None
        self._started = self._last_line = 0.0
        self._lines = 0  # plain lines printed for the current stage
        self._shown = -1  # the count the last plain line showed

    def __call__(self, stage: str, completed: int, total: int | None = None, *, item: str | None = None,
                 skipped: str | None = None, metrics: Mapping[str, float] | None = None) -> None:
        if stage != self.stage or completed < self.completed:
            self._end_stage()
            self._start_stage(stage, completed, total)
        self.completed, self.total = completed, total
        if metrics:
            self.metrics = metrics
        if skipped:
            self._write(f"skipped: {skipped}")
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
                self._bar.refresh()
            if self.metrics:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in self.metrics.items()}, refresh=False)
            self._bar.update(completed - self._bar.n)
        elif self.clock() - self._last_line >= self.interval_s and completed != self._shown:
            self._line()

    def close(self) -> None:
        self._end_stage()
        self.stage = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_stage(self, stage: str, completed: int, total: int | None) -> None:
        self.stage, self.completed, self.total, self.metrics = stage, completed, total, {}
        self._started = self._last_line = self.clock()
        self._lines, self._shown = 0, completed
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=completed, desc=stage, unit=STAGE_UNITS.get(stage) or "it",
                             file=self.stream, dynamic_ncols=True, disable=False)

    def _end_stage(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines and self.completed != self._shown:
            self._line()  # where a logged stage ended

    def _line(self) -> None:
        unit = STAGE_UNITS.get(self.stage or "", "")
        count = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        parts = [f"progress: {self.stage} {count}" + (f" {unit}s" if unit else "")]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        parts += [f"{name} {value:.4g}" for name, value in self.metrics.items()]
        parts.append(f"{fmt_time(self.clock() - self._started)} elapsed")
        self._write(", ".join(parts))
        self._last_line, self._shown = self.clock(), self.completed
        self._lines += 1

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
