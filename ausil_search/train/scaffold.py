"""What the head trainer and the backbone trainer share: checkpoints, Ctrl-C, step records.

Both trainers promise the same things: a checkpoint is written whole or not at all, resuming refuses
a checkpoint of another kind, other settings or other data (one line saying which), Ctrl-C stops
after the step in progress and saves, and a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..atomic import atomic_output, write_json_atomic
from ..errors import AusilError

from .reports import ArtifactReport, SavedModel

if TYPE_CHECKING:
    from ..model import AuSiLModel


@dataclass
class StepRecord:
    """One optimisation step; each trainer adds what its loss reports."""

    step: int
    loss: float


@dataclass
class TrainedModel:
    """What a training run returns: the model, its metadata recording what it came from and how, and
    the run's typed report (``report.to_dict()`` is its JSON)."""

    model: AuSiLModel
    report: ArtifactReport

    def save(self, output: Path, float16: bool = False) -> Path | None:
        """Write the model and record it in the report; a trainer's report also goes beside the model
        (``.report.json``), whose path is returned (None for reports that are not written to a file)."""
        output = Path(output)
        self.report.output = str(output)
        self.report.model = SavedModel(self.model.save(output, float16=float16), self.model.identity)
        if not self.report.writes_report_file:
            return None
        report_path = output.with_suffix(".report.json")
        write_json_atomic(report_path, self.report.to_dict())
        return report_path


def checkpoint_to_use(checkpoint_dir: Path | None, file_name: str, resume: bool) -> Path | None:
    """The checkpoint a run writes (None without a folder), after the --resume checks both trainers make."""
    checkpoint = Path(checkpoint_dir) / file_name if checkpoint_dir else None
    if resume and (checkpoint is None or not checkpoint.is_file()):
        raise AusilError(f"--resume: no checkpoint in {checkpoint_dir}" if checkpoint else "--resume needs --checkpoint-dir")
    if not resume and checkpoint is not None and checkpoint.is_file():
        raise AusilError(f"{checkpoint} exists: pass --resume to continue it, or choose another --checkpoint-dir")
    return checkpoint


def write_checkpoint(path: Path, state: dict) -> Path:
    """Write atomically (the run holds the folder): a crash mid-write leaves the previous checkpoint."""
    with atomic_output(path, sole_writer=True) as handle:
        torch.save(state, handle)
    return path


def read_checkpoint(path: Path | None, fmt: str, what: str, changed_settings: Callable[[dict], list[str]],
                    data_key: str, data_fingerprint: object) -> dict:
    """A checkpoint's state, refused (one clear line) when it is missing or unreadable, of another kind,
    or was made with other settings or data than the run that wants to resume it."""
    if path is None or not Path(path).is_file():
        raise AusilError(f"no checkpoint to resume from in {Path(path).parent if path else None}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise AusilError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise AusilError(f"{path}: not an ausil-search {what} checkpoint")
    changed = changed_settings(state["config"])
    if changed:
        raise AusilError(f"{path}: the checkpoint was made with other settings ({', '.join(changed)}); "
                         "use the same ones, or another --checkpoint-dir")
    if state[data_key] != data_fingerprint:
        raise AusilError(f"{path}: the checkpoint was made on other training data")
    return state


class StopRequest:
    """Within the block, Ctrl-C (SIGINT) sets :attr:`requested`, so that the loop can finish its step,
    save and stop; a second Ctrl-C raises KeyboardInterrupt at once. Off the main thread (where
    signal handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _on_interrupt(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
