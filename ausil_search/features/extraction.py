"""A media file → its per-segment backbone descriptors: the one pipeline that index, query, train and
the release commands share.

:func:`path_descriptors` decodes a file (or its start) → log-mel → segments → backbone;
:func:`signal_descriptors` does the same for audio already in memory (training's augmented
excerpts). A feature file instead holds descriptors already (:mod:`.feature_files`).
:class:`Extractor` runs the pipeline with a model's backbone over many files: decoding and
spectrograms run in worker processes while the backbone runs batched in the main process, so the
two overlap. Long files travel from a worker as a temporary `.npy` that the main process
memory-maps and feeds to the backbone batch by batch, which keeps memory bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..media.audio import decode_audio
from .backbone import SegmentEncoder
from ..errors import AusilError, InputError
from ..model import AuSiLModel
from .scratch import ScratchDir, die_with_parent, spill_writes
from .spectrogram import FrontEnd, LogMelAccumulator, iter_segment_batches, log_mel, segment_count

# Log-mels longer than this (frames; ≈ 10 min) leave a worker through a temporary file.
INLINE_FRAMES_MAX = 52_000


@dataclass
class LogMel:
    """A file's log-mel spectrogram, in memory or in a temporary `.npy` owned by this object."""

    frames: np.ndarray | None
    spill_path: str | None
    duration_s: float

    def array(self) -> np.ndarray:
        return self.frames if self.frames is not None else np.load(self.spill_path, mmap_mode="r")

    def release(self) -> None:
        if self.spill_path:
            Path(self.spill_path).unlink(missing_ok=True)


@dataclass
class ExtractedVideo:
    """The outcome for one input: descriptors, or the one-line reason it was skipped."""

    path: Path
    descriptors: np.ndarray | None = None
    duration_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def compute_log_mel(path: Path, frontend: FrontEnd, spill_dir: str | None = None,
                    max_seconds: float | None = None) -> LogMel:
    """The log-mel of a media file's audio (its first `max_seconds` when given), streamed."""
    accumulator = LogMelAccumulator(frontend, spill_dir=spill_dir)
    n_samples = 0
    for chunk in decode_audio(path, sample_rate=frontend.sample_rate, max_seconds=max_seconds):
        accumulator.push(chunk)
        n_samples += len(chunk)
    if n_samples == 0:
        raise InputError(f"{path}: the audio stream holds no samples")
    frames = accumulator.finish()
    duration = n_samples / frontend.sample_rate
    if len(frames) <= INLINE_FRAMES_MAX:
        return LogMel(np.ascontiguousarray(frames, dtype=np.float32), None, duration)
    with spill_writes(spill_dir):
        fd, spill = tempfile.mkstemp(prefix="ausil-logmel-", suffix=".npy", dir=spill_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.asarray(frames, dtype=np.float32))
        except BaseException:
            Path(spill).unlink(missing_ok=True)
            raise
    return LogMel(None, spill, duration)


def encode_log_mel(spectrogram: LogMel, encoder: SegmentEncoder, frontend: FrontEnd) -> np.ndarray:
    """The descriptors of a log-mel's segments (batch by batch, so a memory-mapped one is never loaded
    whole); releases the log-mel's temporary file."""
    try:
        array = spectrogram.array()
        if segment_count(len(array), frontend) == 0:
            raise InputError("no segments")
        return encoder.encode_batches(iter_segment_batches(array, frontend, encoder.batch_size))
    finally:
        spectrogram.release()


def signal_descriptors(samples: np.ndarray, encoder: SegmentEncoder, frontend: FrontEnd) -> np.ndarray:
    """The descriptors of audio in memory (mono, at the front-end's rate), as a file of it would give."""
    return encode_log_mel(LogMel(log_mel(samples, frontend), None, len(samples) / frontend.sample_rate), encoder, frontend)


