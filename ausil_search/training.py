"""Training the AuSiL head (whitening, attention, comparator) on top of the frozen backbone.

The backbone is frozen (the paper's best setting, DESIGN.md §2), so every video is reduced once to
its per-segment backbone descriptors (N × 2528) and training only runs the small head. Descriptors
are cached in an HDF5 file keyed by what produced them, so reruns and resumed runs skip extraction.

Pieces, in the order a run uses them:

- :func:`fit_whitening` — PCA whitening of L2-normalised segment descriptors, with Ledoit–Wolf
  shrinkage of the covariance so that it stays well-conditioned when there are fewer segments
  than dimensions.
- Triplet pools — videos (descriptor matrices), (anchor, positive) pairs and, per anchor, the
  videos allowed as its negative: from a release-style annotation (:func:`annotation_pool`) or
  self-supervised from unlabelled recordings (:func:`self_supervised_examples`): the anchor is an
  augmented excerpt (the query side), the positive the clean window it came from (database side),
  negatives are windows of other recordings and non-overlapping windows of the same one.
- :func:`mine_hard_negatives` — the paper's rule ``D(v, v−) < D(v, v+) + d`` on globally averaged
  features.
- :class:`HeadTrainer` — triplet loss plus similarity regularisation, Adam, checkpoints that
  resume to exactly the state of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from . import augment as augment_module
from .atomic import atomic_output
from .audio import decode_audio
from .backbone import DESCRIPTOR_DIM, SegmentEncoder, WeakMxH64
from .errors import AusilError, InputError
from .formats import is_feature_file, load_feature_file
from .head import MIN_COMPARATOR_SEGMENTS, MIN_DATABASE_SEGMENTS, AuSiLHead, l2_normalize, tile_segments
from .scan import fingerprint, walk_media
from .spectrogram import FrontEnd, log_mel, segment

CHECKPOINT_FORMAT = "ausil-train-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
PATH_LIST_SUFFIXES = (".txt", ".lst", ".list")
# Rows of descriptors per float32 Gram-matrix update in `fit_whitening`.
_WHITENING_CHUNK = 4096


# --------------------------------------------------------------------------- whitening


@dataclass
class WhiteningFit:
    """A fitted whitening and the numbers that justify it."""

    mean: np.ndarray  # (dim,) float32
    weights: np.ndarray  # (dim, dim) float32, columns = eigenvectors / sqrt(eigenvalue + eps), by eigenvalue
    eigenvalues: np.ndarray  # (dim,) float64, descending
    eps: float
    shrinkage: float
    n_segments: int
    ledoit_wolf: float | None = None  # the data's Ledoit–Wolf estimate (None when shrinkage was given)

    def summary(self) -> dict:
        total = float(self.eigenvalues.sum())
        cumulative = np.cumsum(self.eigenvalues) / total if total > 0 else np.zeros_like(self.eigenvalues)
        return {
            "segments": self.n_segments,
            "shrinkage": round(self.shrinkage, 6),
            "ledoit_wolf": None if self.ledoit_wolf is None else round(self.ledoit_wolf, 6),
            "eps": float(self.eps),
            "mean_eigenvalue": total / len(self.eigenvalues),
            "dims_for_90pct_variance": int(np.searchsorted(cumulative, 0.9) + 1),
        }


def fit_whitening(matrices: Iterable[np.ndarray], shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pca_mean, pca_weights) for `AuSiLHead`, which applies ``(l2n(x) − mean) · W``; see :func:`fit_whitening_report`."""
    fit = fit_whitening_report(matrices, shrinkage)
    return fit.mean, fit.weights


def fit_whitening_report(matrices: Iterable[np.ndarray], shrinkage: float | None = None) -> WhiteningFit:
    """PCA whitening of L2-normalised segment descriptors, streamed over (N_i, dim) matrices.

    ``W = V · diag(1 / sqrt(λ + eps))`` with the eigenvectors V of the covariance sorted by
    eigenvalue λ. With fewer segments than dimensions the sample covariance is singular and its
    small eigenvalues are mostly noise: plain ``1/sqrt(λ)`` would blow those directions up until
    they dominate every cosine. The covariance is therefore shrunk towards ``μ·I`` (μ the mean
    eigenvalue) by the Ledoit–Wolf amount ``s``, estimated from the data in closed form (it goes
    to 0 as segments outnumber dimensions), but never below ``d / (n + d)`` (see the code for why); the shrunk eigenvalues ``(1 − s)λ + sμ`` equal
    ``(1 − s)(λ + eps)`` with ``eps = sμ / (1 − s)``, and the constant factor is dropped because the
    head L2-normalises after whitening. Pass `shrinkage` to fix ``s`` instead.
    """
    gram = None
    total = None
    weighted_total = None
    sum_sq_norms = sum_fourth = 0.0
    n = 0
    for matrix in matrices:
        x = np.asarray(matrix, dtype=np.float32)
        if x.ndim != 2 or (gram is not None and x.shape[1] != gram.shape[0]):
            raise ValueError(f"descriptor matrices must share one width, got shape {x.shape}")
        if gram is None:
            dim = x.shape[1]
            rows: list[np.ndarray] | None = []  # kept while there are fewer rows than dims
            gram, total, weighted_total = np.zeros((dim, dim)), np.zeros(dim), np.zeros(dim)
        for start in range(0, len(x), _WHITENING_CHUNK):
            chunk = l2_normalize(torch.from_numpy(x[start:start + _WHITENING_CHUNK])).numpy()
            sq_norms = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
            gram += chunk.T @ chunk
            total += chunk.sum(axis=0, dtype=np.float64)
            weighted_total += sq_norms @ chunk.astype(np.float64)
            sum_sq_norms += float(sq_norms.sum())
            sum_fourth += float(np.square(sq_norms).sum())
            n += len(chunk)
            if rows is not None:
                rows = rows + [chunk] if n <= dim else None
    if gram is None or n < 2:
        raise AusilError(f"whitening needs at least 2 segments, got {n}")
    dim = gram.shape[0]
    mean = total / n
    covariance = gram / n - np.outer(mean, mean)
    mu = float(np.trace(covariance)) / dim
    ledoit_wolf = None
    if shrinkage is None:
        ledoit_wolf = _ledoit_wolf_shrinkage(covariance, gram, mean, weighted_total, sum_sq_norms, sum_fourth, n, mu)
        shrinkage = ledoit_wolf
        # Ledoit–Wolf minimises the covariance's Frobenius error, which is not what retrieval needs:
        # with n segments and d ≤ n dims whitening makes the n training rows nearly orthogonal, so
        # even matching segments stop resembling each other. eps ≥ μ·d/n (shrinkage d/(n + d))
        # keeps directions whose variance is below the sampling-noise scale of a d-dim covariance
        # from n rows from being blown up; it fades as the data grows (n = 100·d: eps = μ/100).
        shrinkage = max(shrinkage, dim / (n + dim))
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    if rows is not None:
        eigenvalues, vectors = _low_rank_eigh(np.concatenate(rows).astype(np.float64) - mean)
    else:
        # torch's LAPACK eigh runs about 1.4x faster than numpy's here; float64 for the small eigenvalues.
        eigenvalues, vectors = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(covariance)))
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # descending
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    # A floor keeps directions with no variance at all (dead channels) finite.
    eps = max(shrinkage * mu / (1.0 - shrinkage), 1e-6 * mu, 1e-12)
    weights = vectors / np.sqrt(eigenvalues + eps)
    return WhiteningFit(mean.astype(np.float32), weights.astype(np.float32), eigenvalues, eps, float(shrinkage), n, ledoit_wolf)


