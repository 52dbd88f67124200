"""The head trainer: triplet loss plus similarity regularisation on a triplet pool, Adam, exact resume.

The backbone is frozen (the paper's best setting), so a step only runs the head, through the same
:class:`~ausil_search.model.head.AuSiLHead` methods a query uses (``whiten``, ``attend``,
``compare_pairs``, ``chamfer_pairs``) on a padded batch of pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..model.head import MIN_COMPARATOR_SEGMENTS, MIN_DATABASE_SEGMENTS, AuSiLHead, tile_segments
from .configs import TrainConfig
from .pools import TripletPool
from .reports import Separation
from .scaffold import StepRecord, StopRequest, read_checkpoint, write_checkpoint

CHECKPOINT_FORMAT = "ausil-train-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class HeadStep(StepRecord):
    triplet: float
    regularisation: float
    active: float  # fraction of triplets with a non-zero triplet loss


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
        self.history: list[HeadStep] = []
        self.elapsed_s = 0.0
        # With fixed whitening the (dominant) 2528×2528 projection is computed once, not every step.
        self._whitened: list[Tensor] | None = None
        if not config.train_whitening:
            self._whitened = self._whiten_pool()
        self._raw = None if self._whitened is not None else [torch.from_numpy(v).to(self.device) for v in pool.videos]
        self.extras: dict = {}  # the report's set-up part (HeadTrainingReport.setup_dict), taken over on resume

    # ---- model pieces

    @torch.no_grad()
    def _whiten_pool(self) -> list[Tensor]:
        return [self.head.whiten(torch.from_numpy(v).to(self.device)) for v in self.pool.videos]

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

    def train_step(self) -> HeadStep:
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
        record = HeadStep(self.step, loss.item(), triplet.item(), reg.item(), active.item())
        self.history.append(record)
        return record

    def train(self, on_step: Callable[[HeadStep], None] = lambda record: None) -> None:
        """Run until `config.steps`, checkpointing every `checkpoint_every` steps, at the end and on Ctrl-C."""
        self.head.train()
        started = time.perf_counter() - self.elapsed_s
        try:
            with StopRequest() as stop:
                while self.step < self.config.steps:
                    record = self.train_step()
                    self.elapsed_s = time.perf_counter() - started
                    if self.checkpoint_dir and self.step % self.config.checkpoint_every == 0:
                        self.save_checkpoint()
                    on_step(record)
                    if stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.elapsed_s = time.perf_counter() - started
            if self.checkpoint_dir:
                self.save_checkpoint()
            raise
        finally:
            self.head.eval()
        if self.checkpoint_dir:
            self.save_checkpoint()

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
        return write_checkpoint(self.checkpoint_path, self.checkpoint_state())

    def load_checkpoint(self, path: Path | None = None) -> None:
        state = read_checkpoint(Path(path) if path else self.checkpoint_path, CHECKPOINT_FORMAT, "training", self.config.incompatible,
                                "pool", self.pool.fingerprint())
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["sampler"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = [HeadStep(**r) for r in state["history"]]
        self.elapsed_s = float(state["elapsed_s"])
        self.hard_negatives = [np.asarray(h, np.int64) for h in state["hard_negatives"]]
        self.extras = dict(state.get("extras") or {})
        if self._whitened is not None:  # the (fixed) whitening came back with the head
            self._whitened = self._whiten_pool()


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def chamfer_separation(head: AuSiLHead, pool: TripletPool, device: torch.device, max_negatives: int = 64) -> Separation:
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
    return Separation(pairs=len(pool), mean_positive=round(mean_pos, 4), mean_negative=round(mean_neg, 4),
                      separation=round(mean_pos - mean_neg, 4), top1=round(wins / max(1, len(pool)), 4))
