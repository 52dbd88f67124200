"""`ausil-search` command line: a thin layer over the library.

User mistakes (bad paths, bad media, missing weights) end with one `Error:` line and exit code 1;
a traceback always means a bug.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path

import click

from .errors import AusilError
from .train.configs import BackboneTrainConfig, SelfSupervisedConfig, TrainConfig, ViewRecipe

DEVICE_HELP = "cpu, cuda, cuda:N; default: cuda when available, else cpu."
PRECISION_HELP = ("Backbone arithmetic: fused (BatchNorm folded in, equal to fp32 within 2e-6, ~2.5x faster on CPU), "
                  "fp32 (the network as released), bf16 (faster on CPUs/GPUs with bf16 units; descriptors differ slightly).")
MODEL_HELP = "Model file, or 'official' for the downloaded official weights; default: the bundled default model."


class FriendlyGroup(click.Group):
    """Turns expected failures into one line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AusilError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk is the user's situation, not a bug; the modules that write say what was kept.
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}the disk is full ({exc.strerror})") from None
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
    Search a collection:        index DIR → query FILE   (also: info, remove, serve, reshard)
    Duplicates:                 dedup (every group in an index) | compare A B
    Release-compatible steps:   extract → similarity → evaluate
    Train and benchmark:        train-backbone → train (or fit-whitening) | bench make
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
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Segments per backbone batch (default: 16 on CPU, 64 on GPU).")
@click.option("--precision", type=click.Choice(["fused", "fp32", "bf16"]), default="fused", show_default=True, help=PRECISION_HELP)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes (default: cores − 1; 0 = in-process).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def extract(videos_file, output, file_format, step_ms, model_spec, device, batch_size, precision, workers, as_json):
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
    extractor = Extractor(model, device=device, batch_size=batch_size, workers=workers, frontend=frontend,
                          precision=precision)
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
@click.option("--components", type=click.Choice(["mac", "mac+w", "mac+w+a", "full"]), default="full", show_default=True,
              help="Ablation: Chamfer over raw MAC descriptors (mac), + PCA whitening (mac+w), + attention (mac+w+a), "
                   "+ comparator CNN (full AuSiL).")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def similarity(queries_file, database_file, output, model_spec, components, device, as_json):
    """Score every query against every database video with AuSiL (release JSON format)."""
    from .devices import pick_device
    from .extraction import Extractor
    from .atomic import write_json_atomic
    from .formats import read_video_list
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
        components=components,
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


class _MinScore(click.ParamType):
    """A score threshold: a number, or 'default' for the calibrated match threshold (decision.py)."""

    name = "SCORE|default"

    def convert(self, value, param, ctx):
        if value is None or value == "default" or isinstance(value, float):
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"expected a number or 'default', got {value!r}", param, ctx)


MIN_SCORE = _MinScore()


def _default_index() -> Path:
    from .engine import DEFAULT_INDEX_DIR

    return DEFAULT_INDEX_DIR


def _print_warnings(engine) -> None:
    for warning in engine.warnings:
        click.echo(f"warning: {warning}", err=True)


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{secs:04.1f}"


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--model", "model_spec", default=None, help=MODEL_HELP + " An existing index keeps the model it was built with.")
@click.option("--prune", is_flag=True, help="Also remove entries under PATHS whose files are gone.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes (default: cores − 1; 0 = in-process).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Segments per backbone batch (default: 16 on CPU, 64 on GPU).")
@click.option("--precision", type=click.Choice(["fused", "fp32", "bf16"]), default="fused", show_default=True, help=PRECISION_HELP)
@click.option("--commit-every", type=click.IntRange(min=1), default=16, show_default=True,
              help="Videos per store commit (also committed every 10 s); an interruption loses at most one batch.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Build a sharded index of this many shards (a new directory); an existing sharded index is "
                   "used as it is.")
