"""Decode the first audio track of any media file to mono float32 at a fixed rate, in bounded memory.

Decoding streams: chunks are handed on as soon as they are full, so a three-hour film needs no more
memory than a short clip. Timestamps are ignored on purpose (decoded samples are concatenated, as
ffmpeg's raw PCM output does for the release), so PTS gaps, jumps or missing timestamps cannot
stall or break a decode.

Damaged files: a packet the decoder rejects is skipped; a read error in the container ends the
decode. In both cases a :class:`PartialDecodeWarning` says what happened and the audio decoded so
far is kept. Only when nothing at all decodes is it an :class:`InputError`.
"""

from __future__ import annotations

import itertools
import math
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from ..errors import InputError

SAMPLE_RATE = 44100

PathLike = str | os.PathLike[str]


class PartialDecodeWarning(UserWarning):
    """Part of a file's audio could not be decoded; the rest was kept."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container says about its first audio stream, read without decoding it."""

    has_audio: bool
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    codec: str | None


def probe(path: PathLike) -> MediaInfo:
    """Read the container header only; cheap enough to ask of every file with an unknown extension.

    Raises InputError when the file is missing, empty or not a media file. A media file without
    audio is not an error here: it gives ``has_audio=False``.
    """
    with _open_media(path) as container:
        if not container.streams.audio:
            return MediaInfo(False, _container_duration(container), None, None, None)
        stream = container.streams.audio[0]
        duration = _container_duration(container)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        context = stream.codec_context
        return MediaInfo(
            has_audio=True,
            duration_s=duration,
            sample_rate=context.sample_rate or None,
            channels=context.channels or None,
            codec=context.name,
        )


