"""What a training run reports, typed: the CLI formats from these attributes, and ``to_dict()`` is the
JSON that ``.report.json`` and ``--json`` hold (scripts read its keys, so its keys and their order
are part of the interface).

Torch-free. Each report lists its keys explicitly in ``to_dict()`` because the order is the one the
files have always had, which differs between the reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from .configs import BackboneTrainConfig


@dataclass
class SavedModel:
    """The written model file: its content hash and the model's identity."""

    sha256: str
    identity: str

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "identity": self.identity}


@dataclass(kw_only=True)
class ArtifactReport:
    """What every run that produces a model records once the model is written (see TrainedModel.save)."""

    output: str | None = None
    model: SavedModel | None = None

    # Whether saving writes the report beside the model (OUTPUT's .report.json).
    writes_report_file: ClassVar[bool] = True

    def _saved(self) -> dict:
        saved: dict = {}
        if self.output is not None:
            saved["output"] = self.output
        if self.model is not None:
            saved["model"] = self.model.to_dict()
        return saved

    def to_dict(self) -> dict:
        raise NotImplementedError


@dataclass
class ExtractionStats:
    """Descriptor extraction during a run: segments computed (cache hits excluded) and the time it took."""

    segments_extracted: int
    seconds: float
    segments_per_s: float
    cache_hits: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WhiteningSummary:
    """A fitted whitening in numbers: segments, the shrinkage used (and Ledoit–Wolf's estimate), the spectrum."""

    segments: int
    shrinkage: float
    ledoit_wolf: float | None
    eps: float
    mean_eigenvalue: float
    dims_for_90pct_variance: int
    width: int | None = None  # the head's width after the fit (components kept)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MiningReport:
    """Hard-negative mining: mean hard negatives per pair, pairs that fell back to all negatives, and
    the mean anchor–positive distance."""

    mean_hard: float
    fallback_fraction: float
    mean_positive_distance: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