@click.option("--ray", "ray_address", default=None, metavar="local|ADDRESS",
              help="Index a sharded index on a Ray cluster (`local` starts one here): a writer actor per shard, "
                   "extraction spread over the cluster (--workers: network actors, default the cluster's CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def index(paths, index_dir, model_spec, prune, device, workers, batch_size, precision, commit_every, shards, ray_address,
          as_json):
    """Index the media under PATHS (directories are walked recursively; files are taken as given).

    Incremental: unchanged files are skipped, changed ones re-indexed. Safe to interrupt: what was
    committed stays searchable and a rerun picks up where it stopped. Unusable files are reported
    and skipped.
    """
    from .shards import open_index

    if ray_address:
        return _index_on_ray(paths, index_dir or _default_index(), model_spec, prune, device, workers, batch_size,
                             precision, commit_every, shards, ray_address, as_json)
    engine = open_index(index_dir or _default_index(), model_spec, writable=True, shards=shards, device=device,
                        workers=workers, batch_size=batch_size, precision=precision, commit_every=commit_every)
    _print_warnings(engine)
    with engine, progress_bar(desc="index", unit="file") as bar:
        def on_file(path, error):
            if error:
                bar.write(f"skipped: {error}", file=sys.stderr)
            bar.update(1)

        def on_skip(path, reason):
            bar.write(f"skipped: {path}: {reason}", file=sys.stderr)

        def on_plan(total):  # a sharded index plans shard by shard: the total grows
            bar.total = total
            bar.refresh()

        report = engine.index_paths(paths, prune=prune, on_plan=on_plan, on_file=on_file,
                                    on_skip=on_skip)
        info = engine.info()
    _print_index_report(report, info, as_json)


def _index_on_ray(paths, index_dir, model_spec, prune, device, workers, batch_size, precision, commit_every, shards,
                  ray_address, as_json) -> None:
    from .shards import ShardedIndex, is_sharded
    from .shards.cluster import index_on_cluster

    if shards is None and not is_sharded(index_dir):
        raise click.UsageError("--ray indexes a sharded index: give --shards S for a new one")

    def on_shard(number, report):
        click.echo(f"shard {number}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
                   f"{len(report.skipped)} skipped", err=True)

    report = index_on_cluster(index_dir, paths, ray_address, model_spec, shards=shards, workers=workers, device=device,
                              batch_size=batch_size, precision=precision, commit_every=commit_every, prune=prune,
                              on_shard=on_shard,
                              on_skip=lambda path, reason: click.echo(f"skipped: {path}: {reason}", err=True))
    with ShardedIndex(index_dir, workers=0) as index:
        info = index.info()
    _print_index_report(report, info, as_json)


def _print_index_report(report, info: dict, as_json: bool) -> None:
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
@click.option("--ray", "ray_address", default=None, metavar="local|ADDRESS",
              help="Answer from shard server actors on a Ray cluster (a sharded index; `local` starts one here).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query, one per line.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows: query, rank, score, path, spans.")
@click.option("--min-score", "min_score", type=MIN_SCORE, default=None,
              help="Keep only matches scoring at least this (a number, or 'default' for the calibrated match "
                   "threshold); a query with none says 'no match above X'. Default: off, top-k stays top-k.")
