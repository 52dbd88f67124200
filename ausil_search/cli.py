"""`ausil-search` command line: a thin layer over the library.

User mistakes (bad paths, bad media, missing weights) end with one `Error:` line and exit code 1;
a traceback always means a bug.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .errors import AusilError

DEVICE_HELP = "cpu, cuda, cuda:N; default: cuda when available, else cpu."
MODEL_HELP = "Model file, or 'official' for the downloaded official weights; default: the bundled default model."


class FriendlyGroup(click.Group):
    """Turns expected failures into one line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AusilError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def emit_json(payload: object) -> None:
    click.echo(json.dumps(payload, indent=2))


def progress_bar(iterable=None, total=None, desc="", unit="it"):
    from tqdm import tqdm

    # Progress goes to stderr and only to a terminal, so --json output and logs stay clean.
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ausil-search")
def cli() -> None:
    """Find videos that share the same audio as a query video (AuSiL, ICPR 2020).

    \b
    Search a collection:        index DIR → query FILE   (also: info, remove)
    Release-compatible steps:   extract → similarity → evaluate
    Model weights:              weights download | convert | info | init
    """


# --------------------------------------------------------------------------- release commands


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
@click.option("--batch-size", type=int, default=64, show_default=True, help="Segments per backbone batch.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: cores − 1; 0 = in-process).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def extract(videos_file, output, file_format, step_ms, model_spec, device, batch_size, workers, as_json):
    """Extract per-segment descriptors (N × 2528) of every video in a list.

    Files that cannot be used (missing, corrupt, no audio stream) are reported and skipped.
    Audio shorter than one segment window (~2 s) is zero-padded to one segment.
    """
    from .extraction import Extractor
    from .formats import read_video_list
    from .model import load_model
    from .release import extract_features
    from .spectrogram import FrontEnd

    entries = read_video_list(videos_file)
    model = load_model(model_spec)
    frontend = None
    if step_ms is not None:
        preset = FrontEnd.from_step_ms(step_ms)
        frontend = FrontEnd.from_dict({**model.frontend.to_dict(), "step_frames": preset.step_frames,
                                       "window_frames": preset.window_frames})
    extractor = Extractor(model, device=device, batch_size=batch_size, workers=workers, frontend=frontend)
    started = time.perf_counter()
    with progress_bar(total=len(entries), desc="extract", unit="video") as bar:
        def on_progress(entry, error):
            if error:
                bar.write(f"skipped {entry.video_id}: {error}", file=sys.stderr)
            bar.update(1)

        summary = extract_features(entries, output, extractor, file_format, on_progress)
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
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def similarity(queries_file, database_file, output, model_spec, device, as_json):
    """Score every query against every database video with AuSiL (release JSON format)."""
    from .devices import pick_device
    from .extraction import Extractor
    from .formats import read_video_list, write_json_atomic
    from .model import load_model
    from .release import FeatureSource, compute_similarities

    queries, database = read_video_list(queries_file), read_video_list(database_file)
    model = load_model(model_spec)
    chosen = pick_device(device)
    source = FeatureSource(model, lambda: Extractor(model, device=str(chosen), workers=0))
    started = time.perf_counter()
    result = compute_similarities(
        queries, database, model, source, device=chosen,
        progress=lambda it: progress_bar(it, total=len(database), desc="similarity", unit="video"),
    )
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
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{summary['queries']} queries × {summary['database']} database videos → {output}")
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
    from .evaluation import RECALL_LEVELS, evaluate as run_evaluation, plot_pr_curve
    from .formats import load_json, load_similarities, read_ids

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


# --------------------------------------------------------------------------- the search engine

INDEX_HELP = "Index directory."


def _default_index() -> Path:
    from .engine import DEFAULT_INDEX_DIR

    return DEFAULT_INDEX_DIR


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{secs:04.1f}"


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--model", "model_spec", default=None, help=MODEL_HELP + " An existing index keeps the model it was built with.")
@click.option("--prune", is_flag=True, help="Also remove entries under PATHS whose files are gone.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--workers", type=int, default=None, help="Decoding processes (default: cores − 1; 0 = in-process).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Segments per backbone batch.")
@click.option("--commit-every", type=click.IntRange(min=1), default=16, show_default=True,
              help="Videos per store commit (also committed every 10 s); an interruption loses at most one batch.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def index(paths, index_dir, model_spec, prune, device, workers, batch_size, commit_every, as_json):
    """Index the media under PATHS (directories are walked recursively; files are taken as given).

    Incremental: unchanged files are skipped, changed ones re-indexed. Safe to interrupt: what was
    committed stays searchable and a rerun picks up where it stopped. Unusable files are reported
    and skipped.
    """
    from .engine import SearchEngine

    engine = SearchEngine(index_dir or _default_index(), model_spec, writable=True, device=device,
                          workers=workers, batch_size=batch_size, commit_every=commit_every)
    with engine, progress_bar(desc="index", unit="file") as bar:
        def on_file(path, error):
            if error:
                bar.write(f"skipped: {error}", file=sys.stderr)
            bar.update(1)

        report = engine.index_paths(paths, prune=prune, on_plan=lambda n: bar.reset(total=n), on_file=on_file)
        info = engine.info()
    if as_json:
        emit_json({**report.to_dict(), "index": info})
    else:
        speed = report.audio_seconds / report.seconds if report.seconds else 0.0
        click.echo(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
            f"{report.removed} removed, {len(report.skipped)} skipped — {report.audio_seconds / 60:.1f} min of audio "
            f"in {report.seconds:.1f} s ({speed:.0f}× realtime)"
        )
        click.echo(f"index {info['index']}: {info['videos']} videos, {info['duration_s'] / 3600:.2f} h of audio")
    if report.interrupted:
        click.echo("interrupted: everything extracted so far is saved; rerun to continue", err=True)
        sys.exit(130)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--model", "model_spec", default=None, help="Model file; default: the one that built the index.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--candidates", type=click.IntRange(min=1), default=100, show_default=True,
              help="Videos taken from the FAISS recall stage and reranked by AuSiL.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists to visit (default: the index's calibrated value).")
@click.option("--exhaustive", is_flag=True, help="Rerank every indexed video (slow; shows what recall loses).")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query, one per line.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows: query, rank, score, path, spans.")
def query(files, index_dir, model_spec, top_k, candidates, nprobe, exhaustive, device, as_json, as_csv):
    """Find indexed videos that share audio with each query FILE, best first.

    For each match: the AuSiL score (−1…1), the database path and duration, and where the shared
    audio is — the query's span and the matching span of the database video (m:ss).
    """
    import csv

    from .engine import SearchEngine

    engine = SearchEngine(index_dir or _default_index(), model_spec, writable=False, device=device, workers=0)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer:
        writer.writerow(["query", "rank", "score", "path", "duration_s", "query_start_s", "query_end_s", "match_start_s", "match_end_s"])
    failures = 0
    with engine:
        for file in files:
            try:
                result = engine.query(file, top_k=top_k, candidates=candidates, nprobe=nprobe, exhaustive=exhaustive)
            except AusilError as exc:
                failures += 1
                if as_json:
                    click.echo(json.dumps({"query": str(file), "error": str(exc)}))
                else:
                    click.echo(f"Error: {exc}", err=True)
                continue
            if as_json:
                click.echo(json.dumps(result.to_dict()))
            elif writer:
                for m in result.matches:
                    writer.writerow([result.query, m.rank, f"{m.score:.4f}", m.path, m.duration_s, *m.query_span, *m.match_span])
            else:
                _print_result(result)
    if failures == len(files):
        sys.exit(1)


def _print_result(result) -> None:
    t = result.timings
    click.echo(
        f"{result.query}  ({_fmt_time(result.duration_s)}; {result.candidates} candidates "
        f"{'(exhaustive)' if result.exhaustive else ''}; extract {t['extract_s']:.2f}s, recall {t['recall_s'] * 1000:.1f}ms, "
        f"rerank {t['rerank_s']:.2f}s)"
    )
    if not result.matches:
        click.echo("  no matches: the index is empty")
        return
    click.echo(f"  {'rank':>4}  {'score':>6}  {'query span':>15}  {'match span':>15}  {'length':>7}  path")
    for m in result.matches:
        q = f"{_fmt_time(m.query_span[0])}-{_fmt_time(m.query_span[1])}"
        d = f"{_fmt_time(m.match_span[0])}-{_fmt_time(m.match_span[1])}"
        click.echo(f"  {m.rank:>4}  {m.score:>6.3f}  {q:>15}  {d:>15}  {_fmt_time(m.duration_s):>7}  {m.path}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--json", "as_json", is_flag=True)
def remove(paths, index_dir, as_json):
    """Remove the entries of these files, or of every file under these directories, from the index."""
    from .engine import SearchEngine

    with SearchEngine(index_dir or _default_index(), writable=True, workers=0) as engine:
        removed = engine.remove(paths)
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"{len(removed)} removed")


