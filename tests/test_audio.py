"""Decoding real encoded files of every container the product meets, and refusing bad ones clearly."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
from media import (
    AUDIO_CODEC_BY_EXTENSION,
    VIDEO_CODEC_BY_EXTENSION,
    synth_music,
    write_audio_file,
    write_video_file,
    write_video_without_audio,
)

from ausil_search.audio import SAMPLE_RATE, PartialDecodeWarning, decode_audio, load_audio, probe, read_excerpt
from ausil_search.errors import InputError

AUDIO_EXTENSIONS = [".wav", ".flac", ".mp3", ".m4a", ".ogg"]
VIDEO_EXTENSIONS = [".mp4", ".mkv", ".webm", ".mov", ".avi"]
# Lossy codecs add encoder delay and padding (up to ~2 codec frames, e.g. 2 × 1152 samples for MP3).
MAX_EXTRA_SECONDS = 0.2
MIN_CORRELATION = 0.9


def require_encoders(extension: str, video: bool) -> None:
    needed = [AUDIO_CODEC_BY_EXTENSION[extension]] + ([VIDEO_CODEC_BY_EXTENSION[extension]] if video else [])
    missing = [codec for codec in needed if codec not in av.codecs_available]
    if missing:
        pytest.skip(f"this PyAV build cannot encode {extension} test files (no {', '.join(missing)} encoder)")


def write_media(path: os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    extension = os.path.splitext(path)[1]
    video = extension in VIDEO_EXTENSIONS
    require_encoders(extension, video)
    (write_video_file if video else write_audio_file)(path, samples, sample_rate)


def best_alignment(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag of ``reference`` inside ``decoded`` (codec delay) and the normalised correlation there."""
    core = reference[max_lag : len(reference) - max_lag]
    scores = np.correlate(decoded[: len(core) + 2 * max_lag], core, mode="valid")
    lag = int(np.argmax(scores))
    aligned = decoded[lag : lag + len(core)]
    return lag - max_lag, float(aligned @ core / (np.linalg.norm(aligned) * np.linalg.norm(core)))


@pytest.mark.parametrize("extension", AUDIO_EXTENSIONS + VIDEO_EXTENSIONS)
@pytest.mark.parametrize(("sample_rate", "channels"), [(8000, 1), (22050, 2), (48000, 2)])
def test_decodes_every_container(tmp_path, extension: str, sample_rate: int, channels: int) -> None:
    seconds = 3.0
    source = synth_music(seconds, sample_rate, seed=sample_rate + channels, channels=channels)
    path = tmp_path / f"clip{extension}"
    write_media(path, source, sample_rate)

    decoded = load_audio(path, sample_rate)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    extra_seconds = len(decoded) / sample_rate - seconds
    assert -0.01 <= extra_seconds <= MAX_EXTRA_SECONDS
    lag, correlation = best_alignment(decoded, source.mean(axis=0), max_lag=round(0.15 * sample_rate))
    assert correlation >= MIN_CORRELATION, f"lag {lag}"


@pytest.mark.parametrize("extension", [".m4a", ".flac", ".wav"])
def test_downmixes_surround_sound(tmp_path, extension: str) -> None:
    source = synth_music(2.0, 44100, seed=51, channels=6)
    path = tmp_path / f"surround{extension}"
    write_media(path, source, 44100)
    assert probe(path).channels == 6
    decoded = load_audio(path)
    # FFmpeg's downmix leaves out the LFE channel (the fourth of 5.1).
    _, correlation = best_alignment(decoded, np.delete(source, 3, axis=0).mean(axis=0), max_lag=4000)
    assert correlation >= MIN_CORRELATION


