"""A media file → its per-segment backbone descriptors: the one pipeline that index, query, train and
the release commands share.

:func:`path_descriptors` decodes a file (or its start) → log-mel → segments → backbone;
:func:`signal_descriptors` does the same for audio already in memory (training's augmented
excerpts). A feature file instead holds descriptors already (:mod:`.feature_files`).
:class:`Extractor` runs the pipeline with a model's backbone over many files: decoding and
spectrograms run in worker processes while the backbone runs batched in the main process, so the
two overlap. Long files travel from a worker as a temporary `.npy` that the main process
reads and feeds to the backbone batch by batch, and a caller that wants less than the descriptors
(the indexer: compact embedded segments) consumes them batch by batch too (a sink), so memory
stays bounded whatever the file's length.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from ..media.audio import decode_audio
from .backbone import SegmentEncoder
from ..devices import one_blas_thread
from ..errors import AusilError, InputError
from ..model import AuSiLModel
from .scratch import ScratchDir, die_with_parent, spill_writes
from .spectrogram import FrontEnd, LogMelAccumulator, iter_segment_batches, log_mel, release_pages, segment_count

# Log-mels longer than this (frames; ≈ 10 min) leave a worker through a temporary file.
INLINE_FRAMES_MAX = 52_000


class SpilledFrames:
    """The frames of a spilled log-mel `.npy`, read by plain file reads as they are sliced.

    A memory map of the file would do the same, but every page it touched would count in this
    process's resident memory until unmapped: a 3-hour file's whole log-mel (~0.5 GB).
    """

    def __init__(self, path: str) -> None:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                           else np.lib.format.read_array_header_2_0)(handle)
            self._offset = handle.tell()
        if fortran_order or len(shape) != 2 or dtype != np.float32:
            raise ValueError(f"{path}: not a C-order float32 (frames, mels) array")
        self.path, self.shape, self.dtype, self.ndim = path, shape, dtype, 2
        self._row_bytes = shape[1] * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("spilled frames are read in contiguous runs")
        count = max(0, stop - start)
        with open(self.path, "rb") as handle:
            handle.seek(self._offset + start * self._row_bytes)
            data = handle.read(count * self._row_bytes)
        return np.frombuffer(data, self.dtype).reshape(count, self.shape[1])


@dataclass
class LogMel:
    """A file's log-mel spectrogram, in memory or in a temporary `.npy` owned by this object."""

    frames: np.ndarray | None
    spill_path: str | None
    duration_s: float

    def array(self) -> np.ndarray | SpilledFrames:
        return self.frames if self.frames is not None else SpilledFrames(self.spill_path)

    def release(self) -> None:
        if self.spill_path:
            Path(self.spill_path).unlink(missing_ok=True)


class DescriptorSink(Protocol):
    """Takes one file's descriptors batch by batch (in order) and makes what the caller keeps of them."""

    def add(self, descriptors: np.ndarray) -> None: ...

    def finish(self) -> Any: ...


# Makes the sink of a file from its number of segments.
SinkFactory = Callable[[int], DescriptorSink]


def into_sink(descriptors: np.ndarray, sink: SinkFactory) -> Any:
    """Descriptors computed elsewhere (e.g. on a cluster) given whole to a file's sink."""
    target = sink(len(descriptors))
    target.add(descriptors)
    return target.finish()


@dataclass
class ExtractedVideo:
    """The outcome for one input: descriptors (or what a sink made of them), or the one-line reason
    it was skipped."""

    path: Path
    descriptors: np.ndarray | None = None
    duration_s: float = 0.0
    error: str | None = None
    consumed: Any = None  # the sink's `finish()` when the run was given a sink factory

    @property
    def ok(self) -> bool:
        return self.error is None


def write_npy_in_blocks(handle, frames: np.ndarray, rows: int = 65_536) -> None:
    """`np.save` of a float32 (frames, mels) array, a block of rows at a time, each block's pages
    released after it is written (a memory-mapped log-mel is not pulled into memory whole)."""
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": frames.shape})
    for start in range(0, len(frames), rows):
        handle.write(np.ascontiguousarray(frames[start:start + rows], dtype=np.float32).tobytes())
        release_pages(frames)


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
                write_npy_in_blocks(handle, frames)
        except BaseException:
            Path(spill).unlink(missing_ok=True)
            raise
    return LogMel(None, spill, duration)


