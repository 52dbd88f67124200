"""Self-supervised backbone training, the data side: recordings, view recipes, batches of views.

A batch is made like this (:func:`make_view_batch`):

- Sample recordings (weighted by duration, capped, so short clips and long tracks both appear) and
  read up to ``excerpts_per_recording`` non-overlapping ``excerpt_s`` excerpts of each at random
  times (a container seek, so long files cost no more than short ones). Excerpts of one recording
  are each other's hardest negatives, unless their audio repeats (music loops), which is checked.
- Make two views, each through its own random chain of the augmentations of
  :mod:`ausil_search.media.augment` that keep the excerpt's centre in place: speed change (resampling,
  ±15 %), tempo change, pitch shift, echo, room reverb, mixing under another recording (−10…+4 dB),
  babble or noise (0–20 dB), band limits and low-pass, resampling to 8–22.05 kHz, gain, low-bitrate
  codecs. Speed and tempo changes scale time about the start, which keeps the centre at the centre.
- Log-mel of each view (the inference front-end, :func:`ausil_search.features.spectrogram.log_mel`), then its
  centre window of ``window_frames`` frames (optionally moved by up to ``max_shift_s / 2`` each way,
  so the two windows are misaligned as a query's segments are against the database's); some
  windows are lowered as a quiet passage of a loud file is, or end early as a short clip does.

Every batch is a pure function of ``(seed, step)``, so worker processes can make batches ahead in
any order, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..media import augment
from ..media.audio import SAMPLE_RATE, decode_audio, probe, read_excerpt
from ..errors import AusilError, InputError
from ..media.sources import collect_media
from ..features.scratch import die_with_parent
from ..features.spectrogram import FrontEnd, log_mel
from ..progress import Progress, Stage, silent
from .configs import ViewRecipe

_WEIGHT_CAP_S = 60.0  # a recording's sampling weight grows with its duration up to this


@dataclass(frozen=True)
class AudioCorpus:
    """The training recordings and their durations (from the container headers)."""

    paths: tuple[str, ...]
    durations: tuple[float, ...]

    @classmethod
    def from_sources(
        cls, sources: Sequence[Path | str], progress: Progress = silent
    ) -> AudioCorpus:
        """Folders, media files and `.txt` path lists; files without usable audio are skipped (and
        reported to `progress`, with each file looked at: the `scan` stage)."""

        scan = Stage(progress, "scan")
        found = collect_media(sources, lambda path, reason: scan.advance(path, skipped=f"{path}: {reason}", count=0))
        scan.total = len(found)
        paths, durations = [], []
        for path in found:
            try:
                info = probe(path)
            except InputError as exc:
                scan.advance(path, skipped=str(exc))
                continue
            if not info.has_audio:
                scan.advance(path, skipped=f"{path}: no audio stream")
                continue
            duration = info.duration_s if info.duration_s and info.duration_s > 0 else _decoded_duration(path)
            if duration <= 0:
                scan.advance(path, skipped=f"{path}: no audio")
                continue
            paths.append(str(path))
            durations.append(round(float(duration), 3))
            scan.advance(path)
        if len(paths) < 2:
            raise AusilError(f"backbone training needs at least 2 usable recordings, found {len(paths)}")
        return cls(tuple(paths), tuple(durations))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def hours(self) -> float:
        return sum(self.durations) / 3600

    def weights(self) -> np.ndarray:
        capped = np.minimum(np.asarray(self.durations, np.float64), _WEIGHT_CAP_S)
        return capped / capped.sum()

    def fingerprint(self) -> str:
        text = json.dumps([self.paths, self.durations])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _decoded_duration(path: Path) -> float:
    try:
        return sum(len(chunk) for chunk in decode_audio(path, SAMPLE_RATE)) / SAMPLE_RATE
    except InputError:
        return 0.0


def draw_view_chain(rng: np.random.Generator, recipe: ViewRecipe, n_others: int) -> list[dict]:
    """A chain of :mod:`augment` steps (its log format, applied in stage order) that keeps the centre.

    Two steps act on the log-mel window instead of the waveform: ``level`` (a quiet passage of a
    loud file) and ``cut`` (audio only at the window's start); :func:`view_window` applies them.
    """
    if rng.random() < recipe.p_clean:
        return []
    chain: list[dict] = []
    if rng.random() < recipe.p_time:
        kind = str(rng.choice(["speed", "tempo", "pitch"]))
        if kind == "pitch":
            chain.append({"name": "pitch", "semitones": round(float(rng.uniform(-1, 1) * recipe.max_pitch_semitones), 3)})
        else:
            factor = 1 + rng.uniform(-1, 1) * recipe.max_speed_change
            chain.append({"name": kind, "factor": round(float(factor), 4)})
    if rng.random() < recipe.p_echo:
        chain.append({"name": "echo", "delay_s": round(float(rng.uniform(0.06, 0.4)), 3),
                      "decay": round(float(rng.uniform(0.2, 0.6)), 3), "taps": int(rng.integers(1, 4))})
    if rng.random() < recipe.p_reverb:
        chain.append({"name": "reverb", "rt60_s": round(float(rng.uniform(*recipe.rt60_s)), 3),
                      "wet": round(float(rng.uniform(0.2, 0.8)), 3)})
    if n_others and rng.random() < recipe.p_mix:
        chain.append({"name": "mix", "other": int(rng.integers(n_others)),
                      "level_db": round(float(rng.uniform(*recipe.mix_level_db)), 2),
                      "other_start_frac": round(float(rng.random()), 4)})
    if n_others >= 2 and rng.random() < recipe.p_babble:
        talkers = rng.choice(n_others, min(n_others, int(rng.integers(2, 6))), replace=False)
        chain.append({"name": "babble", "others": sorted(int(i) for i in talkers),
                      "snr_db": round(float(rng.uniform(*recipe.noise_snr_db)), 2)})
    elif rng.random() < recipe.p_noise:
        chain.append({"name": "noise", "snr_db": round(float(rng.uniform(*recipe.noise_snr_db)), 2),
                      "color": str(rng.choice(["white", "pink", "brown"]))})
    if rng.random() < recipe.p_band:
        kind = str(rng.choice(["telephone", "lowpass", "lowpass", "highpass"]))
        low, high = {"telephone": augment.TELEPHONE_BAND, "lowpass": (0.0, round(float(rng.uniform(*recipe.lowpass_hz)))),
                     "highpass": (round(float(rng.uniform(150, 800))), None)}[kind]
        chain.append({"name": "band", "kind": kind, "low_hz": low, "high_hz": high})
    if rng.random() < recipe.p_resample:
        chain.append({"name": "resample", "rate": int(rng.choice(augment.RESAMPLE_RATES))})
    if rng.random() < recipe.p_gain:
        chain.append({"name": "gain", "db": round(float(rng.choice([-1, 1]) * rng.uniform(3, 9)), 2)})
    if rng.random() < recipe.p_codec:
        codec = str(rng.choice(list(augment.CODECS)))
        low = max(recipe.codec_kbps[0], 32 if codec == "mp3" else 0)  # LAME's floor at 44.1 kHz
        high = max(low, recipe.codec_kbps[1])
        chain.append({"name": "codec", "codec": codec, "bitrate": int(rng.integers(low, high + 1)) * 1000})
    if rng.random() < recipe.p_level:
        chain.append({"name": "level", "drop_db": round(float(rng.uniform(*recipe.level_drop_db)), 2)})
    if rng.random() < recipe.p_cut:
        chain.append({"name": "cut", "keep": round(float(rng.uniform(recipe.min_cut_fraction, 1.0)), 3)})
    return chain


_WINDOW_STEPS = ("level", "cut")


def centre_window(samples: np.ndarray, frontend: FrontEnd, offset_frames: int = 0,
                  window_steps: Sequence[dict] = ()) -> np.ndarray:
    """The log-mel window of ``window_frames`` frames centred on the signal's middle (+ offset).

    ``window_steps`` (``level``, ``cut``) then change it as the front-end would have seen the audio
    inside a louder file, or at the end of a clip that stops inside the window.
    """
    logmel = log_mel(samples, frontend)
    width = frontend.window_frames
    window = np.full((width, frontend.n_mels), frontend.pad_value, np.float32)
    start = min(max(0, (len(logmel) - width) // 2 + offset_frames), max(0, len(logmel) - width))
    frames = logmel[start : start + width]
    window[: len(frames)] = frames
    for step in window_steps:
        if step["name"] == "level":  # the file's peak is drop_db above this audio: same floor, lower values
            floor = np.float32(logmel.max() - frontend.top_db)
            window[: len(frames)] = np.maximum(frames - np.float32(step["drop_db"]), floor)
        elif step["name"] == "cut":
            window[max(1, round(step["keep"] * width)) :] = frontend.pad_value
        else:
            raise ValueError(f"unknown window step {step['name']!r}")
    return window


def plan_excerpts(corpus: AudioCorpus, recipe: ViewRecipe, rng: np.random.Generator,
                  batch_size: int) -> list[tuple[int, float]]:
    """(recording, start second) for each item of a batch.

    Up to ``excerpts_per_recording`` excerpts come from one recording, never overlapping and at
    least ``min_gap_s`` apart, so the model must tell parts of one recording apart; recordings too
    short for several give one. Recordings are drawn by duration-capped weight, without replacement.
    """
    if batch_size > len(corpus):
        raise AusilError(f"--batch {batch_size} is larger than the number of recordings ({len(corpus)})")
    length, gap = recipe.excerpt_s, recipe.min_gap_s
    order = rng.choice(len(corpus), size=batch_size, replace=False, p=corpus.weights())
    plan: list[tuple[int, float]] = []
    for item in order:
        room = batch_size - len(plan)
        if room == 0:
            break
        duration = corpus.durations[item]
        fits = int((duration + gap) // (length + gap)) if duration > length else 1
        count = max(1, min(recipe.excerpts_per_recording, fits, room))
        slack = max(0.0, duration - count * length - (count - 1) * gap)
        offsets = np.sort(rng.uniform(0, slack, count)) if slack > 0 else np.zeros(count)
        plan.extend((int(item), float(offset + k * (length + gap))) for k, offset in enumerate(offsets))
    return plan


def repeat_correlation(a: np.ndarray, b: np.ndarray, min_overlap: int) -> float:
    """Highest correlation of two log-mel excerpts' band envelopes over time lags of ``min_overlap``+ frames.

    Game and pop music loop: two excerpts of one recording may hold the same bars at another phase,
    and such a pair must not be pushed apart as a negative. Each band's mean is removed, so a shared
    timbre alone does not count; the same notes at the same times do.
    """
    best = -1.0
    n = min(len(a), len(b))
    for lag in range(-(n - min_overlap), n - min_overlap + 1):
        x = a[max(0, lag) : n + min(0, lag)]
        y = b[max(0, -lag) : n - max(0, lag)]
        x, y = x - x.mean(axis=0), y - y.mean(axis=0)
        denominator = np.sqrt(float((x * x).sum()) * float((y * y).sum()))
        if denominator > 0:
            best = max(best, float((x * y).sum()) / denominator)
    return best


@dataclass
class ViewBatch:
    """Two views of each item (``views``: (2, B, T, n_mels)) and the item pairs that are no negatives."""

    views: np.ndarray
    not_negative: np.ndarray  # (B, B) bool: excerpts of one recording that repeat each other
    recordings: np.ndarray  # (B,) the recording of each item


def make_view_batch(corpus: AudioCorpus, recipe: ViewRecipe, frontend: FrontEnd, seed: int, index: int,
                    batch_size: int, stream: int = 0) -> ViewBatch:
    """Batch ``index`` of the run with ``seed``; a pure function of its arguments.

    Row i of both halves holds the two views of item i. ``stream`` separates independent series
    (0 training, 1 BatchNorm recalibration) of the same run.
    """
    rng = np.random.default_rng([seed, stream, index])
    rate = frontend.sample_rate
    n_samples = round(recipe.excerpt_s * rate)
    plan = plan_excerpts(corpus, recipe, rng, batch_size)
    excerpts = []
    for item, start_s in plan:
        duration = corpus.durations[item]
        try:
            excerpt = read_excerpt(corpus.paths[item], start_s, n_samples, rate)
        except InputError:  # a file that went bad since the corpus was listed: silence, not a dead run
            excerpt = np.zeros(n_samples, np.float32)
        if duration < recipe.excerpt_s:  # centre a short recording in silence
            used = min(n_samples, round(duration * rate))
            excerpt = np.roll(excerpt, (n_samples - used) // 2)
        excerpts.append(excerpt)
    recordings = np.array([item for item, _ in plan])
    not_negative = np.zeros((batch_size, batch_size), bool)
    clean = {}
    for i in range(batch_size):
        for j in range(i + 1, batch_size):
            if recordings[i] == recordings[j]:
                for k in (i, j):
                    if k not in clean:
                        clean[k] = log_mel(excerpts[k], frontend)
                alike = repeat_correlation(clean[i], clean[j], frontend.window_frames // 2) > recipe.repeat_threshold
                not_negative[i, j] = not_negative[j, i] = alike
    half_shift = round(recipe.max_shift_s / 2 * rate / frontend.hop_length)
    views = np.empty((2, batch_size, frontend.window_frames, frontend.n_mels), np.float32)
    for i, excerpt in enumerate(excerpts):
        others = [e for j, e in enumerate(excerpts) if recordings[j] != recordings[i]]
        for v in range(2):
            chain = draw_view_chain(rng, recipe, len(others))
            audio_steps = [step for step in chain if step["name"] not in _WINDOW_STEPS]
            view = augment.apply_chain(excerpt, rate, audio_steps, rng, others) if audio_steps else excerpt
            offset = int(rng.integers(-half_shift, half_shift + 1)) if half_shift else 0
            views[v, i] = centre_window(view, frontend, offset, [s for s in chain if s["name"] in _WINDOW_STEPS])
    return ViewBatch(views, not_negative, recordings)


_WORKER_ARGS: tuple | None = None


def _worker_init(args: tuple, parent_pid: int) -> None:
    global _WORKER_ARGS
    die_with_parent(parent_pid)  # a killed trainer leaves no worker behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    torch.set_num_threads(1)
    _WORKER_ARGS = args


def _batch_of(args: tuple, index: int, stream: int) -> ViewBatch:
    corpus, recipe, frontend, seed, batch_size = args
    return make_view_batch(corpus, recipe, frontend, seed, index, batch_size, stream)


def _worker_batch(index: int, stream: int) -> ViewBatch:
    return _batch_of(_WORKER_ARGS, index, stream)


class ViewBatches:
    """Batches by index, made ``workers`` processes ahead (0: in this process, on demand)."""

    def __init__(self, corpus: AudioCorpus, recipe: ViewRecipe, frontend: FrontEnd, seed: int, batch_size: int,
                 workers: int = 1, prefetch: int | None = None) -> None:
        recipe.check_fits(frontend)
        self.args = (corpus, recipe, frontend, seed, batch_size)
        self.workers = workers
        self.prefetch = prefetch or 2 * max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def iterate(self, first: int, stop: int, stream: int = 0) -> Iterator[ViewBatch]:
        if self.workers == 0:
            for index in range(first, stop):
                yield _batch_of(self.args, index, stream)
            return
        if self._pool is None:
            import multiprocessing

            # spawn: forking a process whose torch threads are running is not safe.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(self.args, os.getpid()))
        pending: deque[Future] = deque()
        upcoming = iter(range(first, stop))
        try:
            for index in upcoming:
                pending.append(self._pool.submit(_worker_batch, index, stream))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                for index in upcoming:
                    pending.append(self._pool.submit(_worker_batch, index, stream))
                    break
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def measure_view_throughput(sources: Sequence[Path | str], batch_size: int = 8, batches: int = 4, seed: int = 0,
                            recipe: ViewRecipe = ViewRecipe(), frontend: FrontEnd = FrontEnd()) -> dict:
    """Views per second made in this process (one core's worth): what a data worker delivers."""
    corpus = AudioCorpus.from_sources(sources)
    started = time.perf_counter()
    for index in range(batches):
        make_view_batch(corpus, recipe, frontend, seed, index, batch_size)
    seconds = time.perf_counter() - started
    return {"views": 2 * batch_size * batches, "seconds": round(seconds, 2),
            "views_per_s": round(2 * batch_size * batches / seconds, 2)}
