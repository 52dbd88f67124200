"""The transformations do what their names say, measured on the output."""

import numpy as np
import pytest
from media import synth_music

from ausil_search import augment

SR = 16000


@pytest.fixture(scope="module")
def music():
    return synth_music(6.0, SR, seed=3)[0]


def sine(freq, seconds=3.0, sr=SR):
    t = np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples, sr=SR):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * sr / len(samples)


def band_energy(samples, low, high, sr=SR):
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / sr)
    return spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum()


@pytest.mark.parametrize("factor", [0.87, 1.12])
def test_speed_change_scales_duration_and_pitch(factor):
    out = augment.speed_change(sine(440), SR, factor)
    assert len(out) == round(3.0 * SR / factor)
    assert peak_hz(out) == pytest.approx(440 * factor, rel=0.01)


@pytest.mark.parametrize("factor", [0.9, 1.15])
def test_tempo_change_scales_duration_and_keeps_pitch(factor, music):
    out = augment.tempo_change(sine(440), SR, factor)
    assert len(out) == round(3.0 * SR / factor)
    assert peak_hz(out) == pytest.approx(440, rel=0.01)
    stretched = augment.tempo_change(music, SR, factor)
    assert len(stretched) == round(len(music) / factor)
    assert np.sqrt(np.mean(stretched**2)) == pytest.approx(np.sqrt(np.mean(music**2)), rel=0.05)


@pytest.mark.parametrize("semitones", [-3.0, 2.0])
def test_pitch_shift_moves_pitch_and_keeps_length(semitones):
    out = augment.pitch_shift(sine(440), SR, semitones)
    assert len(out) == 3 * SR
    assert peak_hz(out) == pytest.approx(440 * 2 ** (semitones / 12), rel=0.015)


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 15.0])
def test_noise_has_the_requested_snr(snr_db, music):
    out = augment.add_noise(music, SR, snr_db, np.random.default_rng(0), color="pink")
    noise = out - music
    measured = 10 * np.log10(np.mean(music.astype(float) ** 2) / np.mean(noise.astype(float) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.1)


def test_mix_and_babble_levels(music):
    other = synth_music(4.0, SR, seed=9)[0]
    out = augment.mix(music, SR, other, -10.0)
    added = out - music
    assert 10 * np.log10(np.mean(added.astype(float) ** 2) / np.mean(music.astype(float) ** 2)) == pytest.approx(-10, abs=0.1)
    talkers = [synth_music(2.0, SR, seed=s)[0] for s in (11, 12, 13)]
    out = augment.babble(music, SR, talkers, 3.0, np.random.default_rng(1))
    crowd = out - music
    assert 10 * np.log10(np.mean(music.astype(float) ** 2) / np.mean(crowd.astype(float) ** 2)) == pytest.approx(3, abs=0.1)


@pytest.mark.parametrize("codec,bitrate", [("mp3", 32000), ("aac", 24000), ("opus", 16000)])
def test_codec_roundtrip_decodes_aligned_with_the_right_length(codec, bitrate, music):
    out = augment.codec_roundtrip(music, SR, codec, bitrate)
    assert out.dtype == np.float32 and len(out) == len(music)
    assert not np.array_equal(out, music)
    assert np.corrcoef(out, music)[0, 1] > 0.8  # aligned: the encoder delay is removed


def test_band_limit_removes_energy_outside_the_band(music):
    low, high = augment.TELEPHONE_BAND
    assert band_energy(music, 0, low - 100) + band_energy(music, high + 100, SR / 2) > 0.05
    out = augment.band_limit(music, SR, low, high)
    assert band_energy(out, 0, low - 100) + band_energy(out, high + 100, SR / 2) < 1e-4  # −40 dB and more
    assert len(out) == len(music)


def test_resample_roundtrip_removes_what_the_low_rate_cannot_hold():
    tones = sine(1000) + sine(6000)
    out = augment.resample_roundtrip(tones, SR, 8000)
    assert len(out) == len(tones)
    assert band_energy(out, 5000, SR / 2) < 1e-3
    assert band_energy(out, 900, 1100) > 0.99


def test_crop_embed_and_echo(music):
    assert np.array_equal(augment.crop(music, SR, 1.0, 4.0), music[SR : 4 * SR])
    background = synth_music(5.0, SR, seed=4)[0]
    out = augment.embed(music, SR, background, 2.0)
    assert len(out) == len(music) + len(background)
    inner = out[2 * SR + SR : 2 * SR + 5 * SR]  # away from the fades
    assert np.allclose(inner, music[SR : 5 * SR], atol=1e-6)
    delayed = augment.echo(sine(440), SR, 0.1, 0.5, taps=1)
    impulse = np.zeros(SR, np.float32)
    impulse[0] = 1
    response = augment.echo(impulse, SR, 0.1, 0.5, taps=2)
    assert response[0] == 1 and response[1600] == 0.5 and response[3200] == 0.25 and len(delayed) == 3 * SR


def test_rerecord_is_band_limited_and_reverberant(music):
    out = augment.rerecord(music, SR, 0.6, 0.7, 300, 3400, 30.0, np.random.default_rng(0))
    assert len(out) == len(music)
    assert band_energy(out, 4500, SR / 2) < 0.01


@pytest.mark.parametrize("mode", augment.MODES)
def test_random_augment_contract(mode, music):
    others = [synth_music(3.0, SR, seed=s)[0] for s in (20, 21, 22, 23)]
    for seed in range(4):
        out, log = augment.random_augment(music, SR, np.random.default_rng(seed), mode=mode, others=others)
        again, log_again = augment.random_augment(music, SR, np.random.default_rng(seed), mode=mode, others=others)
        assert out.dtype == np.float32 and out.ndim == 1 and np.abs(out).max() <= 1
        assert log == log_again and np.array_equal(out, again)  # deterministic for a generator state
        names = [step["name"] for step in log]
        assert all(isinstance(step, dict) and "name" in step for step in log)
        if mode == "speed":
            assert names[0] in ("tempo", "speed") and 0.85 <= log[0]["factor"] <= 1.15
        if mode == "core":
            assert 1 <= len(log) <= 3 and not set(names) & {"tempo", "speed", "pitch"}
        expected = len(music)
        if names and names[0] == "crop":
            expected = round(log[0]["end_s"] * SR) - round(log[0]["start_s"] * SR)
        if "embed" not in names and not set(names) & {"tempo", "speed"}:
            assert len(out) == expected
    alone, log = augment.random_augment(music, SR, np.random.default_rng(0), mode="hard")
    assert not {"mix", "babble", "embed"} & {step["name"] for step in log}  # no others, none of these
