"""The dev-benchmark runner's metrics (benchmarks/run_dev.py): chance level, groups, per-transform mAP."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run_dev  # noqa: E402

from ausil_search.evaluation import average_precision  # noqa: E402


@pytest.mark.parametrize("relevant,total", [(1, 1), (1, 5), (2, 5), (3, 6), (5, 5), (2, 7)])
def test_expected_random_ap_is_the_mean_over_every_ranking(relevant, total):
    aps = [
        average_precision([i in chosen for i in range(total)], relevant)
        for chosen in map(set, itertools.combinations(range(total), relevant))
    ]
    assert run_dev.expected_random_ap(relevant, total) == pytest.approx(np.mean(aps), abs=1e-12)


def test_simulated_chance_agrees_with_the_formula():
    rng = np.random.default_rng(0)
    simulated = run_dev.simulated_random_ap(3, 40, 4000, rng)
    assert simulated == pytest.approx(run_dev.expected_random_ap(3, 40), abs=0.01)


@pytest.fixture()
def bench(tmp_path) -> run_dev.Benchmark:
    db = ["a1", "a2", "b1", "x1", "x2", "x3"]
    (tmp_path / "database.txt").write_text("".join(f"{v} media/{v}.mp4\n" for v in db))
    (tmp_path / "queries.txt").write_text("qa media/qa.mp4\nqb media/qb.mp4\n")
    (tmp_path / "annotation.json").write_text(json.dumps({"qa": {"DA": ["a1", "a2"]}, "qb": {"DA": ["b1"]}}))
    (tmp_path / "groups.json").write_text(json.dumps({"qa": "core", "qb": "speed"}))
    chains = {"a1": [{"name": "mp3"}], "a2": [{"name": "noise", "snr_db": 5}, {"name": "mp3"}], "b1": [{"name": "speed"}]}
    (tmp_path / "transforms.json").write_text(json.dumps({v: {"role": "positive", "chain": c} for v, c in chains.items()}))
    return run_dev.Benchmark(tmp_path)


def test_score_run_groups_recall_and_per_transform(bench):
    sims = {
        # qa: a1 first, then a distractor, then a2 → AP = (1/1 + 2/3) / 2
        "qa": {"a1": 0.9, "x1": 0.8, "a2": 0.7, "b1": 0.1, "x2": 0.0, "x3": 0.0},
        # qb: b1 third → AP = 1/3; top-1 is not a positive
        "qb": {"x1": 0.9, "x2": 0.8, "b1": 0.7, "a1": 0.1, "a2": 0.0, "x3": 0.0},
    }
    scored = run_dev.score_run(bench, sims)
    assert scored["groups"]["core"]["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert scored["groups"]["speed"]["mAP"] == pytest.approx(1 / 3)
    assert scored["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert scored["recall@1"] == 0.5
    per = scored["per_transform"]
    # mp3: both of qa's positives carry it → the ordinary AP of qa.
    assert per["mp3"]["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    # noise: only a2 is relevant and a1 is removed, so a2 ranks second (behind x1) → AP 1/2.
    assert per["noise"]["mAP"] == pytest.approx(1 / 2)
    assert per["noise"]["queries"] == 1
    assert per["speed"]["mAP"] == pytest.approx(1 / 3)


def test_random_run_reports_chance(bench):
    scored, sims = run_dev.random_run(bench, seed=1, shuffles=500)
    assert set(sims) == {"qa", "qb"} and all(len(v) == 6 for v in sims.values())
    expected = np.mean([run_dev.expected_random_ap(2, 6), run_dev.expected_random_ap(1, 6)])
    assert scored["chance"]["analytic_mAP"] == pytest.approx(expected)
    assert scored["chance"]["simulated_mAP"] == pytest.approx(expected, abs=0.05)
    table = run_dev.markdown({"meta": {"benchmark": "b", "queries": 2, "database": 6, "database_audio_h": 0.0,
                                       "model": "m", "random_model": False, "date": "d", "machine": "2 cores"},
                              "runs": {"random": scored}})
    assert "expected mAP" in table and "| random |" in table


def test_ablation_table_has_a_column_for_each_group_present():
    def row(all_map, groups):
        return {"mAP": all_map, "groups": {g: {"mAP": m} for g, m in groups.items()}}

    meta = {"benchmark": "hard", "queries": 2, "database": 6, "database_audio_h": 0.0,
            "model": "m", "random_model": False, "date": "d", "machine": "2 cores"}
    ablation = {"mac": {"1000": row(0.5, {"hard": 0.4, "hard-speed": 0.6})},
                "full": {"1000": row(0.7, {"hard": 0.65, "hard-speed": 0.75})}}
    table = run_dev.markdown({"meta": meta, "ablation": ablation})
    assert "| components | 1000 ms all | 1000 ms hard | 1000 ms hard-speed |" in table
    assert "| full | 0.700 | 0.650 | 0.750 |" in table
    assert "ms core" not in table and "ms speed" not in table


def test_feature_cache_key_follows_the_files_not_only_their_names(bench, tmp_path):
    """A benchmark rebuilt under the same ids must not reuse features of its old files; an identical
    rebuild keeps them."""
    media = tmp_path / "media"
    media.mkdir()
    for entry in bench.database + bench.queries:
        (media / f"{entry.video_id}.mp4").write_bytes(b"x" * 100)
    before = run_dev.Benchmark(tmp_path).key()
    (media / "a2.mp4").write_bytes(b"x" * 100)  # rewritten, same bytes
    assert run_dev.Benchmark(tmp_path).key() == before
    (media / "a2.mp4").write_bytes(b"y" * 90)  # another file under the same id
    assert run_dev.Benchmark(tmp_path).key() != before
