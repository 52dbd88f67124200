"""Build a duplicate-audio benchmark from any folder of recordings (``ausil-search bench make``).

Each *group* starts from a seed excerpt of one source recording. Its query and its 1–4 positive
database videos are made from that excerpt through random chains of :mod:`ausil_search.media.augment`;
hard negatives are other parts of the same recording, distractors come from other recordings and
make up about two thirds of the database.

Labels must be true, and game music loops: the same bars come back minutes later. So "does not
contain seed material" is decided by audio, not by time spans: :class:`MaterialIndex` compares the
log-mel of every second of each group's material with every position of every source recording
(a coarse pass on 125 ms cells, then a frame-accurate check of the candidates) and marks what
matches as off-limits for negatives, backgrounds, babble and padding, which are re-drawn when they
touch it.

Everything random comes from one seeded generator in the planning step; rendering a video uses its
own generator seeded from the plan, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media import augment, writer as media_writer
from ..media.audio import SAMPLE_RATE, load_audio
from ..errors import InputError
from ..media.sources import collect_media
from ..atomic import write_json_atomic
from ..features.spectrogram import log_mel
from ..progress import Progress, silent, track

# (extension, audio encoder, video encoder or None, weight): mostly videos, some audio-only files.
CONTAINERS = (
    (".mp4", "aac", "mpeg4", 0.35),
    (".mkv", "aac", "mpeg4", 0.15),  # libx264 output differs run to run; mpeg4 is bit-exact
    (".webm", "libopus", "libvpx", 0.15),
    (".m4a", "aac", None, 0.1),
    (".ogg", "libopus", None, 0.08),
    (".mp3", "libmp3lame", None, 0.1),
    (".wav", "pcm_s16le", None, 0.07),
)

FRAMES_PER_CELL = 11  # ≈ 128 ms of log-mel frames per coarse cell
BANDS = 32  # the 128 mel bands averaged in groups of 4
CELLS_PER_BLOCK = 8  # a compared block ≈ 1 s
COARSE_THRESHOLD = 0.5
FINE_THRESHOLD = 0.8
FINE_SHIFT_FRAMES = 6
MARGIN_S = 1.0


# --------------------------------------------------------------------------- sources


def collect_sources(sources: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Media files under folders, given directly, or listed in path lists; absolute and sorted (a
    benchmark must not depend on the order a folder is listed in)."""
    return sorted(str(path) for path in collect_media(sources))


@dataclass
class Recording:
    path: str
    cache: str  # raw float32 mono samples at SAMPLE_RATE
    n_samples: int
    features: np.ndarray  # (frames, BANDS) float32 log-mel, for the material checks

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def samples(self, start_s: float = 0.0, duration_s: float | None = None) -> np.ndarray:
        data = np.memmap(self.cache, dtype=np.float32, mode="r", shape=(self.n_samples,))
        start = min(self.n_samples, max(0, round(start_s * SAMPLE_RATE)))
        end = self.n_samples if duration_s is None else min(self.n_samples, start + round(duration_s * SAMPLE_RATE))
        return np.array(data[start:end])


def _cache_key(path: str) -> str:
    stat = os.stat(path)
    return hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{SAMPLE_RATE}".encode()).hexdigest()[:20]


def _decode_to_cache(job: tuple[str, str]) -> tuple[str, int, np.ndarray | None]:
    """Decode one source into the cache (raw float32) and compute its band features."""
    path, cache_dir = job
    key = _cache_key(path)
    raw, feats = Path(cache_dir) / f"{key}.f32", Path(cache_dir) / f"{key}.feat.npy"
    if raw.exists() and feats.exists():
        return path, raw.stat().st_size // 4, np.load(feats)
    try:
        samples = load_audio(path)
    except InputError:
        return path, 0, None
    features = band_features(samples)
    tmp = raw.with_suffix(".tmp")
    samples.astype(np.float32).tofile(tmp)
    os.replace(tmp, raw)
    np.save(feats, features)
    return path, len(samples), features