def _low_rank_eigh(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of ``YᵀY/n`` for n ≤ d centred rows, in O(n²d + d²n) instead of O(d³).

    The non-zero eigenpairs come from the n×n matrix ``YYᵀ/n``; the rest of the basis (eigenvalue
    0) is the orthogonal complement, from a complete QR of the leading eigenvectors.
    """
    n, dim = centred.shape
    small_values, small_vectors = np.linalg.eigh(centred @ centred.T / n)
    order = np.argsort(small_values)[::-1]
    small_values, small_vectors = small_values[order], small_vectors[:, order]
    keep = small_values > small_values[0] * 1e-10
    values = small_values[keep]
    leading = centred.T @ small_vectors[:, keep] / np.sqrt(n * values)
    basis, _ = np.linalg.qr(leading, mode="complete")
    vectors = np.concatenate([leading, basis[:, len(values):]], axis=1)
    return np.concatenate([values, np.zeros(dim - len(values))]), vectors


def _ledoit_wolf_shrinkage(covariance, gram, mean, weighted_total, sum_sq_norms, sum_fourth, n, mu) -> float:
    """Ledoit & Wolf (2004): s = min(β̄², δ²) / δ² from running sums, without a second pass.

    δ² = ‖S − μI‖²/d and β̄² = Σᵢ‖yᵢyᵢᵀ − S‖² / (n² d) with yᵢ = xᵢ − m. Using ΣᵢyᵢᵀSyᵢ = n‖S‖²,
    Σᵢ‖yᵢyᵢᵀ − S‖² = Σᵢ‖yᵢ‖⁴ − n‖S‖², and ‖yᵢ‖² = aᵢ − 2bᵢ + c with aᵢ = ‖xᵢ‖², bᵢ = xᵢ·m,
    c = ‖m‖² expands into sums that were accumulated.
    """
    dim = len(mean)
    frobenius_sq = float(np.square(covariance).sum())
    delta_sq = (frobenius_sq - dim * mu * mu) / dim
    if delta_sq <= 0:
        return 0.0
    c = float(mean @ mean)
    sum_b = n * c  # Σ xᵢ·m = n‖m‖²
    sum_b_sq = float(mean @ gram @ mean)
    sum_ab = float(weighted_total @ mean)
    sum_y4 = (sum_fourth + 4 * sum_b_sq + n * c * c - 4 * sum_ab + 2 * c * sum_sq_norms - 4 * c * sum_b)
    beta_sq = max(sum_y4 - n * frobenius_sq, 0.0) / (n * n * dim)
    return float(min(beta_sq, delta_sq) / delta_sq)


# --------------------------------------------------------------------------- descriptor cache


def backbone_fingerprint(backbone: WeakMxH64, frontend: FrontEnd) -> str:
    """What determines a descriptor besides the audio: backbone tensors and front-end parameters."""
    digest = hashlib.sha256(json.dumps(frontend.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class DescriptorCache:
    """An HDF5 file of descriptor matrices, one group per backbone fingerprint, one dataset per key.

    Every write is flushed, so an interrupted run keeps what it extracted. `path=None` is an
    in-memory cache (nothing persists).
    """

    def __init__(self, path: Path | None, backbone_id: str):
        self.path = Path(path) if path else None
        self.backbone_id = backbone_id
        self._memory: dict[str, np.ndarray] = {}
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file = h5py.File(self.path, "a")
            except OSError as exc:
                raise AusilError(f"{self.path}: cannot open the descriptor cache ({exc}); delete it to start afresh") from None

    def _name(self, key: str) -> str:
        return f"{self.backbone_id}/{hashlib.sha1(key.encode()).hexdigest()}"

    def get(self, key: str) -> np.ndarray | None:
        if self._file is None:
            return self._memory.get(key)
        name = self._name(key)
        if name not in self._file:
            return None
        stored = self._file[name][()]
        return stored if stored.dtype == np.float64 else stored.astype(np.float32)

    def put(self, key: str, descriptors: np.ndarray, **attrs: object) -> None:
        if self._file is None:
            self._memory[key] = descriptors
            return
        name = self._name(key)
        if name in self._file:
            del self._file[name]
        # float64 stays float64 (exact bookkeeping numbers); descriptors are stored as float32
        data = descriptors if descriptors.dtype == np.float64 else np.asarray(descriptors, np.float32)
        dataset = self._file.create_dataset(name, data=data)
        dataset.attrs["key"] = key
        for attr, value in attrs.items():
            dataset.attrs[attr] = json.dumps(value, default=str)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DescriptorCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- sources


def collect_media(sources: Sequence[Path | str]) -> list[Path]:
    """Media files from directories (walked), path-list files (`.txt`: a path or `<id> <path>` a line) and files."""
    paths: list[Path] = []
    direct: list[Path] = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() in PATH_LIST_SUFFIXES:
            paths.extend(_read_path_list(source))
        elif source.is_file() or source.is_dir():
            direct.append(source)
        else:
            raise InputError(f"{source}: no such file or directory")
    paths.extend(walk_media(direct, has_audio=lambda path: False))
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    if not unique:
        raise InputError("no media files found in " + ", ".join(map(str, sources)))
    return unique


def _read_path_list(list_path: Path) -> list[Path]:
    paths = []
    for number, raw in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        candidates = [line] + ([line.split(maxsplit=1)[1]] if len(line.split(maxsplit=1)) == 2 else [])
        for text in candidates:
            path = Path(text) if Path(text).is_absolute() or Path(text).exists() else list_path.parent / text
            if path.is_file():
                paths.append(path)
                break
        else:
            raise InputError(f"{list_path}:{number}: no such file: {line!r}")
    return paths


def decode_prefix(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """The first `max_seconds` of a file's audio (mono float32), without decoding the rest."""
    limit = int(max_seconds * sample_rate)
    pieces, count = [], 0
    for chunk in decode_audio(path, sample_rate):
        pieces.append(chunk[: limit - count])
        count += len(pieces[-1])
        if count >= limit:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


class DescriptorSource:
    """Descriptors of media (whole files or in-memory signals) through the frozen backbone, cached."""

    def __init__(
        self,
        backbone: WeakMxH64,
        frontend: FrontEnd,
        cache: DescriptorCache,
        device: str | torch.device | None = None,
        precision: str = "fused",
        batch_size: int = 16,
    ):
        self.frontend = frontend
        self.cache = cache
        self.encoder = SegmentEncoder(backbone, device=device, batch_size=batch_size, precision=precision)
        self.segments = 0
        self.seconds = 0.0  # time spent extracting (decode, augment, log-mel, backbone)
        self.cache_hits = 0

    def of_signal(self, key: str, make_signal: Callable[[], tuple[np.ndarray, dict]]) -> np.ndarray:
        """Descriptors for `key`; on a miss `make_signal()` gives (samples at the front-end rate, attrs)."""
        cached = self.cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        started = time.perf_counter()
        samples, attrs = make_signal()
        descriptors = self.encoder.encode(segment(log_mel(samples, self.frontend), self.frontend))
        self.cache.put(key, descriptors, **attrs)
        self.segments += len(descriptors)
        self.seconds += time.perf_counter() - started
        return descriptors

    def of_file(self, path: Path, max_seconds: float | None = None) -> np.ndarray:
        """A whole media file (or its first `max_seconds`), or a feature file (`.npz`/`.npy`) as stored."""
        path = Path(path)
        if is_feature_file(path):
            return load_feature_file(path)
        key = f"file:{fingerprint(path)}:{max_seconds}"
        rate = self.frontend.sample_rate
        return self.of_signal(key, lambda: (decode_prefix(path, rate, max_seconds or math.inf), {"path": str(path)}))

    @property
    def segments_per_second(self) -> float:
        return self.segments / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- triplet pools


@dataclass
class TripletPool:
    """Videos as descriptor matrices, (anchor, positive) pairs, and the allowed negatives of each pair.

    The anchor plays the query side of Chamfer similarity, positive and negatives the database side.
    """

    videos: list[np.ndarray]
    names: list[str]
    pairs: np.ndarray  # (P, 2) int: anchor video, positive video
    negatives: list[np.ndarray]  # per pair: indices of videos allowed as negatives
    same_group: list[np.ndarray] = field(default_factory=list)  # per pair: bool mask over `negatives`

    def __post_init__(self) -> None:
        if not self.same_group:
            self.same_group = [np.zeros(len(n), bool) for n in self.negatives]

    def __len__(self) -> int:
        return len(self.pairs)

    def fingerprint(self) -> str:
        digest = hashlib.sha1()
        for name, video in zip(self.names, self.videos):
            digest.update(f"{name}:{video.shape}".encode())
        digest.update(self.pairs.tobytes())
        return digest.hexdigest()[:16]

    def stats(self) -> dict:
        return {
            "videos": len(self.videos),
            "segments": int(sum(len(v) for v in self.videos)),
            "pairs": len(self.pairs),
            "mean_negatives": float(np.mean([len(n) for n in self.negatives])) if self.negatives else 0.0,
        }


@dataclass
class SelfSupervisedConfig:
    """How excerpts and augmented copies are drawn from unlabelled recordings."""

    examples_per_recording: int = 4
    database_seconds: tuple[float, float] = (12.0, 30.0)  # the clean window (database side)
    query_seconds: tuple[float, float] = (6.0, 15.0)  # the excerpt inside it that gets augmented
    max_seconds: float = 600.0  # only the start of long recordings is read
    modes: tuple[str, ...] = ("core", "speed")  # random_augment modes, alternated over examples
    seed: int = 0


@dataclass
class Example:
    """One self-supervised unit: a clean database window and an augmented query cut from inside it."""

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
    on_file: Callable[[Path, str | None], None] = lambda path, error: None,
) -> list[Example]:
    """Examples from every usable recording; unusable or too-short files are reported and skipped.

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
            samples = decode_prefix(path, rate, config.max_seconds) if samples is None else samples
            start = len(samples) // 3
            excerpts[key] = samples[start:start + 30 * rate].copy()
            while len(excerpts) > 3:
                excerpts.pop(next(iter(excerpts)))
        return excerpts[key]

    for path in paths:
        try:
            key = fingerprint(path)
            samples: np.ndarray | None = None

            def audio() -> np.ndarray:
                nonlocal samples
                if samples is None:
                    samples = decode_prefix(path, rate, config.max_seconds)
                return samples

            duration = _cached_duration(source.cache, key, audio, rate, config.max_seconds)
            if duration < config.query_seconds[0]:
                raise InputError(f"{path}: {duration:.1f} s of audio, shorter than an excerpt ({config.query_seconds[0]:.0f} s)")
            others_spec = list(previous)
            others_id = ",".join(k[:12] for k, _ in others_spec)
            for number in range(config.examples_per_recording):
                rng = np.random.default_rng([config.seed, zlib.crc32(key.encode()), number])
                db_len = min(rng.uniform(*config.database_seconds), duration)
                db_start = rng.uniform(0, duration - db_len)
                q_len = min(rng.uniform(*config.query_seconds), db_len)
                q_start = db_start + rng.uniform(0, db_len - q_len)
                mode = config.modes[number % len(config.modes)]
                augment_seed = int(rng.integers(2**63))
                db_span, q_span = (db_start, db_start + db_len), (q_start, q_start + q_len)

                def cut(span):
                    return audio()[int(span[0] * rate): int(span[1] * rate)]

                def augmented():
                    others = tuple(excerpt_of(k, p) for k, p in others_spec)
                    try:
                        signal_, log = augment_module.random_augment(
                            cut(q_span), rate, np.random.default_rng(augment_seed), mode=mode, others=others
                        )
                    except Exception as exc:  # one failed augmentation must not end a long run
                        raise InputError(f"{path}: augmentation ({mode}) failed: {type(exc).__name__}: {exc}") from None
                    signal_ = np.asarray(signal_, np.float32)
                    if signal_.ndim != 1 or len(signal_) < rate // 2:
                        raise InputError(f"{path}: augmentation gave an unusable signal of shape {signal_.shape}")
                    return signal_, {"path": str(path), "span": q_span, "augment": log}

                database = source.of_signal(
                    f"window:{key}:{db_span[0]:.4f}:{db_span[1]:.4f}", lambda: (cut(db_span), {"path": str(path), "span": db_span})
                )
                query = source.of_signal(
                    f"augmented:{key}:{q_span[0]:.4f}:{q_span[1]:.4f}:{mode}:{augment_seed}:{version}:{others_id}",
                    augmented,
                )
                examples.append(Example(key, database, db_span, query, q_span, mode))
            if samples is not None:
                excerpt_of(key, path, samples)
            previous = ([(key, path)] + previous)[:2]
            on_file(path, None)
        except InputError as exc:
            on_file(path, str(exc))
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


def examples_pool(examples: Sequence[Example]) -> TripletPool:
    """Anchor = augmented query, positive = its clean window; negatives = every window of another
    recording and every window of the same recording that does not overlap the query's source span."""
    videos, names, pairs, groups, spans = [], [], [], [], []
    for number, example in enumerate(examples):
        videos += [example.query, example.database]
        names += [f"{example.group}:{number}:query", f"{example.group}:{number}:database"]
        pairs.append((2 * number, 2 * number + 1))
        groups.append(example.group)
        spans.append(example.database_span)
    groups_arr = np.array(groups)
    starts, ends = np.array([s[0] for s in spans]), np.array([s[1] for s in spans])
    negatives, same = [], []
    for example in examples:
        q0, q1 = example.query_span
        same_group = groups_arr == example.group
        allowed = ~same_group | (ends <= q0) | (starts >= q1)
        windows = np.flatnonzero(allowed)
        negatives.append(2 * windows + 1)
        same.append(same_group[windows])
    return TripletPool(videos, names, np.array(pairs, dtype=np.int64).reshape(-1, 2), negatives, same)


