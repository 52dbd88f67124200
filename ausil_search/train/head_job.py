"""A whole head-training run (`ausil-search train`) and a whitening fit (`ausil-search fit-whitening`).

Sources become a triplet pool (self-supervised examples and/or an annotation), the whitening is
fitted on the training side of it, hard negatives are mined, and the head trainer runs.
"""

from __future__ import annotations

import dataclasses

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import AusilError, InputError
from ..features.feature_files import is_feature_file
from ..media.sources import collect_media
from ..progress import Progress, Stage, silent
from .descriptors import DescriptorCache, DescriptorSource, backbone_fingerprint
from .configs import TrainingJob
from .examples import self_supervised_examples
from .head_trainer import CHECKPOINT_FILE, HeadTrainer, chamfer_separation
from .mining import global_features, mine_hard_negatives
from .pools import TripletPool, annotation_pool, examples_pool, merge_pools, split_pool, validation_pairs
from .reports import HeadLossSummary, HeadSetup, HeadTrainingReport, WhiteningReport
from .scaffold import TrainedModel, checkpoint_to_use
from .whitening import fit_whitening_report


def build_pool(job: TrainingJob, source: DescriptorSource, progress: Progress = silent) -> tuple[TripletPool, list[str]]:
    """The full triplet pool of a job and, per pair, the group a validation split holds out together
    (`progress`: an `extract` stage per kind of source)."""
    from ..evaluate.formats import load_json, read_video_list

    pools: list[tuple[TripletPool, list[str]]] = []
    if job.sources:
        paths = collect_media(job.sources)
        examples = self_supervised_examples(paths, source, job.self_supervised, progress)
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
        extract = Stage(progress, "extract", len(entries))
        descriptors = {}
        for entry in entries:
            try:
                descriptors[entry.video_id] = source.of_file(entry.path)
                extract.advance(entry.path)
            except InputError as exc:
                extract.advance(entry.path, skipped=str(exc))
        pool = annotation_pool(annotation, descriptors, job.relevant_labels)
        pools.append((pool, [pool.names[a] for a, _ in pool.pairs]))
    if not pools:
        raise AusilError("nothing to train on: give media folders/files, or --pairs with --videos")
    pool, groups = pools[0]
    for other, other_groups in pools[1:]:
        pool, groups = merge_pools(pool, other), groups + other_groups
    return pool, groups


def train_model(model, job: TrainingJob, progress: Progress = silent) -> HeadTrainingReport:
    """Train `model`'s head in place (the backbone stays frozen) and return the run's report.

    `progress` hears of the stages `extract`, `whitening` (unless resumed or kept), `mining` and
    `train` (steps, with the loss).
    """
    from ..devices import pick_device

    started = time.perf_counter()
    device = pick_device(job.device)
    checkpoint_to_use(job.checkpoint_dir, CHECKPOINT_FILE, job.resume)
    check_width(model.head, job.config.width)
    if job.whitening not in ("fit", "keep"):
        raise ValueError(f"whitening must be 'fit' or 'keep', got {job.whitening!r}")
    cache = DescriptorCache(job.cache_path, backbone_fingerprint(model.backbone, model.frontend))
    with cache:
        source = DescriptorSource(model.backbone, model.frontend, cache, device, job.precision)
        pool, groups = build_pool(job, source, progress)
    extraction = source.stats()
    train_pool, val_pool = split_pool(pool, validation_pairs(groups, job.val_fraction))
    head = model.head.to(device)
    width = job.config.width
    if job.resume:
        if width is not None:  # shaped like the checkpoint's head, which then overwrites it
            narrow_head(head, width)
        trainer = HeadTrainer(head, train_pool, None, job.config, device, job.checkpoint_dir)
        trainer.load_checkpoint()
        setup = HeadSetup.from_dict(trainer.extras)
    else:
        setup = HeadSetup()
        if job.whitening == "fit":
            whitening = Stage(progress, "whitening", 1)
            used = np.unique(np.concatenate([train_pool.pairs.ravel(), *train_pool.negatives]))
            fit = fit_whitening_report((pool.videos[i] for i in used), job.whitening_shrinkage)
            whitening.advance()
            adopt_whitening(head, fit, width)
            head.use_whitening = True
            setup.whitening = dataclasses.replace(fit.summary(), width=head.width)
        elif width is not None:
            narrow_head(head, width)
        mining_stage = Stage(progress, "mining", 1)
        features = global_features(head, pool.videos, device)
        hard, setup.mining = mine_hard_negatives(train_pool, features, job.config.hard_negative_margin)
        mining_stage.advance()
        if len(val_pool):
            setup.validation_before = chamfer_separation(head, val_pool, device)
        trainer = HeadTrainer(head, train_pool, hard, job.config, device, job.checkpoint_dir)
        trainer.extras = setup.to_dict()
    resumed_at = trainer.step
    steps = Stage(progress, "train", job.config.steps, resumed_at)
    train_started = time.perf_counter()
    trainer.train(lambda record: steps.advance(metrics={"loss": record.loss}))
    train_seconds = time.perf_counter() - train_started
    validation_after = chamfer_separation(trainer.head, val_pool, device) if len(val_pool) else None
    report = HeadTrainingReport(
        steps=trainer.step,
        resumed_at=resumed_at,
        train_seconds=round(trainer.elapsed_s, 2),
        steps_per_s=round((trainer.step - resumed_at) / train_seconds, 2) if train_seconds > 0 else None,
        loss=HeadLossSummary.of(trainer.history),
        train_pool=train_pool.stats(),
        validation_pool=val_pool.stats() if len(val_pool) else None,
        extraction=extraction,
        setup=setup,
        device=str(device),
        validation_after=validation_after,
        seconds=round(time.perf_counter() - started, 2),
    )
    model.head = trainer.head.eval().cpu()
    return report


