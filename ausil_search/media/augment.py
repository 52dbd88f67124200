"""Audio transformations that make near-duplicate copies: for the benchmark generator and for training.

Everything works on mono float32 arrays at a given sample rate and returns mono float32 at the same
rate (a resample or a codec round trip goes there and back), using only numpy and PyAV (FFmpeg's
encoders and its resampler in memory; no system ffmpeg). Each transform is a plain function with
explicit parameters; :func:`random_augment` draws a chain of them and returns a log of what it did,
``[{"name": ..., **params}]``, so a copy's history can be stored beside it and replayed.

Conventions
- ``factor > 1`` means faster (shorter output) for :func:`tempo_change` and :func:`speed_change`.
- Transforms that need other recordings (mixing, embedding, babble) take them as arrays at the same
  rate; :func:`random_augment` picks among ``others`` and logs which one (``other`` = its index).
- A chain is applied in a fixed stage order (edit → time/pitch → room → additive → channel → embed →
  codec), the order in which a real copy picks these up. Crop therefore comes first, so the part of
  the input that survives is ``[start_s, end_s)`` of the crop entry.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

# (format, encoder) for the in-memory codec round trip.
CODECS = {"mp3": ("mp3", "libmp3lame"), "aac": ("adts", "aac"), "opus": ("ogg", "libopus")}
TELEPHONE_BAND = (300.0, 3400.0)
RESAMPLE_RATES = (8000, 16000, 22050)
MODES = ("core", "speed", "hard")

_STAGES = {
    "crop": 0,
    "tempo": 1, "speed": 1, "pitch": 1,
    "echo": 2, "reverb": 2, "rerecord": 2,
    "mix": 3, "noise": 3, "babble": 3,
    "band": 4, "resample": 4, "gain": 4,
    "embed": 5,
    "codec": 6,
}
_NEEDS_OTHERS = {"mix", "embed", "babble"}
CORE_TRANSFORMS = ("codec", "resample", "gain", "band", "noise", "mix", "echo", "crop", "embed")
TIME_TRANSFORMS = ("tempo", "speed", "pitch")


# --------------------------------------------------------------------------- helpers


def _mono32(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
    return samples


def _fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to exactly ``n`` samples."""
    if len(samples) >= n:
        return samples[:n]
    return np.concatenate([samples, np.zeros(n - len(samples), samples.dtype)])


def _power(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64))) if len(samples) else 0.0


def _frames(samples: np.ndarray, sr: int, block: int = 8192):
    for start in range(0, len(samples), block):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + block].copy(), format="flt", layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        yield frame


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """FFmpeg's resampler (swr, band-limited sinc) from ``sr_in`` to ``sr_out``; length ``≈ n·sr_out/sr_in``."""
    samples = _mono32(samples)
    if sr_in == sr_out:
        return samples.copy()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr_out)
    pieces = []
    for frame in _frames(samples, sr_in):
        pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return _fit_length(out, round(len(samples) * sr_out / sr_in))


def _fast_size(n: int) -> int:
    """A length ≥ n that numpy's FFT handles quickly (2^a·3^b)."""
    best = 1 << max(0, (n - 1).bit_length())
    power3 = 1
    while power3 < best:
        size = power3 * (1 << max(0, math.ceil(math.log2(max(n / power3, 1)))))
        best = min(best, max(size, n) if size >= n else best)
        power3 *= 3
    return best