def annotation_pool(
    annotation: dict,
    descriptors: dict[str, np.ndarray],
    relevant_labels: Sequence[str] = ("DA",),
) -> TripletPool:
    """Pairs (query, relevant video) from a release-style annotation ``{query: {label: [ids]}}``.

    Negatives of a query are the videos it does not label at all (a video under another label,
    e.g. a visual near-duplicate, is neither positive nor negative).
    """
    ids = sorted(descriptors)
    index = {video_id: number for number, video_id in enumerate(ids)}
    pairs, negatives = [], []
    for query, labels in annotation.items():
        if query not in index or not isinstance(labels, dict):
            continue
        labelled = {index[v] for values in labels.values() for v in values if v in index} | {index[query]}
        allowed = np.setdiff1d(np.arange(len(ids)), sorted(labelled))
        for label in relevant_labels:
            for video in labels.get(label, []):
                if video in index and video != query:
                    pairs.append((index[query], index[video]))
                    negatives.append(allowed)
    if not pairs:
        raise AusilError("the annotation gives no (query, relevant video) pair whose videos both have descriptors")
    return TripletPool([descriptors[i] for i in ids], ids, np.array(pairs, dtype=np.int64), negatives)


def split_pool(pool: TripletPool, val_pairs: np.ndarray) -> tuple[TripletPool, TripletPool]:
    """Train and validation pools by pair; no video of one side serves as a negative on the other."""
    mask = np.zeros(len(pool), bool)
    mask[val_pairs] = True
    train_idx, val_idx = np.flatnonzero(~mask), np.flatnonzero(mask)

    def take(selected: np.ndarray, forbidden: np.ndarray) -> TripletPool:
        negatives, same = [], []
        for i in selected:
            keep = ~np.isin(pool.negatives[i], forbidden)
            negatives.append(pool.negatives[i][keep])
            same.append(pool.same_group[i][keep])
        return TripletPool(pool.videos, pool.names, pool.pairs[selected], negatives, same)

    train_videos, val_videos = np.unique(pool.pairs[train_idx]), np.unique(pool.pairs[val_idx])
    return take(train_idx, val_videos), take(val_idx, train_videos)