def query(files, index_dir, model_spec, top_k, candidates, nprobe, exhaustive, device, ray_address, as_json, as_csv,
          min_score):
    """Find indexed videos that share audio with each query FILE, best first.

    For each match: the AuSiL score (−1…1), the database path and duration, and where the shared
    audio is — the query's span and the matching span of the database video (m:ss). When the query
    occurs at several places in a video, each is listed under the match (--csv: a row each).
    """
    import csv

    from .decision import apply_min_score
    from .shards import open_index

    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined")
    if ray_address:
        from .shards.cluster import ClusterIndex

        engine = ClusterIndex(index_dir or _default_index(), ray_address, model_spec, device=device)
    else:
        engine = open_index(index_dir or _default_index(), model_spec, writable=False, device=device, workers=0)
    _print_warnings(engine)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer:
        writer.writerow(["query", "rank", "score", "path", "duration_s", "query_start_s", "query_end_s", "match_start_s",
                         "match_end_s", "occurrence", "similarity"])
    failures = 0
    with engine:
        if min_score == "default":
            from .decision import threshold_for

            min_score = threshold_for(engine.model)
        for file in files:
            try:
                result = engine.query(file, top_k=top_k, candidates=candidates, nprobe=nprobe, exhaustive=exhaustive)
                result = apply_min_score(result, min_score)
                for number, reason in (result.shards["failed"] if getattr(result, "partial", False) else {}).items():
                    click.echo(f"warning: partial result: shard {number} did not answer: {reason}", err=True)
            except AusilError as exc:
                failures += 1
                if as_json:
                    click.echo(json.dumps({"query": str(file), "error": str(exc)}))
                else:
                    click.echo(f"Error: {exc}", err=True)
                continue
            if as_json:
                click.echo(json.dumps({**result.to_dict(), **_min_score_fields(result, min_score)}))
            elif writer:
                for m in result.matches:  # a row per occurrence, in the video's time order
                    for number, o in enumerate(m.occurrences, start=1):
                        writer.writerow([result.query, m.rank, f"{m.score:.4f}", m.path, m.duration_s, *o.query_span,
                                         *o.match_span, number, f"{o.similarity:.4f}"])
            else:
                _print_result(result, min_score)
    if failures == len(files):
        sys.exit(1)


def _min_score_fields(result, min_score: float | None) -> dict:
    """What `--min-score` adds to a query's JSON: the threshold, and whether nothing reached it."""
    if min_score is None:
        return {}
    from .decision import no_match_message

    return {"min_score": min_score, "no_match": not result.matches,
            **({"message": no_match_message(min_score)} if not result.matches else {})}


def _print_result(result, min_score: float | None = None) -> None:
    t = result.timings
    click.echo(
        f"{result.query}  ({_fmt_time(result.duration_s)}; {result.candidates} candidates "
        f"{'(exhaustive)' if result.exhaustive else ''}; extract {t['extract_s']:.2f}s, recall {t['recall_s'] * 1000:.1f}ms, "
        f"rerank {t['rerank_s']:.2f}s)"
    )
    if not result.matches:
        if min_score is not None:
            from .decision import no_match_message

            click.echo(f"  {no_match_message(min_score)}")
        else:
            click.echo("  no matches: the index is empty")
        return
    click.echo(f"  {'rank':>4}  {'score':>6}  {'query span':>15}  {'match span':>15}  {'length':>7}  path")
    for m in result.matches:
        q = f"{_fmt_time(m.query_span[0])}-{_fmt_time(m.query_span[1])}"
        d = f"{_fmt_time(m.match_span[0])}-{_fmt_time(m.match_span[1])}"
        click.echo(f"  {m.rank:>4}  {m.score:>6.3f}  {q:>15}  {d:>15}  {_fmt_time(m.duration_s):>7}  {m.path}")
        if len(m.occurrences) > 1:  # every place the query occurs, time-sorted, under the match
            for o in m.occurrences:
                q = f"{_fmt_time(o.query_span[0])}-{_fmt_time(o.query_span[1])}"
                d = f"{_fmt_time(o.match_span[0])}-{_fmt_time(o.match_span[1])}"
                click.echo(f"  {'':>4}  {'':>6}  {q:>15}  {d:>15}  {'':>7}  (occurrence, similarity {o.similarity:.2f})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--json", "as_json", is_flag=True)
