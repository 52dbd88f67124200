"""The retrieval engine: index a collection, answer queries, keep the index in step with the disk.

An index is one directory:
- `manifest.json` — format version, the model's identity and front-end, dims, pooling;
- `segments/` — the LMDB store (source of truth): per video its AuSiL-embedded segments (at the
  head's width, int8 with a scale per segment), its global descriptor and the file facts used to
  detect changes;
- `windows-<size>-<hop>.faiss` — the FAISS recall index of overlapping windows of each video's
  segments (`stores/windows.py`, pooled from the decoded stored segments), derived from the store and
  rebuilt from it when stale or missing; its name carries the window layout, so a file of another
  layout (or the `global.faiss` of one descriptor per video that came before windows) is never read:
  it is rebuilt and replaced.

Videos are committed to the store in small batches, so an interrupted run keeps every committed
batch and a rerun only processes what is missing or changed. An index of an older format version is
refused with the command that converts it (`rebuild.rebuild_index`: the same files extracted again into a
new index that is swapped in atomically).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..media.audio import probe
from ..features.backbone import DESCRIPTOR_DIM
from ..devices import pick_device
from ..atomic import write_failure_reason, write_json_atomic
from ..errors import AusilError, IndexStoreError, InputError
from ..features.extraction import Extractor
from ..model import AuSiLModel, load_model, resolve_model_path
from ..media.scan import FileState, content_hash, describe_os_error, walk_media
from ..features.scratch import sweep_stale_once
from ..progress import Progress, Stage, silent
from ..features.spectrogram import FrontEnd, segments_span_seconds
from .stores import (GlobalIndex, PackedSegments, SegmentPacker, SegmentStore, StoreFormatError, VideoFile,
                     VideoRecord)
from .stores.windows import Pooling, WindowLayout

# 2: compact (int8) segments, a head of any width. Older indexes are converted by `rebuild.rebuild_index`.
INDEX_FORMAT_VERSION = 2
DEFAULT_INDEX_DIR = Path("indexes") / "default"
MANIFEST_NAME = "manifest.json"
MANIFEST_ATTRIBUTE = "manifest"  # the store's copy of the manifest (SegmentStore attribute)
REQUIRED_MANIFEST_KEYS = ("model.sha256", "model.identity", "frontend", "pooling")
SEGMENTS_DIR = "segments"
LEGACY_GLOBAL_INDEX_NAME = "global.faiss"  # one descriptor per video, before recall windows
RECALL_WINDOW_S = 20.0  # recall window length and hop, chosen on the dev sets (benchmarks/recall_windows.py)
RECALL_HOP_S = 10.0
COMMIT_EVERY_VIDEOS = 16
COMMIT_EVERY_SECONDS = 10.0
RERANK_CHUNK = 256
EMBED_CHUNK = 2048  # segments embedded at a time when indexing (~34 min of audio at a 1-s step)


def pool_segments(embedded: torch.Tensor, pooling: Pooling) -> np.ndarray:
    """One L2-normalised descriptor per video from its embedded segments.

    The default is chosen by measurement (`default_pooling`). On the dev benchmark (bench-data/small,
    50 queries, 450 videos), with a fitted whitening the positives found in the top 100 were 0.880
    with mean against 0.670 with max (global-only mAP 0.494 vs 0.311; benchmarks/pooling.py); with
    identity whitening the two were close there (0.672 vs 0.680), and on the engine test's copies
    max ranked partners higher (recall ranks 1,1,1,1,5,2 vs 1,1,1,1,13,2), so max stays for such models.
    """
    pooled = embedded.mean(0) if pooling == "mean" else embedded.max(0).values
    pooled = pooled / pooled.norm().clamp_min(1e-12)
    return pooled.float().cpu().numpy()


def default_pooling(model: AuSiLModel) -> Pooling:
    """Mean for a model with a fitted whitening, max for one without (see `pool_segments`)."""
    weights = model.head.pca_weights
    square = weights.shape[0] == weights.shape[1]
    identity = square and torch.equal(weights.detach().cpu(), torch.eye(weights.shape[0], dtype=weights.dtype))
    return "max" if identity else "mean"


def has_audio_stream(path: Path) -> bool:
    try:
        return probe(path).has_audio
    except InputError:
        return False


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Occurrence:
    """One place the query's audio occurs in a matched video."""

    query_span: tuple[float, float]
    match_span: tuple[float, float]
    similarity: float  # mean segment similarity along the matched run


