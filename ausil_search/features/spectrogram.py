"""AuSiL's audio front-end: the release's normalised librosa log-mel, computed in one streaming pass.

The release normalises the whole decoded signal (subtract the mean, divide by the peak absolute
value) and then takes ``librosa.power_to_db(librosa.feature.melspectrogram(y, sr=44100,
n_fft=1024, hop_length=512, n_mels=128))`` (periodic Hann window, centred frames with zero
padding, power 2, Slaney mel, 10·log10 with amin 1e-10 and an 80 dB floor below the global
maximum). Mean, peak and maximum are global, yet :class:`LogMelAccumulator` produces exactly that
result while reading the signal once, in chunks, without keeping it:

- The STFT is linear, so the frame spectrum of ``x - m`` is ``X - m·W`` with ``W`` the DFT of the
  window over the samples that lie inside the signal. For a frame fully inside the signal ``W`` is
  the DFT of the periodic Hann window, which is non-zero only in rfft bins 0 and 1. So per interior
  frame it keeps the mel projection of the power of bins ≥ 2 (independent of the mean) plus the
  complex values of bins 0 and 1, and adds the mean-corrected bins 0 and 1 at the end.
- The few frames that overlap the zero padding are computed at the end from their raw samples.
- Dividing by the peak scales every power by 1/peak², and the peak of ``|x - m|`` is
  ``max(max(x) - m, m - min(x))``; sum, min and max are tracked as the samples go by.
- dB conversion and the top-dB floor follow once the global maximum is known.

Per frame that is ~130 numbers. Past ``spill_after_s`` seconds of audio the frames go to an
anonymous temporary file instead of RAM, so a three-hour film runs in bounded memory.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, BinaryIO

import numpy as np
import torch

from ..media.audio import SAMPLE_RATE, decode_audio
from .scratch import spill_writes

# The paper's time-step ablation: step in ms -> (step frames, window frames).
STEP_MS_PRESETS = {1000: (87, 174), 500: (44, 174), 250: (22, 174), 125: (11, 176)}
AMIN = 1e-10
SPILL_AFTER_S = 20 * 60.0
_MEAN_DEPENDENT_BINS = 2  # rfft bins where a Hann window's spectrum is non-zero
_FRAMES_PER_BLOCK = 4096
_MIN_FRAMES_PER_BLOCK = 128  # small pushes wait for a batch; per-call overhead would dominate
_PUSH_SLICE_SAMPLES = 1 << 20


@dataclass(frozen=True)
class FrontEnd:
    """Every parameter that shapes a segment; an index records it and refuses to mix front-ends."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    top_db: float = 80.0
    step_frames: int = 87
    window_frames: int = 174
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "step_frames", "window_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"FrontEnd.{name} must be a positive integer, got {value!r}")
        if self.n_fft < 4 or self.n_fft % 2:
            raise ValueError(f"FrontEnd.n_fft must be even and at least 4, got {self.n_fft}")
        if self.top_db <= 0:
            raise ValueError(f"FrontEnd.top_db must be positive, got {self.top_db}")

    @classmethod
    def from_step_ms(cls, step_ms: int) -> FrontEnd:
        """The paper's presets for 1000/500/250/125 ms; other steps scale 87 frames per second."""
        if step_ms <= 0:
            raise ValueError(f"step must be positive, got {step_ms} ms")
        step_frames, window_frames = STEP_MS_PRESETS.get(step_ms, (round(step_ms * 87 / 1000), 174))
        if step_frames == 0:
            raise ValueError(f"step {step_ms} ms is shorter than one spectrogram frame")
        return cls(step_frames=step_frames, window_frames=window_frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontEnd:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error, not a silent default."""
        names = {field.name for field in fields(cls)}
        if set(data) != names:
            raise ValueError(
                f"front-end parameters do not match: missing {sorted(names - set(data))}, "
                f"unknown {sorted(set(data) - names)}"
            )
        return cls(**data)

    @property
    def step_seconds(self) -> float:
        return self.step_frames * self.hop_length / self.sample_rate

    @property
    def window_seconds(self) -> float:
        return self.window_frames * self.hop_length / self.sample_rate


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular filters on the Slaney mel scale with Slaney area normalisation (librosa's default).

    Returns ``(n_mels, n_fft // 2 + 1)`` float64 weights for a power spectrum.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (upper - lower))  # every filter gets unit area


# Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_LINEAR_HZ_PER_MEL = 200.0 / 3
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_MELS_PER_E = 27.0 / math.log(6.4)


def _hz_to_mel(hz: float) -> float:
    if hz < _LOG_START_HZ:
        return hz / _LINEAR_HZ_PER_MEL
    return _LOG_START_MEL + math.log(hz / _LOG_START_HZ) * _LOG_MELS_PER_E


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = mels * _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_START_HZ * np.exp((mels - _LOG_START_MEL) / _LOG_MELS_PER_E)
    return np.where(mels < _LOG_START_MEL, linear, logarithmic)


class LogMelAccumulator:
    """Streaming log-mel of one signal: :meth:`push` chunks in order, then :meth:`finish` once.

    The result equals the whole-signal computation described in the module docstring. Once more than
    ``spill_after_s`` seconds have been pushed, per-frame data goes to an unnamed temporary file in
    ``spill_dir`` (system default if None) and :meth:`finish` returns a read-write ``np.memmap``
    backed by another unnamed temporary file; both disappear when no longer referenced.
    """

    def __init__(
        self,
        frontend: FrontEnd = FrontEnd(),
        spill_after_s: float = SPILL_AFTER_S,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.frontend = frontend
        self._spill_after_frames = math.ceil(spill_after_s * frontend.sample_rate / frontend.hop_length)
        self._spill_dir = spill_dir
        n_fft = frontend.n_fft
        self._window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        self._window_low_bins = np.fft.rfft(self._window.numpy())[:_MEAN_DEPENDENT_BINS]
        self._mel = torch.from_numpy(mel_filterbank(frontend.sample_rate, n_fft, frontend.n_mels))
        self._record = np.dtype(
            [("mel_rest", np.float32, (frontend.n_mels,)), ("low_bins", np.complex128, (_MEAN_DEPENDENT_BINS,))]
        )
        self._centre_pad = n_fft // 2
        # Frames before this one start inside the leading zero padding.
        self._first_interior_frame = -(-self._centre_pad // frontend.hop_length)
        self._head = np.empty(0)  # the first n_fft samples, for those leading frames
        self._pending: list[np.ndarray] = []  # samples from _pending_start on, joined when frames are due
        self._pending_start = 0
        self._next_frame = self._first_interior_frame
        self._n_samples = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._blocks: list[np.ndarray] = []
        self._n_records = 0
        self._spill_file: BinaryIO | None = None
        self._finished = False

    @property
    def n_samples(self) -> int:
        """Samples pushed so far (the audio's duration once all are in)."""
        return self._n_samples

    def push(self, samples: np.ndarray) -> None:
        """Append the next chunk (1-D, any length, at ``frontend.sample_rate``)."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        samples = np.array(samples, dtype=np.float64)  # a copy: callers may reuse their buffer
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
        if samples.size == 0:
            return
        self._n_samples += samples.size
        self._sum += float(samples.sum())
        if not math.isfinite(self._sum):
            raise ValueError("samples must be finite")
        self._min = min(self._min, float(samples.min()))
        self._max = max(self._max, float(samples.max()))
        if self._head.size < self.frontend.n_fft:
            self._head = np.concatenate([self._head, samples[: self.frontend.n_fft - self._head.size]])
        self._pending.append(samples)
        if self._ready_frames() >= _MIN_FRAMES_PER_BLOCK:
            self._consume_interior_frames()

    def finish(self) -> np.ndarray:
        """The ``(frames, n_mels)`` float32 log-mel, frames = 1 + samples // hop_length."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        if self._n_samples == 0:
            raise ValueError("no samples were pushed")
        self._consume_interior_frames()
        self._finished = True
        hop = self.frontend.hop_length
        n_frames = 1 + self._n_samples // hop
        mean = self._sum / self._n_samples
        peak = max(self._max - mean, mean - self._min)
        power_scale = 1.0 / peak**2 if peak > 0 else 1.0

        output = self._allocate(n_frames, spilled=self._spill_file is not None)
        records = self._take_records()
        highest_db = -math.inf
        for start in range(0, len(records), _FRAMES_PER_BLOCK):
            block = records[start : start + _FRAMES_PER_BLOCK]
            mel_power = self._interior_mel_power(block, mean) * power_scale
            frame = self._first_interior_frame + start
            highest_db = max(highest_db, _write_db(output, frame, mel_power))
            release_pages(records, output)
        del records
        for first_frame, last_frame, samples, samples_start in (
            (0, min(self._first_interior_frame, n_frames), self._head, 0),
            (self._next_frame, n_frames, self._joined_pending(), self._pending_start),
        ):
            if first_frame < last_frame:
                normalised = (samples - mean) / (peak if peak > 0 else 1.0)
                mel_power = self._edge_mel_power(first_frame, last_frame, normalised, samples_start)
                highest_db = max(highest_db, _write_db(output, first_frame, mel_power))
        floor = np.float32(highest_db - self.frontend.top_db)
        for start in range(0, n_frames, _FRAMES_PER_BLOCK):
            block = output[start : start + _FRAMES_PER_BLOCK]
            np.maximum(block, floor, out=block)
            release_pages(output)
        self._pending, self._head = [], np.empty(0)
        return output

    def _ready_frames(self) -> int:
        """Frames not yet consumed whose window now lies inside the signal."""
        last_ready = (self._n_samples + self._centre_pad - self.frontend.n_fft) // self.frontend.hop_length
        return max(0, last_ready - self._next_frame + 1)

    def _joined_pending(self) -> np.ndarray:
        joined = np.concatenate(self._pending) if self._pending else np.empty(0)
        self._pending = [joined]
        return joined

    def _consume_interior_frames(self) -> None:
        n_fft, hop = self.frontend.n_fft, self.frontend.hop_length
        pending = self._joined_pending()
        while (ready := self._ready_frames()) > 0:
            count = min(ready, _FRAMES_PER_BLOCK)
            offset = self._next_frame * hop - self._centre_pad - self._pending_start
            spectra = self._spectra(pending[offset : offset + (count - 1) * hop + n_fft])
            records = np.empty(count, dtype=self._record)
            rest_power = _power(spectra[_MEAN_DEPENDENT_BINS:])
            records["mel_rest"] = (self._mel[:, _MEAN_DEPENDENT_BINS:] @ rest_power).T.numpy()
            records["low_bins"] = spectra[:_MEAN_DEPENDENT_BINS].T.numpy()
            self._store(records)
            self._next_frame += count
        keep_from = max(self._next_frame * hop - self._centre_pad, self._pending_start)
        self._pending = [pending[keep_from - self._pending_start :].copy()]
        self._pending_start = keep_from

    def _spectra(self, signal: np.ndarray) -> torch.Tensor:
        """Complex rfft bins × frames of consecutive frames starting at ``signal[0]``."""
        return torch.stft(
            torch.from_numpy(signal),
            n_fft=self.frontend.n_fft,
            hop_length=self.frontend.hop_length,
            window=self._window,
            center=False,
            return_complex=True,
        )

    def _interior_mel_power(self, records: np.ndarray, mean: float) -> np.ndarray:
        low_bins = records["low_bins"] - mean * self._window_low_bins
        low_power = np.abs(low_bins) ** 2
        mel_low = self._mel[:, :_MEAN_DEPENDENT_BINS].numpy()
        return records["mel_rest"].astype(np.float64) + low_power @ mel_low.T

    def _edge_mel_power(
        self, first_frame: int, last_frame: int, normalised: np.ndarray, samples_start: int
    ) -> np.ndarray:
        """Mel power of frames that reach into the zero padding, from their normalised samples."""
        n_fft, hop = self.frontend.n_fft, self.frontend.hop_length
        span_start = first_frame * hop - self._centre_pad
        span = np.zeros((last_frame - first_frame - 1) * hop + n_fft)
        inside_from = max(span_start, 0)
        inside_to = min(span_start + len(span), self._n_samples)
        span[inside_from - span_start : inside_to - span_start] = normalised[
            inside_from - samples_start : inside_to - samples_start
        ]
        power = _power(self._spectra(span))
        return (self._mel @ power).T.numpy()

    def _store(self, records: np.ndarray) -> None:
        self._n_records += len(records)
        with spill_writes(self._spill_dir):
            if self._spill_file is None and self._n_records > self._spill_after_frames:
                self._spill_file = tempfile.TemporaryFile(dir=self._spill_dir)
                for block in self._blocks:
                    self._spill_file.write(block.tobytes())
                self._blocks = []
            if self._spill_file is None:
                self._blocks.append(records)
            else:
                self._spill_file.write(records.tobytes())

    def _take_records(self) -> np.ndarray:
        if self._spill_file is None:
            records = np.concatenate(self._blocks) if self._blocks else np.empty(0, self._record)
        else:
            with spill_writes(self._spill_dir):
                self._spill_file.flush()
            records = np.memmap(self._spill_file, dtype=self._record, mode="r", shape=(self._n_records,))
            self._spill_file.close()  # the mapping keeps the unnamed file alive until it is dropped
            self._spill_file = None
        self._blocks = []
        return records

    def _allocate(self, n_frames: int, spilled: bool) -> np.ndarray:
        shape = (n_frames, self.frontend.n_mels)
        if not spilled:
            return np.empty(shape, dtype=np.float32)
        with spill_writes(self._spill_dir), tempfile.TemporaryFile(dir=self._spill_dir) as backing:
            # Reserve the blocks first: a write to a mapped page the disk has no room for is a SIGBUS.
            os.posix_fallocate(backing.fileno(), 0, math.prod(shape) * np.dtype(np.float32).itemsize)
            return np.memmap(backing, dtype=np.float32, mode="w+", shape=shape)


def release_pages(*arrays: np.ndarray) -> None:
    """Take the pages of memory-mapped arrays out of this process's resident memory (they stay in
    the file and the page cache): walking a long file's spill would otherwise count all of it."""
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if mapping is not None:
            mapping.madvise(mmap.MADV_DONTNEED)


def _power(spectra: torch.Tensor) -> torch.Tensor:
    # |z|² without abs()'s square root; on torch.stft's strided output this is ~8x faster than
    # summing view_as_real(spectra).square() over its last axis, and bit-identical (re² + im²).
    return spectra.real.square() + spectra.imag.square()


def _write_db(output: np.ndarray, first_frame: int, mel_power: np.ndarray) -> float:
    """Store ``10·log10(max(power, AMIN))`` (time-major) and return its maximum."""
    db = 10.0 * np.log10(np.maximum(mel_power, AMIN))
    output[first_frame : first_frame + len(db)] = db
    return float(db.max())


def log_mel(samples: np.ndarray, frontend: FrontEnd = FrontEnd()) -> np.ndarray:
    """Log-mel of a whole signal at ``frontend.sample_rate``; the same code path as streaming."""
    samples = np.asarray(samples)
    accumulator = LogMelAccumulator(frontend)
    for start in range(0, len(samples), _PUSH_SLICE_SAMPLES):
        accumulator.push(samples[start : start + _PUSH_SLICE_SAMPLES])
    return accumulator.finish()


def file_log_mel(
    path: str | os.PathLike[str],
    frontend: FrontEnd = FrontEnd(),
    spill_after_s: float = SPILL_AFTER_S,
    spill_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Decode a media file and return its log-mel (a memmap for files past ``spill_after_s``).

    Raises InputError for files that cannot be decoded (see :mod:`ausil_search.media.audio`).
    """
    accumulator = LogMelAccumulator(frontend, spill_after_s, spill_dir)
    for chunk in decode_audio(path, frontend.sample_rate):
        accumulator.push(chunk)
    return accumulator.finish()


def segment_count(n_frames: int, frontend: FrontEnd) -> int:
    """Windows of ``window_frames`` every ``step_frames`` until the last frame is covered; at least 1."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be non-negative, got {n_frames}")
    frames_after_first_window = n_frames - frontend.window_frames
    return max(1, -(-frames_after_first_window // frontend.step_frames) + 1)


def segment(logmel: np.ndarray, frontend: FrontEnd) -> np.ndarray:
    """All segments, ``(N, window_frames, n_mels)`` float32; see :func:`iter_segment_batches`."""
    n_segments = segment_count(len(logmel), frontend)
    return next(iter_segment_batches(logmel, frontend, n_segments))


def iter_segment_batches(logmel: np.ndarray, frontend: FrontEnd, batch_size: int) -> Iterator[np.ndarray]:
    """The segments of :func:`segment` in order, ``batch_size`` at a time (the last batch may be smaller).

    Segment k covers frames ``[k·step, k·step + window)``. Frames past the end are ``pad_value``
    (0 dB, as the release pads), so the last window is complete and a clip shorter than one window
    still gives one, mostly padded, segment.
    """
    if logmel.ndim != 2 or logmel.shape[1] != frontend.n_mels:
        raise ValueError(f"expected a (frames, {frontend.n_mels}) log-mel, got shape {logmel.shape}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_segments = segment_count(len(logmel), frontend)
    for batch_start in range(0, n_segments, batch_size):
        indices = range(batch_start, min(batch_start + batch_size, n_segments))
        batch = np.full((len(indices), frontend.window_frames, frontend.n_mels), frontend.pad_value, np.float32)
        for row, index in enumerate(indices):
            frames = logmel[index * frontend.step_frames : index * frontend.step_frames + frontend.window_frames]
            batch[row, : len(frames)] = frames
        yield batch


def segments_span_seconds(span: range, n_segments: int, duration_s: float, frontend: FrontEnd) -> tuple[float, float]:
    """Seconds covered by a range of segments (rounded to 10 ms), within the audio's duration: the
    last window reaches into zero padding, and a clip shorter than a window has one padded segment."""
    start = segment_span_seconds(span.start, frontend)[0]
    end = min(segment_span_seconds(min(span.stop, n_segments) - 1, frontend)[1], duration_s)
    return round(min(start, end), 2), round(end, 2)


def segment_span_seconds(index: int, frontend: FrontEnd) -> tuple[float, float]:
    """Start and end time of segment ``index``; the end of the last one may lie past the audio."""
    start_frame = index * frontend.step_frames
    seconds_per_frame = frontend.hop_length / frontend.sample_rate
    return start_frame * seconds_per_frame, (start_frame + frontend.window_frames) * seconds_per_frame