def remove(paths, index_dir, as_json):
    """Remove the entries of these files, or of every file under these directories, from the index."""
    from .shards import open_index

    with open_index(index_dir or _default_index(), writable=True, workers=0, create=False) as engine:
        _print_warnings(engine)
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
    from .shards import open_index

    with open_index(index_dir or _default_index(), writable=False, workers=0) as engine:
        _print_warnings(engine)
        details = engine.info()
    if as_json:
        emit_json(details)
        return
    g = details["global_index"]
    click.echo(f"index       {details['index']}  (created {details['created']})")
    click.echo(f"videos      {details['videos']}  ({details['duration_s'] / 3600:.2f} h of audio, {details['segments']} segments)")
    click.echo(f"model       {details['model'].get('identity')}")
    if details.get("sharded"):
        answered = sum("error" not in s for s in details["shards"])
        click.echo(f"shards      {len(details['shards'])} ({answered} opened)")
    else:
        click.echo(f"recall      FAISS {g['type']}" + (f", nlist {g['nlist']}, nprobe {g['nprobe']}" if g["nlist"] else " (exact)"))
    click.echo(f"disk        {details['disk_bytes'] / 2**20:.1f} MiB ({details['segment_dtype']} segments)")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--shards", type=click.IntRange(min=1), required=True, help="Shards of the new index.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def reshard(source, destination, shards, as_json):
    """Copy the index SOURCE (sharded or not) into a sharded index DESTINATION of --shards shards.

    Stored segments are copied, nothing is re-extracted; a rerun after an interruption copies only
    what is missing. SOURCE is left as it is.
    """
    from .shards.reshard import reshard as copy_index

    with progress_bar(desc="reshard", unit="video") as bar:
        report = copy_index(source, destination, shards, on_video=lambda: bar.update(1))
    if as_json:
        emit_json({**report.to_dict(), "index": str(destination)})
    else:
        click.echo(f"{report.copied} copied, {report.unchanged} already there, in {report.seconds:.1f} s → "
                   f"{destination} ({shards} shards: {', '.join(map(str, report.videos_per_shard))} videos)")


@cli.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--model", "model_spec", default=None, help="Model file; default: the one that built the index.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any address but loopback requires a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory whose files requests may name (query by path, index jobs); repeatable. Without one, "
                   "only uploads are accepted.")
@click.option("--token", envvar="AUSIL_SEARCH_TOKEN", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every request but /health (prefer the environment "
                   "variable: a command line is visible to other users).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=2048, show_default=True,
              help="Largest accepted upload.")
@click.option("--upload-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where uploads are kept during their query, each in a private folder (default: the system's temp).")
@click.option("--query-threads", type=click.IntRange(min=1), default=None,
              help="Queries computed at once (default: the number of cores, at most 4); more wait their turn.")
@click.option("--workers", type=int, default=None, help="Decoding processes of index jobs (default: cores − 1; 0 = in-process).")
@click.option("--device", default=None, help=DEVICE_HELP)
def serve(index_dir, model_spec, host, port, roots, token, max_upload_mb, upload_dir, query_threads, workers, device):
    """Serve an index over HTTP, with the model loaded once (API docs at /docs).

    \b
    POST /query  (multipart `file`, or JSON {"path": ...} under a --root)   GET /info, /health
    POST /index  {"paths": [...]} → background job: GET/DELETE /jobs/ID   GET/DELETE /videos[/ID]
    """
    from .service import SERVE_DEPS_HINT
    from .service.config import ServiceConfig

    config = ServiceConfig(index_dir=index_dir or _default_index(), model=model_spec, host=host, port=port,
                           roots=tuple(roots), token=token or None, max_upload_bytes=int(max_upload_mb * 2**20),
                           upload_dir=upload_dir, device=device, index_workers=workers,
                           **({"query_threads": query_threads} if query_threads else {})).checked()
    try:
        from .service.app import Service
    except ImportError as exc:
        raise AusilError(f"the service needs packages that are not installed ({exc.name}): {SERVE_DEPS_HINT}") from None
    service = Service(config).open()
    info = service.search.info()
    guard = "token required" if config.token else "no token: loopback only"
    click.echo(f"serving {info['index']} ({info['videos']} videos) on {service.url} ({guard}); docs at {service.url}/docs",
               err=True)
    service.run()


# --------------------------------------------------------------------------- duplicates


@cli.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--min-score", "min_score", type=MIN_SCORE, default="default", show_default=True,
              help="Pairs scoring at least this are duplicates; 'default' is the calibrated match threshold.")