def check_width(head, width: int | None) -> None:
    """Refuse a head width the descriptors cannot give, before any work is done."""
    dim = head.pca_mean.shape[0]
    if width is not None and not 1 <= width <= dim:
        raise AusilError(f"width must be between 1 and {dim} (the descriptor's), got {width}")


def adopt_whitening(head, fit, width: int | None = None) -> None:
    """Give `head` the fitted whitening, keeping its top `width` components (all when None)."""
    check_width(head, width)
    weights = fit.weights if width is None else fit.weights[:, :width]
    head.set_whitening(torch.from_numpy(fit.mean), torch.from_numpy(np.ascontiguousarray(weights)))


def narrow_head(head, width: int) -> None:
    """Keep the first `width` components of `head`'s whitening (a model's whitening, kept as it is)."""
    if width > head.width:
        raise AusilError(f"the model's head is {head.width} wide: it cannot be widened to {width} without a whitening fit")
    if width < head.width:
        head.truncate(width)


def fit_model_whitening(
    model,
    sources: Sequence[Path],
    cache_path: Path | None = None,
    shrinkage: float | None = None,
    max_seconds: float | None = None,
    device: str | None = None,
    precision: str = "fused",
    progress: Progress = silent,
    width: int | None = None,
) -> WhiteningReport:
    """Set `model`'s PCA whitening from the segments of whole recordings (or feature files); returns the
    report. `width` keeps only the top components (a narrower head, smaller stored segments).

    `progress` hears of the stages `extract` and `whitening`.
    """
    from ..devices import pick_device

    check_width(model.head, width)
    paths = [Path(p) for p in sources if is_feature_file(Path(p))]
    media = [Path(p) for p in sources if not is_feature_file(Path(p))]
    if media:
        paths += collect_media(media)
    extract = Stage(progress, "extract", len(paths))
    matrices = []
    with DescriptorCache(cache_path, backbone_fingerprint(model.backbone, model.frontend)) as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache, pick_device(device), precision)
        for path in paths:
            try:
                matrices.append(source.of_file(path, max_seconds))
                extract.advance(path)
            except InputError as exc:
                extract.advance(path, skipped=str(exc))
    if not matrices:
        raise AusilError("no usable recording to fit the whitening on")
    whitening = Stage(progress, "whitening", 1)
    fit = fit_whitening_report(matrices, shrinkage)
    whitening.advance()
    adopt_whitening(model.head, fit, width)
    return WhiteningReport(fit=dataclasses.replace(fit.summary(), width=model.head.width), files=len(matrices),
                           extraction=source.stats())


def train_head(model, job: TrainingJob, progress: Progress = silent, name: str | None = None,
               command: str | None = None) -> TrainedModel:
    """Train ``model``'s head in place (:func:`train_model`) and record in its metadata what it was
    trained from and with which recipe; ``command`` is the provenance line (the CLI's command)."""
    input_identity = model.identity
    report = train_model(model, job, progress)
    model.metadata.update({
        "name": name or f"{model.name}-trained",
        "version": f"{time.strftime('%Y%m%d')}-s{report.steps}",
        "description": f"AuSiL head trained by ausil-search train from {input_identity} (backbone frozen).",
        "source": command or "ausil_search.train.head_job.train_head",
        "training": {**job.recipe(), "from_model": input_identity, "steps_done": report.steps,
                     "final_loss": report.loss.last_steps_mean if report.loss else None,
                     "validation_after": report.validation_after.to_dict() if report.validation_after else None},
    })
    model.metadata.pop("created", None)
    return TrainedModel(model, report)


def fit_whitening_model(model, sources: Sequence[Path], cache_path: Path | None = None, shrinkage: float | None = None,
                        max_seconds: float | None = None, device: str | None = None, precision: str = "fused",
                        progress: Progress = silent, command: str | None = None,
                        width: int | None = None) -> TrainedModel:
    """:func:`fit_model_whitening`, with the fit recorded in the model's metadata."""
    report = fit_model_whitening(model, sources, cache_path, shrinkage, max_seconds, device, precision, progress,
                                 width)
    model.metadata.update({
        "version": f"{model.version}+w{report.fit.segments}",
        "whitening": {**report.fit.to_dict(), "files": report.files,
                      "command": command or "ausil_search.train.head_job.fit_whitening_model"},
    })
    return TrainedModel(model, report)