def _loop_to(samples: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """``n`` samples of ``samples`` repeated, beginning at ``start``."""
    if len(samples) == 0:
        return np.zeros(n, np.float32)
    reps = -(-(start + n) // len(samples))
    return np.tile(samples, reps)[start : start + n]


# --------------------------------------------------------------------------- transforms


def gain(samples: np.ndarray, sr: int, db: float) -> np.ndarray:
    """Scale by ``db`` decibels (no clipping here; :func:`random_augment` clips its result to ±1)."""
    return (_mono32(samples) * np.float32(10 ** (db / 20))).astype(np.float32)


def codec_roundtrip(samples: np.ndarray, sr: int, codec: str, bitrate: int) -> np.ndarray:
    """Encode with ``codec`` (mp3 / aac / opus) at ``bitrate`` bit/s in memory and decode back.

    The encoder's delay (priming samples) is found by cross-correlation and removed, so the output
    is time-aligned with the input and has the same length.
    """
    samples = _mono32(samples)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    fmt, encoder = CODECS[codec]
    rates = av.Codec(encoder, "w").audio_rates
    rate = sr if not rates or sr in rates else min([r for r in rates if r >= sr] or [max(rates)])
    source = resample(samples, sr, rate)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = int(bitrate)
        for frame in _frames(source, rate, 4096):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    buffer.seek(0)
    decoded = []
    with av.open(buffer, mode="r", format=fmt) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for frame in container.decode(audio=0):
            frame.pts = None
            decoded.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        decoded.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    out = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    delay = _delay(out, samples, max_lag=min(8192, len(samples) // 4))
    return _fit_length(out[delay:], len(samples)).astype(np.float32)


def _delay(delayed: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """The lag in ``[0, max_lag]`` at which ``delayed`` best matches ``reference`` (FFT cross-correlation)."""
    if max_lag <= 0 or len(reference) == 0:
        return 0
    n = min(len(reference), 10 * 44100)
    a = reference[:n].astype(np.float64)
    b = delayed[: n + max_lag].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)[: max_lag + 1]
    return int(np.argmax(corr))


def resample_roundtrip(samples: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """Down to ``rate`` and back to ``sr``: everything above ``rate/2`` is gone."""
    samples = _mono32(samples)
    return _fit_length(resample(resample(samples, sr, rate), rate, sr), len(samples))


def band_limit(samples: np.ndarray, sr: int, low_hz: float = 0.0, high_hz: float | None = None,
               transition_hz: float = 50.0) -> np.ndarray:
    """Keep ``[low_hz, high_hz]`` (FFT filter, raised-cosine edges ``transition_hz`` wide outside the band)."""
    samples = _mono32(samples)
    high_hz = sr / 2 if high_hz is None else min(high_hz, sr / 2)
    size = _fast_size(len(samples))
    spectrum = np.fft.rfft(samples, size)
    freqs = np.fft.rfftfreq(size, 1 / sr)
    response = np.ones(len(freqs))
    if low_hz > 0:
        below = np.clip((freqs - (low_hz - transition_hz)) / transition_hz, 0, 1)
        response *= 0.5 - 0.5 * np.cos(np.pi * below)
    if high_hz < sr / 2:
        above = np.clip(((high_hz + transition_hz) - freqs) / transition_hz, 0, 1)
        response *= 0.5 - 0.5 * np.cos(np.pi * above)
    return np.fft.irfft(spectrum * response, size)[: len(samples)].astype(np.float32)


def colored_noise(n: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Unit-power noise: white, pink (1/f power) or brown (1/f²)."""
    white = rng.standard_normal(n)
    if color != "white" and n > 1:
        exponent = {"pink": 0.5, "brown": 1.0}[color]
        size = _fast_size(n)
        spectrum = np.fft.rfft(rng.standard_normal(size))
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        white = np.fft.irfft(spectrum / f**exponent, size)[:n]
    return (white / np.sqrt(np.mean(white**2) + 1e-20)).astype(np.float32)


def add_noise(samples: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Add noise whose power is ``snr_db`` below the signal's mean power."""
    samples = _mono32(samples)
    scale = np.sqrt(_power(samples) / 10 ** (snr_db / 10))
    return (samples + scale * colored_noise(len(samples), rng, color)).astype(np.float32)


def mix(samples: np.ndarray, sr: int, other: np.ndarray, level_db: float, other_start: int = 0) -> np.ndarray:
    """Add ``other`` (looped or cut to length, from ``other_start``) with its RMS ``level_db`` relative to ours."""
    samples = _mono32(samples)
    background = _loop_to(_mono32(other), len(samples), other_start).astype(np.float64)
    scale = np.sqrt(_power(samples) / max(_power(background), 1e-20)) * 10 ** (level_db / 20)
    return (samples + scale * background).astype(np.float32)


def babble(samples: np.ndarray, sr: int, talkers: Sequence[np.ndarray], snr_db: float,
           rng: np.random.Generator) -> np.ndarray:
    """Add a crowd: the ``talkers`` (each looped from a random start, equal power) summed, at ``snr_db``."""
    samples = _mono32(samples)
    crowd = np.zeros(len(samples))
    for talker in talkers:
        talker = _mono32(talker)
        if len(talker) == 0 or _power(talker) == 0:
            continue
        piece = _loop_to(talker, len(samples), int(rng.integers(len(talker))))
        crowd += piece / np.sqrt(max(_power(piece), 1e-20))
    if not crowd.any():
        return samples.copy()
    scale = np.sqrt(_power(samples) / _power(crowd) / 10 ** (snr_db / 10))
    return (samples + scale * crowd).astype(np.float32)


def echo(samples: np.ndarray, sr: int, delay_s: float, decay: float, taps: int = 1) -> np.ndarray:
    """Add ``taps`` delayed copies, tap k at ``k·delay_s`` with amplitude ``decay**k``; same length."""
    samples = _mono32(samples)
    out = samples.astype(np.float64)
    step = max(1, round(delay_s * sr))
    for k in range(1, taps + 1):
        if k * step >= len(samples):
            break
        out[k * step :] += decay**k * samples[: len(samples) - k * step]
    return out.astype(np.float32)


def crop(samples: np.ndarray, sr: int, start_s: float, end_s: float) -> np.ndarray:
    """Keep ``[start_s, end_s)``."""
    samples = _mono32(samples)
    return samples[round(start_s * sr) : round(end_s * sr)].copy()


def embed(samples: np.ndarray, sr: int, background: np.ndarray, offset_s: float, fade_s: float = 0.05) -> np.ndarray:
    """Insert ``samples`` into ``background`` at ``offset_s`` (background split there, short cross-fades).

    The result is ``len(background) + len(samples)`` long and holds the input from ``offset_s`` on.
    """
    samples = _mono32(samples)
    background = _mono32(background)
    at = min(max(0, round(offset_s * sr)), len(background))
    fade = min(round(fade_s * sr), len(samples) // 4)
    inner = samples.astype(np.float64).copy()
    if fade > 0:
        ramp = np.linspace(0, 1, fade)
        inner[:fade] *= ramp
        inner[-fade:] *= ramp[::-1]
    head = background[:at].astype(np.float64)
    tail = background[at:].astype(np.float64)
    # Match the background's level to the material's, as an editor would, and fade it out/in too.
    level = np.sqrt(_power(samples) / max(_power(background), 1e-20)) if _power(background) else 1.0
    head, tail = head * level, tail * level
    if fade > 0 and len(head) >= fade:
        head[-fade:] *= np.linspace(1, 0, fade)
    if fade > 0 and len(tail) >= fade:
        tail[:fade] *= np.linspace(0, 1, fade)
    return np.concatenate([head, inner, tail]).astype(np.float32)


def _stft(samples: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    padded = np.pad(samples.astype(np.float32), (n_fft // 2, n_fft // 2 + hop))
    n_frames = 1 + (len(padded) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    return np.fft.rfft(padded[index] * window, axis=1).astype(np.complex64)


def _istft(frames: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    window = np.hanning(n_fft + 1)[:-1]
    chunks = np.fft.irfft(frames, n_fft, axis=1) * window
    total = n_fft + hop * (len(frames) - 1)
    out = np.zeros(total)
    norm = np.zeros(total)
    for k in range(len(frames)):  # overlap-add; a few thousand cheap slices
        out[k * hop : k * hop + n_fft] += chunks[k]
        norm[k * hop : k * hop + n_fft] += window**2
    out /= np.maximum(norm, 1e-3)
    return _fit_length(out[n_fft // 2 :], length)


def time_stretch(samples: np.ndarray, sr: int, rate: float, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Phase-vocoder time stretch: ``rate > 1`` is faster (length ``n/rate``), pitch unchanged."""
    samples = _mono32(samples)
    n_out = round(len(samples) / rate)
    if len(samples) < n_fft or rate == 1:
        return _fit_length(samples.copy(), n_out)
    spectra = _stft(samples, n_fft, hop)
    steps = np.arange(0, len(spectra) - 1, rate)
    left = steps.astype(int)
    frac = (steps - left)[:, None]
    magnitude = (1 - frac) * np.abs(spectra[left]) + frac * np.abs(spectra[left + 1])
    expected = 2 * np.pi * hop * np.arange(n_fft // 2 + 1) / n_fft
    advance = np.angle(spectra[left + 1]) - np.angle(spectra[left]) - expected
    advance = advance - 2 * np.pi * np.round(advance / (2 * np.pi)) + expected
    phase = np.angle(spectra[0])[None, :] + np.concatenate([np.zeros((1, advance.shape[1])), np.cumsum(advance[:-1], axis=0)])
    stretched = (magnitude * np.exp(1j * phase)).astype(np.complex64)
    out = _istft(stretched, n_fft, hop, n_out)
    # Phases that drift apart across bins lose some power; give the input's level back.
    out *= np.sqrt(_power(samples) / max(_power(out), 1e-20))
    return out.astype(np.float32)


def tempo_change(samples: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster with the pitch kept (length ``n/factor``)."""
    return time_stretch(samples, sr, factor)


def speed_change(samples: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play ``factor`` times faster by resampling, like a tape: the pitch moves by the same factor."""
    samples = _mono32(samples)
    return _fit_length(resample(samples, round(sr * factor), sr), round(len(samples) / factor))


def pitch_shift(samples: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Shift the pitch by ``semitones`` and keep the tempo (stretch, then resample back to length)."""
    samples = _mono32(samples)
    ratio = 2 ** (semitones / 12)
    stretched = time_stretch(samples, sr, 1 / ratio)
    return _fit_length(resample(stretched, round(sr * ratio), sr), len(samples))


def room_impulse(sr: int, rt60_s: float, rng: np.random.Generator, predelay_s: float = 0.01) -> np.ndarray:
    """A synthetic room: direct sound, then exponentially decaying noise (−60 dB after ``rt60_s``)."""
    n = max(1, round(rt60_s * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    tail[: round(predelay_s * sr)] = 0
    tail /= np.sqrt(np.sum(tail**2)) + 1e-20
    tail[0] = 1.0
    return tail


def reverb(samples: np.ndarray, sr: int, rt60_s: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse (FFT convolution); ``wet`` weighs the reverberant tail."""
    samples = _mono32(samples)
    impulse = room_impulse(sr, rt60_s, rng)
    impulse[1:] *= wet
    size = 1 << int(np.ceil(np.log2(len(samples) + len(impulse))))
    out = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(impulse, size), size)[: len(samples)]
    return out.astype(np.float32)


def rerecord(samples: np.ndarray, sr: int, rt60_s: float, wet: float, low_hz: float, high_hz: float,
             snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A phone held up to a speaker: room reverb, the phone's band, a little room noise."""
    out = reverb(samples, sr, rt60_s, wet, rng)
    out = band_limit(out, sr, low_hz, high_hz)
    return add_noise(out, sr, snr_db, rng, "pink")


# --------------------------------------------------------------------------- random chains


def _speed_factor(rng: np.random.Generator) -> float:
    return float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.15) + 1)


def _draw_step(name: str, rng: np.random.Generator, hard: bool, n_others: int, duration_s: float) -> dict:
    """Parameters for one step; ``hard`` uses the hard-mode ranges."""
    if name == "codec":
        codec = str(rng.choice(list(CODECS)))
        low, high = {"mp3": (32, 96), "aac": (24, 64), "opus": (12, 32)}[codec]
        if hard:
            high = low + (high - low) // 3
        return {"name": "codec", "codec": codec, "bitrate": int(rng.integers(low, high + 1)) * 1000}
    if name == "resample":
        return {"name": "resample", "rate": int(rng.choice(RESAMPLE_RATES))}
    if name == "gain":
        return {"name": "gain", "db": round(float(rng.choice([-1, 1]) * rng.uniform(3, 9)), 2)}
    if name == "band":
        kind = "telephone" if hard else str(rng.choice(["telephone", "lowpass", "highpass"]))
        low, high = {"telephone": TELEPHONE_BAND, "lowpass": (0.0, round(float(rng.uniform(2500, 8000)))),
                     "highpass": (round(float(rng.uniform(150, 800))), None)}[kind]
        return {"name": "band", "kind": kind, "low_hz": low, "high_hz": high}
    if name == "noise":
        snr = rng.uniform(0, 5) if hard else rng.uniform(5, 20)
        return {"name": "noise", "snr_db": round(float(snr), 2), "color": str(rng.choice(["white", "pink", "brown"]))}
    if name == "mix":
        level = rng.uniform(-4, 0) if hard else rng.uniform(-15, -6)
        return {"name": "mix", "other": int(rng.integers(n_others)), "level_db": round(float(level), 2),
                "other_start_frac": round(float(rng.random()), 4)}
    if name == "babble":
        return {"name": "babble", "others": sorted(int(i) for i in rng.choice(n_others, min(n_others, int(rng.integers(3, 7))), replace=False)),
                "snr_db": round(float(rng.uniform(0, 5) if hard else rng.uniform(5, 15)), 2)}
    if name == "echo":
        return {"name": "echo", "delay_s": round(float(rng.uniform(0.06, 0.4)), 3),
                "decay": round(float(rng.uniform(0.2, 0.6)), 3), "taps": int(rng.integers(1, 4))}
    if name == "crop":
        keep = rng.uniform(0.5, 0.95)
        start = rng.uniform(0, 1 - keep) * duration_s
        return {"name": "crop", "start_s": round(float(start), 3), "end_s": round(float(start + keep * duration_s), 3)}
    if name == "embed":
        return {"name": "embed", "pad_factor": round(float(rng.uniform(0.5, 2.0)), 3),
                "offset_frac": round(float(rng.random()), 4), "other": int(rng.integers(n_others)),
                "other_start_frac": round(float(rng.random()), 4)}
    if name == "tempo":
        return {"name": "tempo", "factor": round(_speed_factor(rng), 4)}
    if name == "speed":
        return {"name": "speed", "factor": round(_speed_factor(rng), 4)}
    if name == "pitch":
        return {"name": "pitch", "semitones": round(float(rng.choice([-1, 1]) * rng.uniform(1, 4)), 3)}
    if name == "rerecord":
        return {"name": "rerecord", "rt60_s": round(float(rng.uniform(0.3, 1.0)), 3), "wet": round(float(rng.uniform(0.3, 0.8)), 3),
                "low_hz": round(float(rng.uniform(150, 400))), "high_hz": round(float(rng.uniform(3400, 7000))),
                "snr_db": round(float(rng.uniform(15, 30)), 2)}
    raise ValueError(f"unknown transform {name!r}")


def draw_chain(mode: str, rng: np.random.Generator, *, n_others: int = 0, duration_s: float = 60.0,
               time_change: bool | None = None) -> list[dict]:
    """A random chain (list of step dicts, in stage order) for ``mode`` = core / speed / hard.

    ``time_change`` (hard mode only): True forces a tempo, speed or pitch change, False rules it
    out, None lets chance decide (half of the chains).
    """
    allowed = [n for n in CORE_TRANSFORMS if n_others or n not in _NEEDS_OTHERS]
    if mode == "core":
        names = list(rng.choice(allowed, int(rng.integers(1, 4)), replace=False))
    elif mode == "speed":
        names = [str(rng.choice(["tempo", "speed"]))]
        names += list(rng.choice([n for n in allowed if n != "crop"], int(rng.integers(0, 3)), replace=False))
    elif mode == "hard":
        pool = ["codec", "noise", "band", "rerecord"] + (["mix", "babble"] if n_others else [])
        names = list(rng.choice(pool, int(rng.integers(2, 4)), replace=False))
        if time_change is None:
            time_change = bool(rng.random() < 0.5)
        if time_change:
            names.append(str(rng.choice(TIME_TRANSFORMS)))
        if "noise" in names and "babble" in names:
            names.remove("babble")
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    chain = [_draw_step(str(name), rng, mode == "hard", n_others, duration_s) for name in names]
    return sorted(chain, key=lambda step: _STAGES[step["name"]])


def apply_step(samples: np.ndarray, sr: int, step: dict, rng: np.random.Generator,
               others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Apply one logged step; randomness (noise, room, babble offsets) comes from ``rng``."""
    name = step["name"]
    if name == "codec":
        return codec_roundtrip(samples, sr, step["codec"], step["bitrate"])
    if name == "resample":
        return resample_roundtrip(samples, sr, step["rate"]) if step["rate"] < sr else samples
    if name == "gain":
        return gain(samples, sr, step["db"])
    if name == "band":
        return band_limit(samples, sr, step["low_hz"], step["high_hz"])
    if name == "noise":
        return add_noise(samples, sr, step["snr_db"], rng, step["color"])
    if name == "mix":
        other = others[step["other"]]
        return mix(samples, sr, other, step["level_db"], int(step["other_start_frac"] * len(other)))
    if name == "babble":
        return babble(samples, sr, [others[i] for i in step["others"]], step["snr_db"], rng)
    if name == "echo":
        return echo(samples, sr, step["delay_s"], step["decay"], step["taps"])
    if name == "crop":
        return crop(samples, sr, step["start_s"], step["end_s"])
    if name == "embed":
        n_pad = round(len(samples) * step["pad_factor"])
        other = others[step["other"]]
        background = _loop_to(other, n_pad, int(step["other_start_frac"] * len(other)))
        return embed(samples, sr, background, step["offset_frac"] * n_pad / sr)
    if name == "tempo":
        return tempo_change(samples, sr, step["factor"])
    if name == "speed":
        return speed_change(samples, sr, step["factor"])
    if name == "pitch":
        return pitch_shift(samples, sr, step["semitones"])
    if name == "rerecord":
        return rerecord(samples, sr, step["rt60_s"], step["wet"], step["low_hz"], step["high_hz"], step["snr_db"], rng)
    if name == "reverb":
        return reverb(samples, sr, step["rt60_s"], step["wet"], rng)
    raise ValueError(f"unknown transform {name!r}")


def apply_chain(samples: np.ndarray, sr: int, chain: Sequence[dict], rng: np.random.Generator,
                others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Apply the steps in order and clip to ±1, as writing to any file format would."""
    out = _mono32(samples)
    for step in chain:
        out = apply_step(out, sr, step, rng, others)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def random_augment(
    samples: np.ndarray,
    sr: int,
    rng: np.random.Generator,
    *,
    mode: str = "core",
    others: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, list[dict]]:
    """A random near-duplicate of ``samples`` (mono float32 at ``sr``) and the log of what was done.

    mode "core": 1–3 of codec, resample, gain, band, noise (5–20 dB), mix (−6…−15 dB), echo,
    crop (≥ 50% kept), embed. "speed": a tempo change (pitch kept) or a resample speed change
    (pitch moves), ±5–15%, plus 0–2 core steps. "hard": 2–3 of low-bitrate codec, noise or babble
    at 0–5 dB, mixing at 0…−4 dB, telephone band, re-recording, plus in half the chains a tempo /
    speed change or a ±1–4 semitone pitch shift. Steps that need ``others`` (unrelated
    recordings at ``sr``) are left out when there are none.
    """
    samples = _mono32(samples)
    others = [o for o in others if len(o)]
    chain = draw_chain(mode, rng, n_others=len(others), duration_s=len(samples) / sr)
    return apply_chain(samples, sr, chain, rng, others), chain
