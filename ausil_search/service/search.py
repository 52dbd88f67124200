"""The warm, read-only engine that every query shares, kept in step with what writers commit.

Consistency comes from the stores: every batch of videos is one LMDB transaction and each rerank reads
its candidates in one read transaction, so a query sees a video whole or not at all. The FAISS recall
index is derived data held in memory; when a writer (an index job of this server or a CLI `index`) has
committed, a query first swaps in a fresh copy synced with the store. The copy is built aside and the
attribute replaced, so queries already running keep the index they started with. A candidate that a
writer removed meanwhile (KeyError from the store) makes the query run again on a fresh index.
"""

from __future__ import annotations

import dataclasses
import threading
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from ..devices import one_blas_thread
from ..errors import AusilError
from ..search.decision import Comparison, compare_videos
from ..search.engine import SEGMENTS_DIR, QueryResult, SearchEngine
from ..search.stores import VideoRecord

QUERY_ATTEMPTS = 3


@dataclasses.dataclass
class ComparedVideo:
    """One side of a `compare`: embedded segments, duration, and the name the answer shows."""

    segments: torch.Tensor
    duration_s: float
    name: str


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class WarmSearch:
    """One read-only `SearchEngine` with its model loaded and its backbone run once, shared by threads."""

    def __init__(self, index_dir: Path, model: str | None = None, device: str | None = None,
                 compile: bool = False) -> None:
        self.warnings: list[str] = []
        one_blas_thread()
        self.engine = SearchEngine(Path(index_dir), model, writable=False, device=device, workers=0, compile=compile)
        try:
            self._warm_up()
        except Exception as error:  # torch.compile needs a working C compiler; serve uncompiled without one
            if not compile:
                raise
            self.engine.close()
            self.engine = SearchEngine(Path(index_dir), model, writable=False, device=device, workers=0)
            self._warm_up()
            self.warnings.append(f"the backbone could not be compiled ({type(error).__name__}); queries run uncompiled")
        self._watched = (self.engine.index_dir / SEGMENTS_DIR / "data.mdb", self.engine.global_path)
        self._seen = self._stamps()
        self._refresh_lock = threading.Lock()

    def _warm_up(self) -> None:
        """The extractor built (not raced for by the first queries) and run once, compiling it if asked."""
        frontend = self.engine.frontend
        self.engine.extractor().encoder.encode(np.zeros((1, frontend.window_frames, frontend.n_mels), np.float32))

    @property
    def model_path(self) -> str | None:
        return str(self.engine.model.path) if self.engine.model.path else None

    def _stamps(self) -> tuple:
        return tuple(_stamp(path) for path in self._watched)

    def refresh(self, force: bool = False) -> None:
        """Swap in a recall index synced with the store if the store or the FAISS file changed on disk."""
        stamps = self._stamps()  # taken before reading, so a commit landing meanwhile triggers the next refresh
        if stamps == self._seen and not force:
            return
        with self._refresh_lock:
            if stamps == self._seen and not force:
                return
            engine = self.engine
            engine.global_index, _ = engine.load_recall_index()
            self._seen = stamps

    def query(self, path: Path, *, top_k: int, candidates: int, nprobe: int | None, exhaustive: bool,
              min_score: float | None, label: str | None = None) -> QueryResult:
        """`SearchEngine.query`, then matches below `min_score` dropped; `label` replaces the query's path."""
        for attempt in range(QUERY_ATTEMPTS):
            self.refresh(force=attempt > 0)
            try:
                result = self.engine.query(path, top_k=top_k, candidates=candidates, nprobe=nprobe, exhaustive=exhaustive)
                break
            except KeyError:  # a candidate was removed between recall and rerank
                if attempt == QUERY_ATTEMPTS - 1:
                    raise AusilError("the index kept changing during the query; try again") from None
        if min_score is not None:
            result = dataclasses.replace(result, matches=[m for m in result.matches if m.score >= min_score])
        if label is not None:
            result = dataclasses.replace(result, query=label)
        return result

    def index_stamp(self) -> tuple:
        """What changes whenever a writer commits (the store's and the FAISS file's mtime and size)."""
        return self._stamps()

    def embedded_file(self, path: Path, label: str) -> ComparedVideo:
        """A media file's embedded segments, for `compare`; InputError for unusable media."""
        engine = self.engine
        video = engine.extractor().descriptors(path)
        return ComparedVideo(engine.embed(video.descriptors), video.duration_s, label)

    def embedded_video(self, video_id: int) -> ComparedVideo | None:
        """An indexed video's stored segments, for `compare`; None when there is no such id."""
        try:
            record = self.engine.store.get(video_id)
            segments = self.engine.store.segments(video_id)
        except KeyError:
            return None
        return ComparedVideo(torch.from_numpy(segments).to(self.engine.device), record.duration_s, record.path)

    def compare(self, a: ComparedVideo, b: ComparedVideo, threshold: float | None) -> Comparison:
        return compare_videos(self.engine.model, a.segments, b.segments, a.duration_s, b.duration_s, a.name, b.name,
                              threshold)

    def info(self) -> dict:
        self.refresh()
        return self.engine.info()

    def videos(self, offset: int, limit: int) -> tuple[int, list[VideoRecord]]:
        store = self.engine.store
        return len(store), list(islice(store.iter_records(), offset, offset + limit))

    def video(self, video_id: int) -> VideoRecord | None:
        try:
            return self.engine.store.get(video_id)
        except KeyError:
            return None

    def close(self) -> None:
        self.engine.close()