@cli.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--json", "as_json", is_flag=True)
def info(index_dir, as_json):
    """Counts, total duration, model identity and disk size of an index."""
    from .engine import SearchEngine

    with SearchEngine(index_dir or _default_index(), writable=False, workers=0) as engine:
        details = engine.info()
    if as_json:
        emit_json(details)
        return
    g = details["global_index"]
    click.echo(f"index       {details['index']}  (created {details['created']})")
    click.echo(f"videos      {details['videos']}  ({details['duration_s'] / 3600:.2f} h of audio, {details['segments']} segments)")
    click.echo(f"model       {details['model'].get('identity')}")
    click.echo(f"recall      FAISS {g['type']}" + (f", nlist {g['nlist']}, nprobe {g['nprobe']}" if g["nlist"] else " (exact)"))
    click.echo(f"disk        {details['disk_bytes'] / 2**20:.1f} MiB ({details['segment_dtype']} segments)")


# --------------------------------------------------------------------------- weights


@cli.group()
def weights() -> None:
    """Get, convert, inspect and create model files."""


@weights.command("download")
@click.option("--to", "dest", type=click.Path(path_type=Path), default=None,
              help="Cache folder (default: $AUSIL_SEARCH_HOME, else ~/.cache/ausil-search).")
@click.option("--json", "as_json", is_flag=True)
def weights_download(dest, as_json):
    """Fetch the official AuSiL release weights, verify them, and convert them to a model file."""
    from .model import AuSiLModel, OFFICIAL_MODEL_FILE
    from .weights.official import cache_dir, download_official

    folder = Path(dest) if dest else cache_dir()
    files = download_official(folder)
    model_path = folder / OFFICIAL_MODEL_FILE
    sha = _convert(files["cnn"], files["tf_ckpt"], model_path)
    _report_model(AuSiLModel.load(model_path), as_json, extra={"files": {k: str(v) for k, v in files.items()}})
    if not as_json:
        click.echo(f"use it with --model official (or --model {model_path}); sha256 {sha}")


