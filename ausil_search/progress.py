"""The one way long library calls report progress: a callable told the stage, a count and a total.

    progress(stage, completed, total, *, item=None, skipped=None, metrics=None)

Each call says that `stage` has `completed` of `total` units done (`total` None: not known). A stage
begins with a call at its starting count (0, or the step a resumed training run starts from); the
stages of one run come one after another, and one that starts again (a second `extract`) begins at
0 again. `item` names the unit just finished (a path, a video id); `skipped`, when set, says that
this unit was left out and why, naming it (the message a user should see even when no bar is
shown); `metrics` are numbers describing the current state (a training step's loss).

Indexing (one index, a sharded one, on Ray), reshard, extraction, the release commands, dedup,
both trainers and the benchmark generator take such a callable as `progress=` (default:
:func:`silent`). The CLI implements it once (`ausil_search.cli.progress`); like pyannote.audio's
hooks, a caller can pass any function, for instance one that records the calls or forwards them to
a web page.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

T = TypeVar("T")

# Every stage the library reports, with the unit it counts (what a display shows after the numbers).
STAGE_UNITS = {
    "scan": "file",  # indexing, backbone training: files looked at before the work starts
    "index": "file",  # indexing: files extracted and stored
    "index shards": "shard",  # indexing a sharded index on Ray: shards whose writer finished
    "reshard": "video",  # copying an index into a sharded one
    "extract": "file",  # descriptors of media files (release extract, head training, whitening fit)
    "similarity": "video",  # release similarity: database videos scored against every query
    "whitening": "",  # fitting the PCA whitening (one unit)
    "mining": "",  # mining hard negatives (one unit)
    "train": "step",  # head training
    "train-backbone": "step",  # backbone training
    "dedup": "pair",  # duplicate search: pairs of videos scored
    "decode sources": "file",  # benchmark generator
    "check seed material": "group",
    "render videos": "video",
}


class Progress(Protocol):
    def __call__(self, stage: str, completed: int, total: int | None = None, *, item: str | None = None,
                 skipped: str | None = None, metrics: Mapping[str, float] | None = None) -> None: ...


def silent(stage: str, completed: int, total: int | None = None, *, item: str | None = None,
           skipped: str | None = None, metrics: Mapping[str, float] | None = None) -> None:
    """The default progress: reports nothing."""


class Stage:
    """The count of one stage, for the library code that reports it: reports the start at once,
    then one call per :meth:`advance`."""

    def __init__(self, progress: Progress, name: str, total: int | None = None, completed: int = 0):
        self.progress, self.name, self.total, self.completed = progress, name, total, completed
        progress(name, completed, total)

    def advance(self, item: object = None, *, skipped: str | None = None, metrics: Mapping[str, float] | None = None,
                count: int = 1) -> None:
        """`count` more units done (0: only report `skipped`, for what is left out before the counting)."""
        self.completed += count
        self.progress(self.name, self.completed, self.total, item=None if item is None else str(item),
                      skipped=skipped, metrics=metrics)


def track(progress: Progress, stage: str, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
    """Yields `iterable`'s elements, counting each once the consumer asks for the next."""
    counter = Stage(progress, stage, total)
    for element in iterable:
        yield element
        counter.advance()