def decode_recordings(paths: Sequence[str], cache_dir: Path, workers: int = 1, progress: Progress = silent) -> list[Recording]:
    """The sources decoded into ``cache_dir`` (what is there already is reused), in the order given;
    those without audio are left out. ``progress`` hears of the stage ``decode sources``."""
    jobs = [(path, str(cache_dir)) for path in paths]
    recordings: list[Recording] = []

    def keep(decoded: Iterable[tuple[str, int, np.ndarray | None]]) -> None:
        for path, n, features in track(progress, "decode sources", decoded, len(jobs)):
            if features is not None and n > 0:
                recordings.append(Recording(path, str(Path(cache_dir) / f"{_cache_key(path)}.f32"), n, features))

    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=([],)) as pool:
            keep(pool.imap(_decode_to_cache, jobs))
    else:
        keep(map(_decode_to_cache, jobs))
    return recordings


def band_features(samples: np.ndarray) -> np.ndarray:
    """``(frames, 32)`` float32: the project's log-mel (hop 512 at 44.1 kHz) with bands averaged by 4."""
    mel = log_mel(np.asarray(samples, np.float32))
    return mel.reshape(len(mel), BANDS, -1).mean(axis=2).astype(np.float32)


# --------------------------------------------------------------------------- material checks


def _normalise_blocks(blocks: np.ndarray) -> np.ndarray:
    """Remove each band's mean (the timbre) and the block's spectral tilt; keep the time pattern."""
    blocks = blocks - blocks.mean(axis=1, keepdims=True)
    blocks = blocks - blocks.mean(axis=2, keepdims=True)
    flat = blocks.reshape(len(blocks), blocks.shape[1] * blocks.shape[2])
    return (flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)).astype(np.float32)


