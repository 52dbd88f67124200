"""The Chromaprint baseline's matcher (benchmarks/chromaprint_baseline.py).

The alignment matcher is tested on synthetic fingerprints (pure numpy, always runs); the fpcalc
part only where the benchmark-only `fpcalc` binary is installed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import chromaprint_baseline as cb  # noqa: E402

from media import synth_music, write_audio_file, write_video_file  # noqa: E402

needs_fpcalc = pytest.mark.skipif(shutil.which("fpcalc") is None, reason="fpcalc (libchromaprint-tools) not installed")


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)


def _flip_bits(words: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(words.view(np.uint8))
    bits ^= (rng.random(bits.shape) < rate).astype(np.uint8)
    return np.packbits(bits).view(np.uint32)


def test_popcount_counts_bits():
    words = np.array([0, 1, 3, 0xFFFFFFFF, 0x80000000, 0x0F0F0F0F], dtype=np.uint32)
    assert cb.popcount32(words).tolist() == [0, 1, 2, 32, 1, 16]


def test_bit_errors_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    for m, n in ((7, 11), (11, 7), (5, 5), (1, 4)):
        q, d = _words(rng, m), _words(rng, n)
        offsets, errors, overlap = cb.bit_errors_by_offset(q, d)
        for o, e, k in zip(offsets, errors, overlap):
            pairs = [(i, i + o) for i in range(m) if 0 <= i + o < n]
            assert k == len(pairs)
            assert e == sum(bin(int(q[i]) ^ int(d[j])).count("1") for i, j in pairs)


def test_recovers_the_offset_of_a_noisy_excerpt():
    rng = np.random.default_rng(1)
    reference = _words(rng, 600)
    query = _flip_bits(reference[137:337], 0.08, rng)
    similarity, offset, ber = cb.best_alignment(query, reference)
    assert offset == 137
    assert ber == pytest.approx(0.08, abs=0.01)
    assert similarity == pytest.approx(1 - 2 * ber)


def test_recovers_a_negative_offset_when_the_reference_is_a_crop():
    rng = np.random.default_rng(2)
    query = _words(rng, 400)
    reference = _flip_bits(query[250:], 0.05, rng)  # the database copy starts 250 words into the query
    similarity, offset, _ = cb.best_alignment(query, reference)
    assert offset == -250
    assert similarity > 0.8


def test_copy_scores_higher_than_unrelated_fingerprints():
    rng = np.random.default_rng(3)
    reference = _words(rng, 500)
    copy = _flip_bits(reference, 0.15, rng)
    unrelated = _words(rng, 500)
    copy_score = cb.best_alignment(copy, reference)[0]
    unrelated_score = cb.best_alignment(unrelated, reference)[0]
    assert copy_score > 0.6
    assert abs(unrelated_score) < 0.15
    table = cb.similarity_table({"q": copy}, {"same": reference, "other": unrelated})
    assert table["q"]["same"] > table["q"]["other"]


def test_a_short_edge_overlap_cannot_win():
    rng = np.random.default_rng(4)
    reference = _words(rng, 300)
    query = _words(rng, 300)
    query[-4:] = reference[:4]  # identical, but only 4 words at the very edge of the offset range
    similarity, offset, _ = cb.best_alignment(query, reference)
    assert offset != 296
    assert similarity < 0.2


@needs_fpcalc
def test_fpcalc_reencoded_copy_beats_unrelated_and_finds_the_offset(tmp_path):
    sr = 44100
    music = synth_music(40.0, sr, seed=11)
    write_video_file(tmp_path / "original.mp4", music, sr)
    write_audio_file(tmp_path / "copy.mp3", music, sr, bitrate=48000)
    write_video_file(tmp_path / "excerpt.webm", music[:, 10 * sr:30 * sr], sr)
    write_video_file(tmp_path / "other.mkv", synth_music(40.0, sr, seed=12), sr)
    prints, failed = cb.fingerprint_all(
        {name: tmp_path / name for name in ("original.mp4", "copy.mp3", "excerpt.webm", "other.mkv")},
        cache_dir=tmp_path / "cache",
    )
    assert not failed
    assert 35 / cb.ITEM_SECONDS < len(prints["original.mp4"]) < 41 / cb.ITEM_SECONDS
    copy = cb.best_alignment(prints["copy.mp3"], prints["original.mp4"])[0]
    other = cb.best_alignment(prints["other.mkv"], prints["original.mp4"])[0]
    assert copy > 0.7 and other < 0.4 and copy > other + 0.4
    similarity, offset, _ = cb.best_alignment(prints["excerpt.webm"], prints["original.mp4"])
    assert similarity > 0.7
    assert offset * cb.ITEM_SECONDS == pytest.approx(10.0, abs=0.3)
    # Cached fingerprints are reused as they are.
    again, _ = cb.fingerprint_all({"o": tmp_path / "original.mp4"}, cache_dir=tmp_path / "cache")
    assert np.array_equal(again["o"], prints["original.mp4"])


@needs_fpcalc
def test_unreadable_file_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    prints, failed = cb.fingerprint_all({"bad": bad})
    assert not prints and "bad" in failed


@needs_fpcalc
def test_pyav_wav_fallback_gives_the_same_fingerprint(tmp_path):
    sr = 44100
    write_video_file(tmp_path / "clip.mkv", synth_music(20.0, sr, seed=13), sr)
    cb._decode_to_wav(tmp_path / "clip.mkv", tmp_path / "clip.wav")
    direct = cb.fingerprint(tmp_path / "clip.mkv")
    via_wav = cb.fingerprint(tmp_path / "clip.wav")
    assert cb.best_alignment(via_wav, direct)[0] > 0.8