@click.option("--candidates", type=click.IntRange(min=1), default=20, show_default=True,
              help="Videos recalled (FAISS) and reranked (AuSiL) per video.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only videos indexed since WHEN (2026-11-30, '2026-11-30 14:00', or an age: 12h, 7d) and their groups.")
@click.option("--not-duplicate", "not_duplicate", nargs=2, multiple=True, type=click.Path(path_type=Path),
              metavar="A B", help="Record that files A and B are not duplicates (kept in the index; repeatable).")
@click.option("--not-duplicates", "decisions_file", type=click.Path(path_type=Path), default=None,
              help='JSON file of such pairs: [["A", "B"], ...] (paths relative to the file).')
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="Also write a report page here.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows: one per group member.")
def dedup(index_dir, min_score, candidates, since, not_duplicate, decisions_file, html_path, device, as_json, as_csv):
    """Find every group of indexed videos that share audio, biggest and most confident first.

    Each video is matched against the rest (FAISS recall, AuSiL rerank); pairs scoring at least
    --min-score are joined into groups. Scores are kept in the index: a rerun scores only pairs
    with newly indexed videos. Pairs recorded with --not-duplicate stay in separate groups.
    """
    import csv

    from .dedup import find_duplicate_groups, parse_since, read_decisions_file
    from .engine import SearchEngine
    from .shards import is_sharded

    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined")
    if is_sharded(index_dir or _default_index()):
        raise AusilError("dedup works on an index of one shard; a sharded index is not supported yet")
    pairs = [tuple(p) for p in not_duplicate] + (read_decisions_file(decisions_file) if decisions_file else [])
    with SearchEngine(index_dir or _default_index(), writable=False, device=device, workers=0) as engine, \
            progress_bar(desc="dedup", unit="pair") as bar:
        result = find_duplicate_groups(engine, None if min_score == "default" else min_score, candidates=candidates,
                                       since=parse_since(since) if since else None, not_duplicates=pairs,
                                       on_plan=lambda n: bar.reset(total=n), on_scored=bar.update)
    if html_path:
        from .report_html import write_report

        write_report(result, html_path)
    if as_json:
        emit_json(result.to_dict())
    elif as_csv:
        csv.writer(sys.stdout).writerows(result.csv_rows())
    else:
        _print_groups(result)
    if html_path and not as_json and not as_csv:
        click.echo(f"report → {html_path}")


def _print_groups(result) -> None:
    s = result.stats
    click.echo(f"{len(result.groups)} groups among {s.videos} videos (pairs scoring ≥ {result.threshold:.2f}); "
               f"{s.pairs_scored} pairs scored now, {s.pairs_stored} stored, in {s.seconds:.1f} s"
               + (f"; {s.kept_apart} pairs kept apart by decisions" if s.kept_apart else ""))
    for group in result.groups:
        click.echo(f"\ngroup {group.number}: {len(group.members)} files, best pair {group.score:.3f}, mean {group.mean_score:.3f}")
        for m in group.members:
            spans = ", ".join(f"{_fmt_time(a)}-{_fmt_time(b)}" for a, b in m.spans)
            click.echo(f"  {_fmt_time(m.duration_s):>7}  {m.size / 2**20:7.1f} MiB  shared {spans:<15}  {m.path}")


