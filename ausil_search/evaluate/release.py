"""The original release's three steps — extract, similarity, evaluate — on this project's models.

Inputs and outputs match the release scripts, so existing video lists, feature folders and
annotation files keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import copy

import numpy as np
import torch

from ..errors import InputError
from ..features.extraction import Extractor
from ..features.feature_files import stored_descriptors
from .formats import (
    HDF5FeatureWriter,
    ListEntry,
    chunked,
    feature_path,
    save_feature_file,
)
from ..model.head import AuSiLHead
from ..model import AuSiLModel
from ..progress import Progress, Stage, silent, track

Reporter = Callable[[str], None]


@dataclass
class ExtractSummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    segments: int = 0
    audio_seconds: float = 0.0
    output: str = ""

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "written": len(self.written),
            "skipped": self.skipped,
            "segments": self.segments,
            "audio_seconds": round(self.audio_seconds, 3),
        }


def hdf5_output_path(output: Path) -> Path:
    output = Path(output)
    return output if output.suffix.lower() in (".h5", ".hdf5") else output / "features.hdf5"


def extract_features(
    entries: list[ListEntry],
    output: Path,
    extractor: Extractor,
    file_format: Literal["npz", "hdf5"] = "npz",
    progress: Progress = silent,
) -> ExtractSummary:
    """Write each video's backbone descriptors; unusable files are recorded in `skipped` and passed over.

    `progress` hears of the `extract` stage, one video (its id) at a time.
    """
    summary = ExtractSummary()
    stage = Stage(progress, "extract", len(entries))
    hdf5 = None
    if file_format == "hdf5":
        summary.output = str(hdf5_output_path(output))
        hdf5 = HDF5FeatureWriter(
            Path(summary.output),
            attrs={"model": extractor.model.identity, "step_frames": extractor.frontend.step_frames},
        )
    else:
        summary.output = str(output)
    try:
        for entry, video in zip(entries, extractor.run([e.path for e in entries])):
            if not video.ok:
                summary.skipped[entry.video_id] = video.error or "unknown error"
            else:
                if hdf5 is not None:
                    hdf5.write(entry.video_id, video.descriptors)
                else:
                    save_feature_file(feature_path(output, entry.video_id), video.descriptors)
                summary.written.append(entry.video_id)
                summary.segments += len(video.descriptors)
                summary.audio_seconds += video.duration_s
            stage.advance(entry.video_id, skipped=video.error and f"{entry.video_id}: {video.error}")
    finally:
        if hdf5 is not None:
            hdf5.close()
    return summary


class FeatureSource:
    """Segment descriptors for list entries that name either feature files or media files."""

    def __init__(self, model: AuSiLModel, extractor_factory: Callable[[], Extractor]):
        self.model = model
        self._extractor_factory = extractor_factory
        self._extractor: Extractor | None = None

    def descriptors(self, entry: ListEntry) -> np.ndarray:
        stored = stored_descriptors(entry.path)
        if stored is not None:  # no network needed for feature files
            return stored
        if self._extractor is None:
            self._extractor = self._extractor_factory()
        return self._extractor.descriptors(entry.path).descriptors


@dataclass
class SimilarityResult:
    similarities: dict[str, dict[str, float]]
    skipped: dict[str, str]


# The paper's component ablation: which parts of the head take part in the similarity.
# Each set adds one component to the previous one: MAC descriptors only (Chamfer over raw
# L2-normalised descriptors), + PCA whitening, + attention, + the comparator CNN (full AuSiL).
COMPONENTS: dict[str, dict[str, bool]] = {
    "mac": {"use_whitening": False, "use_attention": False, "use_comparator": False},
    "mac+w": {"use_whitening": True, "use_attention": False, "use_comparator": False},
    "mac+w+a": {"use_whitening": True, "use_attention": True, "use_comparator": False},
    "full": {"use_whitening": True, "use_attention": True, "use_comparator": True},
}


def head_with_components(head: AuSiLHead, components: str) -> AuSiLHead:
    """A view of `head` (sharing its weights) with only the named components switched on."""
    if components not in COMPONENTS:
        raise InputError(f"unknown components {components!r}: choose from {', '.join(COMPONENTS)}")
    view = copy.copy(head)
    for flag, value in COMPONENTS[components].items():
        setattr(view, flag, value)
    return view


def _embed(head: AuSiLHead, descriptors: np.ndarray, device: torch.device) -> torch.Tensor:
    with torch.inference_mode():
        return head.embed(torch.from_numpy(np.ascontiguousarray(descriptors)).to(device))


def compute_similarities(
    queries: list[ListEntry],
    database: list[ListEntry],
    model: AuSiLModel,
    source: FeatureSource,
    device: torch.device | str = "cpu",
    chunk_size: int = 32,
    progress: Progress = silent,
    components: str = "full",
) -> SimilarityResult:
    """Exhaustive AuSiL scores of every query against every database video (release JSON layout).

    `components` selects the ablation of COMPONENTS; the default is the full model. `progress`
    hears of the `similarity` stage, one database video at a time.
    """
    device = torch.device(device)
    model.head.to(device).eval()
    head = head_with_components(model.head, components)
    skipped: dict[str, str] = {}
    query_embeddings: dict[str, torch.Tensor] = {}
    for entry in queries:
        try:
            query_embeddings[entry.video_id] = _embed(head, source.descriptors(entry), device)
        except InputError as exc:
            skipped[entry.video_id] = str(exc)
    similarities: dict[str, dict[str, float]] = {qid: {} for qid in query_embeddings}

    def embedded_database() -> Iterator[tuple[str, torch.Tensor]]:
        for entry in track(progress, "similarity", database, len(database)):
            try:
                yield entry.video_id, _embed(head, source.descriptors(entry), device)
            except InputError as exc:
                skipped[entry.video_id] = str(exc)

    with torch.inference_mode():
        for chunk in chunked(embedded_database(), chunk_size):
            ids = [video_id for video_id, _ in chunk]
            candidates = [embedding for _, embedding in chunk]
            for query_id, query in query_embeddings.items():
                scores = head.score_many(query, candidates).tolist()
                similarities[query_id].update(zip(ids, scores))
    return SimilarityResult(similarities, skipped)
