"""Training: `fit-whitening`, `train` (the head) and `train-backbone`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..train.configs import (
    BACKBONE_MODEL_NAME,
    BackboneTrainConfig,
    BackboneTrainingJob,
    SelfSupervisedConfig,
    TrainConfig,
    TrainingJob,
    ViewRecipe,
    read_view_overrides,
)
from ..errors import AusilError
from .base import DEVICE_HELP, MODEL_HELP, cli, emit_json
from .progress import ProgressDisplay

WIDTH_HELP = ("Keep the whitening's top N components: a narrower head whose indexes store smaller segments "
              "(default: all, 2528).")


def _range_text(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]:g}:{bounds[1]:g}"


def _seconds_range(text: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition(":")
        values = (float(low), float(high or low))
    except ValueError:
        raise click.BadParameter(f"expected SECONDS or MIN:MAX, got {text!r}") from None
    if not 0 < values[0] <= values[1]:
        raise click.BadParameter(f"expected 0 < MIN <= MAX, got {text!r}")
    return values


def _run_training(run, step_stage: str, checkpoint_dir: Path | None):
    """`run(progress)` with the progress display; on Ctrl-C, says at which step the run stopped and how
    to continue it, and exits 130."""
    with ProgressDisplay() as progress:
        try:
            return run(progress)
        except KeyboardInterrupt:
            step = progress.completed if progress.stage == step_stage else 0
            progress.close()
            where = f"; checkpoint in {checkpoint_dir}: rerun with --resume to continue" if checkpoint_dir else ""
            click.echo(f"interrupted at step {step}{where}", err=True)
            sys.exit(130)


def _save_trained(trained, output: Path, float16: bool, as_json: bool) -> Path | None:
    """Writes the trained model and its report; with --json prints the report and returns None, else
    returns where the report went."""
    report_path = trained.save(output, float16)
    if as_json:
        emit_json(trained.report.to_dict())
        return None
    return report_path


def _recorded_command() -> str:
    import shlex

    args = sys.argv[1:] if Path(sys.argv[0]).name == "ausil-search" else sys.argv
    return "ausil-search " + " ".join(shlex.quote(a) for a in args)


@cli.command("fit-whitening")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help=MODEL_HELP)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), default=None,
              help="HDF5 descriptor cache (reruns skip extraction); default: OUTPUT with .descriptors.h5.")
@click.option("--shrinkage", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Covariance shrinkage towards μ·I; default: Ledoit–Wolf, at least dims/(segments + dims).")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=None, help="Read at most this much of each file.")
@click.option("--width", type=click.IntRange(min=1), default=None, help=WIDTH_HELP)
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def fit_whitening(sources, model_spec, output, cache_path, shrinkage, max_seconds, width, device, as_json):
    """Fit the PCA whitening of a model to the segments of SOURCES (media folders, files, path lists, .npz).

    The rest of the model is unchanged; the output records what the whitening was fitted on.
    """
    from ..model import load_model
    from ..train.head_job import fit_whitening_model

    with ProgressDisplay() as progress:
        fitted = fit_whitening_model(
            load_model(model_spec), sources, cache_path or output.with_suffix(".descriptors.h5"), shrinkage, max_seconds,
            device, progress=progress, command=_recorded_command(), width=width,
        )
    fitted.save(output)
    if as_json:
        emit_json(fitted.report.to_dict())
    else:
        report = fitted.report
        click.echo(f"whitening fitted on {report.fit.segments} segments of {report.files} files "
                   f"(shrinkage {report.fit.shrinkage:.3f}), width {report.fit.width} → {output}")


@cli.command()
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help=MODEL_HELP + " Its backbone stays frozen.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Trained model file to write.")
@click.option("--pairs", "annotation", type=click.Path(path_type=Path), default=None,
              help="Labelled pairs: annotation JSON {query: {label: [ids]}} (with --videos).")
@click.option("--videos", "video_list", type=click.Path(path_type=Path), default=None,
              help="'<id> <path>' list of the annotated videos (media or .npz feature files).")
@click.option("--labels", default=",".join(TrainingJob.relevant_labels), show_default=True, help="Comma-separated annotation labels that count as positives.")
@click.option("--steps", type=click.IntRange(min=1), default=TrainConfig.steps, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True, help="Triplets per step.")
@click.option("--margin", type=float, default=TrainConfig.margin, show_default=True, help="γ of the triplet loss.")
@click.option("--reg-weight", type=click.FloatRange(min=0), default=TrainConfig.regularisation, show_default=True,
              help="Weight of the similarity regularisation loss.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TrainConfig.lr, show_default=True, help="Adam learning rate.")
@click.option("--hard-margin", type=float, default=TrainConfig.hard_negative_margin, show_default=True,
              help="d of the hard-negative rule D(v,v−) < D(v,v+) + d (global features).")
@click.option("--max-segments", type=click.IntRange(min=4), default=TrainConfig.max_segments, show_default=True,
              help="Longer videos are cropped to a random run of this many segments per use.")
@click.option("--whitening", type=click.Choice(["fit", "keep", "train"]), default=TrainingJob.whitening, show_default=True,
              help="fit: from the training segments, then fixed; keep: the input model's; train: fit, then fine-tune.")
@click.option("--shrinkage", type=click.FloatRange(0, 1, max_open=True), default=None, help="Whitening shrinkage (see fit-whitening).")
@click.option("--width", type=click.IntRange(min=1), default=None, help=WIDTH_HELP)
@click.option("--examples-per-file", type=click.IntRange(min=1), default=SelfSupervisedConfig.examples_per_recording, show_default=True,
              help="Self-supervised: (clean window, augmented excerpt) examples per recording.")
@click.option("--database-seconds", default=_range_text(SelfSupervisedConfig.database_seconds), show_default=True, help="Self-supervised: clean window length, MIN:MAX.")
@click.option("--query-seconds", default=_range_text(SelfSupervisedConfig.query_seconds), show_default=True, help="Self-supervised: augmented excerpt length, MIN:MAX.")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=SelfSupervisedConfig.max_seconds, show_default=True,
              help="Self-supervised: read at most this much of each recording.")
@click.option("--long-fraction", type=click.FloatRange(0, 1), default=SelfSupervisedConfig.long_fraction, show_default=True,
              help="Self-supervised: share of examples with a short query inside a long database window.")
@click.option("--long-database-seconds", default=_range_text(SelfSupervisedConfig.long_database_seconds), show_default=True,
              help="Self-supervised: long database window length, MIN:MAX.")
@click.option("--short-query-seconds", default=_range_text(SelfSupervisedConfig.short_query_seconds), show_default=True,
              help="Self-supervised: the short query's length in those examples, MIN:MAX.")
@click.option("--degraded-database", "degraded_database", type=click.FloatRange(0, 1),
              default=SelfSupervisedConfig.degraded_database_fraction, show_default=True,
              help="Self-supervised: share of examples whose database window is degraded too (2-3 of codec, "
                   "noise, babble, mix, telephone band, re-recording; no time change), so neither side is "
                   "clean. 0.5 scored lower on dev hard (BENCHMARKS.md).")
@click.option("--modes", default=",".join(SelfSupervisedConfig.modes), show_default=True, help="Augmentation modes, alternated over examples.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=TrainingJob.val_fraction, show_default=True,
              help="Recordings (or queries) held out to report Chamfer separation before and after.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), default=None,
              help="HDF5 descriptor cache; default: CHECKPOINT_DIR/descriptors.h5, else OUTPUT with .descriptors.h5.")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None, help="Where checkpoints go (resumable runs).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=TrainConfig.checkpoint_every, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir (same data and settings; --steps may grow).")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--name", default=None, help="Name of the trained model (default: the input's name + '-trained').")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--float16", is_flag=True, help="Store the model's tensors as float16.")
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train(sources, model_spec, output, annotation, video_list, labels, steps, batch_size, margin, reg_weight, lr,
          hard_margin, max_segments, whitening, shrinkage, width, examples_per_file, database_seconds, query_seconds,
          max_seconds, long_fraction, long_database_seconds, short_query_seconds, degraded_database, modes, val_fraction,
          cache_path, checkpoint_dir, checkpoint_every, resume, seed, name, device, float16, as_json):
    """Train the AuSiL head (attention, comparator; whitening fitted) with the backbone frozen.

    \b
    Triplets come from SOURCES (folders, media files, path lists), self-supervised: an augmented
    excerpt of a recording must score its clean window above windows of other recordings; and/or
    from labelled pairs (--pairs ANNOTATION --videos LIST). Descriptors are cached, so reruns skip
    extraction. With --checkpoint-dir, Ctrl-C saves the run and --resume continues it exactly.
    Writes OUTPUT and OUTPUT's .report.json (loss curve, timings, validation separation).
    """
    from ..media.augment import MODES
    from ..model import load_model
    from ..train.head_job import train_head

    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    unknown = [m for m in mode_list if m not in MODES]
    if unknown or not mode_list:
        raise click.BadParameter(f"modes must be among {', '.join(MODES)}", param_hint="--modes")
    model = load_model(model_spec)
    job = TrainingJob(
        sources=list(sources), annotation=annotation, video_list=video_list,
        relevant_labels=tuple(l.strip() for l in labels.split(",") if l.strip()),
        config=TrainConfig(steps=steps, batch_size=batch_size, margin=margin, regularisation=reg_weight, lr=lr,
                           hard_negative_margin=hard_margin, max_segments=max_segments,
                           train_whitening=whitening == "train", width=width, seed=seed,
                           checkpoint_every=checkpoint_every),
        self_supervised=SelfSupervisedConfig(examples_per_recording=examples_per_file,
                                             database_seconds=_seconds_range(database_seconds),
                                             query_seconds=_seconds_range(query_seconds),
                                             max_seconds=max_seconds, modes=mode_list, seed=seed,
                                             long_fraction=long_fraction,
                                             long_database_seconds=_seconds_range(long_database_seconds),
                                             short_query_seconds=_seconds_range(short_query_seconds),
                                             degraded_database_fraction=degraded_database),
        whitening="keep" if whitening == "keep" else "fit", whitening_shrinkage=shrinkage, val_fraction=val_fraction,
        cache_path=cache_path or (checkpoint_dir / "descriptors.h5" if checkpoint_dir else output.with_suffix(".descriptors.h5")),
        checkpoint_dir=checkpoint_dir, resume=resume, device=device,
    )
    trained = _run_training(lambda progress: train_head(model, job, progress, name=name, command=_recorded_command()),
                            "train", checkpoint_dir)
    report_path = _save_trained(trained, output, float16, as_json)
    if report_path is None:
        return
    report, model = trained.report, trained.model
    loss = report.loss
    click.echo(f"{report.steps} steps in {report.train_seconds:.1f} s ({report.steps_per_s} steps/s): "
               f"loss {loss and loss.first_steps_mean} → {loss and loss.last_steps_mean}")
    if report.validation_after is not None:
        before, after = report.setup.validation_before, report.validation_after
        click.echo(f"validation separation {before and before.separation} → {after.separation} "
                   f"(top-1 {before and before.top1} → {after.top1})")
    click.echo(f"model → {output} ({model.identity}); report → {report_path}")


def _view_recipe(views: str | None, **options) -> ViewRecipe:
    """The recipe from the named options, then `--views` (inline JSON or a JSON file) on top."""
    recipe = ViewRecipe(**options)
    if views is None:
        return recipe
    try:
        return recipe.with_overrides(read_view_overrides(views))
    except (AusilError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--views") from None


@cli.command("train-backbone")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write.")
@click.option("--model", "model_spec", default=None,
              help="Start from this model's backbone (file or 'official'); default: the seeded random initialisation.")
@click.option("--steps", type=click.IntRange(min=1), default=BackboneTrainConfig.steps, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(min=2), default=BackboneTrainConfig.batch_size, show_default=True,
              help="Excerpts per step (two views each; the other 2B−2 views are the negatives).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=BackboneTrainConfig.lr, show_default=True, help="Adam learning rate.")
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=0), default=BackboneTrainConfig.warmup_steps, show_default=True,
              help="Steps of linear learning-rate warm-up.")
@click.option("--decay-steps", "decay_steps", type=click.IntRange(min=0), default=BackboneTrainConfig.decay_steps, show_default=True,
              help="Final steps over which the learning rate falls linearly to 0 (may change on --resume).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=BackboneTrainConfig.temperature, show_default=True)
@click.option("--anchor", "anchor_weight", type=click.FloatRange(min=0), default=BackboneTrainConfig.anchor_weight,
              show_default=True,
              help="Weight of each view's cosine distance from the --model backbone's descriptor of it: a continued "
                   "run keeps what the start learnt (0: off).")
@click.option("--frozen-batchnorm", is_flag=True,
              help="Keep the --model backbone's BatchNorm statistics through training and after (no recomputation "
                   "over the run's views): heavier views then change the weights, not the statistics inference uses.")
@click.option("--excerpt-seconds", type=click.FloatRange(min=1), default=ViewRecipe.excerpt_s, show_default=True,
              help="Audio read per item; the centre window (~2 s) of each view is trained on.")
@click.option("--max-shift", type=click.FloatRange(min=0), default=ViewRecipe.max_shift_s, show_default=True,
              help="Seconds by which the two views' windows may be misaligned (query vs database segment grid).")
@click.option("--excerpts-per-recording", type=click.IntRange(min=1), default=ViewRecipe.excerpts_per_recording, show_default=True,
              help="Non-overlapping excerpts of one recording in a batch, negatives of each other (1: none).")
@click.option("--views", "views", default=None, metavar="JSON|FILE",
              help="Change the view recipe: a JSON object of its fields (or a file holding one), e.g. "
                   "'{\"p_mix\": 0.5, \"noise_snr_db\": [0, 10]}'. Fields: ausil_search.train.configs.ViewRecipe.")
@click.option("--calibration-batches", type=click.IntRange(min=1), default=BackboneTrainConfig.calibration_batches, show_default=True,
              help="Batches over which BatchNorm statistics are recomputed at the end.")
@click.option("--workers", type=click.IntRange(min=0), default=BackboneTrainingJob.workers, show_default=True,
              help="Processes making augmented views ahead of the trainer (0: in-process).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None, help="Where checkpoints go (resumable runs).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=BackboneTrainConfig.checkpoint_every, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir (same data and settings; --steps may grow).")
@click.option("--seed", type=int, default=BackboneTrainConfig.seed, show_default=True, help="Initialisation (without --model) and data order.")
@click.option("--name", default=BACKBONE_MODEL_NAME, show_default=True, help="Name of the written model.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--float16", is_flag=True, help="Store the model's tensors as float16.")
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train_backbone(sources, output, model_spec, steps, batch_size, lr, warmup_steps, decay_steps, temperature, anchor_weight,
                   frozen_batchnorm, excerpt_seconds,
                   max_shift, excerpts_per_recording, views, calibration_batches, workers, checkpoint_dir, checkpoint_every, resume, seed,
                   name, device, float16, as_json):
    """Train the weak_mxh64_1024 backbone self-supervised (contrastive) on unlabelled audio.

    \b
    SOURCES: folders, media files, or .txt path lists. Each step takes BATCH excerpts (up to
    --excerpts-per-recording non-overlapping ones per recording), makes two augmented views of each
    (speed/tempo/pitch, echo and reverb, mixing, babble and noise, band limits and resampling, codecs,
    quiet passages, short clips), and trains the 2528-d segment descriptors of the views to find
    each other among all the others (NT-Xent).
    The architecture is unchanged; the head of the written model is the identity (fit or train it
    afterwards with `fit-whitening` / `train`). With --checkpoint-dir, Ctrl-C saves the run and
    --resume continues it exactly. Writes OUTPUT and OUTPUT's .report.json.
    """
    from ..model import load_model
    from ..train.backbone_trainer import train_backbone_model

    if frozen_batchnorm and not model_spec:
        raise click.UsageError("--frozen-batchnorm keeps a trained backbone's statistics: give the backbone with --model")
    config = BackboneTrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                 decay_steps=decay_steps, temperature=temperature, anchor_weight=anchor_weight,
                                 frozen_batchnorm=frozen_batchnorm, seed=seed,
                                 checkpoint_every=checkpoint_every,
                                 calibration_batches=calibration_batches,
                                 recipe=_view_recipe(views, excerpt_s=excerpt_seconds, max_shift_s=max_shift,
                                                     excerpts_per_recording=excerpts_per_recording))
    job = BackboneTrainingJob(sources=list(sources), config=config, checkpoint_dir=checkpoint_dir, resume=resume,
                              device=device, workers=workers)
    start = load_model(model_spec) if model_spec else None
    trained = _run_training(lambda progress: train_backbone_model(job, start, name, _recorded_command(), progress),
                            "train-backbone", checkpoint_dir)
    report_path = _save_trained(trained, output, float16, as_json)
    if report_path is None:
        return
    report, model = trained.report, trained.model
    loss = report.loss
    click.echo(f"{report.steps} steps ({report.steps_per_s} steps/s this session): loss "
               f"{loss and loss.first_steps_mean} → {loss and loss.last_steps_mean}, partner found "
               f"{loss and loss.first_steps_accuracy} → {loss and loss.last_steps_accuracy}")
    click.echo(f"model → {output} ({model.identity}); report → {report_path}")
