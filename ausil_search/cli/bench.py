"""`bench make`: duplicate-audio benchmarks from your own recordings."""

from __future__ import annotations

from pathlib import Path

import click

from .base import cli, emit_json, fmt_time
from .progress import ProgressDisplay


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
    from ..evaluate.benchmark import make_benchmark

    with ProgressDisplay() as progress:
        summary = make_benchmark(list(sources), out_dir, groups=groups, seed=seed, mode=mode, workers=workers,
                                 cache_dir=cache_dir, progress=progress)
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"{summary['groups']} groups {summary['groups_by_kind']}: {summary['queries']} queries "
        f"({summary['query_hours']:.2f} h), {summary['database_videos']} database videos "
        f"({summary['database_hours']:.2f} h) from {summary['source_recordings']} recordings "
        f"in {fmt_time(summary['seconds'])} → {summary['out_dir']}"
    )