def _convert(cnn: Path, tf_ckpt: Path, output: Path) -> str:
    from .model import AuSiLModel
    from .weights.official import OFFICIAL_METADATA, convert_official
    from .weights.model_file import save_model_file

    tensors = convert_official(Path(cnn), Path(tf_ckpt))
    save_model_file(output, tensors, dict(OFFICIAL_METADATA))
    return AuSiLModel.load(output).sha256


@weights.command("convert")
@click.option("--cnn", required=True, type=click.Path(path_type=Path), help="The backbone state dict (mx-h64-1024_0d3-1.17.pkl).")
@click.option("--tf-ckpt", "tf_ckpt", required=True, type=click.Path(path_type=Path),
              help="The AuSiL TensorFlow checkpoint folder (holding model.index and model.data-00000-of-00001).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write (.safetensors).")
@click.option("--json", "as_json", is_flag=True)
def weights_convert(cnn, tf_ckpt, output, as_json):
    """Convert official release files you already have into a model file."""
    from .model import AuSiLModel

    _convert(cnn, tf_ckpt, output)
    _report_model(AuSiLModel.load(output), as_json)


@weights.command("info")
@click.argument("model_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def weights_info(model_file, as_json):
    """Show a model file's name, identity, dimensions and parameter counts."""
    from .model import load_model

    _report_model(load_model(model_file), as_json)


@weights.command("init")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default="ausil-init", show_default=True)
@click.option("--float16", is_flag=True, help="Store tensors as float16 (half the size).")
@click.option("--json", "as_json", is_flag=True)
def weights_init(output, seed, name, float16, as_json):
    """Write a randomly initialised model: seeded random backbone, identity whitening, neutral attention.

    The starting point for training, and a model for tests and trials.
    """
    from .model import AuSiLModel

    model = AuSiLModel.initialise(seed=seed, name=name)
    model.save(output, float16=float16)
    _report_model(model, as_json)


def _report_model(model, as_json: bool, extra: dict | None = None) -> None:
    counts = model.parameter_counts()
    info = {
        "path": str(model.path),
        "name": model.name,
        "version": model.version,
        "identity": model.identity,
        "sha256": model.sha256,
        "descriptor_dim": model.metadata.get("descriptor_dim"),
        "tensor_dtype": model.metadata.get("tensor_dtype", "float32"),
        "frontend": model.frontend.to_dict(),
        "parameters": counts,
        "description": model.metadata.get("description", ""),
        **(extra or {}),
    }
    if as_json:
        emit_json(info)
        return
    click.echo(f"{info['path']}\n  identity    {info['identity']}\n  sha256      {info['sha256']}")
    click.echo(f"  descriptor  {info['descriptor_dim']} dims, tensors {info['tensor_dtype']}")
    click.echo(f"  parameters  backbone {counts['backbone']:,}, head {counts['head']:,}")
    fe = info["frontend"]
    click.echo(
        f"  front-end   {fe['sample_rate']} Hz, n_fft {fe['n_fft']}, hop {fe['hop_length']}, {fe['n_mels']} mels, "
        f"window {fe['window_frames']} / step {fe['step_frames']} frames"
    )
    if info["description"]:
        click.echo(f"  {info['description']}")


def main() -> None:
    cli(prog_name="ausil-search")


if __name__ == "__main__":
    main()
