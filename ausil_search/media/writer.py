"""Encode audio into real media files with PyAV, optionally beside a tiny synthetic video track.

The benchmark generator writes its database this way, and so do the demo and the tests' fixtures:
real containers and codecs, no external tools. Audio and video frames are fed in time order, so
the muxer interleaves them as in a real file, and the video stream comes first, so the audio is not
stream 0. With ``deterministic=True`` the same samples give the same bytes (no random Ogg serials or
Matroska UIDs, single-threaded video encoding), which the benchmark's reproducibility needs.
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
BLOCK_SAMPLES = 4096
# Faster encoder settings at the default bitrates (benchmark media: the encoder is not what is tested).
FAST_OPTIONS = {"aac": {"aac_coder": "fast"}, "libmp3lame": {"compression_level": "7"}}


def write_media(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sample_rate: int,
    *,
    codec: str | None = None,
    bitrate: int | None = None,
    video_codec: str | None = None,
    deterministic: bool = False,
    fast: bool = False,
) -> None:
    """Encode ``(channels, n)`` (or mono ``(n,)``) float32 samples into ``path``.

    The audio codec follows the extension unless given; a video stream is added when
    ``video_codec`` is given. Codecs with a fixed set of rates (Opus) encode at the nearest allowed
    rate at or above ``sample_rate`` (the encoder resamples), so content and duration are unchanged.
    ``fast`` picks quicker AAC/MP3 encoder settings.
    """
    data = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    codec = codec or AUDIO_CODEC_BY_EXTENSION[_extension(path)]
    layout = av.AudioLayout(f"{data.shape[0]}c").name  # FFmpeg's default layout for that many channels
    n = data.shape[1]
    with av.open(os.fspath(path), mode="w", options={"fflags": "+bitexact"} if deterministic else {}) as container:
        video = add_video_stream(container, video_codec, deterministic) if video_codec else None
        audio = container.add_stream(codec, rate=encodable_rate(codec, sample_rate))
        audio.layout = layout
        if bitrate:
            audio.bit_rate = bitrate
        options = dict(FAST_OPTIONS.get(codec, {})) if fast else {}
        if codec == "vorbis":  # FFmpeg's own Vorbis encoder is marked experimental
            options["strict"] = "experimental"
        audio.options = options
        n_frames = max(1, math.ceil(n / sample_rate * VIDEO_FPS)) if video else 0
        fed = 0
        for index in range(n_frames + 1):
            until = n if index == n_frames else min(n, round(index / VIDEO_FPS * sample_rate))
            while fed < until:
                block = np.ascontiguousarray(data[:, fed : min(until, fed + BLOCK_SAMPLES)])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, fed, Fraction(1, sample_rate)
                container.mux(audio.encode(frame))
                fed += block.shape[1]
            if video and index < n_frames:
                container.mux(video.encode(video_frame(index)))
        container.mux(audio.encode(None))
        if video:
            container.mux(video.encode(None))


def write_video_without_audio(path: str | os.PathLike[str], seconds: float = 2.0, video_codec: str | None = None) -> None:
    """A valid media file with a video stream and no audio stream."""
    with av.open(os.fspath(path), mode="w") as container:
        video = add_video_stream(container, video_codec or VIDEO_CODEC_BY_EXTENSION[_extension(path)])
        for index in range(max(1, math.ceil(seconds * VIDEO_FPS))):
            container.mux(video.encode(video_frame(index)))
        container.mux(video.encode(None))


def encodable_rate(codec: str, sample_rate: int) -> int:
    rates = av.Codec(codec, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = [rate for rate in rates if rate >= sample_rate]
    return min(higher) if higher else max(rates)


def add_video_stream(container: av.container.OutputContainer, codec: str, single_thread: bool = False) -> av.VideoStream:
    video = container.add_stream(codec, rate=VIDEO_FPS)
    video.width = video.height = VIDEO_SIZE
    video.pix_fmt = "yuv420p"
    if single_thread:
        video.codec_context.thread_count = 1
    return video


def video_frame(index: int) -> av.VideoFrame:
    """A moving gradient, so the encoder has something other than a constant to compress."""
    y, x = np.mgrid[0:VIDEO_SIZE, 0:VIDEO_SIZE]
    image = np.stack([(x * 8 + index * 10) % 256, (y * 8) % 256, np.full_like(x, index * 30 % 256)], axis=-1)
    frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
    frame.pts, frame.time_base = index, Fraction(1, VIDEO_FPS)
    return frame


def _extension(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()