@dataclass
class Separation:
    """Chamfer similarity of held-out anchors to their positive vs their negatives."""

    pairs: int
    mean_positive: float
    mean_negative: float
    separation: float  # mean_positive − mean_negative
    top1: float  # fraction of pairs whose positive beats every scored negative

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadLossSummary:
    """The head's loss: means over the first and last tenth of the steps and a 10-span curve."""

    first_steps_mean: float
    last_steps_mean: float
    curve: list[dict]  # {"steps": [first, last], "loss": mean}
    last_active_fraction: float
    last_regularisation: float

    @classmethod
    def of(cls, history: Sequence, buckets: int = 10) -> HeadLossSummary | None:
        """From HeadStep records (None without any)."""
        if not history:
            return None
        losses = np.array([r.loss for r in history])
        spans = np.array_split(np.arange(len(losses)), min(buckets, len(losses)))
        tenth = max(1, len(losses) // 10)
        return cls(
            first_steps_mean=round(float(losses[:tenth].mean()), 5),
            last_steps_mean=round(float(losses[-tenth:].mean()), 5),
            curve=[{"steps": [int(history[s[0]].step), int(history[s[-1]].step)], "loss": round(float(losses[s].mean()), 5)}
                   for s in spans],
            last_active_fraction=round(float(np.mean([r.active for r in history[-tenth:]])), 4),
            last_regularisation=round(float(np.mean([r.regularisation for r in history[-tenth:]])), 5),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BackboneLossSummary:
    """The backbone's loss and partner-found accuracy over the first and last steps, and the curve."""

    first_steps_mean: float
    last_steps_mean: float
    first_steps_accuracy: float
    last_steps_accuracy: float
    steps_averaged: int
    curve: list[float]  # mean loss per `steps_averaged` steps
    last_steps_drift: float | None = None  # distance from the anchor's descriptors (anchored runs)

    @classmethod
    def of(cls, history: Sequence) -> BackboneLossSummary | None:
        """From BackboneStep records (None without any)."""
        if not history:
            return None
        span = max(1, min(20, len(history) // 5 or 1))

        def mean(records: Sequence, key: str) -> float:
            return round(float(np.mean([getattr(r, key) for r in records])), 4)

        return cls(
            first_steps_mean=mean(history[:span], "loss"), last_steps_mean=mean(history[-span:], "loss"),
            first_steps_accuracy=mean(history[:span], "accuracy"), last_steps_accuracy=mean(history[-span:], "accuracy"),
            steps_averaged=span,
            curve=[round(float(np.mean([r.loss for r in history[i : i + span]])), 4) for i in range(0, len(history), span)],
            last_steps_drift=mean(history[-span:], "drift") if getattr(history[-1], "drift", None) is not None else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class TrainingReport(ArtifactReport):
    """What both trainers record: steps (total, and where this session resumed), time, loss, device."""

    steps: int
    resumed_at: int | None
    train_seconds: float
    steps_per_s: float | None
    loss: HeadLossSummary | BackboneLossSummary | None
    device: str

    def loss_dict(self) -> dict:
        """The loss summary as the report holds it ({} before any step)."""
        return self.loss.to_dict() if self.loss is not None else {}


@dataclass
class HeadSetup:
    """What a head run does before its first step (whitening fit, mining, validation before); its
    checkpoint keeps it (``to_dict``), so that a resumed run reports it too."""

    whitening: WhiteningSummary | None = None  # None: the input model's whitening was kept
    mining: MiningReport | None = None
    validation_before: Separation | None = None

    def to_dict(self) -> dict:
        parts = {"whitening": self.whitening, "mining": self.mining, "validation_before": self.validation_before}
        return {key: part.to_dict() for key, part in parts.items() if part is not None}

    @classmethod
    def from_dict(cls, data: dict) -> HeadSetup:
        types = {"whitening": WhiteningSummary, "mining": MiningReport, "validation_before": Separation}
        return cls(**{key: kind(**data[key]) for key, kind in types.items() if data.get(key) is not None})


@dataclass(kw_only=True)
class HeadTrainingReport(TrainingReport):
    """`ausil-search train`: the triplet pools, extraction, the set-up and the validation after
    training; ``seconds`` is the whole run's time."""

    train_pool: dict
    validation_pool: dict | None
    extraction: ExtractionStats
    setup: HeadSetup
    validation_after: Separation | None = None
    seconds: float

    def to_dict(self) -> dict:
        report = {
            "steps": self.steps, "resumed_at": self.resumed_at, "train_seconds": self.train_seconds,
            "steps_per_s": self.steps_per_s, "loss": self.loss_dict(),
            "pool": {"train": self.train_pool, "validation": self.validation_pool},
            "extraction": self.extraction.to_dict(), **self.setup.to_dict(), "device": self.device,
        }
        if self.validation_after is not None:
            report["validation_after"] = self.validation_after.to_dict()
        return {**report, "seconds": self.seconds, **self._saved()}


@dataclass
class CorpusSummary:
    """The recordings a backbone was trained on."""

    files: int
    hours: float
    fingerprint: str
    sources: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class BackboneTrainingReport(TrainingReport):
    """`ausil-search train-backbone`: this session's speed, the whole run's training time, BatchNorm
    recalibration, the data and the settings."""

    steps_this_session: int
    segments_per_s: float | None
    total_train_seconds: float
    calibration_seconds: float
    workers: int
    data: CorpusSummary
    config: BackboneTrainConfig

    def to_dict(self) -> dict:
        return {
            "steps": self.steps, "resumed_at": self.resumed_at, "steps_this_session": self.steps_this_session,
            "train_seconds": self.train_seconds, "steps_per_s": self.steps_per_s, "segments_per_s": self.segments_per_s,
            "total_train_seconds": self.total_train_seconds, "calibration_seconds": self.calibration_seconds,
            "device": self.device, "workers": self.workers, "loss": self.loss_dict(), "data": self.data.to_dict(),
            "config": self.config.to_dict(), **self._saved(),
        }


@dataclass(kw_only=True)
class WhiteningReport(ArtifactReport):
    """`ausil-search fit-whitening`: the fit, how many files it came from, and the extraction."""

    fit: WhiteningSummary
    files: int
    extraction: ExtractionStats

    writes_report_file: ClassVar[bool] = False  # the command prints it (--json) and records the fit in the model

    def to_dict(self) -> dict:
        report = {**self.fit.to_dict(), "files": self.files, "extraction": self.extraction.to_dict()}
        if self.output is not None:
            report["output"] = self.output
        if self.model is not None:
            report["model"] = self.model.identity
        return report