def encode_log_mel(spectrogram: LogMel, encoder: SegmentEncoder, frontend: FrontEnd,
                   sink: SinkFactory | None = None) -> np.ndarray | Any:
    """The descriptors of a log-mel's segments (batch by batch, so a spilled one is never loaded
    whole), or, with `sink`, what a sink fed them batch by batch made of them; releases the
    log-mel's temporary file."""
    try:
        array = spectrogram.array()
        n_segments = segment_count(len(array), frontend)
        if n_segments == 0:
            raise InputError("no segments")
        batches = iter_segment_batches(array, frontend, encoder.batch_size)
        if sink is None:
            return encoder.encode_batches(batches)
        consumer = sink(n_segments)
        for descriptors in encoder.iter_encode_batches(batches):
            consumer.add(descriptors)
        return consumer.finish()
    finally:
        spectrogram.release()


def extracted_video(path: Path, spectrogram: LogMel, encoder: SegmentEncoder, frontend: FrontEnd,
                    sink: SinkFactory | None = None) -> ExtractedVideo:
    encoded = encode_log_mel(spectrogram, encoder, frontend, sink)
    if sink is None:
        return ExtractedVideo(path, encoded, spectrogram.duration_s)
    return ExtractedVideo(path, None, spectrogram.duration_s, consumed=encoded)


def signal_descriptors(samples: np.ndarray, encoder: SegmentEncoder, frontend: FrontEnd) -> np.ndarray:
    """The descriptors of audio in memory (mono, at the front-end's rate), as a file of it would give."""
    return encode_log_mel(LogMel(log_mel(samples, frontend), None, len(samples) / frontend.sample_rate), encoder, frontend)


def path_descriptors(path: Path, encoder: SegmentEncoder, frontend: FrontEnd,
                     max_seconds: float | None = None, sink: SinkFactory | None = None) -> ExtractedVideo:
    """The descriptors of one media file, in this process: its first `max_seconds` (all of it by
    default) decoded → log-mel → segments → backbone (into `sink` when given, see
    :func:`encode_log_mel`). Raises InputError for unusable media.

    Callers that also take feature files ask :func:`~.feature_files.stored_descriptors` first.
    """
    path = Path(path)
    with ScratchDir() as scratch:
        return extracted_video(path, compute_log_mel(path, frontend, str(scratch), max_seconds), encoder, frontend,
                               sink)


def _worker_init(parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent stops the run and ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # a worker is one of several processes sharing the cores
    one_blas_thread()


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
        compile: bool = False,
    ):
        self.model = model
        self.frontend = frontend or model.frontend
        self.encoder = SegmentEncoder(model.backbone, device=device, batch_size=batch_size, precision=precision,
                                      compile=compile)
        self.batch_size = self.encoder.batch_size
        self.workers = default_workers() if workers is None else workers

    @property
    def device(self):
        return self.encoder.device

    def encode_log_mel(self, log_mel: LogMel, sink: SinkFactory | None = None) -> np.ndarray | Any:
        return encode_log_mel(log_mel, self.encoder, self.frontend, sink)

    def _extracted(self, path: Path, log_mel: LogMel, sink: SinkFactory | None) -> ExtractedVideo:
        return extracted_video(path, log_mel, self.encoder, self.frontend, sink)

    def descriptors(self, path: Path, sink: SinkFactory | None = None, max_seconds: float | None = None) -> ExtractedVideo:
        """One file, in this process (queries): see :func:`path_descriptors`."""
        return path_descriptors(path, self.encoder, self.frontend, max_seconds, sink)

    def run(self, paths: Iterable[Path], sink: SinkFactory | None = None) -> Iterator[ExtractedVideo]:
        """Every path in order; files that fail are yielded with `error` set instead of raising.
        With `sink`, each file's descriptors go batch by batch to a sink made for it (`consumed`).

        Workers die with this process (even on SIGKILL), ignore Ctrl-C (this process stops the
        run and ends them), and spill into a scratch directory that a later run removes if this
        one cannot (see `scratch`).
        """
        paths = [Path(p) for p in paths]
        if self.workers == 0 or len(paths) <= 1:
            for path in paths:
                try:
                    yield self.descriptors(path, sink)
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
                    yield self._extracted(path, outcome, sink)
                finished = True
            finally:
                workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
                pool.shutdown(wait=finished, cancel_futures=True)
                if not finished:  # interrupted or failed: do not wait for files being decoded
                    for process in workers:
                        process.terminate()
                    for process in workers:
                        process.join(5)
