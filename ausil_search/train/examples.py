"""Self-supervised head-training examples from unlabelled recordings.

Each example is a database window of a recording (clean, or in a chosen share degraded as well) and
an augmented query excerpt cut from inside it; everything random is seeded by the recording's
content, so reruns hit the cache.
"""

from __future__ import annotations

import hashlib
import inspect
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..media import augment as augment_module
from ..errors import InputError
from ..media.audio import load_audio
from ..media.scan import fingerprint
from ..progress import Progress, Stage, silent
from .configs import SelfSupervisedConfig
from .descriptors import DescriptorCache, DescriptorSource


@dataclass
class Example:
    """One self-supervised unit: a database window (clean unless degraded on purpose) and an augmented
    query cut from inside it."""

    group: str  # the recording it came from
    database: np.ndarray
    database_span: tuple[float, float]
    query: np.ndarray
    query_span: tuple[float, float]
    mode: str


def augment_fingerprint() -> str:
    """Changes whenever the augmentation code does, so cached augmented copies go stale with it."""
    return hashlib.sha1(inspect.getsource(augment_module).encode()).hexdigest()[:12]


def self_supervised_examples(
    paths: Sequence[Path],
    source: DescriptorSource,
    config: SelfSupervisedConfig,
    progress: Progress = silent,
) -> list[Example]:
    """Examples from every usable recording; unusable or too-short files are reported (`progress`:
    the `extract` stage) and skipped.

    Everything random is seeded by (seed, recording content, example number), so the same files
    give the same examples in any order and a rerun finds them all in the cache.
    """
    rate = source.frontend.sample_rate
    version = augment_fingerprint()
    examples: list[Example] = []
    # Some augmentations mix in other audio: excerpts of the two previous recordings, named by
    # their content key (so cache keys stay valid) and decoded only when an augmentation runs.
    previous: list[tuple[str, Path]] = []
    excerpts: dict[str, np.ndarray] = {}

    def excerpt_of(key: str, path: Path, samples: np.ndarray | None = None) -> np.ndarray:
        if key not in excerpts:
            samples = load_audio(path, rate, config.max_seconds) if samples is None else samples
            start = len(samples) // 3
            excerpts[key] = samples[start:start + 30 * rate].copy()
            while len(excerpts) > 3:
                excerpts.pop(next(iter(excerpts)))
        return excerpts[key]

    extract = Stage(progress, "extract", len(paths))
    for path in paths:
        try:
            key = fingerprint(path)
            samples: np.ndarray | None = None

            def audio() -> np.ndarray:
                nonlocal samples
                if samples is None:
                    samples = load_audio(path, rate, config.max_seconds)
                return samples

            duration = _cached_duration(source.cache, key, audio, rate, config.max_seconds)
            if duration < config.shortest_query_s:
                raise InputError(f"{path}: {duration:.1f} s of audio, shorter than an excerpt ({config.shortest_query_s:.0f} s)")
            others_spec = list(previous)
            others_id = ",".join(k[:12] for k, _ in others_spec)
            for number in range(config.examples_per_recording):
                rng = np.random.default_rng([config.seed, zlib.crc32(key.encode()), number])
                long = config.long_fraction > 0 and rng.random() < config.long_fraction
                db_len = min(rng.uniform(*(config.long_database_seconds if long else config.database_seconds)), duration)
                db_start = rng.uniform(0, duration - db_len)
                q_len = min(rng.uniform(*(config.short_query_seconds if long else config.query_seconds)), db_len)
                q_start = db_start + rng.uniform(0, db_len - q_len)
                mode = config.modes[number % len(config.modes)]
                augment_seed = int(rng.integers(2**63))
                degrade_seed = (int(rng.integers(2**63)) if config.degraded_database_fraction
                                and rng.random() < config.degraded_database_fraction else None)
                db_span, q_span = (db_start, db_start + db_len), (q_start, q_start + q_len)

                def cut(span):
                    return audio()[int(span[0] * rate): int(span[1] * rate)]

                def augmented_copy(span, seed, mode, what, time_change=None):
                    # time_change goes to draw_chain directly rather than through random_augment: a
                    # change to augment.py would make every cached augmented copy stale.
                    def make():
                        others = tuple(excerpt_of(k, p) for k, p in others_spec)
                        rng_ = np.random.default_rng(seed)
                        try:
                            if time_change is None:
                                signal_, log = augment_module.random_augment(cut(span), rate, rng_, mode=mode,
                                                                             others=others)
                            else:
                                log = augment_module.draw_chain(mode, rng_, n_others=len(others),
                                                                duration_s=span[1] - span[0], time_change=time_change)
                                signal_ = augment_module.apply_chain(cut(span), rate, log, rng_, others)
                        except Exception as exc:  # one failed augmentation must not end a long run
                            raise InputError(f"{path}: {what} ({mode}) failed: {type(exc).__name__}: {exc}") from None
                        signal_ = np.asarray(signal_, np.float32)
                        if signal_.ndim != 1 or len(signal_) < rate // 2:
                            raise InputError(f"{path}: {what} gave an unusable signal of shape {signal_.shape}")
                        return signal_, {"path": str(path), "span": span, "augment": log}
                    return make

                if degrade_seed is None:
                    database = source.of_signal(
                        f"window:{key}:{db_span[0]:.4f}:{db_span[1]:.4f}", lambda: (cut(db_span), {"path": str(path), "span": db_span})
                    )
                else:  # the hard chain without a time change, so the window keeps its length
                    database = source.of_signal(
                        f"degraded:{key}:{db_span[0]:.4f}:{db_span[1]:.4f}:{degrade_seed}:{version}:{others_id}",
                        augmented_copy(db_span, degrade_seed, "hard", "degrading the database window", time_change=False),
                    )
                query = source.of_signal(
                    f"augmented:{key}:{q_span[0]:.4f}:{q_span[1]:.4f}:{mode}:{augment_seed}:{version}:{others_id}",
                    augmented_copy(q_span, augment_seed, mode, "augmentation"),
                )
                examples.append(Example(key, database, db_span, query, q_span, mode))
            if samples is not None:
                excerpt_of(key, path, samples)
            previous = ([(key, path)] + previous)[:2]
            extract.advance(path)
        except InputError as exc:
            extract.advance(path, skipped=str(exc))
    return examples


def _cached_duration(cache: DescriptorCache, key: str, audio: Callable[[], np.ndarray], rate: int, max_seconds: float) -> float:
    """The usable length of a recording, remembered in the cache so a rerun need not decode it."""
    duration_key = f"duration:{key}:{max_seconds}"
    stored = cache.get(duration_key)
    if stored is not None:
        return float(stored[0, 0])
    duration = len(audio()) / rate
    cache.put(duration_key, np.array([[duration]], np.float64))  # exact: excerpt positions derive from it
    return duration
