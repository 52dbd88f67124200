"""`dedup --html`: one self-contained page a person can read and listen through.

A section per group; per member its path, duration, size, the shared spans on a timeline bar, and
an <audio> player on the file itself (file:// link) that starts at the first shared span (a media
fragment `#t=START`). No scripts, no external resources: the page opens from disk in any browser.
Machine-readable facts are also in data-* attributes (group number, member path and duration, span
start and end), which is what the tests compare with the JSON output.
"""

from __future__ import annotations

import datetime as _dt
from importlib import resources
from pathlib import Path

import jinja2

from ..atomic import atomic_output
from .dedup import DedupResult


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(float(seconds), 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _percent(seconds: float, duration: float) -> float:
    return round(100.0 * min(max(seconds / duration, 0.0), 1.0), 2) if duration > 0 else 0.0


def render_report(result: DedupResult) -> str:
    template = resources.files("ausil_search").joinpath("templates/dedup_report.html").read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    since = _dt.datetime.fromtimestamp(result.since).isoformat(sep=" ", timespec="minutes") if result.since else ""
    return environment.from_string(template).render(
        result=result, since_text=since, clock=_clock, size=_size, percent=_percent,
        uri=lambda path: Path(path).absolute().as_uri(),
    )


def write_report(result: DedupResult, path: str | Path) -> Path:
    """Write the page; it appears under its name only once complete."""
    with atomic_output(path) as handle:
        handle.write(render_report(result).encode("utf-8"))
    return Path(path)


__all__ = ["render_report", "write_report"]
