"""Real encoded media for tests, written with PyAV (no fixtures checked in, no external tools).

Import it as ``from media import ...`` (pytest puts ``tests/`` on ``sys.path``; scripts outside
``tests/`` add that directory themselves).

- :func:`synth_music` makes a signal with the structure of music (notes with harmonics and
  envelopes, percussive noise bursts, a noise floor) that never repeats, so different seeds give
  clearly different audio and excerpts of one signal do not match each other by accident.
- :func:`write_audio_file` / :func:`write_video_file` encode it into a real container chosen by
  extension; :func:`write_video_without_audio` gives a media file with no audio stream.

Samples are ``(channels, n)`` float32 in [-1, 1] (a 1-D array is taken as mono). Codecs with a fixed
set of sample rates (Opus: 8/12/16/24/48 kHz) encode at the nearest allowed rate at or above the
requested one, so such files decode at that rate; the content and duration are unchanged.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np

AUDIO_CODEC_BY_EXTENSION = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".mp4": "aac",
    ".mov": "aac",
    ".mkv": "aac",
    ".avi": "libmp3lame",
    ".ogg": "libopus",
    ".webm": "libopus",
}
VIDEO_CODEC_BY_EXTENSION = {".mp4": "mpeg4", ".mov": "mpeg4", ".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx"}
VIDEO_SIZE = 32
VIDEO_FPS = 5
_BLOCK_SAMPLES = 4096


def synth_music(seconds: float, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """A ``(channels, n)`` float32 test signal, peak 0.8, with no energy above 0.45 × sample_rate.

    Each note has its own gain per channel, so the channels differ but share the same notes
    (a downmix resembles every channel).
    """
    rng = np.random.default_rng(seed)
    n_samples = round(seconds * sample_rate)
    signal = np.zeros((channels, n_samples))
    onset = 0.0
    while True:
        onset += rng.exponential(1 / 6)  # about six events per second, at irregular times
        start = round(onset * sample_rate)
        if start >= n_samples:
            break
        length = min(round(rng.uniform(0.08, 0.6) * sample_rate), n_samples - start)
        t = np.arange(length) / sample_rate
        envelope = np.minimum(t / 0.005, 1.0) * np.exp(-t * rng.uniform(2.0, 12.0))
        if rng.random() < 0.2:
            sound = rng.standard_normal(length) * np.exp(-t * 40.0)  # a drum-like burst
        else:
            fundamental = 440.0 * 2 ** ((rng.integers(36, 88) - 69) / 12)
            harmonics = np.arange(1, rng.integers(2, 8))
            harmonics = harmonics[harmonics * fundamental < 0.45 * sample_rate]
            amplitudes = rng.uniform(0.2, 1.0, len(harmonics)) / harmonics
            phases = rng.uniform(0, 2 * np.pi, len(harmonics))
            sound = amplitudes @ np.sin(np.outer(harmonics * 2 * np.pi * fundamental, t) + phases[:, None])
        gains = rng.uniform(0.3, 1.0, channels) * rng.uniform(0.3, 1.0)
        signal[:, start : start + length] += gains[:, None] * (sound * envelope)
    signal += 0.003 * rng.standard_normal(signal.shape)
    return (0.8 * signal / np.abs(signal).max()).astype(np.float32)


def write_audio_file(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sample_rate: int,
    codec: str | None = None,
    bitrate: int | None = None,
) -> None:
    """Encode ``samples`` into an audio-only file; the codec follows the extension unless given."""
    _write_media(path, samples, sample_rate, codec, bitrate, video_codec=None)


def write_video_file(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sample_rate: int,
    codec: str | None = None,
    with_video: bool = True,
    video_codec: str | None = None,
    bitrate: int | None = None,
) -> None:
    """Encode ``samples`` plus (by default) a tiny 32×32, 5 fps video stream as long as the audio."""
    video = (video_codec or VIDEO_CODEC_BY_EXTENSION[_extension(path)]) if with_video else None
    _write_media(path, samples, sample_rate, codec, bitrate, video_codec=video)


def write_video_without_audio(
    path: str | os.PathLike[str], seconds: float = 2.0, video_codec: str | None = None
) -> None:
    """A valid media file with a video stream and no audio stream."""
    with av.open(os.fspath(path), mode="w") as container:
        video = _add_video_stream(container, video_codec or VIDEO_CODEC_BY_EXTENSION[_extension(path)])
        for index in range(max(1, math.ceil(seconds * VIDEO_FPS))):
            container.mux(video.encode(_video_frame(index)))
        container.mux(video.encode(None))


def _write_media(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sample_rate: int,
    codec: str | None,
    bitrate: int | None,
    video_codec: str | None,
) -> None:
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    channels, n_samples = samples.shape
    codec = codec or AUDIO_CODEC_BY_EXTENSION[_extension(path)]
    with av.open(os.fspath(path), mode="w") as container:
        # Video first, as in most real files: the audio stream is then not stream 0.
        video = _add_video_stream(container, video_codec) if video_codec else None
        audio = container.add_stream(codec, rate=_encodable_rate(codec, sample_rate))
        audio.layout = _layout(channels)
        if bitrate:
            audio.bit_rate = bitrate
        if codec == "vorbis":  # FFmpeg's own Vorbis encoder is marked experimental
            audio.codec_context.options = {"strict": "experimental"}

        # Feed audio and video in time order so the muxer interleaves them as a real file would.
        n_video_frames = max(1, math.ceil(n_samples / sample_rate * VIDEO_FPS)) if video else 0
        fed = 0
        for index in range(n_video_frames + 1):
            until = n_samples if index == n_video_frames else min(n_samples, round(index / VIDEO_FPS * sample_rate))
            while fed < until:
                block = samples[:, fed : min(until, fed + _BLOCK_SAMPLES)]
                container.mux(audio.encode(_audio_frame(block, sample_rate, fed)))
                fed += block.shape[1]
            if video and index < n_video_frames:
                container.mux(video.encode(_video_frame(index)))
        container.mux(audio.encode(None))
        if video:
            container.mux(video.encode(None))


def _encodable_rate(codec: str, sample_rate: int) -> int:
    rates = av.Codec(codec, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = [rate for rate in rates if rate >= sample_rate]
    return min(higher) if higher else max(rates)


def _audio_frame(block: np.ndarray, sample_rate: int, first_sample: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=_layout(block.shape[0]))
    frame.sample_rate = sample_rate
    frame.pts = first_sample
    frame.time_base = Fraction(1, sample_rate)
    return frame


def _layout(channels: int) -> str:
    """FFmpeg's default layout for that many channels ("Nc" parses to mono, stereo, 2.1, ... 5.1)."""
    return av.AudioLayout(f"{channels}c").name


def _add_video_stream(container: av.container.OutputContainer, codec: str) -> av.VideoStream:
    video = container.add_stream(codec, rate=VIDEO_FPS)
    video.width = video.height = VIDEO_SIZE
    video.pix_fmt = "yuv420p"
    return video


def _video_frame(index: int) -> av.VideoFrame:
    """A moving gradient, so the encoder has something other than a constant to compress."""
    y, x = np.mgrid[0:VIDEO_SIZE, 0:VIDEO_SIZE]
    image = np.stack([(x * 8 + index * 10) % 256, (y * 8) % 256, np.full_like(x, index * 30 % 256)], axis=-1)
    frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
    frame.pts = index
    frame.time_base = Fraction(1, VIDEO_FPS)
    return frame


def _extension(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()