class MaterialIndex:
    """Finds where in the source recordings a given stretch of source material occurs again.

    Positions are coarse cells (``FRAMES_PER_CELL`` frames); a position "contains" material when the
    1-s block starting there matches one of the material's 1-s blocks, first by a cell-grid cosine
    ≥ ``COARSE_THRESHOLD``, then by a frame-accurate cosine ≥ ``FINE_THRESHOLD`` within
    ±``FINE_SHIFT_FRAMES`` frames. Silent blocks never match.
    """

    def __init__(self, recordings: Sequence[Recording]):
        self.recordings = recordings
        self.cell_s = FRAMES_PER_CELL * 512 / SAMPLE_RATE
        blocks, owners, starts, self.cells = [], [], [], []
        for index, recording in enumerate(recordings):
            feats = recording.features
            n_cells = len(feats) // FRAMES_PER_CELL
            cells = feats[: n_cells * FRAMES_PER_CELL].reshape(n_cells, FRAMES_PER_CELL, BANDS).mean(axis=1)
            self.cells.append(cells)
            n_blocks = n_cells - CELLS_PER_BLOCK + 1
            if n_blocks <= 0:
                continue
            window = np.lib.stride_tricks.sliding_window_view(cells, CELLS_PER_BLOCK, axis=0)  # n, BANDS, L
            window = window.transpose(0, 2, 1)
            audible = self._audible(window, feats)
            keep = np.flatnonzero(audible)
            blocks.append(_normalise_blocks(window[keep]))
            owners.append(np.full(len(keep), index))
            starts.append(keep)
        self.blocks = np.concatenate(blocks) if blocks else np.zeros((0, CELLS_PER_BLOCK * BANDS), np.float32)
        self.owner = np.concatenate(owners) if owners else np.zeros(0, int)
        self.start = np.concatenate(starts) if starts else np.zeros(0, int)

    @staticmethod
    def _audible(window: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Blocks whose loudest band is within 50 dB of the recording's peak, with some movement in them."""
        level = window.mean(axis=1).max(axis=1)
        spread = window.std(axis=1).mean(axis=1)
        return (level > feats.max() - 50) & (spread > 0.5)

    def _fine_block(self, recording: int, frame: int) -> np.ndarray | None:
        feats = self.recordings[recording].features
        length = CELLS_PER_BLOCK * FRAMES_PER_CELL
        if frame < 0 or frame + length > len(feats):
            return None
        return feats[frame : frame + length]

    def matches(self, recording: int, start_s: float, end_s: float) -> list[tuple[int, float, float]]:
        """``(recording, start_s, end_s)`` stretches of any source that hold material of the given span."""
        cells = self.cells[recording]
        first = max(0, math.floor(start_s / self.cell_s))
        last = min(len(cells), math.ceil(end_s / self.cell_s)) - CELLS_PER_BLOCK
        found = [(recording, start_s, end_s)]
        if last < first or len(self.blocks) == 0:
            return found
        starts = np.arange(first, last + 1, CELLS_PER_BLOCK)
        window = np.stack([cells[s : s + CELLS_PER_BLOCK] for s in starts])
        audible = self._audible(window, self.recordings[recording].features)
        starts, window = starts[audible], window[audible]
        if len(starts) == 0:
            return found
        query = _normalise_blocks(window)
        best = np.full(len(self.blocks), -1.0, np.float32)
        which = np.zeros(len(self.blocks), int)
        for offset in range(0, len(self.blocks), 65536):
            scores = query @ self.blocks[offset : offset + 65536].T
            which[offset : offset + 65536] = scores.argmax(axis=0)
            best[offset : offset + 65536] = scores.max(axis=0)
        for position in np.flatnonzero(best >= COARSE_THRESHOLD):
            owner, cell = int(self.owner[position]), int(self.start[position])
            material = self._fine_block(recording, int(starts[which[position]]) * FRAMES_PER_CELL)
            if material is None or self._fine_score(material, owner, cell * FRAMES_PER_CELL) >= FINE_THRESHOLD:
                found.append((owner, cell * self.cell_s, (cell + CELLS_PER_BLOCK) * self.cell_s))
        return found

    def _fine_score(self, material: np.ndarray, owner: int, frame: int) -> float:
        candidates = [self._fine_block(owner, frame + shift) for shift in range(-FINE_SHIFT_FRAMES, FINE_SHIFT_FRAMES + 1)]
        candidates = [c for c in candidates if c is not None]
        if not candidates:
            return 1.0
        a = _normalise_blocks(material[None])
        b = _normalise_blocks(np.stack(candidates))
        return float((b @ a[0]).max())


class OffLimits:
    """Per recording, the time stretches that hold material of some group (plus a margin)."""

    def __init__(self, recordings: Sequence[Recording]):
        self.spans: list[list[tuple[float, float]]] = [[] for _ in recordings]

    def add(self, stretches: Iterable[tuple[int, float, float]]) -> None:
        for recording, start, end in stretches:
            self.spans[recording].append((start - MARGIN_S, end + MARGIN_S))

    def clean(self, recording: int, start_s: float, end_s: float) -> bool:
        return all(end_s <= a or start_s >= b for a, b in self.spans[recording])


# --------------------------------------------------------------------------- planning


@dataclass
class Item:
    """One video to render: where its material comes from and what happens to it."""

    video_id: str
    role: str
    group: int | None
    source: int
    span: tuple[float, float]
    chain: list[dict]
    others: list[tuple[int, float, float]]
    container: int
    channels: int
    seed: int
    background: list[tuple[int, float, float]] | None = None
    embed_total_s: float | None = None
    embed_offset_frac: float | None = None


class Planner:
    def __init__(self, recordings: Sequence[Recording], index: MaterialIndex, rng: np.random.Generator, mode: str):
        self.recordings = recordings
        self.index = index
        self.rng = rng
        self.mode = mode
        self.off_limits = OffLimits(recordings)
        self.material: list[tuple[int, float, float]] = []
        durations = np.array([r.duration_s for r in recordings])
        self.durations = durations
        self.talkers = np.flatnonzero((durations >= 1.0) & (durations <= 30.0))
        self.fillers = np.flatnonzero(durations >= 3.0)
        self.used_ids: set[str] = set()

    # ---- helpers
    def _new_id(self, prefix: str) -> str:
        while True:
            video_id = prefix + "".join(self.rng.choice(list("0123456789abcdef"), 8))
            if video_id not in self.used_ids:
                self.used_ids.add(video_id)
                return video_id

    def _pick_recording(self, min_s: float, exclude: int | None = None) -> int | None:
        eligible = np.flatnonzero(self.durations >= min_s)
        if exclude is not None:
            eligible = eligible[eligible != exclude]
        if len(eligible) == 0:
            return None
        weights = self.durations[eligible]
        return int(self.rng.choice(eligible, p=weights / weights.sum()))

    def _clean_span(self, min_s: float, max_s: float, *, recording: int | None = None,
                    exclude: int | None = None, tries: int = 40) -> tuple[int, float, float] | None:
        """A span of ``min_s``–``max_s`` (log-uniform) holding no group's material."""
        for _ in range(tries):
            rec = recording if recording is not None else self._pick_recording(min_s, exclude)
            if rec is None or self.durations[rec] < min_s:
                return None
            length = min(self.durations[rec], math.exp(self.rng.uniform(math.log(min_s), math.log(max_s))))
            start = float(self.rng.uniform(0, self.durations[rec] - length))
            if self.off_limits.clean(rec, start, start + length):
                return rec, round(start, 3), round(start + length, 3)
        return None

    def _others(self, exclude: int, n: int = 4) -> list[tuple[int, float, float]]:
        clips = []
        for _ in range(n):
            span = self._clean_span(5.0, 30.0, exclude=exclude)
            if span is None:
                span = self._clean_span(3.0, 10.0, exclude=exclude)
            if span is not None:
                clips.append(span)
        return clips

    def _talkers(self, exclude: int, n: int) -> list[tuple[int, float, float]]:
        pool = self.talkers[self.talkers != exclude]
        clips = []
        for _ in range(n * 4):
            if len(clips) == n or len(pool) == 0:
                break
            rec = int(self.rng.choice(pool))
            if self.off_limits.clean(rec, 0.0, self.durations[rec]):
                clips.append((rec, 0.0, round(float(self.durations[rec]), 3)))
        return clips

    def _background(self, exclude: int, total_s: float) -> list[tuple[int, float, float]] | None:
        clips, length = [], 0.0
        for _ in range(60):
            if length >= total_s:
                return clips
            span = self._clean_span(10.0, 60.0, exclude=exclude)
            if span is not None:
                clips.append(span)
                length += span[2] - span[1]
        return clips if length >= total_s else None

    def _container(self) -> int:
        weights = np.array([c[3] for c in CONTAINERS])
        return int(self.rng.choice(len(CONTAINERS), p=weights / weights.sum()))

    def _chain(self, mode: str, source: int, duration_s: float, time_change: bool | None = None,
               allow_crop: bool = True) -> tuple[list[dict], list[tuple[int, float, float]]]:
        """Draw a chain; provide the other recordings it needs (talkers for babble)."""
        others = self._others(source)
        for _ in range(20):
            chain = augment.draw_chain(mode, self.rng, n_others=len(others), duration_s=duration_s,
                                       time_change=time_change)
            if allow_crop or all(step["name"] != "crop" for step in chain):
                break
        used = {step["name"] for step in chain}
        if not used & {"mix", "embed", "babble"}:
            others = []
        if "babble" in used:
            talkers = self._talkers(source, 5)
            step = next(s for s in chain if s["name"] == "babble")
            if talkers:
                step["others"] = list(range(len(others), len(others) + len(talkers)))
                others = others + talkers
        return chain, others

    def _item(self, prefix: str, role: str, group: int | None, source: int, span: tuple[float, float],
              chain: list[dict], others: list) -> Item:
        span = self.material_span(span, chain)
        return Item(self._new_id(prefix), role, group, source, span, chain, others, self._container(),
                    int(self.rng.choice([1, 2], p=[0.7, 0.3])), int(self.rng.integers(2**63 - 1)))

    @staticmethod
    def material_span(span: tuple[float, float], chain: list[dict]) -> tuple[float, float]:
        """The source seconds a chain keeps (crop is always its first step)."""
        crop = next((s for s in chain if s["name"] == "crop"), None)
        if crop is None:
            return span
        return round(span[0] + crop["start_s"], 3), round(min(span[1], span[0] + crop["end_s"]), 3)

    # ---- groups
    def _accept_material(self, recording: int, start: float, end: float) -> list | None:
        if not self.off_limits.clean(recording, start, end):
            return None
        found = self.index.matches(recording, start, end)
        # The new material must not occur inside an earlier group's material either.
        for rec, a, b in found:
            for other_rec, c, d in self.material:
                if rec == other_rec and a < d + MARGIN_S and b > c - MARGIN_S:
                    return None
        return found

    def plan_seed(self) -> tuple[int, tuple[float, float], tuple[float, float]] | None:
        """A group's recording, seed span and material span (hard: the seed plus context around it).

        All seeds are drawn before any negative, background or other recording, so those are checked
        against every group's material, not only the groups drawn so far.
        """
        hard = self.mode == "hard"
        for _ in range(30):
            if hard:
                seed_len = float(self.rng.uniform(5, 12))
                rec = self._pick_recording(seed_len + 5)
                if rec is None:
                    return None
                start = float(self.rng.uniform(0, self.durations[rec] - seed_len))
                seed = (round(start, 3), round(start + seed_len, 3))
                before, after = self.rng.uniform(0, 20, 2)
                material = (round(max(0.0, seed[0] - before), 3), round(min(self.durations[rec], seed[1] + after), 3))
            else:
                seed_len = math.exp(self.rng.uniform(math.log(20), math.log(120)))
                rec = self._pick_recording(seed_len)
                if rec is None:
                    rec = self._pick_recording(20.0)
                    if rec is None:
                        return None
                    seed_len = float(self.durations[rec])
                start = float(self.rng.uniform(0, self.durations[rec] - seed_len))
                seed = material = (round(start, 3), round(start + seed_len, 3))
            found = self._accept_material(rec, *material)
            if found is not None:
                self.off_limits.add(found)
                self.material.append((rec, *material))
                return rec, seed, material
        return None

    def plan_group(self, group: int, kind: str, rec: int, seed: tuple[float, float],
                   material: tuple[float, float]) -> list[Item]:
        hard = self.mode == "hard"
        items = []
        if hard:
            time_change = kind == "hard-speed"
            chain, others = self._chain("hard", rec, seed[1] - seed[0], time_change=False)
            items.append(self._item("Q", "query", group, rec, seed, chain, others))
            for _ in range(int(self.rng.integers(1, 5))):
                a = round(float(self.rng.uniform(material[0], seed[0])), 3)
                b = round(float(self.rng.uniform(seed[1], material[1])), 3)
                chain, others = self._chain("hard", rec, b - a, time_change=time_change)
                items.append(self._embedded(self._item("V", "positive", group, rec, (a, b), chain, others)))
        else:
            speed = kind == "speed"
            for _ in range(20):
                query_chain, query_others = ([], []) if self.rng.random() < 0.3 else self._chain("core", rec, seed[1] - seed[0])
                query_span = self.material_span(seed, query_chain)
                positives = []
                for _ in range(int(self.rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))):
                    chain, others = self._chain("speed" if speed else "core", rec, seed[1] - seed[0])
                    positives.append((self.material_span(seed, chain), chain, others))
                overlaps = [min(query_span[1], s[1]) - max(query_span[0], s[0]) for s, _, _ in positives]
                if min(overlaps) >= min(5.0, 0.5 * (query_span[1] - query_span[0])):
                    break
            items.append(self._item("Q", "query", group, rec, seed, query_chain, query_others))
            items += [self._item("V", "positive", group, rec, seed, c, o) for _, c, o in positives]
        return items

    def _embedded(self, item: Item) -> Item:
        """Hard mode: the material sits somewhere inside a 60–180 s video of unrelated audio."""
        total = float(self.rng.uniform(60, 180))
        length = item.span[1] - item.span[0]
        background = self._background(item.source, max(total - length, 1.0) + 1.0)
        if background:
            item.background = background
            item.embed_total_s = round(total, 3)
            item.embed_offset_frac = round(float(self.rng.random()), 4)
        return item

    def plan_hard_negatives(self, group_items: list[Item]) -> list[Item]:
        query = group_items[0]
        n = int(self.rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
        items = []
        for _ in range(n):
            length = query.span[1] - query.span[0]
            lo, hi = (max(10.0, length), max(20.0, 2 * length)) if self.mode == "hard" else (0.7 * length, 1.3 * length)
            span = self._clean_span(max(3.0, lo), max(3.5, hi), recording=query.source)
            if span is None:
                continue
            rec, a, b = span
            chain, others = self._chain(self.mode if self.mode == "hard" else "core", rec, b - a)
            item = self._item("V", "hard_negative", query.group, rec, (a, b), chain, others)
            items.append(self._embedded(item) if self.mode == "hard" else item)
        return items

    def plan_distractor(self) -> Item | None:
        hard = self.mode == "hard"
        span = self._clean_span(20.0 if hard else 10.0, 180.0 if hard else 120.0)
        if span is None:
            span = self._clean_span(5.0, 60.0)
            if span is None:
                return None
        rec, a, b = span
        chain, others = self._chain("hard" if hard else "core", rec, b - a)
        item = self._item("V", "distractor", None, rec, (a, b), chain, others)
        return self._embedded(item) if hard and self.rng.random() < 0.5 else item


# --------------------------------------------------------------------------- rendering


def write_media(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, container: int,
                channels: int = 1) -> None:
    """Encode mono ``samples`` (optionally as a stereo pair with unequal channel gains) into ``path``."""
    _, codec, video_codec, _ = CONTAINERS[container]
    data = np.asarray(samples, np.float32)[None]
    if channels == 2:
        data = np.concatenate([data, 0.8 * data]).astype(np.float32)
    rate = media_writer.encodable_rate(codec, sample_rate)
    if rate != sample_rate:  # resampled here, not by the encoder, so the bytes do not depend on its resampler
        data = np.stack([augment.resample(channel, sample_rate, rate) for channel in data])
    media_writer.write_media(path, data, rate, codec=codec, video_codec=video_codec, deterministic=True, fast=True)


_WORKER_RECORDINGS: list[Recording] = []


def _init_worker(recordings: list[tuple[str, str, int]]) -> None:
    import torch

    torch.set_num_threads(1)
    global _WORKER_RECORDINGS
    _WORKER_RECORDINGS = [Recording(p, c, n, np.zeros((0, BANDS), np.float32)) for p, c, n in recordings]


def render_item(item: Item, media_dir: str, recordings: Sequence[Recording] | None = None) -> tuple[str, str, float]:
    """Make one video from its plan; returns (id, file name, duration in seconds)."""
    recordings = recordings if recordings is not None else _WORKER_RECORDINGS
    rng = np.random.default_rng(item.seed)
    source = recordings[item.source].samples(item.span[0], item.span[1] - item.span[0])
    # Chains are drawn for the seed; the crop inside them was already applied to ``span``.
    chain = [step for step in item.chain if step["name"] != "crop"]
    others = [recordings[r].samples(a, b - a) for r, a, b in item.others]
    samples = augment.apply_chain(source, SAMPLE_RATE, chain, rng, others)
    if item.background:
        background = np.concatenate([recordings[r].samples(a, b - a) for r, a, b in item.background])
        pad = max(0, round(item.embed_total_s * SAMPLE_RATE) - len(samples))
        background = background[:pad]
        samples = augment.embed(samples, SAMPLE_RATE, background, item.embed_offset_frac * len(background) / SAMPLE_RATE)
        samples = np.clip(samples, -1, 1)
    name = item.video_id + CONTAINERS[item.container][0]
    write_media(Path(media_dir) / name, samples, SAMPLE_RATE, item.container, item.channels)
    return item.video_id, name, len(samples) / SAMPLE_RATE


def _render_job(job: tuple[Item, str]) -> tuple[str, str, float]:
    return render_item(*job)


# --------------------------------------------------------------------------- the whole build


def _log(item: Item, recordings: Sequence[Recording]) -> list[dict]:
    chain = [dict(step) for step in item.chain]
    for step in chain:
        if "other" in step:
            rec, a, b = item.others[step["other"]]
            step["other_source"], step["other_span_s"] = recordings[rec].path, [a, b]
        if "others" in step:
            step["other_sources"] = [[recordings[item.others[i][0]].path, list(item.others[i][1:])] for i in step["others"]]
    if item.background:
        chain.append({"name": "embed_long", "total_s": item.embed_total_s, "offset_frac": item.embed_offset_frac,
                      "background": [[recordings[r].path, [a, b]] for r, a, b in item.background]})
    chain.append({"name": "container", "format": CONTAINERS[item.container][0].lstrip("."), "channels": item.channels})
    return chain


def make_benchmark(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    groups: int = 50,
    seed: int = 0,
    mode: str = "normal",
    workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress = silent,
) -> dict:
    """Build the benchmark in ``out_dir``; returns a summary (counts, hours, seconds taken).

    ``progress`` hears of three stages: ``decode sources``, ``check seed material``, ``render videos``.
    """
    if mode not in ("normal", "hard"):
        raise InputError(f"unknown mode {mode!r}; choose normal or hard")
    if groups <= 0:
        raise InputError("--groups must be positive")
    began = time.monotonic()
    out = Path(out_dir)
    media_dir = out / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    paths = collect_sources(sources)

    recordings = decode_recordings(paths, cache, workers, progress)
    if not any(r.duration_s >= (10 if mode == "hard" else 20) for r in recordings):
        raise InputError("no source recording is long enough for a seed excerpt")

    index = MaterialIndex(recordings)
    rng = np.random.default_rng(seed)
    planner = Planner(recordings, index, rng, mode)
    group_kinds: dict[str, str] = {}
    items: list[Item] = []
    positives = []
    seeds = [planner.plan_seed() for _ in track(progress, "check seed material", range(groups), groups)]
    for group, drawn in enumerate(seed for seed in seeds if seed is not None):
        speed = group % 3 == 2  # about a third of the groups
        kind = ("hard-speed" if speed else "hard") if mode == "hard" else ("speed" if speed else "core")
        planned = planner.plan_group(group, kind, *drawn)
        group_kinds[planned[0].video_id] = kind
        items += planned
        positives.append(planned)
    if not positives:
        raise InputError("could not draw any group from these sources")
    for planned in positives:
        items += planner.plan_hard_negatives(planned)
    n_related = sum(1 for item in items if item.role in ("positive", "hard_negative"))
    for _ in range(2 * n_related):
        distractor = planner.plan_distractor()
        if distractor is not None:
            items.append(distractor)

    results: dict[str, tuple[str, float]] = {}
    shared = [(r.path, r.cache, r.n_samples) for r in recordings]
    render_jobs = [(item, str(media_dir)) for item in items]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(shared,)))
            rendered = pool.imap_unordered(_render_job, render_jobs)
        else:  # serial: no worker processes to start
            rendered = (render_item(item, d, recordings) for item, d in render_jobs)
        for video_id, name, duration in track(progress, "render videos", rendered, len(render_jobs)):
            results[video_id] = (name, duration)

    queries = sorted((i for i in items if i.role == "query"), key=lambda i: i.video_id)
    database = sorted((i for i in items if i.role != "query"), key=lambda i: i.video_id)
    (out / "queries.txt").write_text("".join(f"{i.video_id} media/{results[i.video_id][0]}\n" for i in queries))
    (out / "database.txt").write_text("".join(f"{i.video_id} media/{results[i.video_id][0]}\n" for i in database))
    annotation = {q.video_id: {"DA": sorted(d.video_id for d in database if d.role == "positive" and d.group == q.group)}
                  for q in queries}
    write_json_atomic(out / "annotation.json", annotation)
    write_json_atomic(out / "groups.json", dict(sorted(group_kinds.items())))
    transforms = {
        item.video_id: {"role": item.role, "group": item.group, "source": recordings[item.source].path,
                        "span_s": list(item.span), "duration_s": round(results[item.video_id][1], 3),
                        "chain": _log(item, recordings)}
        for item in sorted(items, key=lambda i: i.video_id)
    }
    write_json_atomic(out / "transforms.json", transforms)
    roles: dict[str, int] = {}
    for item in items:
        roles[item.role] = roles.get(item.role, 0) + 1
    summary = {
        "out_dir": str(out),
        "mode": mode,
        "seed": seed,
        "groups": len(group_kinds),
        "groups_by_kind": {k: list(group_kinds.values()).count(k) for k in sorted(set(group_kinds.values()))},
        "queries": len(queries),
        "database_videos": len(database),
        "videos_by_role": roles,
        "database_hours": round(sum(results[i.video_id][1] for i in database) / 3600, 3),
        "query_hours": round(sum(results[i.video_id][1] for i in queries) / 3600, 3),
        "source_recordings": len(recordings),
        "source_hours": round(sum(r.duration_s for r in recordings) / 3600, 3),
        "seconds": round(time.monotonic() - began, 1),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
