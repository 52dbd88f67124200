"""What every command shares: the `ausil-search` group, its error handling, common options and formatting.

User mistakes (bad paths, bad media, missing weights) end with one `Error:` line and exit code 1;
a traceback always means a bug.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import click

from ..errors import AusilError

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


INDEX_HELP = "Index directory."


class _MinScore(click.ParamType):
    """A score threshold: a number, or 'default' for the calibrated match threshold (decision.py)."""

    name = "SCORE|default"

    def convert(self, value, param, ctx):
        if value is None or value == "default" or isinstance(value, float):
            return value
        try:
            score = float(value)
        except ValueError:
            self.fail(f"expected a number or 'default', got {value!r}", param, ctx)
        if not -1.0 <= score <= 1.0:  # catches 72 meant as 0.72, which would silently match nothing
            self.fail(f"{value} is outside [-1, 1], where AuSiL scores lie (e.g. 0.72, or 'default')", param, ctx)
        return score


MIN_SCORE = _MinScore()


def default_index() -> Path:
    from ..search.engine import DEFAULT_INDEX_DIR

    return DEFAULT_INDEX_DIR


def print_warnings(engine) -> None:
    for warning in engine.warnings:
        click.echo(f"warning: {warning}", err=True)


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{secs:04.1f}"
