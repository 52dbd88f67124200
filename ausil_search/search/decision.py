"""The match decision: is the AuSiL score of two videos high enough to call them duplicates?

Top-k search always returns something; a user needs a yes/no answer. It is one threshold on the
score of a pair, used by `compare` (the verdict for two files), `query --min-score` (off by default,
so that top-k stays top-k) and `dedup --linkage single` (which pairs join a group). `dedup`'s default
average linkage has its own threshold, DEFAULT_GROUP_THRESHOLD, on the mean score between two groups,
calibrated by the same rule on the same pairs (lowest level 0.3796; at 0.38 group precision 0.991 and
group recall 0.322, against 0.146 for single linkage at 0.72); `group_threshold_for` picks it as
`threshold_for` below picks the match threshold.

Where the threshold comes from, in order:
1. an explicit value (`--min-score`);
2. the model file's metadata key `match_threshold` (`group_threshold`), for a model that was calibrated
   before release;
3. DEFAULT_MATCH_THRESHOLD (DEFAULT_GROUP_THRESHOLD) below.

DEFAULT_MATCH_THRESHOLD is calibrated for the bundled default model (2026.12.01-x44) on the dev
small benchmark, by the rule issue 12 asks for: the lowest score at which `dedup`'s groups reach
precision >= 0.99, counting as duplicates the pairs that share >= 5 s of the same audio (loops
included; `calibrate_threshold.py --truth audio`):

    python benchmarks/dev_data.py --install --out bench-data --only small
    python benchmarks/calibrate_threshold.py bench-data/small --model ausil_search/models/default.safetensors

gives 0.7167; at 0.72 group precision is 0.990 with group recall 0.146 (pair precision 1.000, pair
recall 0.121). The recall is low because the model scores many true copies (heavy mixes, band limits,
partial overlaps) like unrelated audio; see BENCHMARKS.md, "Duplicate groups and the match threshold".
It lives here rather than in the model file so that the bundled file, and with it every index and
stored pair score made with it, keeps its identity. A model that was calibrated before release
carries its own value (metadata `match_threshold`); other models fall back to this one, which was not
calibrated for them: recalibrate with the command above and `--model M`.

Pairs are scored in one direction: the shorter video (fewer segments) is the query. Chamfer
similarity averages over the query's segments, so "is the shorter one's audio inside the longer
one" is what the score answers; an excerpt and the full video it was cut from score high, whichever
of the two is given first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..features.extraction import Extractor
from ..model.head import AuSiLHead
from ..model import AuSiLModel
from ..features.spectrogram import FrontEnd, segments_span_seconds

DEFAULT_MATCH_THRESHOLD = 0.72  # calibrated for the bundled default: see the module docstring
# The bundled model file it was calibrated with (the start of its SHA-256): a test fails when the bundled
# file changes and the threshold was not recalibrated.
CALIBRATED_FOR = "e6475ef5bec3"
THRESHOLD_METADATA_KEY = "match_threshold"
# The level at which `dedup`'s average linkage joins two groups (mean score over all their pairs),
# calibrated for the same file by the same rule (group precision >= 0.99 by the `audio` truth).
DEFAULT_GROUP_THRESHOLD = 0.38
GROUP_THRESHOLD_METADATA_KEY = "group_threshold"


def _chosen(model: AuSiLModel, explicit: float | None, key: str, default: float) -> float:
    if explicit is not None:
        return float(explicit)
    calibrated = model.metadata.get(key)
    return float(calibrated) if calibrated is not None else default


def threshold_for(model: AuSiLModel, explicit: float | None = None) -> float:
    """The threshold to decide with: `explicit`, else the model's calibrated one, else the default."""
    return _chosen(model, explicit, THRESHOLD_METADATA_KEY, DEFAULT_MATCH_THRESHOLD)


def group_threshold_for(model: AuSiLModel, explicit: float | None = None) -> float:
    """The level for `dedup`'s average linkage: `explicit`, else the model's calibrated one, else the default."""
    return _chosen(model, explicit, GROUP_THRESHOLD_METADATA_KEY, DEFAULT_GROUP_THRESHOLD)


