"""The log-mel front-end against librosa (the release's own front-end) and the segmentation contract."""

from __future__ import annotations

import tracemalloc
import warnings

import librosa
import numpy as np
import pytest
from media import synth_music, write_audio_file

from ausil_search.audio import load_audio
from ausil_search.spectrogram import (
    FrontEnd,
    LogMelAccumulator,
    file_log_mel,
    iter_segment_batches,
    log_mel,
    mel_filterbank,
    segment,
    segment_count,
    segment_span_seconds,
)

TOLERANCE_DB = 0.01


def librosa_log_mel(samples: np.ndarray) -> np.ndarray:
    """The release's front-end: normalise (mean, peak), then librosa's default mel and dB."""
    normalised = samples.astype(np.float64) - samples.astype(np.float64).mean()
    peak = np.abs(normalised).max()
    if peak > 0:
        normalised /= peak
    mel = librosa.feature.melspectrogram(y=normalised, sr=44100, n_fft=1024, hop_length=512, n_mels=128)
    return librosa.power_to_db(mel).T


def streamed_log_mel(samples: np.ndarray, seed: int, max_chunk: int = 9000, **options) -> np.ndarray:
    """Feed the accumulator chunks of random, mostly odd sizes."""
    rng = np.random.default_rng(seed)
    accumulator = LogMelAccumulator(FrontEnd(), **options)
    position = 0
    while position < len(samples):
        size = int(rng.integers(1, max_chunk))
        accumulator.push(samples[position : position + size])
        position += size
    return accumulator.finish()


