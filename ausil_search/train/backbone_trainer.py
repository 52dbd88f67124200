"""Self-supervised (contrastive) training of the `weak_mxh64_1024` backbone, at the segment level.

The official AudioSet weights cannot always be had, and a randomly initialised backbone is a weak
feature extractor; this trains one from unlabelled audio so that a segment and its transformed copy
get close descriptors while other segments do not. The architecture and its state-dict layout are
unchanged, so the result is an ordinary model file and the official weights still load.

- Batches of two views per excerpt come from :mod:`.backbone_views`.
- NT-Xent / InfoNCE over the L2-normalised 2528-d MAC descriptors of both views, in-batch negatives
  (repeats inside one recording taken out).
- Optionally an anchor: the cosine distance of each view's descriptor from the starting backbone's
  descriptor of the same view, so that a continued run learns new views without giving up old ones.
- Adam with a short linear warm-up, BatchNorm in train mode (batch statistics); at the end the
  running statistics are recomputed as a plain average over a few fresh batches, the statistics
  inference uses. Or, for a continued run, BatchNorm frozen at the starting backbone's statistics
  throughout (``frozen_batchnorm``): heavier views then change the weights only, not the statistics.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..features.backbone import WeakMxH64
from ..features.spectrogram import FrontEnd
from ..progress import Progress, Stage, silent
from .backbone_views import AudioCorpus, ViewBatch, ViewBatches
from .configs import BACKBONE_MODEL_NAME, BackboneTrainConfig, BackboneTrainingJob
from .reports import BackboneLossSummary, BackboneTrainingReport, CorpusSummary
from .scaffold import StepRecord, StopRequest, TrainedModel, checkpoint_to_use, read_checkpoint, write_checkpoint

CHECKPOINT_FORMAT = "ausil-backbone-checkpoint/1"
CHECKPOINT_FILE = "backbone-checkpoint.pt"


def nt_xent(first: Tensor, second: Tensor, temperature: float,
            not_negative: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """InfoNCE over 2B descriptors: each view must pick its partner among the other 2B − 1.

    ``not_negative`` (B, B, bool) takes item pairs out of each other's negatives (repeats within a
    recording). Returns the mean loss and the fraction of views whose nearest other view is their partner.
    """
    n = len(first)
    z = F.normalize(torch.cat([first, second]), dim=1)
    logits = (z @ z.T) / temperature
    excluded = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if not_negative is not None:
        excluded = excluded | not_negative.to(z.device).repeat(2, 2)
    logits = logits.masked_fill(excluded, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.argmax(dim=1) == targets).float().mean()
    return loss, accuracy


def _as_input(views: np.ndarray, device: torch.device) -> Tensor:
    """(2, B, T, 128) views -> (2B, 1, T, 128) network input, first views then second views."""
    two, batch, frames, mels = views.shape
    x = torch.from_numpy(views).reshape(two * batch, 1, frames, mels).to(device)
    return x.contiguous(memory_format=torch.channels_last)


@dataclass
class BackboneStep(StepRecord):
    accuracy: float
    lr: float
    seconds: float  # wall time of the step, waiting for its batch included
    drift: float | None = None  # mean cosine distance from the anchor's descriptors (anchored runs)


def frozen_anchor(backbone: WeakMxH64, running_statistics: bool = False) -> WeakMxH64:
    """A fixed copy of ``backbone`` that normalises as the trained one does in training (batch
    statistics, or its running statistics when those are frozen), so both give the same descriptors at
    the start; it never updates running statistics."""
    anchor = copy.deepcopy(backbone)
    for parameter in anchor.parameters():
        parameter.requires_grad_(False)
    if running_statistics:
        return anchor.eval()
    for norm in batch_norms(anchor):
        norm.track_running_stats = False
    return anchor.train()


def batch_norms(backbone: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


class BackboneTrainer:
    """Adam on the contrastive loss; checkpoints that resume to exactly the uninterrupted state.

    Ctrl-C (SIGINT, when run from the main thread) finishes the current step, writes a checkpoint
    and then raises KeyboardInterrupt; a second Ctrl-C interrupts at once.
    """

    def __init__(self, backbone: WeakMxH64, batches: ViewBatches, corpus: AudioCorpus, config: BackboneTrainConfig,
                 device: torch.device, checkpoint_dir: Path | None = None) -> None:
        # Channels-last: oneDNN's faster convolution layout on CPU (~1.3x per step measured), fine on CUDA.
        self.backbone = backbone.to(device, memory_format=torch.channels_last)
        self.batches = batches
        self.corpus = corpus
        self.config = config
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.anchor = frozen_anchor(self.backbone, config.frozen_batchnorm) if config.anchor_weight > 0 else None
        trainable = [p for name, p in backbone.named_parameters() if not name.startswith("layer19.")]
        for parameter in backbone.layer19.parameters():
            parameter.requires_grad_(False)  # the classifier plays no part in the descriptor
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.history: list[BackboneStep] = []
        self.elapsed_s = 0.0

    def train_step(self, batch: ViewBatch) -> BackboneStep:
        started = time.perf_counter()
        self.backbone.train()
        if self.config.frozen_batchnorm:
            for norm in batch_norms(self.backbone):
                norm.eval()  # running statistics, never updated; the affine weights still learn
        size = batch.views.shape[1]
        x = _as_input(batch.views, self.device)
        lr = self.config.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        descriptors = self.backbone(x)
        loss, accuracy = nt_xent(descriptors[:size], descriptors[size:], self.config.temperature,
                                 torch.from_numpy(batch.not_negative))
        objective, drift = loss, None
        if self.anchor is not None:
            with torch.no_grad():
                anchored = self.anchor(x)
            distance = (1 - F.cosine_similarity(descriptors, anchored, dim=1)).mean()
            objective = loss + self.config.anchor_weight * distance
            drift = float(distance.detach())
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        self.step += 1
        record = BackboneStep(self.step, float(loss.detach()), float(accuracy), lr, time.perf_counter() - started,
                              drift)
        self.history.append(record)
        return record

    def run(self, on_step: Callable[[BackboneStep], None] = lambda record: None) -> None:
        """Train until ``config.steps``; checkpoint every ``checkpoint_every`` steps, at the end and on Ctrl-C."""
        with StopRequest() as stop:
            waited_from = time.perf_counter()
            for batch in self.batches.iterate(self.step, self.config.steps):
                record = self.train_step(batch)
                record.seconds = time.perf_counter() - waited_from
                self.elapsed_s += record.seconds
                waited_from = time.perf_counter()
                on_step(record)
                if self.checkpoint_dir and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop.requested:
                    if self.checkpoint_dir:
                        self.save_checkpoint()
                    raise KeyboardInterrupt
        if self.checkpoint_dir:
            self.save_checkpoint()

    def recalibrate_batch_norm(self) -> None:
        """Running statistics = plain averages over fresh batches (stream 1), as inference will see;
        frozen statistics stay as they are (the weights were trained under them)."""
        if self.config.frozen_batchnorm:
            self.backbone.eval()
            return
        norms = batch_norms(self.backbone)
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        self.backbone.train()
        with torch.no_grad():
            for batch in self.batches.iterate(0, self.config.calibration_batches, stream=1):
                self.backbone(_as_input(batch.views, self.device))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.backbone.eval()

    # ---- checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None

    def save_checkpoint(self) -> Path:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "backbone": {k: v.detach().cpu().contiguous().clone() for k, v in self.backbone.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "anchor": (None if self.anchor is None else
                       {k: v.detach().cpu().contiguous().clone() for k, v in self.anchor.state_dict().items()}),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
            "corpus": self.corpus.fingerprint(),
            "history": [asdict(r) for r in self.history],
            "elapsed_s": self.elapsed_s,
        }
        return write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> None:
        state = read_checkpoint(self.checkpoint_path, CHECKPOINT_FORMAT, "backbone training", self.config.incompatible,
                                "corpus", self.corpus.fingerprint())
        self.backbone.load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.anchor is not None:  # the run's own start, whatever weights the resumed run was handed
            self.anchor.load_state_dict(state["anchor"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = [BackboneStep(**r) for r in state["history"]]
        self.elapsed_s = float(state["elapsed_s"])


# --------------------------------------------------------------------------- the whole run


def train_backbone(backbone: WeakMxH64, job: BackboneTrainingJob, progress: Progress = silent,
                   frontend: FrontEnd = FrontEnd()) -> BackboneTrainingReport:
    """Train ``backbone`` in place (resuming from ``job.checkpoint_dir`` if asked) and return the run's report.

    The backbone ends in eval mode with recalibrated BatchNorm statistics. ``progress`` hears of the
    stages ``scan`` (the recordings) and ``train-backbone`` (steps, with the loss and the accuracy).
    """
    from ..devices import pick_device

    checkpoint_to_use(job.checkpoint_dir, CHECKPOINT_FILE, job.resume)
    device = pick_device(job.device)
    corpus = AudioCorpus.from_sources(job.sources, progress)
    config = job.config
    batches = ViewBatches(corpus, config.recipe, frontend, config.seed, config.batch_size, job.workers)
    trainer = BackboneTrainer(backbone, batches, corpus, config, device, job.checkpoint_dir)
    try:
        if job.resume:
            trainer.load_checkpoint()
        resumed_at = trainer.step
        steps = Stage(progress, "train-backbone", config.steps, resumed_at)
        started = time.perf_counter()
        trainer.run(lambda record: steps.advance(metrics={"loss": record.loss, "acc": record.accuracy}))
        train_seconds = time.perf_counter() - started
        calibration_started = time.perf_counter()
        trainer.recalibrate_batch_norm()
        calibration_seconds = time.perf_counter() - calibration_started
    finally:
        batches.close()
    backbone.to("cpu", memory_format=torch.contiguous_format).eval()
    steps_run = trainer.step - resumed_at
    speed = steps_run and train_seconds > 0
    return BackboneTrainingReport(
        steps=trainer.step,
        resumed_at=resumed_at if job.resume else None,
        steps_this_session=steps_run,
        train_seconds=round(train_seconds, 2),
        steps_per_s=round(steps_run / train_seconds, 4) if speed else None,
        segments_per_s=round(2 * config.batch_size * steps_run / train_seconds, 2) if speed else None,
        total_train_seconds=round(trainer.elapsed_s, 2),
        calibration_seconds=round(calibration_seconds, 2),
        device=str(device),
        workers=job.workers,
        loss=BackboneLossSummary.of(trainer.history),
        data=CorpusSummary(files=len(corpus), hours=round(corpus.hours, 3), fingerprint=corpus.fingerprint(),
                           sources=[str(s) for s in job.sources]),
        config=config,
    )


def train_backbone_model(job: BackboneTrainingJob, start=None, name: str = BACKBONE_MODEL_NAME, command: str | None = None,
                         progress: Progress = silent) -> TrainedModel:
    """Train ``start``'s backbone (an AuSiLModel; default: the seeded random initialisation) and return
    a model of it with a neutral head, its metadata recording where it started and how it was trained."""
    from ..model import AuSiLModel

    initial = AuSiLModel.initialise(seed=job.config.seed)
    model = start if start is not None else initial
    start_identity = model.identity if start is not None else f"seeded random initialisation (seed {job.config.seed})"
    report = train_backbone(model.backbone, job, progress, frontend=model.frontend)
    trained = AuSiLModel(model.backbone, initial.head, model.frontend, {
        "name": name,
        "version": f"{time.strftime('%Y%m%d')}-s{report.steps}",
        "description": "weak_mxh64_1024 backbone trained self-supervised (contrastive, segment level) by "
                       "ausil-search train-backbone; identity whitening, neutral attention, pass-through comparator.",
        "source": command or "ausil_search.train.backbone_trainer.train_backbone_model",
        "backbone_training": {"from": start_identity, "steps": report.steps, "config": report.config.to_dict(),
                              "data": report.data.to_dict(),
                              "loss": {k: v for k, v in report.loss_dict().items() if k != "curve"},
                              "train_seconds": report.total_train_seconds, "device": report.device},
    })
    return TrainedModel(trained, report)