def a_is_query(n_a: int, n_b: int, a_first: bool = True) -> bool:
    """Whether video a is the query side of the pair: the shorter one; on a tie, the first one."""
    return n_a < n_b or (n_a == n_b and a_first)


def shared_spans(head: AuSiLHead, a: torch.Tensor, b: torch.Tensor, duration_a: float, duration_b: float,
                 frontend: FrontEnd) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the shared audio is in a and in b (seconds), from the strongest diagonal of their similarities."""
    with torch.inference_mode():
        rows, columns = head.locate(a, b)
    return (segments_span_seconds(rows, len(a), duration_a, frontend),
            segments_span_seconds(columns, len(b), duration_b, frontend))


@dataclass
class Comparison:
    """The answer for one pair of files (or indexed videos)."""

    a: str
    b: str
    duration_a: float
    duration_b: float
    score: float
    threshold: float
    duplicate: bool
    span_a: tuple[float, float]
    span_b: tuple[float, float]
    model: str
    # every place the shorter one occurs in the longer one (as `query` lists them): (span in a, span in b, similarity)
    occurrences: list[tuple[tuple[float, float], tuple[float, float], float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_embedded(head: AuSiLHead, a: torch.Tensor, b: torch.Tensor) -> float:
    """The pair score of two embedded videos, the shorter one as the query (see the module doc)."""
    query, database = (a, b) if a_is_query(len(a), len(b)) else (b, a)
    with torch.inference_mode():
        return float(head.score(query, database))


def compare_videos(model: AuSiLModel, a: torch.Tensor, b: torch.Tensor, duration_a: float, duration_b: float,
                   name_a: str, name_b: str, threshold: float | None = None) -> Comparison:
    """The comparison of two embedded videos (segments from `head.embed` or from an index's store)."""
    head, frontend = model.head, model.frontend
    score = compare_embedded(head, a, b)
    limit = threshold_for(model, threshold)
    span_a, span_b = shared_spans(head, a, b, duration_a, duration_b, frontend)
    a_first = a_is_query(len(a), len(b))
    (query, query_s), (database, database_s) = ((a, duration_a), (b, duration_b))[::1 if a_first else -1]
    with torch.inference_mode():
        found = head.occurrences(query, database)
    occurrences = []
    for rows, columns, similarity in found:
        in_query = segments_span_seconds(rows, len(query), query_s, frontend)
        in_database = segments_span_seconds(columns, len(database), database_s, frontend)
        pair = (in_query, in_database) if a_first else (in_database, in_query)
        occurrences.append((*pair, round(similarity, 4)))
    return Comparison(a=name_a, b=name_b, duration_a=round(duration_a, 3), duration_b=round(duration_b, 3),
                      score=round(score, 4), threshold=limit, duplicate=score >= limit, span_a=span_a, span_b=span_b,
                      model=model.identity, occurrences=occurrences)


def compare_files(model: AuSiLModel, a: Path, b: Path, threshold: float | None = None,
                  device: str | None = None) -> Comparison:
    """Score two media files against each other, no index needed; raises InputError for unusable media."""
    extractor = Extractor(model, device=device, workers=0)
    head = model.head.to(extractor.device).eval()
    embedded, durations = [], []
    for path in (a, b):
        video = extractor.descriptors(Path(path))
        with torch.inference_mode():
            embedded.append(head.embed(torch.from_numpy(video.descriptors).to(extractor.device)))
        durations.append(video.duration_s)
    return compare_videos(model, embedded[0], embedded[1], durations[0], durations[1], str(a), str(b), threshold)


def apply_min_score(result, min_score: float | None):
    """A query result keeping only the matches scoring at least `min_score` (None: unchanged).

    Works on the engine's QueryResult (a dataclass with `matches`); ranks are kept as they were.
    """
    if min_score is None:
        return result
    return dataclasses.replace(result, matches=[m for m in result.matches if m.score >= min_score])


def no_match_message(min_score: float) -> str:
    return f"no match above {min_score:.2f}"


__all__ = ["CALIBRATED_FOR", "DEFAULT_MATCH_THRESHOLD", "THRESHOLD_METADATA_KEY", "Comparison", "a_is_query", "apply_min_score",
           "compare_embedded", "compare_files", "compare_videos", "no_match_message", "shared_spans", "threshold_for"]