@pytest.fixture(scope="module")
def decoded_music(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """10 s of stereo music at 48 kHz through a real AAC encode, decoded to 44.1 kHz mono."""
    path = tmp_path_factory.mktemp("spectrogram") / "music.m4a"
    write_audio_file(path, synth_music(10.0, 48000, seed=11, channels=2), 48000)
    return load_audio(path)


def test_streamed_log_mel_matches_librosa_on_decoded_audio(decoded_music: np.ndarray) -> None:
    ours = streamed_log_mel(decoded_music, seed=1)
    reference = librosa_log_mel(decoded_music)
    assert ours.shape == reference.shape == (1 + len(decoded_music) // 512, 128)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= TOLERANCE_DB
    assert ours.max() == pytest.approx(reference.max(), abs=TOLERANCE_DB)
    # The 80 dB floor is in force: a music file has bands that quiet.
    assert ours.min() == pytest.approx(ours.max() - 80.0, abs=1e-4)


def test_large_dc_offset_is_removed_exactly(decoded_music: np.ndarray) -> None:
    # Quiet music on a large offset: without the mean correction bins 0 and 1 of every frame
    # would be dominated by the offset.
    music = 0.05 * decoded_music[: 3 * 44100].astype(np.float64)
    ours = streamed_log_mel(0.6 + music, seed=2)
    assert np.abs(ours - librosa_log_mel(0.6 + music)).max() <= TOLERANCE_DB
    assert np.abs(ours - log_mel(music)).max() <= TOLERANCE_DB


@pytest.mark.parametrize("length", [1, 300, 511, 512, 513, 1023, 1024, 1025, 1536, 2047, 5000])
def test_short_signals_match_librosa(decoded_music: np.ndarray, length: int) -> None:
    # Signals this short are all edge frames (windows reaching into the zero padding).
    signal = decoded_music[20000 : 20000 + length] + 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa notes that n_fft exceeds the signal
        reference = librosa_log_mel(signal)
    assert np.abs(streamed_log_mel(signal, seed=length, max_chunk=700) - reference).max() <= TOLERANCE_DB


def test_silence_and_constant_signals_give_the_floor() -> None:
    for signal in (np.zeros(5000, np.float32), np.full(5000, 0.3, np.float32)):
        result = log_mel(signal)
        assert result.shape == (10, 128)
        np.testing.assert_array_equal(result, np.full((10, 128), -100.0, np.float32))


def test_chunking_and_spilling_do_not_change_the_result(decoded_music: np.ndarray, tmp_path) -> None:
    # Thresholds below and above the first batch of frames: spilling from the start, and moving
    # frames already held in memory to the file part-way.
    cases = [(3, 0.5, 3, 0.1), (4, 10, 600, 5.0), (5, 10, 1500, 2.0), (6, 10, 70000, 0.1)]
    for seed, seconds, max_chunk, spill_after_s in cases:
        signal = decoded_music[: round(seconds * 44100)]
        in_memory = log_mel(signal)
        assert not isinstance(in_memory, np.memmap)
        spilled = streamed_log_mel(signal, seed, max_chunk, spill_after_s=spill_after_s, spill_dir=tmp_path)
        assert isinstance(spilled, np.memmap)
        np.testing.assert_allclose(spilled, in_memory, rtol=0, atol=1e-4)
    assert list(tmp_path.iterdir()) == []  # spill files have no name and vanish on their own


def test_accumulator_refuses_misuse() -> None:
    accumulator = LogMelAccumulator()
    with pytest.raises(ValueError):
        accumulator.finish()
    with pytest.raises(ValueError):
        accumulator.push(np.zeros((2, 100)))
    with pytest.raises(ValueError):
        LogMelAccumulator().push(np.array([0.1, np.nan]))
    accumulator.push(np.ones(10))
    accumulator.finish()
    with pytest.raises(RuntimeError):
        accumulator.push(np.ones(10))


def test_file_log_mel_equals_decode_then_log_mel(tmp_path) -> None:
    path = tmp_path / "clip.flac"
    write_audio_file(path, synth_music(3.0, 22050, seed=5, channels=2), 22050)
    np.testing.assert_allclose(file_log_mel(path), log_mel(load_audio(path)), atol=1e-4)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"),
    [(44100, 1024, 128, 0.0, None), (22050, 2048, 64, 50.0, 8000.0), (16000, 512, 40, 0.0, 7000.0)],
)
def test_mel_filterbank_matches_librosa(sample_rate, n_fft, n_mels, fmin, fmax) -> None:
    ours = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    assert np.abs(ours - reference).max() <= 1e-6


@pytest.mark.parametrize(
    ("n_frames", "expected"),
    [(0, 1), (1, 1), (173, 1), (174, 1), (175, 2), (261, 2), (262, 3), (348, 3), (870, 9), (871, 10)],
)
def test_segment_count(n_frames: int, expected: int) -> None:
    assert segment_count(n_frames, FrontEnd()) == expected


def test_segments_are_windows_with_padded_tail() -> None:
    frontend = FrontEnd()
    logmel = np.arange(300 * 128, dtype=np.float32).reshape(300, 128) - 5e4  # no row is all zero
    segments = segment(logmel, frontend)
    assert segments.shape == (3, 174, 128) and segments.dtype == np.float32
    np.testing.assert_array_equal(segments[0], logmel[0:174])
    np.testing.assert_array_equal(segments[1], logmel[87:261])
    np.testing.assert_array_equal(segments[2, :126], logmel[174:300])
    assert np.all(segments[2, 126:] == 0.0)


def test_short_clip_gives_one_padded_segment() -> None:
    frontend = FrontEnd(pad_value=-100.0)
    logmel = np.full((40, 128), -3.0, np.float32)
    segments = segment(logmel, frontend)
    assert segments.shape == (1, 174, 128)
    assert np.all(segments[0, :40] == -3.0) and np.all(segments[0, 40:] == -100.0)


@pytest.mark.parametrize("step_ms", [1000, 125, 300])
def test_segment_batches_equal_segment(step_ms: int) -> None:
    frontend = FrontEnd.from_step_ms(step_ms)
    logmel = np.random.default_rng(step_ms).standard_normal((1001, 128)).astype(np.float32)
    whole = segment(logmel, frontend)
    assert len(whole) == segment_count(1001, frontend)
    for batch_size in (1, 7, len(whole), len(whole) + 5):
        batches = list(iter_segment_batches(logmel, frontend, batch_size))
        assert all(len(batch) == batch_size for batch in batches[:-1])
        np.testing.assert_array_equal(np.concatenate(batches), whole)


def test_step_presets_and_spans() -> None:
    presets = {1000: (87, 174), 500: (44, 174), 250: (22, 174), 125: (11, 176), 2000: (174, 174)}
    for step_ms, (step, window) in presets.items():
        frontend = FrontEnd.from_step_ms(step_ms)
        assert (frontend.step_frames, frontend.window_frames) == (step, window)
    for bad in (0, -125, 3):
        with pytest.raises(ValueError):
            FrontEnd.from_step_ms(bad)
    frontend = FrontEnd()
    assert frontend.step_seconds == pytest.approx(87 * 512 / 44100)
    assert frontend.window_seconds == pytest.approx(2.0201, abs=1e-4)
    start, end = segment_span_seconds(3, frontend)
    assert start == pytest.approx(3 * 87 * 512 / 44100) and end - start == pytest.approx(frontend.window_seconds)


def test_frontend_round_trips_through_a_dict() -> None:
    frontend = FrontEnd.from_step_ms(250)
    assert FrontEnd.from_dict(frontend.to_dict()) == frontend
    with pytest.raises(ValueError):
        FrontEnd.from_dict({**frontend.to_dict(), "unknown": 1})
    with pytest.raises(ValueError):
        FrontEnd(n_fft=1023)


@pytest.mark.parametrize("step_ms", [1000, 125])
def test_segments_cover_every_frame_and_no_more(step_ms: int) -> None:
    frontend = FrontEnd.from_step_ms(step_ms)
    for n_frames in range(0, 600, 13):
        count = segment_count(n_frames, frontend)
        last_end = (count - 1) * frontend.step_frames + frontend.window_frames
        assert last_end >= n_frames
        assert count == 1 or last_end - frontend.step_frames < n_frames


def test_long_file_log_mel_runs_in_bounded_memory(tmp_path) -> None:
    """Five minutes at 44.1 kHz: the decode alone is 53 MB and the per-frame data 14 MB; spilling
    past one minute keeps the traced peak to a few blocks (the memmap result is not traced)."""
    path = tmp_path / "long.wav"
    noise = np.random.default_rng(2).uniform(-0.5, 0.5, (1, 8000 * 300)).astype(np.float32)
    write_audio_file(path, noise, 8000)
    del noise
    tracemalloc.start()
    try:
        result = file_log_mel(path, spill_after_s=60, spill_dir=tmp_path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, np.memmap) and result.shape == (1 + 300 * 44100 // 512, 128)
    assert peak_bytes < 32 * 2**20
    np.testing.assert_allclose(result, log_mel(load_audio(path)), rtol=0, atol=1e-4)
