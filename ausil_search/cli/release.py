"""The release-compatible steps: `extract` → `similarity` → `evaluate`."""

from __future__ import annotations

import time

from pathlib import Path

import click

from ..errors import AusilError
from .base import DEVICE_HELP, MODEL_HELP, PRECISION_HELP, cli, emit_json
from .progress import ProgressDisplay


@cli.command()
@click.option("-f", "--videos-file", "videos_file", required=True, type=click.Path(path_type=Path),
              help="List of '<id> <path>' lines.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder (npz: OUTPUT/<id>/wlaf.npz; hdf5: OUTPUT/features.hdf5 or OUTPUT if it ends in .h5/.hdf5).")
@click.option("--format", "file_format", type=click.Choice(["npz", "hdf5"]), default="npz", show_default=True)
@click.option("--step-ms", type=int, default=None,
              help="Segment time step in ms (paper: 1000, 500, 250, 125); default: the model's (1000).")
@click.option("--model", "model_spec", default=None, help=MODEL_HELP)
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Segments per backbone batch (default: 16 on CPU, 64 on GPU).")
@click.option("--precision", type=click.Choice(["fused", "fp32", "bf16"]), default="fused", show_default=True, help=PRECISION_HELP)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes (default: cores − 1; 0 = in-process).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def extract(videos_file, output, file_format, step_ms, model_spec, device, batch_size, precision, workers, as_json):
    """Extract per-segment descriptors (N × 2528) of every video in a list.

    Files that cannot be used (missing, corrupt, no audio stream) are reported and skipped.
    Audio shorter than one segment window (~2 s) is zero-padded to one segment.
    """
    from ..features.extraction import Extractor
    from ..evaluate.formats import read_video_list
    from ..model import load_model
    from ..evaluate.release import extract_features
    from ..features.spectrogram import FrontEnd

    entries = read_video_list(videos_file)
    model = load_model(model_spec)
    frontend = None
    if step_ms is not None:
        preset = FrontEnd.from_step_ms(step_ms)
        frontend = FrontEnd.from_dict({**model.frontend.to_dict(), "step_frames": preset.step_frames,
                                       "window_frames": preset.window_frames})
    extractor = Extractor(model, device=device, batch_size=batch_size, workers=workers, frontend=frontend,
                          precision=precision)
    started = time.perf_counter()
    with ProgressDisplay() as progress:
        summary = extract_features(entries, output, extractor, file_format, progress)
    elapsed = time.perf_counter() - started
    if as_json:
        emit_json({**summary.to_dict(), "seconds": round(elapsed, 3), "model": model.identity})
    else:
        click.echo(
            f"{len(summary.written)} written, {len(summary.skipped)} skipped, {summary.segments} segments, "
            f"{summary.audio_seconds / 60:.1f} min of audio in {elapsed:.1f} s → {summary.output}"
        )
    if entries and not summary.written:
        raise AusilError("no video could be extracted")


@cli.command()
@click.option("-q", "--queries-file", "queries_file", required=True, type=click.Path(path_type=Path),
              help="'<id> <path>' lines; paths are feature files (.npz) or media files.")
@click.option("-d", "--database-file", "database_file", required=True, type=click.Path(path_type=Path),
              help="Same format, for the database videos.")
@click.option("-o", "--output", default=Path("similarities.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help=MODEL_HELP)
@click.option("--components", type=click.Choice(["mac", "mac+w", "mac+w+a", "full"]), default="full", show_default=True,
              help="Ablation: Chamfer over raw MAC descriptors (mac), + PCA whitening (mac+w), + attention (mac+w+a), "
                   "+ comparator CNN (full AuSiL).")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def similarity(queries_file, database_file, output, model_spec, components, device, as_json):
    """Score every query against every database video with AuSiL (release JSON format)."""
    from ..devices import pick_device
    from ..features.extraction import Extractor
    from ..atomic import write_json_atomic
    from ..evaluate.formats import read_video_list
    from ..model import load_model
    from ..evaluate.release import FeatureSource, compute_similarities

    queries, database = read_video_list(queries_file), read_video_list(database_file)
    model = load_model(model_spec)
    chosen = pick_device(device)
    source = FeatureSource(model, lambda: Extractor(model, device=str(chosen), workers=0))
    started = time.perf_counter()
    with ProgressDisplay() as progress:
        result = compute_similarities(queries, database, model, source, device=chosen, progress=progress,
                                      components=components)
    write_json_atomic(output, result.similarities)
    for video_id, reason in result.skipped.items():
        click.echo(f"skipped {video_id}: {reason}", err=True)
    summary = {
        "output": str(output),
        "queries": len(result.similarities),
        "database": len(database) - sum(1 for e in database if e.video_id in result.skipped),
        "skipped": result.skipped,
        "seconds": round(time.perf_counter() - started, 3),
        "model": model.identity,
        "components": components,
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{summary['queries']} queries × {summary['database']} database videos ({components}) → {output}")
    if not result.similarities:
        raise AusilError("no query could be used")


@cli.command()
@click.option("-r", "--result-file", "result_file", required=True, type=click.Path(path_type=Path),
              help="Similarities JSON {query: {db: score}}.")
@click.option("-a", "--annotations-file", "annotations_file", required=True, type=click.Path(path_type=Path),
              help="Annotation JSON {query: {label: [video ids]}}.")
@click.option("-d", "--dataset-ids", "dataset_ids", required=True, type=click.Path(path_type=Path),
              help="Ids of the dataset's videos, one per line (a video list works too).")
@click.option("-rl", "--relevant-labels", "relevant_labels", default="DA", show_default=True,
              help="Comma-separated labels that count as relevant.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Draw the interpolated PR curve to this PNG.")
@click.option("-q", "--quiet", is_flag=True, help="Only print the mAP.")
@click.option("--json", "as_json", is_flag=True, help="Print mAP, per-query AP and the PR curve as JSON.")
def evaluate(result_file, annotations_file, dataset_ids, relevant_labels, plot, quiet, as_json):
    """FIVR-protocol mAP, per-query AP and the interpolated PR curve."""
    from ..evaluate.metrics import RECALL_LEVELS, evaluate as run_evaluation, plot_pr_curve
    from ..evaluate.formats import load_json, load_similarities, read_ids

    annotation = load_json(annotations_file, "annotation")
    if not isinstance(annotation, dict):
        raise AusilError(f"{annotations_file}: expected {{query_id: {{label: [video ids]}}}}")
    result = run_evaluation(
        load_similarities(result_file), annotation, read_ids(dataset_ids),
        [label.strip() for label in relevant_labels.split(",") if label.strip()],
    )
    if plot:
        plot_pr_curve(result, plot)
    if as_json:
        emit_json(result.to_dict())
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not quiet:
        for query, ap in result.average_precision.items():
            click.echo(f"{query}\tAP={ap:.4f}")
        curve = " ".join(f"{r:.2f}:{p:.3f}" for r, p in zip(RECALL_LEVELS[::4], result.pr_curve[::4]))
        click.echo(f"PR (recall:precision) {curve}")
    click.echo(f"queries: {len(result.average_precision)}\tmAP={result.mean_ap:.4f}")
    if plot:
        click.echo(f"PR curve → {plot}")