@dataclass
class Match:
    rank: int
    score: float
    video_id: int
    path: str
    duration_s: float
    query_span: tuple[float, float] | None  # the best occurrence; None when the query was run with spans=False
    match_span: tuple[float, float] | None
    occurrences: list[Occurrence] = field(default_factory=list)  # every occurrence, in the video's time order


@dataclass
class QueryResult:
    query: str
    duration_s: float
    matches: list[Match]
    candidates: int
    exhaustive: bool
    timings: dict[str, float]

    def to_dict(self) -> dict:
        return {**asdict(self), "matches": [asdict(m) for m in self.matches]}


class SearchEngine:
    """Index and query one index directory with one model.

    Open it `writable` to index or remove (this takes the index's writer lock); read-only engines
    can query while a writer works. Without an explicit model, the model that built the index is
    used when its file is still where it was, else the default model.
    """

    def __init__(
        self,
        index_dir: Path = DEFAULT_INDEX_DIR,
        model: AuSiLModel | str | Path | None = None,
        writable: bool = False,
        device: str | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        precision: str = "fused",
        pooling: Pooling | None = None,
        commit_every: int = COMMIT_EVERY_VIDEOS,
        create: bool | None = None,
        compile: bool = False,
    ):
        """`create` (default: `writable`) allows making a new index where there is none; commands
        that only change an index (remove) pass False, so a mistyped --index is an error. `compile`
        runs the backbone through `torch.compile` (a one-off cost of seconds, for long-lived engines)."""
        self.index_dir = Path(index_dir)
        self.commit_every = commit_every
        self.writable = writable
        self.device = pick_device(device)
        self.warnings: list[str] = []  # problems that did not stop the engine (a derived file not saved)
        from .rebuild import finish_interrupted_swap  # here: .rebuild builds on this module

        finish_interrupted_swap(self.index_dir)
        manifest = self._read_manifest()
        store_dir = self.index_dir / SEGMENTS_DIR
        may_create = writable and create is not False
        if manifest is None and not may_create and not (store_dir / "data.mdb").is_file():
            raise self._no_index()
        try:
            self.store = SegmentStore(store_dir, readonly=not writable)
        except StoreFormatError as error:
            raise format_version_error(self.index_dir, error.version) from None
        try:
            manifest = self._authoritative_manifest(manifest, may_create)
            self.model = model if isinstance(model, AuSiLModel) else self._load_model(model, manifest)
            self.model.head.to(self.device).eval()
            self.pooling: Pooling = manifest["pooling"] if manifest else (pooling or default_pooling(self.model))
            if manifest is not None:
                self._check_compatible(manifest)
            self.manifest = self._record_manifest(manifest) if writable else manifest
            self.layout = WindowLayout.from_seconds(RECALL_WINDOW_S, RECALL_HOP_S, self.frontend.step_seconds,
                                                    self.pooling)
            self.global_index, changed = self.load_recall_index()
            if changed and writable:
                try:
                    self._save_recall_index()
                except IndexStoreError as error:  # derived data: used from memory, rebuilt at the next open
                    self.warnings.append(str(error))
        except BaseException:
            self.store.close()
            raise
        self._extractor_options = {"device": str(self.device), "workers": workers, "batch_size": batch_size,
                                   "precision": precision, "compile": compile}
        self._extractor: Extractor | None = None

    # ---------------------------------------------------------------- manifest and model

    @property
    def global_path(self) -> Path:
        """The FAISS recall index, named after its window layout."""
        return self.index_dir / f"windows-{self.layout.size}-{self.layout.hop}.faiss"

    def load_recall_index(self) -> tuple[GlobalIndex, bool]:
        """The recall index in step with the store, and whether it differs from the file."""
        return GlobalIndex.load_or_rebuild(self.global_path, self.store, self.layout, self.model.head.width)

    def _save_recall_index(self) -> None:
        """Save the recall index, then drop recall files of other layouts (derived data, now stale)."""
        self.global_index.save(self.global_path)
        for old in [self.index_dir / LEGACY_GLOBAL_INDEX_NAME, *self.index_dir.glob("windows-*.faiss")]:
            if old != self.global_path:
                with contextlib.suppress(OSError):
                    old.unlink()

    def _no_index(self) -> IndexStoreError:
        return IndexStoreError(f"no index at {self.index_dir}: build one with `ausil-search index DIR`")

    def _read_manifest(self) -> dict | None:
        path = self.index_dir / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise IndexStoreError(f"{path}: damaged manifest (not JSON)") from None
        except OSError as error:
            raise IndexStoreError(f"cannot read {path}: {error.strerror}") from None
        return _validated_manifest(manifest, str(path), self.index_dir)

    def _authoritative_manifest(self, manifest: dict | None, may_create: bool) -> dict | None:
        """The store's own copy of the manifest when it has one: it describes the vectors the store
        holds, whatever happened to manifest.json. None for a new index."""
        recorded = self.store.get_attribute(MANIFEST_ATTRIBUTE)
        if recorded is not None:
            return _validated_manifest(recorded, f"the manifest recorded in {self.store.path}", self.index_dir)
        if manifest is not None:
            return manifest  # an index from before the store kept a copy
        if len(self.store):
            raise IndexStoreError(
                f"{self.index_dir} has lost {MANIFEST_NAME} and its store does not say which model built it: "
                "restore the file, or build a new index in another directory"
            )
        if not may_create:
            raise self._no_index()
        return None

    def _load_model(self, spec: str | Path | None, manifest: dict | None) -> AuSiLModel:
        if spec is None and manifest is not None:
            recorded = Path(manifest["model"].get("path") or "")
            if recorded.is_file():
                candidate = AuSiLModel.load(recorded)
                if candidate.sha256 == manifest["model"]["sha256"]:
                    return candidate
        return load_model(spec)

    def _check_compatible(self, manifest: dict) -> None:
        built = manifest["model"]
        if built["sha256"] != self.model.sha256:
            raise IndexStoreError(
                f"{self.index_dir} was built with model {built['identity']}, not {self.model.identity}: "
                f"pass --model {built.get('path') or 'with that model file'}, or use another --index"
            )
        if manifest["frontend"] != self.model.frontend.to_dict():
            raise IndexStoreError(f"{self.index_dir} was built with other front-end parameters than this model's")

    def _record_manifest(self, manifest: dict | None) -> dict:
        """Write what is missing of the manifest: the store's copy (what later opens check) and
        manifest.json (for people and tools). A new index that cannot be recorded is an error; an
        existing one that cannot be (a full disk) opens with a warning."""
        new = manifest is None
        if new:
            manifest = self._new_manifest()
        try:
            if self.store.get_attribute(MANIFEST_ATTRIBUTE) is None:
                self.store.set_attribute(MANIFEST_ATTRIBUTE, manifest)
            if not (self.index_dir / MANIFEST_NAME).is_file():
                write_json_atomic(self.index_dir / MANIFEST_NAME, manifest, indent=2)
        except (OSError, IndexStoreError) as error:
            reason = str(error) if isinstance(error, IndexStoreError) else write_failure_reason(self.index_dir, error)
            if new:
                raise IndexStoreError(f"cannot create index {self.index_dir}: {reason}") from None
            self.warnings.append(f"cannot record the manifest of {self.index_dir}: {reason}")
        return manifest

    def _new_manifest(self) -> dict:
        return {
            "format_version": INDEX_FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "identity": self.model.identity,
                "sha256": self.model.sha256,
                "name": self.model.name,
                "path": str(Path(self.model.path).resolve()) if self.model.path else None,
            },
            "frontend": self.model.frontend.to_dict(),
            "descriptor_dim": DESCRIPTOR_DIM,
            "segment_dtype": str(self.store.dtype),
            "pooling": self.pooling,
        }

    @property
    def frontend(self) -> FrontEnd:
        return self.model.frontend

    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = Extractor(self.model, **self._extractor_options)
        return self._extractor

    def embed(self, descriptors: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.head.embed(torch.from_numpy(np.ascontiguousarray(descriptors)).to(self.device))

    def store_sink(self, n_segments: int) -> "StoreSink":
        """What turns one video's descriptors, batch by batch, into its stored form (see `StoreSink`)."""
        return StoreSink(self, n_segments)

    # ---------------------------------------------------------------- indexing

    def _require_writable(self) -> None:
        if not self.writable:
            raise AusilError("this engine was opened read-only")

    def index_paths(
        self,
        roots: Iterable[Path],
        prune: bool = False,
        progress: Progress = silent,
    ) -> IndexReport:
        """Bring the index in line with the media under `roots`; see the module doc for guarantees.

        `progress` (:mod:`ausil_search.progress`) hears of two stages: `scan`, each file looked at
        and each path passed over (unreadable, not a regular file, a directory that cannot be
        listed, a broken link), then `index`, each file that needed work. Files are keyed by their
        resolved path. One whose size and mtime match its record is not read; otherwise its whole
        content is hashed, and a file that was only touched keeps its entry (its new mtime is noted).
        """
        self._require_writable()
        sweep_stale_once()  # what killed runs left in the temp directory goes, whatever this run has to do
        started = time.perf_counter()
        report = IndexReport()
        roots = [Path(r).absolute() for r in roots]

        scan = Stage(progress, "scan")

        def skip(path: Path, reason: str) -> None:
            report.skipped[str(path)] = reason
            scan.advance(path, skipped=f"{path}: {reason}", count=0)

        work: list[tuple[Path, FileState, str, bool]] = []
        touched: list[tuple[str, int]] = []
        renamed: list[tuple[str, str]] = []
        for walked in walk_media(roots, has_audio_stream, on_skip=skip):
            scan.advance(walked)
            path = walked.resolve()  # the key: one entry however the file is reached (links, `..`)
            record = self.store.record_for_path(str(path))
            if record is None and walked != path:  # indexes from before resolved keys
                record = self.store.record_for_path(str(walked))
                if record is not None:
                    renamed.append((str(walked), str(path)))
            try:
                state = FileState.of(path)
                if record is not None and (record.size, record.mtime_ns) == (state.size, state.mtime_ns):
                    report.unchanged += 1
                    continue
                content = content_hash(path)
            except OSError as exc:  # unreadable, vanished, or replaced by a FIFO since the walk
                skip(path, describe_os_error(exc))
                continue
            if record is not None and record.fingerprint == content and record.size == state.size:
                report.unchanged += 1  # touched, not changed
                touched.append((str(path), state.mtime_ns))
                continue
            work.append((path, state, content, record is not None))
        if renamed:
            self.store.rename_paths(renamed)
        if touched:
            self.store.update_mtimes(touched)
        indexing = Stage(progress, "index", len(work))
        self._extract_and_store([(path, state, content, known, None) for path, state, content, known in work],
                                report, indexing, roots if prune else None)
        report.seconds = time.perf_counter() - started
        return report

    def _extract_and_store(
        self,
        work: Sequence[tuple[Path, FileState, str, bool, int | None]],
        report: IndexReport,
        indexing: Stage,
        prune_roots: Sequence[Path] | None = None,
    ) -> None:
        """Extract `(path, state, content hash, already stored, id to keep or None)` files and commit
        them in batches, counting each file on `indexing`; an interruption (Ctrl-C) or an error keeps
        what was extracted."""
        batch: list[tuple[VideoFile, PackedSegments, np.ndarray]] = []
        batch_ids: list[int | None] = []
        replacing = 0
        last_commit = time.monotonic()

        def commit() -> None:
            nonlocal batch, batch_ids, replacing, last_commit
            if batch:
                self.store.add_videos(batch, None if None in batch_ids else batch_ids)
                report.updated += replacing
                report.added += len(batch) - replacing
            batch, batch_ids, replacing, last_commit = [], [], 0, time.monotonic()

        with self._global_index_synced():  # what was committed is searchable, also after an interruption
            try:
                details = {str(path): rest for path, *rest in work}
                for video in self.extractor().run([path for path, *_ in work], sink=self.store_sink):
                    state, content, known, keep_id = details[str(video.path)]
                    if not video.ok:
                        report.skipped[str(video.path)] = video.error or "unknown error"
                        indexing.advance(video.path, skipped=video.error or "unknown error")
                        continue
                    segments, pooled = video.consumed
                    record = VideoFile(
                        path=str(video.path),
                        size=state.size,
                        mtime_ns=state.mtime_ns,
                        fingerprint=content,
                        duration_s=video.duration_s,
                        extra={"indexed_at": round(time.time(), 3)},  # for `dedup --since`
                    )
                    batch.append((record, segments, pooled))
                    batch_ids.append(keep_id)
                    replacing += int(known)
                    report.audio_seconds += video.duration_s
                    indexing.advance(video.path)
                    if len(batch) >= self.commit_every or time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
                        commit()
                commit()
                if prune_roots is not None:
                    report.removed = self._prune(prune_roots)
            except KeyboardInterrupt:
                # Videos already extracted are kept; the caller learns of the interruption from the report.
                commit()
                report.interrupted = True
            except BaseException:
                with contextlib.suppress(Exception):  # keep what was extracted, if the store still can
                    commit()
                raise

    def refill(self, records: Sequence[tuple[int, str]], progress: Progress = silent) -> IndexReport:
        """Extract the files of another index's `(id, path)` records into this one under the same ids
        (what `rebuild_index` does); records already here are kept, so an interrupted run resumes.

        `progress` hears of two stages: `scan`, each record looked at (a file gone or unreadable
        since it was indexed is reported as skipped), then `index`, each file that needed work."""
        self._require_writable()
        sweep_stale_once()
        started = time.perf_counter()
        report = IndexReport()
        scan = Stage(progress, "scan", len(records))
        work = []
        for video_id, stored_path in records:
            path = Path(stored_path)
            if self.store.id_for_path(stored_path) is not None:
                report.unchanged += 1
                scan.advance(path)
                continue
            try:
                state = FileState.of(path)
                content = content_hash(path)
            except OSError as exc:  # gone or unreadable since it was indexed
                report.skipped[stored_path] = describe_os_error(exc)
                scan.advance(path, skipped=f"{path}: {describe_os_error(exc)}")
                continue
            scan.advance(path)
            work.append((path, state, content, False, int(video_id)))
        self._extract_and_store(work, report, Stage(progress, "index", len(work)))
        report.seconds = time.perf_counter() - started
        return report

    def add_embedded(self, videos: Iterable[tuple[VideoFile, np.ndarray]]) -> int:
        """Store videos whose segments are already embedded by this engine's model; returns the count.

        For imports and synthetic collections (an HDF5 export, excerpts of stored videos) that skip
        decoding. Pooling follows the index; stored in batches, searchable as soon as this returns,
        and what was stored before an interruption stays.
        """
        self._require_writable()
        batch: list[tuple[VideoFile, np.ndarray, np.ndarray]] = []
        added = 0
        with self._global_index_synced():
            for record, segments in videos:
                segments = np.asarray(segments)
                if segments.ndim != 2 or len(segments) == 0:
                    raise ValueError(f"{record.path}: segments must be a non-empty (N, D) matrix, got {segments.shape}")
                pooled = pool_segments(torch.from_numpy(segments.astype(np.float32)), self.pooling)
                batch.append((record, segments, pooled))
                if len(batch) >= self.commit_every:
                    added += len(self.store.add_videos(batch).ids)
                    batch = []
            if batch:
                added += len(self.store.add_videos(batch).ids)
        return added

    def _prune(self, roots: Sequence[Path]) -> int:
        """Remove records under `roots` (as given or resolved) whose files are gone."""
        prefixes = [str(root) + os.sep for root in _spellings(roots)]
        gone = [
            record.path
            for record in self.store.iter_records()
            if any(record.path.startswith(p) or record.path == p[:-1] for p in prefixes) and not Path(record.path).exists()
        ]
        return len(self.store.remove_paths(gone)) if gone else 0

    def remove(self, paths: Iterable[Path]) -> list[str]:
        """Remove the entries of these files (or of every file under these directories)."""
        self._require_writable()
        wanted = [str(p) for p in _spellings(paths)]
        prefixes = tuple(w.rstrip(os.sep) + os.sep for w in wanted)
        targets = [r.path for r in self.store.iter_records() if r.path in wanted or r.path.startswith(prefixes)]
        if targets:
            with self._global_index_synced():
                self.store.remove_paths(targets)
        return targets

    def _sync_global_index(self) -> None:
        self.global_index, changed = self.load_recall_index()
        if changed:
            self._save_recall_index()

    @contextlib.contextmanager
    def _global_index_synced(self) -> Iterator[None]:
        """Bring the FAISS file in line with the store when the block ends. After an error the sync
        is tried quietly: the FAISS file is derived data (rebuilt from the store at the next open),
        and a failure to save it (the same full disk) must never hide the error that ended the block."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._sync_global_index()
            raise
        self._sync_global_index()

    # ---------------------------------------------------------------- queries

    def query(
        self,
        path: Path,
        top_k: int = 10,
        candidates: int = 100,
        nprobe: int | None = None,
        exhaustive: bool = False,
        spans: bool = True,
    ) -> QueryResult:
        """The `top_k` best of the reranked candidates; `spans=False` skips locating the shared
        audio in each match (for scripts that rank many candidates and need only the scores)."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        video = self.extractor().descriptors(Path(path))
        query = self.embed(video.descriptors)
        timings["extract_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        if exhaustive:
            ids = self.store.ids()
        else:  # the best windows, as distinct videos
            ids, _ = self.global_index.search_videos(self.layout.pool(query.float().cpu().numpy()), candidates, nprobe)
        timings["recall_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        scores = self._rerank(query, ids)
        order = np.argsort(-scores, kind="stable")[:top_k]
        matches = [self._match(rank + 1, query, video.duration_s, int(ids[i]), float(scores[i]), spans)
                   for rank, i in enumerate(order)]
        timings["rerank_s"] = time.perf_counter() - clock
        return QueryResult(str(path), video.duration_s, matches, len(ids), exhaustive, timings)

    def _rerank(self, query: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        scores = np.empty(len(ids), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(ids), RERANK_CHUNK):
                chunk = ids[start:start + RERANK_CHUNK]
                candidates = [torch.from_numpy(s).to(self.device) for s in self.store.segments_many(chunk.tolist())]
                scores[start:start + len(chunk)] = self.model.head.score_many(query, candidates).float().cpu().numpy()
        return scores

    def _match(self, rank: int, query: torch.Tensor, query_duration: float, video_id: int, score: float,
               spans: bool = True) -> Match:
        record = self.store.get(video_id)
        query_span = match_span = None
        occurrences: list[Occurrence] = []
        if spans:
            segments = torch.from_numpy(self.store.segments(video_id)).to(self.device)
            with torch.inference_mode():
                found = self.model.head.occurrences(query, segments)
            occurrences = [Occurrence(segments_span_seconds(rows, len(query), query_duration, self.frontend),
                                      segments_span_seconds(columns, record.n_segments, record.duration_s, self.frontend),
                                      round(similarity, 4))
                           for rows, columns, similarity in found]
            best = max(occurrences, key=lambda occurrence: occurrence.similarity)
            query_span, match_span = best.query_span, best.match_span
        return Match(rank=rank, score=score, video_id=video_id, path=record.path, duration_s=record.duration_s,
                     query_span=query_span, match_span=match_span, occurrences=occurrences)

    # ---------------------------------------------------------------- description

    def info(self) -> dict:
        stats = self.store.stats()
        manifest = self.manifest or {}
        index_bytes = sum(f.stat().st_size for f in self.index_dir.glob("*") if f.is_file())
        return {
            "index": str(self.index_dir),
            "videos": stats.videos,
            "segments": stats.total_segments,
            "duration_s": round(stats.total_duration_s, 3),
            "disk_bytes": stats.disk_bytes + index_bytes,
            "model": manifest.get("model", {}),
            "frontend": manifest.get("frontend", {}),
            "pooling": self.pooling,
            "segment_dtype": str(self.store.dtype),
            "global_index": {**self.global_index.describe(), "window_s": round(self.layout.size * self.frontend.step_seconds, 3),
                             "hop_s": round(self.layout.hop * self.frontend.step_seconds, 3)},
            "created": manifest.get("created"),
        }

    def records(self) -> list[VideoRecord]:
        return list(self.store.iter_records())

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "SearchEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreSink:
    """Embeds one video's descriptors chunk by chunk, packs them into the store's form as they come
    and pools its global descriptor: a long file never has a float matrix of all its segments."""

    def __init__(self, engine: SearchEngine, n_segments: int) -> None:
        self._engine = engine
        self._packer = SegmentPacker(str(engine.store.dtype), n_segments, engine.model.head.width)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._pooled: torch.Tensor | None = None

    def add(self, descriptors: np.ndarray) -> None:
        self._pending.append(descriptors)
        self._pending_rows += len(descriptors)
        if self._pending_rows >= EMBED_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        embedded = self._engine.embed(chunk)
        self._packer.add(embedded.float().cpu().numpy())
        mean = self._engine.pooling == "mean"
        part = embedded.sum(0) if mean else embedded.amax(0)
        if self._pooled is not None:
            part = self._pooled + part if mean else torch.maximum(self._pooled, part)
        self._pooled = part

    def finish(self) -> tuple[PackedSegments, np.ndarray]:
        """(the packed segments, the L2-normalised global descriptor)."""
        self._flush()
        if self._pooled is None:
            raise ValueError("a video without segments")
        pooled = self._pooled / self._pooled.norm().clamp_min(1e-12)
        return self._packer.packed(), pooled.float().cpu().numpy()


def format_version_error(index_dir: Path, version: object) -> IndexStoreError:
    """The one line for an index of another format version: how to convert an older one."""
    if isinstance(version, int) and version > INDEX_FORMAT_VERSION:
        return IndexStoreError(f"{index_dir} is an index of format version {version}; this program reads version "
                               f"{INDEX_FORMAT_VERSION}: upgrade ausil-search")
    return IndexStoreError(
        f"{index_dir} is an index of format version {version}; this program reads version {INDEX_FORMAT_VERSION}: "
        f"convert it with `ausil-search index --rebuild --index {shlex.quote(str(index_dir))}` "
        "(keeps its files and ids, extracts them again)"
    )


def _validated_manifest(manifest: object, source: str, index_dir: Path) -> dict:
    """`manifest` if it is of this format and has every key the engine reads, else a one-line error."""
    if not isinstance(manifest, dict):
        raise IndexStoreError(f"{source}: damaged manifest (not a JSON object)")
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise format_version_error(index_dir, manifest.get("format_version"))
    for key in REQUIRED_MANIFEST_KEYS:
        value: object = manifest
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise IndexStoreError(f"{source}: damaged manifest (no {key!r})")
    return manifest


def _spellings(paths: Iterable[Path]) -> list[Path]:
    """Each path absolute and resolved: records are keyed by resolved paths (indexes built before
    that may hold absolute ones), so a removal or prune must match either."""
    out: dict[Path, None] = {}
    for path in paths:
        out[Path(path).absolute()] = None
        out[Path(path).resolve()] = None
    return list(out)


__all__ = ["SearchEngine", "IndexReport", "QueryResult", "Match", "DEFAULT_INDEX_DIR", "resolve_model_path"]
