"""Real encoded media for tests, written with PyAV (no fixtures checked in, no external tools).

Import it as ``from media import ...`` (pytest puts ``tests/`` on ``sys.path``; scripts outside
``tests/`` add that directory themselves).

- :func:`synth_music` makes a signal with the structure of music (notes with harmonics and
  envelopes, percussive noise bursts, a noise floor) that never repeats, so different seeds give
  clearly different audio and excerpts of one signal do not match each other by accident.
- :func:`write_audio_file` / :func:`write_video_file` encode it into a real container chosen by
  extension; :func:`write_video_without_audio` gives a media file with no audio stream. The
  encoding itself is the package's (:mod:`ausil_search.media_writer`), shared with the benchmark
  generator and the demo.

Samples are ``(channels, n)`` float32 in [-1, 1] (a 1-D array is taken as mono). Codecs with a fixed
set of sample rates (Opus: 8/12/16/24/48 kHz) encode at the nearest allowed rate at or above the
requested one, so such files decode at that rate; the content and duration are unchanged.
"""

from __future__ import annotations

import os

import numpy as np

from ausil_search.media_writer import (
    AUDIO_CODEC_BY_EXTENSION,
    VIDEO_CODEC_BY_EXTENSION,
    write_media,
    write_video_without_audio,
)

__all__ = ["AUDIO_CODEC_BY_EXTENSION", "VIDEO_CODEC_BY_EXTENSION", "synth_music", "write_audio_file", "write_media",
           "write_video_file", "write_video_without_audio"]


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
    write_media(path, samples, sample_rate, codec=codec, bitrate=bitrate)


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
    extension = os.path.splitext(os.fspath(path))[1].lower()
    video = (video_codec or VIDEO_CODEC_BY_EXTENSION[extension]) if with_video else None
    write_media(path, samples, sample_rate, codec=codec, bitrate=bitrate, video_codec=video)
