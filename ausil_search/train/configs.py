"""The settings and jobs of the training runs, as plain dataclasses (no torch), so the CLI takes its defaults from them.

A resumed run must use the settings its checkpoint was made with, except the few each config
lists as resumable; :func:`changed_settings` names the others that differ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AusilError

if TYPE_CHECKING:
    from ..features.spectrogram import FrontEnd

RECIPE_VERSION = "contrastive-views/2"
BACKBONE_MODEL_NAME = "ausil-ssl-backbone"  # the name a trained backbone's model file gets unless told


def changed_settings(mine: dict, saved: dict, resumable: tuple[str, ...]) -> list[str]:
    """Keys of ``mine`` whose saved value differs (compared as JSON: tuples equal lists), resumable ones aside."""
    mine, saved = json.loads(json.dumps(mine)), json.loads(json.dumps(saved))
    return [k for k in mine if k not in resumable and saved.get(k) != mine[k]]


@dataclass
class SelfSupervisedConfig:
    """How excerpts and augmented copies are drawn from unlabelled recordings."""

    examples_per_recording: int = 4
    database_seconds: tuple[float, float] = (12.0, 30.0)  # the clean window (database side)
    query_seconds: tuple[float, float] = (6.0, 15.0)  # the excerpt inside it that gets augmented
    max_seconds: float = 600.0  # only the start of long recordings is read
    modes: tuple[str, ...] = ("core", "speed")  # random_augment modes, alternated over examples
    seed: int = 0
    # A share of examples pairs a short query with a long database window around it: the case
    # of a clip searched for inside a long video, where one global mean dilutes the match.
    long_fraction: float = 0.0
    long_database_seconds: tuple[float, float] = (60.0, 180.0)
    short_query_seconds: tuple[float, float] = (5.0, 12.0)
    # A share of examples whose database window is degraded too (a "hard" chain without time
    # changes): copies where neither side is clean, as when the query itself was re-recorded or
    # drowned in noise. Drawn after everything else, so 0 leaves every other example unchanged.
    degraded_database_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("long_fraction", "degraded_database_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def shortest_query_s(self) -> float:
        return min(self.query_seconds[0], self.short_query_seconds[0]) if self.long_fraction else self.query_seconds[0]


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
    width: int | None = None  # keep the whitening's top `width` components (smaller stored segments); None: all
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.width is not None and self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")

    _RESUMABLE_CHANGES = ("steps", "checkpoint_every")

    def incompatible(self, saved: dict) -> list[str]:
        return changed_settings(asdict(self), saved, self._RESUMABLE_CHANGES)


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
        from .examples import augment_fingerprint

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


@dataclass(frozen=True)
class ViewRecipe:
    """How a batch's excerpts and their pairs of views are made; each probability is per view.

    The ranges aim at what a re-upload goes through: lost top octaves (low-pass, 8–22 kHz
    resampling, telephone band, low-bitrate codecs), rooms and echoes, noise and babble, mixing
    under louder audio, passages much quieter than the file's peak, and clips shorter than a window.
    """

    excerpt_s: float = 3.0
    max_shift_s: float = 0.0  # relative misalignment of the two centre windows, at most
    excerpts_per_recording: int = 2  # non-overlapping excerpts of one recording in a batch: hard negatives
    min_gap_s: float = 1.0  # between two excerpts of one recording
    repeat_threshold: float = 0.6  # two excerpts of a recording this alike are a repeat, not a negative
    p_clean: float = 0.1  # a view left untouched
    p_time: float = 0.5  # one of speed / tempo / pitch
    max_speed_change: float = 0.15  # speed and tempo factors in [1 - x, 1 + x]
    max_pitch_semitones: float = 4.0
    p_echo: float = 0.15
    p_reverb: float = 0.2
    rt60_s: tuple[float, float] = (0.2, 1.2)
    p_mix: float = 0.3
    mix_level_db: tuple[float, float] = (-10.0, 4.0)  # the other recording's level relative to ours
    p_babble: float = 0.15
    p_noise: float = 0.3
    noise_snr_db: tuple[float, float] = (0.0, 20.0)
    p_band: float = 0.35
    lowpass_hz: tuple[float, float] = (3000.0, 11000.0)
    p_resample: float = 0.25
    p_gain: float = 0.2
    p_codec: float = 0.4
    codec_kbps: tuple[int, int] = (12, 48)
    p_level: float = 0.25  # the window sits this far below the file's peak, as a quiet passage does
    level_drop_db: tuple[float, float] = (6.0, 45.0)
    p_cut: float = 0.1  # only the start of the window holds audio, as at the end of a short query
    min_cut_fraction: float = 0.4

    def __post_init__(self) -> None:
        if self.excerpt_s <= 0 or self.max_shift_s < 0 or self.min_gap_s < 0:
            raise ValueError("excerpt_s must be positive, max_shift_s and min_gap_s non-negative")
        if not 0 <= self.max_speed_change < 0.5:
            raise ValueError(f"max_speed_change must be in [0, 0.5), got {self.max_speed_change}")
        if self.excerpts_per_recording < 1:
            raise ValueError("excerpts_per_recording must be at least 1")

    def to_dict(self) -> dict:
        return {**asdict(self), "version": RECIPE_VERSION}

    @classmethod
    def from_dict(cls, data: dict) -> ViewRecipe:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})

    def with_overrides(self, overrides: dict) -> ViewRecipe:
        """This recipe with some fields replaced (``train-backbone --views``): unknown names, wrong types
        and probabilities outside [0, 1] are refused, so a typo cannot silently train the default recipe."""
        known = {f.name: getattr(self, f.name) for f in fields(self)}
        changes = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown view setting {name!r}; known: {', '.join(sorted(known))}")
            default = known[name]
            if isinstance(default, tuple):
                if not (isinstance(value, (list, tuple)) and len(value) == 2
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                        and value[0] <= value[1]):
                    raise ValueError(f"{name} must be a pair [low, high] with low <= high, got {value!r}")
                if isinstance(default[0], int) and not all(isinstance(v, int) for v in value):
                    raise ValueError(f"{name} takes a pair of integers, got {value!r}")
                value = tuple(type(default[0])(v) for v in value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(default, int) and not isinstance(value, int)):
                raise ValueError(f"{name} takes {'an integer' if isinstance(default, int) else 'a number'}, got {value!r}")
            else:
                value = type(default)(value)
            if name.startswith("p_") and not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability, got {value}")
            changes[name] = value
        return replace(self, **changes)

    def check_fits(self, frontend: FrontEnd) -> None:
        """The excerpt must still hold a window (plus the shift) after the fastest speed change."""
        window_s = frontend.window_seconds + self.max_shift_s
        shortest_s = self.excerpt_s / (1 + self.max_speed_change)
        if shortest_s < window_s:
            raise AusilError(f"excerpts of {self.excerpt_s} s are too short: after a {self.max_speed_change:.0%} "
                             f"speed-up they must still hold {window_s:.2f} s (window plus shift)")


def read_view_overrides(views: str) -> dict:
    """The ViewRecipe fields of `--views`: a JSON object given inline or in a file (AusilError otherwise)."""
    text = views
    if not views.lstrip().startswith("{"):
        try:
            text = Path(views).read_text()
        except OSError as error:
            raise AusilError(f"neither a JSON object nor a readable file: {error.strerror or error}") from None
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise AusilError(f"not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise AusilError("expected a JSON object of view-recipe fields")
    return overrides


@dataclass
class BackboneTrainConfig:
    """The backbone run: optimisation, schedule, and the view recipe of its batches."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 50
    decay_steps: int = 0  # the last decay_steps of `steps` lower the rate linearly towards 0
    weight_decay: float = 0.0
    temperature: float = 0.1
    # Weight of the cosine distance between each view's descriptor and the starting backbone's: keeps a
    # continued run from trading what the start had learnt for the new views (0: no anchor).
    anchor_weight: float = 0.0
    # BatchNorm keeps the starting backbone's running statistics (eval mode) through training and after,
    # so the weights learn under the statistics inference uses rather than under heavy views' batch
    # statistics; no recalibration at the end. Measured: it does not keep a continued run's
    # speed-changed copies (BENCHMARKS.md, run v3f).
    frozen_batchnorm: bool = False
    seed: int = 0
    checkpoint_every: int = 25
    calibration_batches: int = 8
    recipe: ViewRecipe = field(default_factory=ViewRecipe)

    # Settings a resumed run may change; all others must match the checkpoint.
    _RESUMABLE_CHANGES = ("steps", "decay_steps", "checkpoint_every", "calibration_batches")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["recipe"] = self.recipe.to_dict()
        return data

    def incompatible(self, saved: dict) -> list[str]:
        # checkpoints from before the anchor and frozen statistics ran without them
        saved = {"anchor_weight": 0.0, "frozen_batchnorm": False, **saved}
        return changed_settings(self.to_dict(), saved, self._RESUMABLE_CHANGES)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, constant, then a linear decay over the last ``decay_steps``.

        The decay is relative to ``steps``, so a run extended with --resume decays at its new end;
        annealing the rate at the end is what lets the last steps settle instead of jittering.
        """
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        decay = min(1.0, (self.steps - step) / self.decay_steps) if self.decay_steps else 1.0
        return self.lr * min(warm, max(decay, 0.0))


@dataclass
class BackboneTrainingJob:
    """What `ausil-search train-backbone` asks for: recordings, settings, and where state goes."""

    sources: list[Path]
    config: BackboneTrainConfig = field(default_factory=BackboneTrainConfig)
    checkpoint_dir: Path | None = None
    resume: bool = False
    device: str | None = None
    workers: int = 1  # processes making view batches ahead of the trainer (0: in-process)
