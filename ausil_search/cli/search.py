"""The search engine's commands: `index`, `query`, `remove`, `info`, `reshard`, and `serve` over HTTP.

`index`, `query`, `remove` and `info` work on an index of one shard and on a sharded one alike
(`ausil_search.shards.open_index`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import AusilError
from .base import (DEVICE_HELP, INDEX_HELP, MIN_SCORE, MODEL_HELP, PRECISION_HELP, cli, default_index, emit_json,
                   fmt_time, print_warnings)
from .progress import ProgressDisplay


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--model", "model_spec", default=None, help=MODEL_HELP + " An existing index keeps the model it was built with.")
@click.option("--prune", is_flag=True, help="Also remove entries under PATHS whose files are gone.")
@click.option("--rebuild", is_flag=True,
              help="Extract every file of the index again into a new index of this version (same paths and ids) "
                   "and swap it in; converts an index of an older format. No PATHS. Resumes if interrupted.")
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
def index(paths, index_dir, model_spec, prune, rebuild, device, workers, batch_size, precision, commit_every, shards,
          ray_address, as_json):
    """Index the media under PATHS (directories are walked recursively; files are taken as given).

    Incremental: unchanged files are skipped, changed ones re-indexed. Safe to interrupt: what was
    committed stays searchable and a rerun picks up where it stopped. Unusable files are reported
    and skipped; a PATH that does not exist stops the run before anything is indexed (with --prune,
    its entries are removed instead). --rebuild (without PATHS) extracts the files of an index
    again, e.g. to convert an index of an older format.
    """
    from ..shards import open_index

    index_dir = index_dir or default_index()
    if rebuild:
        if paths or prune or shards or ray_address:
            raise click.UsageError("--rebuild takes no PATHS, --prune, --shards or --ray: it re-extracts the files "
                                   "the index already has")
        return _rebuild(index_dir, model_spec, as_json, device=device, workers=workers, batch_size=batch_size,
                        precision=precision, commit_every=commit_every)
    if not paths:
        raise click.UsageError("give PATHS to index, or --rebuild to rebuild the index")
    gone = [str(path) for path in paths if not (path.exists() or path.is_symlink())]
    if gone and not prune:  # a typo must not build (or touch) an index; --prune is how a vanished folder is dropped
        more = f" (and {len(gone) - 1} more PATHS)" if len(gone) > 1 else ""
        raise AusilError(f"{gone[0]}: no such file or directory{more}; nothing indexed (with --prune, the entries "
                         f"under a path that is gone are removed)")
    if ray_address:
        return _index_on_ray(paths, index_dir, model_spec, prune, device, workers, batch_size,
                             precision, commit_every, shards, ray_address, as_json)
    engine = open_index(index_dir, model_spec, writable=True, shards=shards, device=device,
                        workers=workers, batch_size=batch_size, precision=precision, commit_every=commit_every)
    print_warnings(engine)
    with engine, ProgressDisplay() as progress:
        report = engine.index_paths(paths, prune=prune, progress=progress)
        info = engine.info()
    _print_index_report(report, info, as_json)


def _rebuild(index_dir: Path, model_spec, as_json: bool, **options) -> None:
    """Each shard of a sharded index is an ordinary index and is rebuilt (and swapped in) on its own."""
    from ..search.dedup import carry_decisions
    from ..search.engine import IndexReport
    from ..search.rebuild import rebuild_index
    from ..shards import ShardLayout, is_sharded, open_index
    from ..shards.sharded_index import add_reports

    targets = list(ShardLayout.read(index_dir).shard_dirs) if is_sharded(index_dir) else [index_dir]
    report = IndexReport()
    with ProgressDisplay() as progress:
        for target in targets:
            add_reports(report, rebuild_index(target, model_spec, progress=progress, before_swap=carry_decisions,
                                              **options))
            if report.interrupted:
                break
    if report.interrupted:
        info = {"index": str(index_dir), "videos": report.added, "duration_s": report.audio_seconds}
    else:
        with open_index(index_dir, workers=0) as engine:
            info = engine.info()
    _print_index_report(report, info, as_json)


def _index_on_ray(paths, index_dir, model_spec, prune, device, workers, batch_size, precision, commit_every, shards,
                  ray_address, as_json) -> None:
    from ..shards import ShardedIndex, is_sharded
    from ..shards.cluster import index_on_cluster

    if shards is None and not is_sharded(index_dir):
        raise click.UsageError("--ray indexes a sharded index: give --shards S for a new one")
    with ProgressDisplay() as progress:
        report = index_on_cluster(index_dir, paths, ray_address, model_spec, shards=shards, workers=workers,
                                  device=device, batch_size=batch_size, precision=precision, commit_every=commit_every,
                                  prune=prune, progress=progress)
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
              help="Keep only matches scoring at least this (a number in [-1, 1], or 'default' for the calibrated match "
                   "threshold); a query with none says 'no match above X'. Default: off, top-k stays top-k.")
def query(files, index_dir, model_spec, top_k, candidates, nprobe, exhaustive, device, ray_address, as_json, as_csv,
          min_score):
    """Find indexed videos that share audio with each query FILE, best first.

    For each match: the AuSiL score (−1…1), the database path and duration, and where the shared
    audio is — the query's span and the matching span of the database video (m:ss). When the query
    occurs at several places in a video, each is listed under the match (--csv: a row each).
    """
    import csv

    from ..devices import one_blas_thread
    from ..search.decision import apply_min_score
    from ..shards import open_index

    one_blas_thread()

    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined")
    if ray_address:
        from ..shards.cluster import ClusterIndex

        engine = ClusterIndex(index_dir or default_index(), ray_address, model_spec, device=device)
    else:
        engine = open_index(index_dir or default_index(), model_spec, writable=False, device=device, workers=0)
    print_warnings(engine)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer:
        writer.writerow(["query", "rank", "score", "path", "duration_s", "query_start_s", "query_end_s", "match_start_s",
                         "match_end_s", "occurrence", "similarity"])
    failures = 0
    with engine:
        if min_score == "default":
            from ..search.decision import threshold_for

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
    from ..search.decision import no_match_message

    return {"min_score": min_score, "no_match": not result.matches,
            **({"message": no_match_message(min_score)} if not result.matches else {})}


def _print_result(result, min_score: float | None = None) -> None:
    t = result.timings
    click.echo(
        f"{result.query}  ({fmt_time(result.duration_s)}; {result.candidates} candidates "
        f"{'(exhaustive)' if result.exhaustive else ''}; extract {t['extract_s']:.2f}s, recall {t['recall_s'] * 1000:.1f}ms, "
        f"rerank {t['rerank_s']:.2f}s)"
    )
    if not result.matches:
        if min_score is not None:
            from ..search.decision import no_match_message

            click.echo(f"  {no_match_message(min_score)}")
        else:
            click.echo("  no matches: the index is empty")
        return
    click.echo(f"  {'rank':>4}  {'score':>6}  {'query span':>15}  {'match span':>15}  {'length':>7}  path")
    for m in result.matches:
        q = f"{fmt_time(m.query_span[0])}-{fmt_time(m.query_span[1])}"
        d = f"{fmt_time(m.match_span[0])}-{fmt_time(m.match_span[1])}"
        click.echo(f"  {m.rank:>4}  {m.score:>6.3f}  {q:>15}  {d:>15}  {fmt_time(m.duration_s):>7}  {m.path}")
        if len(m.occurrences) > 1:  # every place the query occurs, time-sorted, under the match
            for o in m.occurrences:
                q = f"{fmt_time(o.query_span[0])}-{fmt_time(o.query_span[1])}"
                d = f"{fmt_time(o.match_span[0])}-{fmt_time(o.match_span[1])}"
                click.echo(f"  {'':>4}  {'':>6}  {q:>15}  {d:>15}  {'':>7}  (occurrence, similarity {o.similarity:.2f})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--json", "as_json", is_flag=True)
def remove(paths, index_dir, as_json):
    """Remove the entries of these files, or of every file under these directories, from the index."""
    from ..shards import open_index

    with open_index(index_dir or default_index(), writable=True, workers=0, create=False) as engine:
        print_warnings(engine)
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
    from ..shards import open_index

    with open_index(index_dir or default_index(), writable=False, workers=0) as engine:
        print_warnings(engine)
        details = engine.info()
    if as_json:
        emit_json(details)
        return
    g = details["global_index"]
    click.echo(f"index       {details['index']}  (created {details['created']})")
    click.echo(f"videos      {details['videos']}  ({details['duration_s'] / 3600:.2f} h of audio, {details['segments']} segments)")
    click.echo(f"model       {details['model'].get('identity')}")
    windows = f"{g['ntotal']} windows of {g['window_s']:g} s every {g['hop_s']:g} s"
    if details.get("sharded"):
        answered = sum("error" not in s for s in details["shards"])
        click.echo(f"shards      {len(details['shards'])} ({answered} opened)")
        click.echo(f"recall      FAISS per shard, {windows}")
    else:
        click.echo(f"recall      FAISS {g['type']}" + (f", nlist {g['nlist']}, nprobe {g['nprobe']}" if g["nlist"] else " (exact)")
                   + f", {windows}")
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
    from ..shards.reshard import reshard as copy_index

    with ProgressDisplay() as progress:
        report = copy_index(source, destination, shards, progress=progress)
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
@click.option("--compile/--no-compile", "compile_backbone", default=True, show_default=True,
              help="Compile the backbone with torch.compile when the server starts (seconds more start-up, faster "
                   "queries); where it cannot compile (no C compiler) the server says so and runs uncompiled.")
def serve(index_dir, model_spec, host, port, roots, token, max_upload_mb, upload_dir, query_threads, workers, device,
          compile_backbone):
    """Serve an index over HTTP, with the model loaded once (API docs at /docs).

    \b
    POST /query  (multipart `file`, or JSON {"path": ...} under a --root)   GET /info, /health
    POST /index  {"paths": [...]} → background job: GET/DELETE /jobs/ID   GET/DELETE /videos[/ID]
    """
    from ..service import SERVE_DEPS_HINT
    from ..service.config import ServiceConfig

    config = ServiceConfig(index_dir=index_dir or default_index(), model=model_spec, host=host, port=port,
                           roots=tuple(roots), token=token or None, max_upload_bytes=int(max_upload_mb * 2**20),
                           upload_dir=upload_dir, device=device, index_workers=workers, compile_backbone=compile_backbone,
                           **({"query_threads": query_threads} if query_threads else {})).checked()
    try:
        from ..service.app import Service
    except ImportError as exc:
        raise AusilError(f"the service needs packages that are not installed ({exc.name}): {SERVE_DEPS_HINT}") from None
    service = Service(config).open()
    info = service.search.info()
    for warning in service.search.warnings:
        click.echo(f"warning: {warning}", err=True)
    guard = "token required" if config.token else "no token: loopback only"
    click.echo(f"serving {info['index']} ({info['videos']} videos) on {service.url} ({guard}); docs at {service.url}/docs",
               err=True)
    service.run()