def path_descriptors(path: Path, encoder: SegmentEncoder, frontend: FrontEnd,
                     max_seconds: float | None = None) -> ExtractedVideo:
    """The descriptors of one media file, in this process: its first `max_seconds` (all of it by
    default) decoded → log-mel → segments → backbone. Raises InputError for unusable media.

    Callers that also take feature files ask :func:`~.feature_files.stored_descriptors` first.
    """
    path = Path(path)
    with ScratchDir() as scratch:
        spectrogram = compute_log_mel(path, frontend, str(scratch), max_seconds)
        return ExtractedVideo(path, encode_log_mel(spectrogram, encoder, frontend), spectrogram.duration_s)


def _worker_init(parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent stops the run and ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _log_mel_job(path: str, frontend: FrontEnd, spill_dir: str | None) -> LogMel | str:
    """Runs in a worker: user-caused failures come back as a message rather than an exception."""
    try:
        return compute_log_mel(Path(path), frontend, spill_dir)
    except (InputError, OSError) as exc:
        return _failure(path, exc)
    except AusilError:  # not the file's fault (a full temporary disk): the run must stop
        raise
    except Exception as exc:  # a decoder crash on one file must not stop a batch run
        return _failure(path, exc)


def _failure(path: str | Path, exc: Exception) -> str:
    """The one-line reason a file was skipped."""
    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: cannot read ({exc.strerror})"
    return f"{path}: cannot process ({type(exc).__name__}: {exc})"


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class Extractor:
    """Runs the front-end and backbone of a model over media files."""

    def __init__(
        self,
        model: AuSiLModel,
        device: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str = "fused",
        frontend: FrontEnd | None = None,
    ):
        self.model = model
        self.frontend = frontend or model.frontend
        self.encoder = SegmentEncoder(model.backbone, device=device, batch_size=batch_size, precision=precision)
        self.batch_size = self.encoder.batch_size
        self.workers = default_workers() if workers is None else workers

    @property
    def device(self):
        return self.encoder.device

    def encode_log_mel(self, log_mel: LogMel) -> np.ndarray:
        return encode_log_mel(log_mel, self.encoder, self.frontend)

    def descriptors(self, path: Path, max_seconds: float | None = None) -> ExtractedVideo:
        """One file, in this process (queries): see :func:`path_descriptors`."""
        return path_descriptors(path, self.encoder, self.frontend, max_seconds)

    def run(self, paths: Iterable[Path]) -> Iterator[ExtractedVideo]:
        """Every path in order; files that fail are yielded with `error` set instead of raising.

        Workers die with this process (even on SIGKILL), ignore Ctrl-C (this process stops the
        run and ends them), and spill into a scratch directory that a later run removes if this
        one cannot (see `scratch`).
        """
        paths = [Path(p) for p in paths]
        if self.workers == 0 or len(paths) <= 1:
            for path in paths:
                try:
                    yield self.descriptors(path)
                except (InputError, OSError) as exc:  # as in a worker: one file never stops the run
                    yield ExtractedVideo(path, error=_failure(path, exc))
            return
        context = multiprocessing.get_context("spawn")
        ahead = 2 * self.workers
        finished = False
        with ScratchDir() as spill_dir:
            pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init,
                                       initargs=(os.getpid(),))
            pending: list[tuple[Path, Future]] = []
            queue = iter(paths)
            try:
                while True:
                    while len(pending) < ahead:
                        path = next(queue, None)
                        if path is None:
                            break
                        pending.append((path, pool.submit(_log_mel_job, str(path), self.frontend, str(spill_dir))))
                    if not pending:
                        break
                    path, future = pending.pop(0)
                    outcome = future.result()
                    if isinstance(outcome, str):
                        yield ExtractedVideo(path, error=outcome)
                        continue
                    yield ExtractedVideo(path, self.encode_log_mel(outcome), outcome.duration_s)
                finished = True
            finally:
                workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
                pool.shutdown(wait=finished, cancel_futures=True)
                if not finished:  # interrupted or failed: do not wait for files being decoded
                    for process in workers:
                        process.terminate()
                    for process in workers:
                        process.join(5)
