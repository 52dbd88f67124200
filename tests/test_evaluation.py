"""FIVR-protocol evaluation on hand-worked cases."""

import numpy as np
import pytest

from ausil_search.errors import AusilError
from ausil_search.evaluation import RECALL_LEVELS, evaluate, interpolated_pr


def test_average_precision_divides_by_all_relevant_in_dataset():
    # Ranked: r1 (hit), n1, r2 (hit), n2; r3 is relevant but absent from the results.
    sims = {"q": {"r1": 0.9, "n1": 0.8, "r2": 0.7, "n2": 0.1}}
    annotation = {"q": {"DA": ["r1", "r2", "r3"]}}
    result = evaluate(sims, annotation, ["q", "r1", "r2", "r3", "n1", "n2"])
    assert result.average_precision["q"] == pytest.approx((1 / 1 + 2 / 3) / 3)


def test_query_itself_and_videos_outside_dataset_are_ignored():
    sims = {"q": {"q": 1.0, "x": 0.95, "r": 0.5, "n": 0.4}}
    annotation = {"q": {"DA": ["r", "outside"], "ND": ["n"]}}
    result = evaluate(sims, annotation, ["q", "r", "n"])
    assert result.average_precision["q"] == pytest.approx(1.0)
    # With ND counted as relevant too, both hits are at ranks 1 and 2.
    result = evaluate(sims, annotation, ["q", "r", "n"], relevant_labels=["DA", "ND"])
    assert result.average_precision["q"] == pytest.approx(1.0)


def test_mean_over_queries_and_warnings():
    sims = {"a": {"x": 0.2, "y": 0.9}, "b": {"x": 0.9, "y": 0.1}}
    annotation = {"a": {"DA": ["x"]}, "b": {"DA": ["x"]}, "c": {"DA": ["x"]}, "d": {"DA": ["zzz"]}}
    result = evaluate(sims, annotation, ["a", "b", "d", "x", "y"])
    assert result.average_precision == pytest.approx({"a": 0.5, "b": 1.0})
    assert result.mean_ap == pytest.approx(0.75)
    assert any("c" in w for w in result.warnings) and any("d" in w for w in result.warnings)


def test_nothing_to_evaluate_is_an_error():
    with pytest.raises(AusilError):
        evaluate({}, {"q": {"DA": ["x"]}}, ["q", "x"])


def test_interpolated_pr_curve():
    # relevance by rank: 1 0 1 0 ; 2 relevant.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([1, 0, 1, 0], dtype=bool)
    curve = interpolated_pr(scores, relevant)
    assert len(curve) == len(RECALL_LEVELS) == 21
    # recall ≤ 0.5 reachable at precision 1 (first hit); above 0.5 best precision is 2/3.
    assert np.allclose(curve[RECALL_LEVELS <= 0.5], 1.0)
    assert np.allclose(curve[RECALL_LEVELS > 0.5], 2 / 3)


def test_tied_scores_enter_together():
    # A tie between a non-relevant and a relevant video: the tie is one operating point (precision 1/2).
    curve = interpolated_pr(np.array([0.5, 0.5]), np.array([0, 1], dtype=bool))
    assert np.allclose(curve[1:], 0.5)
    assert curve[0] == 1.0