@cli.command()
@click.argument("file_a", type=click.Path(path_type=Path))
@click.argument("file_b", type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help=MODEL_HELP)
@click.option("--min-score", "min_score", type=MIN_SCORE, default="default", show_default=True,
              help="The score from which the two are called duplicates; 'default' is the calibrated match threshold.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def compare(file_a, file_b, model_spec, min_score, device, as_json):
    """Do FILE_A and FILE_B share audio? The score, the decision and where the shared audio is; no index needed."""
    from .decision import compare_files
    from .model import load_model

    result = compare_files(load_model(model_spec), file_a, file_b, None if min_score == "default" else min_score, device)
    if as_json:
        emit_json(result.to_dict())
        return
    verdict = "duplicates" if result.duplicate else "not duplicates"
    click.echo(f"{verdict}: score {result.score:.3f} ({'≥' if result.duplicate else '<'} {result.threshold:.2f})")
    click.echo("  shared audio:" if result.duplicate else "  closest stretches:")
    click.echo(f"  {_fmt_time(result.span_a[0])}-{_fmt_time(result.span_a[1])} of {file_a} ({_fmt_time(result.duration_a)})")
    click.echo(f"  {_fmt_time(result.span_b[0])}-{_fmt_time(result.span_b[1])} of {file_b} ({_fmt_time(result.duration_b)})")


# --------------------------------------------------------------------------- training


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


class _StageProgress:
    """One progress bar per stage of a training run (extract, whitening, mining, train)."""

    def __init__(self) -> None:
        self.bar = None
        self.step = 0

    def on_stage(self, name: str, total: int | None) -> None:
        self.close()
        self.bar = progress_bar(total=total, desc=name, unit="step" if name == "train" else "file")

    def on_file(self, path, error) -> None:
        if error:
            self.bar.write(f"skipped: {error}", file=sys.stderr)
        self.bar.update(1)

    def on_step(self, record) -> None:
        if self.step == 0 and record.step > 1:
            self.bar.update(record.step - 1)  # a resumed run starts part way
        self.step = record.step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record.loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _exit_interrupted(step, checkpoint_dir: Path | None) -> None:
    """Ctrl-C during training: say where the run stopped and how to continue, exit 130."""
    where = f"; checkpoint in {checkpoint_dir}: rerun with --resume to continue" if checkpoint_dir else ""
    click.echo(f"interrupted at step {step}{where}", err=True)
    sys.exit(130)


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
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def fit_whitening(sources, model_spec, output, cache_path, shrinkage, max_seconds, device, as_json):
    """Fit the PCA whitening of a model to the segments of SOURCES (media folders, files, path lists, .npz).

    The rest of the model is unchanged; the output records what the whitening was fitted on.
    """
    from .model import load_model
    from .train.head_job import fit_whitening_model

    progress = _StageProgress()
    try:
        fitted = fit_whitening_model(
            load_model(model_spec), sources, cache_path or output.with_suffix(".descriptors.h5"), shrinkage, max_seconds,
            device, on_stage=progress.on_stage, on_file=progress.on_file, command=_recorded_command(),
        )
    finally:
        progress.close()
    fitted.model.save(output)
    summary = {**fitted.report, "output": str(output), "model": fitted.model.identity}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"whitening fitted on {summary['segments']} segments of {summary['files']} files "
                   f"(shrinkage {summary['shrinkage']:.3f}) → {output}")


@cli.command()
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, help=MODEL_HELP + " Its backbone stays frozen.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Trained model file to write.")
@click.option("--pairs", "annotation", type=click.Path(path_type=Path), default=None,
              help="Labelled pairs: annotation JSON {query: {label: [ids]}} (with --videos).")
@click.option("--videos", "video_list", type=click.Path(path_type=Path), default=None,
              help="'<id> <path>' list of the annotated videos (media or .npz feature files).")
@click.option("--labels", default="DA", show_default=True, help="Comma-separated annotation labels that count as positives.")
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
@click.option("--whitening", type=click.Choice(["fit", "keep", "train"]), default="fit", show_default=True,
              help="fit: from the training segments, then fixed; keep: the input model's; train: fit, then fine-tune.")