def merge_pools(first: TripletPool, second: TripletPool) -> TripletPool:
    """Both pools' pairs over one video list; negatives stay within their own pool."""
    offset = len(first.videos)
    return TripletPool(
        first.videos + second.videos,
        first.names + second.names,
        np.concatenate([first.pairs, second.pairs + offset]),
        first.negatives + [n + offset for n in second.negatives],
        first.same_group + second.same_group,
    )


def validation_pairs(groups: Sequence[str], fraction: float) -> np.ndarray:
    """Indices of pairs held out: whole groups (recordings, or queries), chosen by a hash of their name."""
    if fraction <= 0:
        return np.zeros(0, np.int64)
    unique = sorted(set(groups), key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    count = min(max(2, round(fraction * len(unique))), len(unique) - 2)
    if count < 2:
        raise AusilError(f"a validation split needs at least 4 recordings or queries, got {len(unique)}")
    held_out = set(unique[:count])
    return np.array([i for i, g in enumerate(groups) if g in held_out], np.int64)


# --------------------------------------------------------------------------- hard negatives


def global_features(head: AuSiLHead, videos: Sequence[np.ndarray], device: torch.device) -> np.ndarray:
    """One L2-normalised vector per video: the average of its embedded segments."""
    out = np.zeros((len(videos), DESCRIPTOR_DIM), np.float32)
    with torch.no_grad():
        for number, video in enumerate(videos):
            embedded = head.embed(torch.from_numpy(video).to(device))
            out[number] = l2_normalize(embedded.mean(0)).cpu().numpy()
    return out


@dataclass
class MiningReport:
    mean_hard: float
    fallback_fraction: float
    mean_positive_distance: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def mine_hard_negatives(
    pool: TripletPool,
    features: np.ndarray,
    margin: float = 0.2,
    fallback: int = 8,
    limit: int = 256,
) -> tuple[list[np.ndarray], MiningReport]:
    """Per pair, the negatives with ``D(v, v−) < D(v, v+) + margin`` (Euclidean, global features).

    Windows of the anchor's own recording must also be no closer than the positive: music repeats
    (choruses, loops), and a window that looks more like the anchor than its own source probably is
    the same audio. Pairs with no hard negative take their `fallback` nearest allowed ones; at most
    `limit` (the nearest) are kept per pair.
    """
    hard_sets, counts, fallbacks, positives = [], [], 0, []
    for (anchor, positive), allowed, same in zip(pool.pairs, pool.negatives, pool.same_group):
        d_pos = float(np.linalg.norm(features[anchor] - features[positive]))
        positives.append(d_pos)
        d_neg = np.linalg.norm(features[allowed] - features[anchor], axis=1)
        keep = ~same | (d_neg >= d_pos)
        allowed, d_neg = allowed[keep], d_neg[keep]
        if len(allowed) == 0:
            hard_sets.append(allowed)
            continue
        order = np.argsort(d_neg, kind="stable")
        hard = order[d_neg[order] < d_pos + margin][:limit]
        if len(hard) == 0:
            fallbacks += 1
            hard = order[:fallback]
        hard_sets.append(allowed[hard])
        counts.append(len(hard))
    if any(len(h) == 0 for h in hard_sets):
        raise AusilError("some training pairs have no allowed negative: give more recordings or videos")
    report = MiningReport(float(np.mean(counts)), fallbacks / max(1, len(pool)), float(np.mean(positives)))
    return hard_sets, report


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Everything that shapes the optimisation; a resumed run must use the same (except `steps`)."""

    steps: int = 1000
    batch_size: int = 16
    margin: float = 1.0  # γ of the triplet loss (the paper's best)
    regularisation: float = 0.5  # weight of the similarity regularisation loss (ViSiL's r)
    lr: float = 1e-4
    hard_negative_margin: float = 0.2  # d of the hard-negative rule
    max_segments: int = 64  # longer videos are cropped to a random run of this many segments per use
    train_whitening: bool = False  # also fine-tune the PCA mean and matrix
    seed: int = 0
    checkpoint_every: int = 100

    _RESUMABLE_CHANGES = ("steps", "checkpoint_every")

    def compatible(self, other: dict) -> list[str]:
        mine = asdict(self)
        return [k for k in mine if k not in self._RESUMABLE_CHANGES and other.get(k) != mine[k]]


@dataclass
class StepRecord:
    step: int
    loss: float
    triplet: float
    regularisation: float
    active: float  # fraction of triplets with a non-zero triplet loss



def read_checkpoint(path: Path, fmt: str, what: str, changed_settings: Callable[[dict], list[str]],
                    data_key: str, data_fingerprint: object) -> dict:
    """A checkpoint's state, refused (one clear line) when it is unreadable, of another kind, or was
    made with other settings or data than the run that wants to resume it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise AusilError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise AusilError(f"{path}: not an ausil-search {what} checkpoint")
    changed = changed_settings(state["config"])
    if changed:
        raise AusilError(f"{path}: the checkpoint was made with other settings ({', '.join(changed)}); "
                         "use the same ones, or another --checkpoint-dir")
    if state[data_key] != data_fingerprint:
        raise AusilError(f"{path}: the checkpoint was made on other training data")
    return state

class HeadTrainer:
    """Trains an AuSiLHead's attention and comparator (optionally whitening) on a TripletPool.

    Resumability: a checkpoint holds the head, Adam's state, the sampling generator (the data
    cursor: every triplet, negative and crop is drawn from it), the step and the loss history, so a
    resumed run continues exactly where the interrupted one would have been. Ctrl-C finishes the
    current step, writes a checkpoint and then raises KeyboardInterrupt.
    """

    def __init__(
        self,
        head: AuSiLHead,
        pool: TripletPool,
        hard_negatives: list[np.ndarray] | None,
        config: TrainConfig,
        device: str | torch.device = "cpu",
        checkpoint_dir: Path | None = None,
    ):
        self.head = head.to(device).train()
        self.pool = pool
        self.hard_negatives = hard_negatives
        self.config = config
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        for parameter in (head.pca_mean, head.pca_weights):
            parameter.requires_grad_(config.train_whitening)
        self.parameters = [p for p in head.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr)
        self.rng = np.random.default_rng([config.seed, 0x7A1])
        self.step = 0
        self.history: list[StepRecord] = []
        self.elapsed_s = 0.0
        # With fixed whitening the (dominant) 2528×2528 projection is computed once, not every step.
        self._whitened: list[Tensor] | None = None
        if not config.train_whitening:
            with torch.no_grad():
                self._whitened = [head.whiten(torch.from_numpy(v).to(self.device)) for v in pool.videos]
        self._raw = None if self._whitened is not None else [torch.from_numpy(v).to(self.device) for v in pool.videos]
        self._stop_requested = False
        self.extras: dict = {}  # report material that a resumed run takes over (whitening, mining, validation)

    # ---- model pieces

    def _embed(self, video: int, start: int, length: int) -> Tensor:
        """`AuSiLHead.embed` of a run of a video's segments, the fixed whitening done once up front."""
        if self._whitened is not None:
            return self.head.attend(self._whitened[video][start:start + length])
        return self.head.embed(self._raw[video][start:start + length])

    # ---- sampling

    def _crop(self, video: int) -> tuple[int, int]:
        length = len(self.pool.videos[video])
        if length <= self.config.max_segments:
            return 0, length
        return int(self.rng.integers(length - self.config.max_segments + 1)), self.config.max_segments

    def sample_batch(self) -> list[tuple[int, tuple[int, int], int, tuple[int, int], int, tuple[int, int]]]:
        batch = []
        for pair in self.rng.integers(len(self.pool), size=self.config.batch_size):
            anchor, positive = self.pool.pairs[pair]
            candidates = self.hard_negatives[pair]
            negative = int(candidates[self.rng.integers(len(candidates))])
            batch.append((int(anchor), self._crop(anchor), int(positive), self._crop(positive), negative, self._crop(negative)))
        return batch

    # ---- loss

    def triplet_losses(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(mean triplet loss, mean regularisation per triplet, fraction of active triplets).

        All 2·B similarity maps go through the comparator as one padded batch
        (:meth:`AuSiLHead.compare_pairs`): a few large ops instead of 2·B passes of small ones.
        """
        queries, databases = [], []
        for anchor, a_crop, positive, p_crop, negative, n_crop in batch:
            q = tile_segments(self._embed(anchor, *a_crop), MIN_COMPARATOR_SEGMENTS)
            queries += [q, q]
            databases += [tile_segments(self._embed(positive, *p_crop), MIN_DATABASE_SEGMENTS),
                          tile_segments(self._embed(negative, *n_crop), MIN_DATABASE_SEGMENTS)]
        maps, valid = self.head.compare_pairs(queries, databases)
        cs = self.head.chamfer_pairs(maps, valid)
        cs_pos, cs_neg = cs[0::2], cs[1::2]
        triplet = torch.relu(cs_neg - cs_pos + self.config.margin)
        if self.head.use_comparator:
            excess = (torch.relu(maps - 1) + torch.relu(-1 - maps)).masked_fill(~valid, 0)
            reg = excess.sum(dim=(-1, -2)).view(-1, 2).sum(-1)
        else:
            reg = torch.zeros_like(triplet)
        return triplet.mean(), reg.mean(), (triplet > 0).float().mean()

    @torch.no_grad()
    def evaluate_loss(self, batch) -> float:
        """The training objective on a given batch, without updating anything."""
        triplet, reg, _ = self.triplet_losses(batch)
        return (triplet + self.config.regularisation * reg).item()

    def all_triplets(self) -> list:
        """Every (pair, hard negative) triplet of the pool, uncropped: a fixed batch to evaluate on."""
        return [
            (int(a), (0, len(self.pool.videos[a])), int(p), (0, len(self.pool.videos[p])), int(n), (0, len(self.pool.videos[n])))
            for (a, p), hard in zip(self.pool.pairs, self.hard_negatives)
            for n in hard
        ]

    def train_step(self) -> StepRecord:
        state = self.rng.bit_generator.state
        try:
            batch = self.sample_batch()
            triplet, reg, active = self.triplet_losses(batch)
            loss = triplet + self.config.regularisation * reg
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except BaseException:
            self.rng.bit_generator.state = state  # an interrupted step leaves no trace
            raise
        self.optimizer.step()
        self.step += 1
        record = StepRecord(self.step, loss.item(), triplet.item(), reg.item(), active.item())
        self.history.append(record)
        return record

    def train(self, on_step: Callable[[StepRecord], None] = lambda record: None) -> None:
        """Run until `config.steps`, checkpointing every `checkpoint_every` steps, at the end and on Ctrl-C."""
        self.head.train()
        previous_handler = self._install_interrupt_handler()
        started = time.perf_counter() - self.elapsed_s
        try:
            while self.step < self.config.steps:
                record = self.train_step()
                self.elapsed_s = time.perf_counter() - started
                if self.checkpoint_dir and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                on_step(record)
                if self._stop_requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.elapsed_s = time.perf_counter() - started
            if self.checkpoint_dir:
                self.save_checkpoint()
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            self.head.eval()
        if self.checkpoint_dir:
            self.save_checkpoint()

    def _install_interrupt_handler(self):
        """Ctrl-C asks to stop after the current step (a second one stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        self._stop_requested = False
        return signal.signal(signal.SIGINT, request_stop)

    # ---- checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None

    def checkpoint_state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "history": [asdict(r) for r in self.history],
            "config": asdict(self.config),
            "pool": self.pool.fingerprint(),
            "hard_negatives": self.hard_negatives,
            "elapsed_s": self.elapsed_s,
            "extras": self.extras,
        }

    def save_checkpoint(self) -> Path:
        """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
        path = self.checkpoint_path
        with atomic_output(path, sole_writer=True) as handle:
            torch.save(self.checkpoint_state(), handle)
        return path

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = Path(path) if path else self.checkpoint_path
        if path is None or not path.is_file():
            raise AusilError(f"no checkpoint to resume from in {self.checkpoint_dir}")
        state = read_checkpoint(path, CHECKPOINT_FORMAT, "training", self.config.compatible,
                                "pool", self.pool.fingerprint())
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["sampler"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = [StepRecord(**r) for r in state["history"]]
        self.elapsed_s = float(state["elapsed_s"])
        self.hard_negatives = [np.asarray(h, np.int64) for h in state["hard_negatives"]]
        self.extras = dict(state.get("extras") or {})
        if self._whitened is not None:  # the (fixed) whitening came back with the head
            with torch.no_grad():
                self._whitened = [self.head.whiten(torch.from_numpy(v).to(self.device)) for v in self.pool.videos]


# --------------------------------------------------------------------------- evaluation and reports


@torch.no_grad()
def chamfer_separation(head: AuSiLHead, pool: TripletPool, device: torch.device, max_negatives: int = 64) -> dict:
    """Mean Chamfer similarity of anchors to their positive and to (up to `max_negatives`) negatives.

    `separation` is their difference; `top1` the fraction of pairs whose positive beats every
    scored negative. Negatives are the first `max_negatives` allowed ones, so runs compare.
    """
    head.eval()
    embedded: dict[int, Tensor] = {}

    def embed(video: int) -> Tensor:
        if video not in embedded:
            embedded[video] = head.embed(torch.from_numpy(pool.videos[video]).to(device))
        return embedded[video]

    positives, negatives, wins = [], [], 0
    for (anchor, positive), allowed in zip(pool.pairs, pool.negatives):
        scores = head.score_many(embed(anchor), [embed(positive)] + [embed(n) for n in allowed[:max_negatives]])
        scores = scores.cpu().numpy()
        positives.append(scores[0])
        negatives.extend(scores[1:])
        wins += int(len(scores) == 1 or scores[0] > scores[1:].max())
    mean_pos, mean_neg = float(np.mean(positives)), float(np.mean(negatives)) if negatives else float("nan")
    return {
        "pairs": len(pool),
        "mean_positive": round(mean_pos, 4),
        "mean_negative": round(mean_neg, 4),
        "separation": round(mean_pos - mean_neg, 4),
        "top1": round(wins / max(1, len(pool)), 4),
    }


def loss_summary(history: Sequence[StepRecord], buckets: int = 10) -> dict:
    """The loss curve in `buckets` equal spans of steps (mean loss each), plus first and last values."""
    if not history:
        return {}
    losses = np.array([r.loss for r in history])
    spans = np.array_split(np.arange(len(losses)), min(buckets, len(losses)))
    tenth = max(1, len(losses) // 10)
    return {
        "first_steps_mean": round(float(losses[:tenth].mean()), 5),
        "last_steps_mean": round(float(losses[-tenth:].mean()), 5),
        "curve": [{"steps": [int(history[s[0]].step), int(history[s[-1]].step)], "loss": round(float(losses[s].mean()), 5)}
                  for s in spans],
        "last_active_fraction": round(float(np.mean([r.active for r in history[-tenth:]])), 4),
        "last_regularisation": round(float(np.mean([r.regularisation for r in history[-tenth:]])), 5),
    }


# --------------------------------------------------------------------------- a whole run


@dataclass
class TrainingJob:
    """What `ausil-search train` asks for: data sources, recipe, and where state goes."""

    sources: list[Path] = field(default_factory=list)  # unlabelled media for self-supervised triplets
    annotation: Path | None = None  # release-style {query: {label: [ids]}}
    video_list: Path | None = None  # '<id> <path>' lines for the annotation's videos
    relevant_labels: tuple[str, ...] = ("DA",)
    config: TrainConfig = field(default_factory=TrainConfig)
    self_supervised: SelfSupervisedConfig = field(default_factory=SelfSupervisedConfig)
    whitening: str = "fit"  # fit: from the training descriptors; keep: the input model's
    whitening_shrinkage: float | None = None  # None: Ledoit–Wolf
    val_fraction: float = 0.0
    cache_path: Path | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    device: str | None = None
    precision: str = "fused"

    def recipe(self) -> dict:
        return {
            "config": asdict(self.config),
            "self_supervised": asdict(self.self_supervised) if self.sources else None,
            "annotation": str(self.annotation) if self.annotation else None,
            "relevant_labels": list(self.relevant_labels),
            "whitening": self.whitening,
            "whitening_shrinkage": self.whitening_shrinkage,
            "val_fraction": self.val_fraction,
            "augment_version": augment_fingerprint(),
        }


@dataclass
class TrainingHooks:
    """Progress callbacks: a stage starts (name, total or None), a file is done, a step is done."""

    on_stage: Callable[[str, int | None], None] = lambda name, total: None
    on_file: Callable[[Path, str | None], None] = lambda path, error: None
    on_step: Callable[[StepRecord], None] = lambda record: None


def build_pool(job: TrainingJob, source: DescriptorSource, hooks: TrainingHooks) -> tuple[TripletPool, list[str]]:
    """The full triplet pool of a job and, per pair, the group a validation split holds out together."""
    from .formats import load_json, read_video_list

    pools: list[tuple[TripletPool, list[str]]] = []
    if job.sources:
        paths = collect_media(job.sources)
        hooks.on_stage("extract", len(paths))
        examples = self_supervised_examples(paths, source, job.self_supervised, hooks.on_file)
        if len({e.group for e in examples}) < 2:
            raise AusilError("self-supervised training needs at least 2 usable recordings")
        pools.append((examples_pool(examples), [e.group for e in examples]))
    if job.annotation is not None:
        if job.video_list is None:
            raise AusilError("--pairs needs --videos, the '<id> <path>' list of the annotated videos")
        annotation = load_json(job.annotation, "annotation")
        if not isinstance(annotation, dict):
            raise AusilError(f"{job.annotation}: expected {{query_id: {{label: [video ids]}}}}")
        entries = read_video_list(job.video_list)
        hooks.on_stage("extract", len(entries))
        descriptors = {}
        for entry in entries:
            try:
                descriptors[entry.video_id] = source.of_file(entry.path)
                hooks.on_file(entry.path, None)
            except InputError as exc:
                hooks.on_file(entry.path, str(exc))
        pool = annotation_pool(annotation, descriptors, job.relevant_labels)
        pools.append((pool, [pool.names[a] for a, _ in pool.pairs]))
    if not pools:
        raise AusilError("nothing to train on: give media folders/files, or --pairs with --videos")
    pool, groups = pools[0]
    for other, other_groups in pools[1:]:
        pool, groups = merge_pools(pool, other), groups + other_groups
    return pool, groups


def train_model(model, job: TrainingJob, hooks: TrainingHooks = TrainingHooks()) -> dict:
    """Train `model`'s head in place (the backbone stays frozen) and return the run's report."""
    from .devices import pick_device

    started = time.perf_counter()
    device = pick_device(job.device)
    checkpoint = Path(job.checkpoint_dir) / CHECKPOINT_FILE if job.checkpoint_dir else None
    if job.resume and (checkpoint is None or not checkpoint.is_file()):
        raise AusilError(f"--resume: no checkpoint in {job.checkpoint_dir}" if checkpoint else "--resume needs --checkpoint-dir")
    if not job.resume and checkpoint is not None and checkpoint.is_file():
        raise AusilError(f"{checkpoint} exists: pass --resume to continue it, or choose another --checkpoint-dir")
    if job.whitening not in ("fit", "keep"):
        raise ValueError(f"whitening must be 'fit' or 'keep', got {job.whitening!r}")
    cache = DescriptorCache(job.cache_path, backbone_fingerprint(model.backbone, model.frontend))
    with cache:
        source = DescriptorSource(model.backbone, model.frontend, cache, device, job.precision)
        pool, groups = build_pool(job, source, hooks)
    extraction = {
        "segments_extracted": source.segments,
        "seconds": round(source.seconds, 2),
        "segments_per_s": round(source.segments_per_second, 1),
        "cache_hits": source.cache_hits,
    }
    train_pool, val_pool = split_pool(pool, validation_pairs(groups, job.val_fraction))
    head = model.head.to(device)
    if job.resume:
        trainer = HeadTrainer(head, train_pool, None, job.config, device, job.checkpoint_dir)
        trainer.load_checkpoint()
    else:
        extras: dict = {}
        if job.whitening == "fit":
            hooks.on_stage("whitening", None)
            used = np.unique(np.concatenate([train_pool.pairs.ravel(), *train_pool.negatives]))
            fit = fit_whitening_report((pool.videos[i] for i in used), job.whitening_shrinkage)
            with torch.no_grad():
                head.pca_mean.copy_(torch.from_numpy(fit.mean))
                head.pca_weights.copy_(torch.from_numpy(fit.weights))
            head.use_whitening = True
            extras["whitening"] = fit.summary()
        hooks.on_stage("mining", None)
        features = global_features(head, pool.videos, device)
        hard, mining = mine_hard_negatives(train_pool, features, job.config.hard_negative_margin)
        extras["mining"] = mining.to_dict()
        if len(val_pool):
            extras["validation_before"] = chamfer_separation(head, val_pool, device)
        trainer = HeadTrainer(head, train_pool, hard, job.config, device, job.checkpoint_dir)
        trainer.extras = extras
    resumed_at = trainer.step
    hooks.on_stage("train", job.config.steps)
    train_started = time.perf_counter()
    trainer.train(hooks.on_step)
    train_seconds = time.perf_counter() - train_started
    report = {
        "steps": trainer.step,
        "resumed_at": resumed_at,
        "train_seconds": round(trainer.elapsed_s, 2),
        "steps_per_s": round((trainer.step - resumed_at) / train_seconds, 2) if train_seconds > 0 else None,
        "loss": loss_summary(trainer.history),
        "pool": {"train": train_pool.stats(), "validation": val_pool.stats() if len(val_pool) else None},
        "extraction": extraction,
        **trainer.extras,
        "device": str(device),
    }
    if len(val_pool):
        report["validation_after"] = chamfer_separation(trainer.head, val_pool, device)
    report["seconds"] = round(time.perf_counter() - started, 2)
    model.head = trainer.head.eval().cpu()
    return report


def fit_model_whitening(
    model,
    sources: Sequence[Path],
    cache_path: Path | None = None,
    shrinkage: float | None = None,
    max_seconds: float | None = None,
    device: str | None = None,
    precision: str = "fused",
    on_stage: Callable[[str, int | None], None] = lambda name, total: None,
    on_file: Callable[[Path, str | None], None] = lambda path, error: None,
) -> dict:
    """Set `model`'s PCA whitening from the segments of whole recordings (or feature files); returns a summary."""
    from .devices import pick_device

    paths = [Path(p) for p in sources if is_feature_file(Path(p))]
    media = [Path(p) for p in sources if not is_feature_file(Path(p))]
    if media:
        paths += collect_media(media)
    on_stage("extract", len(paths))
    matrices = []
    with DescriptorCache(cache_path, backbone_fingerprint(model.backbone, model.frontend)) as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache, pick_device(device), precision)
        for path in paths:
            try:
                matrices.append(source.of_file(path, max_seconds))
                on_file(path, None)
            except InputError as exc:
                on_file(path, str(exc))
    if not matrices:
        raise AusilError("no usable recording to fit the whitening on")
    on_stage("whitening", None)
    fit = fit_whitening_report(matrices, shrinkage)
    with torch.no_grad():
        model.head.pca_mean.copy_(torch.from_numpy(fit.mean))
        model.head.pca_weights.copy_(torch.from_numpy(fit.weights))
    return {
        **fit.summary(),
        "files": len(matrices),
        "extraction": {"segments_extracted": source.segments, "seconds": round(source.seconds, 2),
                       "segments_per_s": round(source.segments_per_second, 1), "cache_hits": source.cache_hits},
    }