def test_resamples_to_the_requested_rate(tmp_path) -> None:
    path = tmp_path / "clip.flac"
    write_media(path, synth_music(3.0, 22050, seed=7, channels=2), 22050)
    native = load_audio(path, 22050)
    default = load_audio(path)
    assert len(default) == pytest.approx(2 * len(native), abs=2)
    # Upsampling by 2 keeps every other sample close to the original (the content is band-limited).
    _, correlation = best_alignment(default[::2], native, max_lag=50)
    assert correlation > 0.99
    upsampled_48k = load_audio(path, 48000)
    assert len(upsampled_48k) == pytest.approx(3.0 * 48000, abs=2)


def test_chunks_have_the_requested_size(tmp_path) -> None:
    path = tmp_path / "clip.wav"
    write_media(path, synth_music(2.0, 16000, seed=8), 16000)
    chunks = list(decode_audio(path, 16000, chunk_samples=5000))
    assert [len(chunk) for chunk in chunks] == [5000] * 6 + [2000]
    assert all(chunk.dtype == np.float32 for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path, 16000))


def test_timestamp_gap_does_not_break_the_decode(tmp_path) -> None:
    """Packets after the middle jump 5 s ahead; decoding concatenates the samples as ffmpeg does."""
    sample_rate, seconds = 44100, 4.0
    source = synth_music(seconds, sample_rate, seed=9)
    path = tmp_path / "gap.mkv"
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        frames = []
        for start in range(0, source.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(source[:, start : start + 4096], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            frames.append(frame)
        for frame in frames + [None]:  # None flushes the encoder
            for packet in stream.encode(frame):
                if packet.pts * packet.time_base > seconds / 2:
                    shift = round(5 / packet.time_base)
                    packet.pts += shift
                    packet.dts += shift
                container.mux(packet)
    assert probe(path).duration_s > seconds + 4  # the container believes in the gap
    decoded = load_audio(path)
    assert 0 <= len(decoded) / sample_rate - seconds <= MAX_EXTRA_SECONDS
    _, correlation = best_alignment(decoded, source[0], max_lag=4000)
    assert correlation >= MIN_CORRELATION


def test_probe_reads_the_header(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_media(path, synth_music(3.0, 48000, seed=10, channels=2), 48000)
    info = probe(path)
    assert info.has_audio and info.codec == "aac"
    assert (info.sample_rate, info.channels) == (48000, 2)
    assert info.duration_s == pytest.approx(3.0, abs=0.1)

    silent = tmp_path / "silent.mp4"
    write_video_without_audio(silent, seconds=2.0)
    info = probe(silent)
    assert not info.has_audio and info.sample_rate is None and info.codec is None
    assert info.duration_s == pytest.approx(2.0, abs=0.3)


def test_damaged_packets_are_skipped_with_a_warning(tmp_path) -> None:
    path = tmp_path / "damaged.m4a"
    write_media(path, synth_music(6.0, 44100, seed=12, channels=2), 44100)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.warns(PartialDecodeWarning, match=str(path)):
        decoded = load_audio(path)
    assert 5.0 < len(decoded) / SAMPLE_RATE < 6.2


def test_truncated_file_keeps_what_is_there(tmp_path) -> None:
    path = tmp_path / "truncated.wav"
    write_media(path, synth_music(4.0, 44100, seed=13), 44100)
    path.write_bytes(path.read_bytes()[: -3 * 2 * 44100])  # drop the last 3 s of 16-bit mono
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_audio(path)) == 44100


def test_non_finite_samples_become_zero_with_a_warning(tmp_path) -> None:
    path = tmp_path / "float.wav"
    source = synth_music(1.0, 44100, seed=14)
    source[0, 1000:1010] = np.nan
    source[0, 2000] = np.inf
    write_audio_file(path, source, 44100, codec="pcm_f32le")
    with pytest.warns(PartialDecodeWarning, match="replaced 11 NaN/infinite samples"):
        decoded = load_audio(path)
    assert len(decoded) == 44100 and np.isfinite(decoded).all()
    assert np.all(decoded[1000:1010] == 0) and decoded[2000] == 0
    np.testing.assert_array_equal(decoded[:1000], source[0, :1000])


def expect_input_error(path: os.PathLike[str], message: str) -> None:
    for operation in (probe, load_audio):
        with pytest.raises(InputError) as raised:
            operation(path)
        text = str(raised.value)
        assert text.startswith(str(path)) and message in text and "\n" not in text


def test_bad_inputs_raise_input_error(tmp_path) -> None:
    expect_input_error(tmp_path / "missing.mp4", "not found")
    expect_input_error(tmp_path, "directory")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    expect_input_error(empty, "empty")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    expect_input_error(noise, "not a media file")
    text = tmp_path / "notes.txt"
    text.write_text("a video list, not a video\n" * 100)
    with pytest.raises(InputError, match="^" + str(text)):
        load_audio(text)


@pytest.mark.parametrize("extension", [".mp4", ".webm"])
def test_video_without_audio_is_refused(tmp_path, extension: str) -> None:
    require_encoders(extension, video=True)
    path = tmp_path / f"silent{extension}"
    write_video_without_audio(path)
    with pytest.raises(InputError, match="no audio stream") as raised:
        decode_audio(path)  # refused before any iteration
    assert str(raised.value).startswith(str(path))


def test_long_decode_uses_bounded_memory(tmp_path) -> None:
    """Ten minutes decoded to 44.1 kHz is 106 MB of float32; streaming keeps a few chunks."""
    sample_rate, seconds = 8000, 600
    path = tmp_path / "long.wav"
    noise = np.random.default_rng(2).uniform(-0.5, 0.5, (1, sample_rate * seconds)).astype(np.float32)
    write_media(path, noise, sample_rate)
    del noise
    tracemalloc.start()
    try:
        n_samples = sum(len(chunk) for chunk in decode_audio(path))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_samples == seconds * SAMPLE_RATE
    assert peak_bytes < 16 * 2**20


@pytest.mark.parametrize("extension", AUDIO_EXTENSIONS)
def test_read_excerpt_seeks_to_the_position(tmp_path, extension) -> None:
    require_encoders(extension, video=False)
    rate = SAMPLE_RATE
    signal_ = synth_music(10, rate, seed=3)[0]
    path = tmp_path / f"x{extension}"
    write_audio_file(path, signal_, rate)
    lossless = extension in (".wav", ".flac")
    for start_s in (0.0, 3.0, 7.5):
        excerpt = read_excerpt(path, start_s, rate)
        assert excerpt.shape == (rate,) and excerpt.dtype == np.float32
        if lossless:
            np.testing.assert_allclose(excerpt, signal_[round(start_s * rate):][:rate], atol=1e-4)
            continue
        # lossy seeks land on codec frames: the excerpt is the original within 50 ms
        piece = excerpt[rate // 4 : rate // 2].astype(np.float64)  # past the decoder's restart after a seek
        start, reach = round(start_s * rate) + rate // 4, round(0.05 * rate)
        around = signal_[max(0, start - reach) : start + reach + len(piece)].astype(np.float64)
        energy = np.sqrt(np.convolve(around**2, np.ones(len(piece)), "valid"))
        best = (np.correlate(around, piece, "valid") / (energy * np.linalg.norm(piece))).max()
        assert best > MIN_CORRELATION, (start_s, best)


def test_read_excerpt_pads_past_the_end_and_refuses_bad_files(tmp_path) -> None:
    rate = SAMPLE_RATE
    write_audio_file(tmp_path / "x.wav", synth_music(6, rate, seed=3)[0], rate)
    tail = read_excerpt(tmp_path / "x.wav", 5.5, rate)
    assert np.abs(tail[: rate // 2 - 10]).max() > 0.01 and not tail[rate // 2 + 10 :].any()
    with pytest.raises(InputError, match="file not found"):
        read_excerpt(tmp_path / "missing.wav", 1.0, rate)
    write_video_without_audio(tmp_path / "silent.mp4")
    with pytest.raises(InputError, match="no audio stream"):
        read_excerpt(tmp_path / "silent.mp4", 0.0, rate)