def decode_audio(
    path: PathLike, sample_rate: int = SAMPLE_RATE, chunk_samples: int = 1 << 18, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Yield the first audio stream, downmixed to mono and resampled, as float32 chunks.

    Every chunk holds exactly ``chunk_samples`` samples except the last (1 to ``chunk_samples``).
    With ``max_seconds`` (finite), only that much of the start is decoded; the rest is never read.
    Problems visible from the header (missing, empty, not media, no audio stream) raise InputError
    right here; a stream that turns out to decode to nothing raises InputError from the iteration.
    """
    if sample_rate <= 0 or chunk_samples <= 0:
        raise ValueError(f"sample_rate and chunk_samples must be positive, got {sample_rate}, {chunk_samples}")
    chunks = _fixed_size_chunks(_open_audio(path), path, sample_rate, chunk_samples)
    if max_seconds is None or not math.isfinite(max_seconds):
        return chunks
    return _first_samples(chunks, int(max_seconds * sample_rate))


def _first_samples(chunks: Iterator[np.ndarray], limit: int) -> Iterator[np.ndarray]:
    count = 0
    try:
        for chunk in chunks:
            piece = chunk[: limit - count]
            count += len(piece)
            yield piece
            if count >= limit:
                return
    finally:
        chunks.close()  # closes the container now rather than when collected


def read_excerpt(path: PathLike, start_s: float, n_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``n_samples`` mono float32 samples from about ``start_s`` on, zero-padded past the end.

    Seeks in the container, so the cost does not grow with the position (training reads thousands
    of short excerpts of long files). The start is only as exact as the container's timestamps,
    which suits callers that need some excerpt near a position, not a sample-exact one.
    """
    out = np.zeros(n_samples, np.float32)
    with _open_audio(path) as container:
        stream = container.streams.audio[0]
        try:
            if start_s > 0 and stream.time_base:
                container.seek(int(start_s / stream.time_base), stream=stream)
        except av.FFmpegError as error:
            raise InputError(f"{path}: cannot seek to {start_s:.1f} s ({_reason(error)})") from None
        frames = _decoded_frames(container, path)
        first = next(frames, None)
        if first is None:
            return out
        # the seek lands on or before start_s: drop the samples before it
        skip = max(0, round((start_s - (first.time if first.time is not None else start_s)) * sample_rate))
        count = 0
        for samples in _finite(_resampled(itertools.chain([first], frames), sample_rate), path):
            cut = min(skip, len(samples))
            skip -= cut
            piece = samples[cut : cut + n_samples - count]
            out[count : count + len(piece)] = piece
            count += len(piece)
            if count >= n_samples:
                break
    return out


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The whole decode (or its first ``max_seconds``) as one array; for short files, excerpts and tests
    (a long file's decode is large)."""
    return np.concatenate(list(decode_audio(path, sample_rate, max_seconds=max_seconds)))


def _open_audio(path: PathLike) -> av.container.InputContainer:
    """`_open_media`, refusing a file without an audio stream."""
    container = _open_media(path)
    if not container.streams.audio:
        container.close()
        raise InputError(f"{path}: no audio stream")
    return container


def _open_media(path: PathLike) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a media file")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
        raise InputError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        # Undecodable metadata (non-UTF-8 tags) must not make a playable file unreadable.
        return av.open(os.fspath(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as error:
        raise InputError(f"{path}: not a media file or corrupt ({_reason(error)})") from None


def _fixed_size_chunks(
    container: av.container.InputContainer, path: PathLike, sample_rate: int, chunk_samples: int
) -> Iterator[np.ndarray]:
    with container:
        pending: list[np.ndarray] = []
        n_pending = 0
        n_total = 0
        try:
            for samples in _finite(_resampled(_decoded_frames(container, path), sample_rate), path):
                pending.append(samples)
                n_pending += len(samples)
                n_total += len(samples)
                if n_pending >= chunk_samples:
                    joined = np.concatenate(pending)
                    n_full = len(joined) // chunk_samples * chunk_samples
                    yield from np.split(joined[:n_full], n_full // chunk_samples)
                    pending = [joined[n_full:].copy()]
                    n_pending = len(pending[0])
        except av.FFmpegError as error:  # the resampler refused a frame format
            raise InputError(f"{path}: audio could not be converted ({_reason(error)})") from None
        if n_pending:
            yield np.concatenate(pending)
    if n_total == 0:
        raise InputError(f"{path}: the audio stream decodes to no samples")


def _decoded_frames(container: av.container.InputContainer, path: PathLike) -> Iterator[av.AudioFrame]:
    """The first audio stream's frames; damaged packets are skipped, a read error ends the stream."""
    decoded_seconds = 0.0
    n_rejected_packets = 0
    try:
        for packet in container.demux(container.streams.audio[0]):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                n_rejected_packets += 1
                continue
            for frame in frames:
                decoded_seconds += frame.samples / frame.sample_rate
                yield frame
    except av.FFmpegError as error:
        if decoded_seconds == 0:
            raise InputError(f"{path}: not a media file or corrupt ({_reason(error)})") from None
        warnings.warn(
            f"{path}: decoding stopped after {decoded_seconds:.1f} s of audio ({_reason(error)}); "
            "keeping what was decoded",
            PartialDecodeWarning,
        )
    if n_rejected_packets:
        warnings.warn(f"{path}: skipped {n_rejected_packets} audio packet(s) that did not decode", PartialDecodeWarning)


def _resampled(frames: Iterator[av.AudioFrame], sample_rate: int) -> Iterator[np.ndarray]:
    """Mono float32 pieces at ``sample_rate``, of whatever size the resampler produces."""
    resampler: av.AudioResampler | None = None
    source_format: tuple[str, str, int] | None = None
    for frame in frames:
        # A stream may change rate or layout mid-way (broadcast captures do); a resampler only
        # takes one input format, so finish the old one and start afresh.
        frame_format = (frame.format.name, frame.layout.name, frame.sample_rate)
        if frame_format != source_format:
            if resampler is not None:
                yield from _as_arrays(resampler.resample(None))
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            source_format = frame_format
        frame.pts = None  # timestamps play no part: samples are concatenated in decode order
        yield from _as_arrays(resampler.resample(frame))
    if resampler is not None:
        yield from _as_arrays(resampler.resample(None))


def _finite(pieces: Iterator[np.ndarray], path: PathLike) -> Iterator[np.ndarray]:
    """Float decoders can emit NaN or infinity on damaged data; those samples become silence."""
    n_replaced = 0
    for samples in pieces:
        bad = ~np.isfinite(samples)
        if bad.any():
            n_replaced += int(np.count_nonzero(bad))
            samples[bad] = 0.0
        yield samples
    if n_replaced:
        warnings.warn(f"{path}: replaced {n_replaced} NaN/infinite samples with 0", PartialDecodeWarning)


def _as_arrays(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame.to_ndarray().reshape(-1)


def _container_duration(container: av.container.InputContainer) -> float | None:
    return container.duration / av.time_base if container.duration is not None else None


def _reason(error: av.FFmpegError) -> str:
    return " ".join(str(error.strerror or error).split())
