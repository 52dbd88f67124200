"""Duplicates: `dedup` (every group in an index) and `compare` (two files, no index)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import DEVICE_HELP, INDEX_HELP, MIN_SCORE, MODEL_HELP, cli, default_index, emit_json, fmt_time
from .progress import ProgressDisplay


@cli.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None, help=INDEX_HELP + "  [default: indexes/default]")
@click.option("--min-score", "min_score", type=MIN_SCORE, default="default", show_default=True,
              help="With average linkage, groups join when their pairs score at least this on average; with single "
                   "linkage, one pair scoring at least this joins them. 'default': the value calibrated for the linkage.")
@click.option("--linkage", type=click.Choice(["average", "single"]), default="average", show_default=True,
              help="average: one wrong pair cannot merge two groups (every recalled pair is scored); single: "
                   "connected components, faster on big groups, less precise.")
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
@click.option("--all-pairs", is_flag=True,
              help="Single linkage: also score pairs whose videos are already joined through others (same groups; "
                   "every link's own score and spans; slower). Average linkage always scores every pair.")
def dedup(index_dir, min_score, candidates, since, not_duplicate, decisions_file, html_path, device, as_json, as_csv,
          all_pairs, linkage):
    """Find every group of indexed videos that share audio, biggest and most confident first.

    Each video is matched against the rest (FAISS recall, AuSiL rerank). With --linkage average (the
    default) two groups join when the mean score over all pairs between them reaches --min-score (an
    unrecalled pair counts 0), so a single wrong pair cannot merge two groups. With --linkage single,
    pairs scoring at least --min-score join their videos, and a pair whose videos are already joined
    through others is skipped (--all-pairs scores it too). Scores are kept in the index: a rerun
    scores only pairs with newly indexed videos. Pairs recorded with --not-duplicate stay in separate
    groups.
    """
    import csv

    from ..search.dedup import find_duplicate_groups, parse_since, read_decisions_file
    from ..shards import ShardedIndex, open_index
    from ..shards.union import ShardUnion

    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be combined")
    pairs = [tuple(p) for p in not_duplicate] + (read_decisions_file(decisions_file) if decisions_file else [])
    with open_index(index_dir or default_index(), writable=False, device=device, workers=0) as index, \
            ProgressDisplay() as progress:
        # a sharded index: every shard's videos against every shard's, under global ids
        engine = ShardUnion(index) if isinstance(index, ShardedIndex) else index
        result = find_duplicate_groups(engine, None if min_score == "default" else min_score, candidates=candidates,
                                       since=parse_since(since) if since else None, not_duplicates=pairs,
                                       progress=progress, all_pairs=all_pairs, linkage=linkage)
    if html_path:
        from ..search.report_html import write_report

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
    rule = (f"average linkage, mean pair score ≥ {result.threshold:.2f}" if result.linkage == "average"
            else f"pairs scoring ≥ {result.threshold:.2f}")
    click.echo(f"{len(result.groups)} groups among {s.videos} videos ({rule}); "
               f"{s.pairs_scored} pairs scored now ({s.pairs_skipped} skipped: already joined), {s.pairs_stored} stored, "
               f"in {s.seconds:.1f} s"
               + (f"; {s.kept_apart} joins refused by decisions" if s.kept_apart else ""))
    for group in result.groups:
        click.echo(f"\ngroup {group.number}: {len(group.members)} files, best pair {group.score:.3f}, mean {group.mean_score:.3f}")
        for m in group.members:
            spans = ", ".join(f"{fmt_time(a)}-{fmt_time(b)}" for a, b in m.spans)
            click.echo(f"  {fmt_time(m.duration_s):>7}  {m.size / 2**20:7.1f} MiB  shared {spans:<15}  {m.path}")


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
    from ..search.decision import compare_files
    from ..model import load_model

    result = compare_files(load_model(model_spec), file_a, file_b, None if min_score == "default" else min_score, device)
    if as_json:
        emit_json(result.to_dict())
        return
    verdict = "duplicates" if result.duplicate else "not duplicates"
    click.echo(f"{verdict}: score {result.score:.3f} ({'≥' if result.duplicate else '<'} {result.threshold:.2f})")
    click.echo("  shared audio:" if result.duplicate else "  closest stretches:")
    click.echo(f"  {fmt_time(result.span_a[0])}-{fmt_time(result.span_a[1])} of {file_a} ({fmt_time(result.duration_a)})")
    click.echo(f"  {fmt_time(result.span_b[0])}-{fmt_time(result.span_b[1])} of {file_b} ({fmt_time(result.duration_b)})")
