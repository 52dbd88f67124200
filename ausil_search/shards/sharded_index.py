"""A sharded index opened in this process: the same calls as `SearchEngine`, over S shard indexes.

Each shard is an ordinary index directory with its own `SearchEngine`; this class routes files to
shards (`layout.shard_of`), runs each shard's own indexing (so resumability and kill safety are
per shard, as for one index), and answers a query by letting every shard recall and rerank on its
own data and merging the answers. AuSiL scores are absolute, so the merged top-k is the top-k one
index holding the same videos would give when each shard's recall finds what that index's would.

A shard that cannot be opened or fails while answering is reported (`warnings`, and the result is
flagged `partial` with the shards that answered); writes need every shard.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ..errors import AusilError, IndexStoreError
from ..features.extraction import ExtractedVideo, Extractor, SinkFactory
from ..media.scan import walk_media
from ..model import AuSiLModel
from ..progress import Progress, Stage, silent
from ..search.engine import COMMIT_EVERY_VIDEOS, IndexReport, Match, QueryResult, SearchEngine, has_audio_stream
from ..search.stores import VideoRecord
from ..search.stores.windows import Pooling
from .layout import ShardLayout, is_sharded


@dataclass
class ShardMatch(Match):
    shard: int = 0  # which shard holds the video; `video_id` is that shard's id


@dataclass
class ShardedQueryResult(QueryResult):
    """A merged answer; `partial` when a shard did not answer (`shards` says which did)."""

    partial: bool = False
    shards: dict = field(default_factory=dict)  # {"total": S, "answered": [i...], "failed": {"i": reason}}


class QueryDescriptors:
    """Extraction shared by the shards of one index: a query file is decoded and run through the
    backbone once, then each shard's engine embeds the same descriptors. Shard engines get this as
    their extractor; `preset` serves descriptors computed elsewhere (a shard server on a cluster)."""

    def __init__(self, make_extractor: Callable[[], Extractor] | None = None):
        self._make_extractor = make_extractor
        self._extractor: Extractor | None = None
        self._held: ExtractedVideo | None = None

    def extractor(self) -> Extractor:
        if self._make_extractor is None:
            raise AusilError("this shard only answers queries whose descriptors it is given")
        if self._extractor is None:
            self._extractor = self._make_extractor()
        return self._extractor

    def preset(self, video: ExtractedVideo) -> None:
        self._held = video

    def release(self) -> None:
        self._held = None

    def descriptors(self, path: Path, sink: SinkFactory | None = None) -> ExtractedVideo:
        if sink is not None:  # indexing streams into a store: nothing to share
            return self.extractor().descriptors(Path(path), sink)
        if self._held is None or self._held.path != Path(path):
            self._held = self.extractor().descriptors(Path(path))
        return self._held

    def run(self, paths: Iterable[Path], sink: SinkFactory | None = None):
        return self.extractor().run(paths, sink=sink)


class ShardEngine(SearchEngine):
    """One shard's engine: an ordinary `SearchEngine` whose extraction is the index's shared one."""

    shared: QueryDescriptors | None = None

    def extractor(self):  # type: ignore[override]
        return self.shared if self.shared is not None else super().extractor()


class ShardedIndex:
    """Index and query a sharded index directory (see the module doc); `shards` creates one."""

    def __init__(
        self,
        index_dir: Path,
        model: AuSiLModel | str | Path | None = None,
        writable: bool = False,
        device: str | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        precision: str = "fused",
        commit_every: int = COMMIT_EVERY_VIDEOS,
        create: bool | None = None,
        shards: int | None = None,
        pooling: Pooling | None = None,
    ):
        self.index_dir = Path(index_dir)
        self.writable = writable
        self.warnings: list[str] = []
        self.failed: dict[int, str] = {}  # shards that could not be opened, with the reason
        self.layout, creating = _open_layout(self.index_dir, shards, writable and create is not False)
        self.engines: dict[int, ShardEngine] = {}
        model_or_spec = model
        try:
            for number, shard_dir in enumerate(self.layout.shard_dirs):
                try:
                    engine = ShardEngine(shard_dir, model_or_spec, writable=writable, device=device, pooling=pooling,
                                         commit_every=commit_every, create=creating if writable else None)
                except (AusilError, OSError) as error:
                    if writable:
                        raise IndexStoreError(f"shard {number} ({shard_dir}): {error}") from None
                    self._shard_failed(number, error)
                    continue
                self._check_model(number, engine)
                self.engines[number] = engine
                self.warnings.extend(engine.warnings)
                model_or_spec = engine.model
            if not self.engines:
                raise IndexStoreError(f"no shard of {self.index_dir} can be opened: {next(iter(self.failed.values()))}")
            self.model: AuSiLModel = model_or_spec
            if writable and self.layout.model_sha256 is None:
                self.layout = self.layout.with_model(self.model.sha256, self.model.identity)
                self.layout.write()
        except BaseException:
            self.close()
            raise
        self.device = next(iter(self.engines.values())).device
        options = {"device": str(self.device), "workers": workers, "batch_size": batch_size, "precision": precision}
        self.extraction = QueryDescriptors(lambda: Extractor(self.model, **options))
        for engine in self.engines.values():
            engine.shared = self.extraction

    def _shard_failed(self, number: int, error: BaseException) -> None:
        reason = str(error) or type(error).__name__
        self.failed[number] = reason
        self.warnings.append(f"shard {number} ({self.layout.shard_dirs[number]}) is left out: {reason}")

    def _check_model(self, number: int, engine: SearchEngine) -> None:
        recorded = self.layout.model_sha256
        if recorded is not None and engine.model.sha256 != recorded:
            engine.close()
            raise IndexStoreError(f"shard {number} of {self.index_dir} holds model {engine.model.identity}, "
                                  f"the index is of {self.layout.model_identity}: every shard needs the same model")

    @property
    def pooling(self):
        return next(iter(self.engines.values())).pooling

    def _require_all(self) -> None:
        if self.failed:
            raise IndexStoreError(f"{self.index_dir}: shards {sorted(self.failed)} cannot be opened")

    # ---------------------------------------------------------------- indexing

    def index_paths(
        self,
        roots: Iterable[Path],
        prune: bool = False,
        progress: Progress = silent,
    ) -> IndexReport:
        """`SearchEngine.index_paths` over the shards: the media under `roots` is walked once and
        each shard indexes its part. `progress` (:mod:`ausil_search.progress`) hears of the same two
        stages as for one index: `scan` (the walk), then one `index` stage over every shard, whose
        total grows as each shard finds which of its files need work."""
        self._require_all()
        started = time.perf_counter()
        parts, skipped = self.plan(roots, progress)
        total = IndexReport(skipped=skipped)
        combined = CombinedIndexStage(progress)
        for number, engine in self.engines.items():
            if not parts[number]:
                continue
            report = engine.index_paths(parts[number], progress=combined.shard())
            add_reports(total, report)
            if report.interrupted:
                break
        combined.finish()
        if prune and not total.interrupted:
            total.removed = self.prune(roots)
        total.seconds = time.perf_counter() - started
        return total

    def plan(self, roots: Iterable[Path], progress: Progress = silent) -> tuple[dict[int, list[Path]], dict[str, str]]:
        """The media under `roots`, walked once, by shard; and what the walk passed over, with why.
        Reports the walk as the `scan` stage."""
        skipped: dict[str, str] = {}
        scan = Stage(progress, "scan")

        def skip(path: Path, reason: str) -> None:
            skipped[str(path)] = reason
            scan.advance(path, skipped=f"{path}: {reason}", count=0)

        def walked() -> Iterable[Path]:
            for path in walk_media([Path(r).absolute() for r in roots], has_audio_stream, on_skip=skip):
                scan.advance(path)
                yield path

        return self.partition(walked()), skipped

    def prune(self, roots: Iterable[Path]) -> int:
        """Remove the records under `roots` whose files are gone (`index --prune`); returns how many."""
        roots = list(roots)
        return sum(len(engine.remove(_gone_under(engine, roots))) for engine in self.engines.values())

    def partition(self, paths: Iterable[Path]) -> dict[int, list[Path]]:
        """Paths by the shard that holds them (keyed, as the engine keys files, by the resolved path)."""
        parts: dict[int, list[Path]] = {number: [] for number in range(self.layout.count)}
        for path in paths:
            parts[self.layout.shard_for(str(Path(path).resolve()))].append(Path(path))
        return parts

    def remove(self, paths: Iterable[Path]) -> list[str]:
        self._require_all()
        paths = list(paths)
        return [removed for engine in self.engines.values() for removed in engine.remove(paths)]

    # ---------------------------------------------------------------- queries

    def query(
        self,
        path: Path,
        top_k: int = 10,
        candidates: int = 100,
        nprobe: int | None = None,
        exhaustive: bool = False,
        spans: bool = True,
    ) -> ShardedQueryResult:
        """Every shard recalls `candidates` and reranks them; the best `top_k` of all shards."""
        clock = time.perf_counter()
        video = self.extraction.descriptors(Path(path))  # a bad query file fails here, not as a shard failure
        extract_s = time.perf_counter() - clock
        try:
            answers: dict[int, QueryResult] = {}
            failed = dict(self.failed)
            for number, engine in self.engines.items():
                try:
                    answers[number] = engine.query(path, top_k=top_k, candidates=candidates, nprobe=nprobe,
                                                   exhaustive=exhaustive, spans=spans)
                except Exception as error:  # a shard on a failing disk: answer with the others, flagged
                    failed[number] = f"{type(error).__name__}: {error}"
        finally:
            self.extraction.release()
        return merge_answers(str(path), video.duration_s, answers, failed, self.layout.count, top_k, exhaustive,
                             extract_s, self.warnings_for(failed))

    def warnings_for(self, failed: dict[int, str]) -> list[str]:
        return [f"shard {n} ({self.layout.shard_dirs[n]}) did not answer: {reason}" for n, reason in sorted(failed.items())]

    # ---------------------------------------------------------------- description

    def info(self) -> dict:
        shards = []
        for number, shard_dir in enumerate(self.layout.shard_dirs):
            if number in self.engines:
                shards.append({"shard": number, **self.engines[number].info()})
            else:
                shards.append({"shard": number, "index": str(shard_dir), "error": self.failed[number]})
        answered = [s for s in shards if "error" not in s]
        first = answered[0]
        return {
            "index": str(self.index_dir),
            "sharded": True,
            "partial": len(answered) < len(shards),
            "videos": sum(s["videos"] for s in answered),
            "segments": sum(s["segments"] for s in answered),
            "duration_s": round(sum(s["duration_s"] for s in answered), 3),
            "disk_bytes": sum(s["disk_bytes"] for s in answered),
            "model": first["model"],
            "frontend": first["frontend"],
            "pooling": first["pooling"],
            "segment_dtype": first["segment_dtype"],
            "global_index": combined_recall([s["global_index"] for s in answered]),
            "created": first["created"],
            "shards": shards,
        }

    def records(self) -> list[VideoRecord]:
        return [record for engine in self.engines.values() for record in engine.records()]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines = {}

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CombinedIndexStage:
    """One `index` stage over the shards' own indexing runs, for the caller's `progress`.

    Each shard's engine reports `scan` (the files of its part, already counted by the sharded
    walk: only what it skips is passed on) and `index` (counted on from the shards before it; the
    total grows by each shard's count of files that need work)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.done = 0  # units of the shards that finished
        self.planned = 0  # files needing work in the shards that planned so far
        self.completed = 0
        self.started = False

    def shard(self) -> Progress:
        base, counted = self.done, {"total": 0}

        def report(stage: str, completed: int, total: int | None = None, *, item: str | None = None,
                   skipped: str | None = None, metrics: Mapping[str, float] | None = None) -> None:
            if stage == "index":
                if total is not None and total != counted["total"]:
                    self.planned += total - counted["total"]
                    counted["total"] = total
                self.completed = base + completed
                self.done = max(self.done, self.completed)
            elif not skipped:
                return  # the shard's own look at files the sharded walk already counted
            self.started = True
            self.progress("index", self.completed, self.planned, item=item, skipped=skipped, metrics=metrics)

        return report

    def finish(self) -> None:
        if not self.started:  # no shard had work: the stage still begins (and ends) at 0 of 0
            self.progress("index", 0, 0)


def combined_recall(per_shard: Sequence[dict]) -> dict:
    """`info()["global_index"]` of a sharded index: each shard recalls from its own FAISS index of
    windows; the counts add up, the window layout is the shards' (the same for every shard)."""
    first = per_shard[0]
    return {"type": "per shard", "nlist": None, "nprobe": None,
            "ntotal": sum(g["ntotal"] for g in per_shard),  # windows
            "videos": sum(g["videos"] for g in per_shard),
            "window_s": first["window_s"], "hop_s": first["hop_s"],
            "shards": list(per_shard)}


def merge_answers(query: str, duration_s: float, answers: dict[int, QueryResult], failed: dict[int, str], total: int,
                  top_k: int, exhaustive: bool, extract_s: float, warnings: Sequence[str] = ()) -> ShardedQueryResult:
    """The best `top_k` matches of the shards' answers, best first, each tagged with its shard."""
    if not answers:
        raise IndexStoreError("no shard answered: " + "; ".join(warnings))
    pooled = [(match.score, number, match) for number, answer in sorted(answers.items()) for match in answer.matches]
    pooled.sort(key=lambda item: -item[0])  # stable: equal scores keep shard order
    matches = [ShardMatch(**{**_shallow(match), "rank": rank}, shard=number)
               for rank, (_, number, match) in enumerate(pooled[:top_k], start=1)]
    timings = {"extract_s": extract_s,
               "recall_s": sum(a.timings.get("recall_s", 0.0) for a in answers.values()),
               "rerank_s": sum(a.timings.get("rerank_s", 0.0) for a in answers.values())}
    shards = {"total": total, "answered": sorted(answers), "failed": {str(n): r for n, r in sorted(failed.items())}}
    return ShardedQueryResult(query, duration_s, matches, sum(a.candidates for a in answers.values()), exhaustive,
                              timings, partial=bool(failed), shards=shards)


def _shallow(match: Match) -> dict:
    return {f.name: getattr(match, f.name) for f in dataclasses.fields(Match)}


def add_reports(total: IndexReport, report: IndexReport) -> None:
    for name in ("added", "updated", "unchanged", "removed", "audio_seconds"):
        setattr(total, name, getattr(total, name) + getattr(report, name))
    total.skipped.update(report.skipped)
    total.interrupted = total.interrupted or report.interrupted


def _gone_under(engine: SearchEngine, roots: Sequence[Path]) -> list[Path]:
    """Records under `roots` (as given or resolved) whose files are gone: what `--prune` removes."""
    prefixes = {str(p) for root in roots for p in (Path(root).absolute(), Path(root).resolve())}
    return [Path(record.path) for record in engine.records()
            if any(record.path == p or record.path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)
            and not Path(record.path).exists()]


def _open_layout(index_dir: Path, shards: int | None, may_create: bool) -> tuple[ShardLayout, bool]:
    """The index's layout and whether it is being created."""
    if is_sharded(index_dir):
        layout = ShardLayout.read(index_dir)
        if shards is not None and shards != layout.count:
            raise IndexStoreError(f"{index_dir} has {layout.count} shards, not {shards}: "
                                  f"`ausil-search reshard {index_dir} NEW_DIR --shards {shards}` makes a copy with {shards}")
        return layout, False
    if (index_dir / "manifest.json").exists() or (index_dir / "segments").exists():
        raise IndexStoreError(f"{index_dir} is an index of one shard: `ausil-search reshard {index_dir} NEW_DIR "
                              f"--shards {shards or 'S'}` makes a sharded copy")
    if shards is None or not may_create:
        raise IndexStoreError(f"no sharded index at {index_dir}: build one with `ausil-search index DIR --shards S`")
    return ShardLayout.new(index_dir, shards), True


def open_index(index_dir: Path, model: AuSiLModel | str | Path | None = None, writable: bool = False,
               shards: int | None = None, **options) -> SearchEngine | ShardedIndex:
    """The index at `index_dir`, sharded or not; `shards` asks for (or creates) a sharded one."""
    if shards is not None or is_sharded(Path(index_dir)):
        return ShardedIndex(index_dir, model, writable=writable, shards=shards, **options)
    return SearchEngine(index_dir, model, writable=writable, **options)