@click.option("--shrinkage", type=click.FloatRange(0, 1, max_open=True), default=None, help="Whitening shrinkage (see fit-whitening).")
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
@click.option("--modes", default=",".join(SelfSupervisedConfig.modes), show_default=True, help="Augmentation modes, alternated over examples.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
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
          hard_margin, max_segments, whitening, shrinkage, examples_per_file, database_seconds, query_seconds,
          max_seconds, long_fraction, long_database_seconds, short_query_seconds, modes, val_fraction, cache_path, checkpoint_dir, checkpoint_every, resume, seed, name,
          device, float16, as_json):
    """Train the AuSiL head (attention, comparator; whitening fitted) with the backbone frozen.

    \b
    Triplets come from SOURCES (folders, media files, path lists), self-supervised: an augmented
    excerpt of a recording must score its clean window above windows of other recordings; and/or
    from labelled pairs (--pairs ANNOTATION --videos LIST). Descriptors are cached, so reruns skip
    extraction. With --checkpoint-dir, Ctrl-C saves the run and --resume continues it exactly.
    Writes OUTPUT and OUTPUT's .report.json (loss curve, timings, validation separation).
    """
    from .augment import MODES
    from .model import load_model
    from .train.head_job import TrainingHooks, TrainingJob, train_head

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
                           train_whitening=whitening == "train", seed=seed, checkpoint_every=checkpoint_every),
        self_supervised=SelfSupervisedConfig(examples_per_recording=examples_per_file,
                                             database_seconds=_seconds_range(database_seconds),
                                             query_seconds=_seconds_range(query_seconds),
                                             max_seconds=max_seconds, modes=mode_list, seed=seed,
                                             long_fraction=long_fraction,
                                             long_database_seconds=_seconds_range(long_database_seconds),
                                             short_query_seconds=_seconds_range(short_query_seconds)),
        whitening="keep" if whitening == "keep" else "fit", whitening_shrinkage=shrinkage, val_fraction=val_fraction,
        cache_path=cache_path or (checkpoint_dir / "descriptors.h5" if checkpoint_dir else output.with_suffix(".descriptors.h5")),
        checkpoint_dir=checkpoint_dir, resume=resume, device=device,
    )
    progress = _StageProgress()
    try:
        trained = train_head(model, job, TrainingHooks(progress.on_stage, progress.on_file, progress.on_step),
                             name=name, command=_recorded_command())
    except KeyboardInterrupt:
        progress.close()
        _exit_interrupted(progress.step, checkpoint_dir)
    finally:
        progress.close()
    report_path = trained.save(output, float16)
    report, model = trained.report, trained.model
    if as_json:
        emit_json(report)
        return
    loss = report["loss"]
    click.echo(f"{report['steps']} steps in {report['train_seconds']:.1f} s ({report['steps_per_s']} steps/s): "
               f"loss {loss.get('first_steps_mean')} → {loss.get('last_steps_mean')}")
    if "validation_after" in report:
        before, after = report.get("validation_before", {}), report["validation_after"]
        click.echo(f"validation separation {before.get('separation')} → {after['separation']} "
                   f"(top-1 {before.get('top1')} → {after['top1']})")
    click.echo(f"model → {output} ({model.identity}); report → {report_path}")


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
@click.option("--excerpt-seconds", type=click.FloatRange(min=1), default=ViewRecipe.excerpt_s, show_default=True,
              help="Audio read per item; the centre window (~2 s) of each view is trained on.")
@click.option("--max-shift", type=click.FloatRange(min=0), default=ViewRecipe.max_shift_s, show_default=True,
              help="Seconds by which the two views' windows may be misaligned (query vs database segment grid).")
@click.option("--excerpts-per-recording", type=click.IntRange(min=1), default=ViewRecipe.excerpts_per_recording, show_default=True,
              help="Non-overlapping excerpts of one recording in a batch, negatives of each other (1: none).")
