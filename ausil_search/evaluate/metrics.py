"""FIVR-protocol evaluation: mAP and the interpolated precision-recall curve.

AP divides by the number of relevant videos *in the dataset*, so a relevant video missing from the
result file costs recall, exactly as the FIVR evaluation script scores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import AusilError

RECALL_LEVELS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


@dataclass
class EvaluationResult:
    mean_ap: float
    average_precision: dict[str, float]
    pr_curve: np.ndarray  # interpolated precision at RECALL_LEVELS
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mAP": self.mean_ap,
            "queries": len(self.average_precision),
            "average_precision": self.average_precision,
            "pr_curve": {"recall": RECALL_LEVELS.tolist(), "precision": self.pr_curve.tolist()},
            "warnings": self.warnings,
        }


def average_precision(ranked_relevance: Sequence[bool], n_relevant: int) -> float:
    """AP of a ranked list (FIVR Eq. 6): mean of precision at each relevant hit, over *all* relevant."""
    hits = np.flatnonzero(np.asarray(ranked_relevance, dtype=bool))
    if n_relevant == 0:
        return 0.0
    return float(np.sum((np.arange(len(hits)) + 1) / (hits + 1)) / n_relevant)


def interpolated_pr(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Interpolated precision at recall 0, 0.05, ..., 1 (FIVR Eq. 5).

    Operating points are score thresholds, so tied scores enter together; the point (recall 0,
    precision 1) is always on the curve, as in the common precision-recall curve definition.
    """
    order = np.argsort(-scores, kind="stable")
    scores, relevant = scores[order], relevant[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    true_pos = np.cumsum(relevant)[last_of_tie]
    precision = np.r_[true_pos / (last_of_tie + 1), 1.0]
    recall = np.r_[true_pos / max(relevant.sum(), 1), 0.0]
    return np.array([precision[recall >= level - 1e-12].max() for level in RECALL_LEVELS])


def evaluate(
    similarities: Mapping[str, Mapping[str, float]],
    annotation: Mapping[str, Mapping[str, Iterable[str]]],
    dataset_ids: Iterable[str],
    relevant_labels: Sequence[str] = ("DA",),
) -> EvaluationResult:
    dataset = set(dataset_ids)
    ap: dict[str, float] = {}
    curves: list[np.ndarray] = []
    warnings: list[str] = []
    for query, labels in annotation.items():
        if query not in similarities:
            warnings.append(f"query {query} is missing from the results")
            continue
        if query not in dataset:
            warnings.append(f"query {query} is not in the dataset")
            continue
        relevant_set = {v for label in relevant_labels for v in labels.get(label, [])} & dataset
        if not relevant_set:
            warnings.append(f"query {query} has no relevant video in the dataset")
            continue
        ranked = sorted(
            ((video, float(score)) for video, score in similarities[query].items() if video != query and video in dataset),
            key=lambda item: item[1],
            reverse=True,
        )
        ap[query] = average_precision([video in relevant_set for video, _ in ranked], len(relevant_set))

        # Videos absent from the results count as retrieved last with score 0.
        found = {video for video, _ in ranked}
        missing_relevant = len(relevant_set - found)
        n_rest = len(dataset - {query}) - len(ranked)
        scores = np.r_[[s for _, s in ranked], np.zeros(n_rest)]
        relevant = np.r_[
            [video in relevant_set for video, _ in ranked],
            np.ones(missing_relevant),
            np.zeros(n_rest - missing_relevant),
        ].astype(bool)
        curves.append(interpolated_pr(scores, relevant))
    if not ap:
        raise AusilError("no query could be evaluated: check that the annotation, results and ids files match")
    return EvaluationResult(
        mean_ap=float(np.mean(list(ap.values()))),
        average_precision=ap,
        pr_curve=np.mean(curves, axis=0),
        warnings=warnings,
    )


def plot_pr_curve(result: EvaluationResult, path: Path) -> None:
    """Draw the interpolated PR curve to a PNG (matplotlib is an optional dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AusilError("--plot needs matplotlib: pip install 'ausil-search[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(RECALL_LEVELS, result.pr_curve, color="tab:red", marker="o", linewidth=2)
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0.0, 1.0), ylim=(0.0, 1.05))
    ax.set_title(f"Interpolated PR curve, mAP = {result.mean_ap:.4f} ({len(result.average_precision)} queries)")
    ax.grid(True, linestyle="dotted")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