@click.option("--calibration-batches", type=click.IntRange(min=1), default=BackboneTrainConfig.calibration_batches, show_default=True,
              help="Batches over which BatchNorm statistics are recomputed at the end.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Processes making augmented views ahead of the trainer (0: in-process).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None, help="Where checkpoints go (resumable runs).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=BackboneTrainConfig.checkpoint_every, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir (same data and settings; --steps may grow).")
@click.option("--seed", type=int, default=BackboneTrainConfig.seed, show_default=True, help="Initialisation (without --model) and data order.")
@click.option("--name", default="ausil-ssl-backbone", show_default=True, help="Name of the written model.")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--float16", is_flag=True, help="Store the model's tensors as float16.")
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train_backbone(sources, output, model_spec, steps, batch_size, lr, warmup_steps, decay_steps, temperature, excerpt_seconds,
                   max_shift, excerpts_per_recording, calibration_batches, workers, checkpoint_dir, checkpoint_every, resume, seed, name, device,
                   float16, as_json):
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
    from .model import load_model
    from .train.backbone_trainer import BackboneTrainingJob, train_backbone_model

    config = BackboneTrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                 decay_steps=decay_steps, temperature=temperature, seed=seed, checkpoint_every=checkpoint_every,
                                 calibration_batches=calibration_batches,
                                 recipe=ViewRecipe(excerpt_s=excerpt_seconds, max_shift_s=max_shift,
                                                   excerpts_per_recording=excerpts_per_recording))
    job = BackboneTrainingJob(sources=list(sources), config=config, checkpoint_dir=checkpoint_dir, resume=resume,
                              device=device, workers=workers)
    bar = progress_bar(total=steps, desc="train-backbone", unit="step")
    state = {"step": None}

    def on_step(record) -> None:
        if state["step"] is None and record.step > 1:
            bar.update(record.step - 1)  # a resumed run starts part way
        state["step"] = record.step
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.3f}", acc=f"{record.accuracy:.2f}", refresh=False)

    try:
        trained = train_backbone_model(
            job, load_model(model_spec) if model_spec else None, name, _recorded_command(),
            on_skip=lambda path, reason: bar.write(f"skipped: {reason}", file=sys.stderr), on_step=on_step)
    except KeyboardInterrupt:
        bar.close()
        _exit_interrupted(state["step"], checkpoint_dir)
    finally:
        bar.close()
    report_path = trained.save(output, float16)
    report, model = trained.report, trained.model
    if as_json:
        emit_json(report)
        return
    loss = report["loss"]
    click.echo(f"{report['steps']} steps ({report['steps_per_s']} steps/s this session): loss "
               f"{loss.get('first_steps_mean')} → {loss.get('last_steps_mean')}, partner found "
               f"{loss.get('first_steps_accuracy')} → {loss.get('last_steps_accuracy')}")
    click.echo(f"model → {output} ({model.identity}); report → {report_path}")


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


# --------------------------------------------------------------------------- benchmarks


@cli.group()
def bench() -> None:
    """Build duplicate-audio benchmarks from your own recordings."""


@bench.command("make")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--groups", type=click.IntRange(min=1), default=50, show_default=True, help="Queries (one per group).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same sources → same benchmark.")
@click.option("--mode", type=click.Choice(["normal", "hard"]), default="normal", show_default=True,
              help="hard: 5–12 s queries, positives buried in 60–180 s of unrelated audio, 0–5 dB noise, pitch shifts.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes for decoding and rendering.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Decoded sources are kept here for reuse (default: OUT_DIR/.cache).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def bench_make(sources, out_dir, groups, seed, mode, workers, cache_dir, as_json):
    """Make a benchmark in OUT_DIR from SOURCES (folders of media, or text files listing paths).

    Writes queries.txt, database.txt (`<id> <path>`), annotation.json ({query: {"DA": [...]}}),
    groups.json (core / speed, or hard / hard-speed), transforms.json (what each video is made of)
    and the media under OUT_DIR/media.
    """
    from .benchmark import make_benchmark

    def progress(iterable, total=None, desc="", unit="it"):
        return progress_bar(iterable, total=total, desc=desc, unit=unit)

    summary = make_benchmark(list(sources), out_dir, groups=groups, seed=seed, mode=mode, workers=workers,
                             cache_dir=cache_dir, progress=progress)
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"{summary['groups']} groups {summary['groups_by_kind']}: {summary['queries']} queries "
        f"({summary['query_hours']:.2f} h), {summary['database_videos']} database videos "
        f"({summary['database_hours']:.2f} h) from {summary['source_recordings']} recordings "
        f"in {_fmt_time(summary['seconds'])} → {summary['out_dir']}"
    )


def main() -> None:
    cli(prog_name="ausil-search")


if __name__ == "__main__":
    main()
