"""The threshold calibration script (benchmarks/calibrate_threshold.py): its curves and, on a tiny
generated benchmark, the whole run."""

from __future__ import annotations

import json
import sys
from math import comb
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import calibrate_threshold as cal  # noqa: E402

from media import synth_music, write_audio_file  # noqa: E402


def test_group_curve_counts_pairs_that_chains_join():
    edges = [(0.9, 1, 2), (0.8, 2, 3), (0.5, 3, 4), (0.5, 5, 6)]
    truth = {(1, 2), (2, 3), (1, 3)}
    curve = cal.group_curve(edges, truth)
    assert [(p["threshold"], p["predicted_pairs"], p["true_pairs"]) for p in curve] == [(0.9, 1, 1), (0.8, 3, 3), (0.5, 7, 3)]
    assert curve[1]["recall"] == 1.0 and curve[2]["precision"] == pytest.approx(3 / 7)
    assert cal.lowest_reaching(curve, 0.99)["threshold"] == 0.8
    assert cal.lowest_reaching([{"threshold": 0.5, "precision": 0.5}], 0.99) is None


def test_pair_curve_and_span_truth(tmp_path):
    import numpy as np

    curve = cal.pair_curve(np.array([0.2, 0.9, 0.9, 0.5]), np.array([False, True, False, True]), total_positive=3)
    assert [(p["threshold"], p["precision"], p["recall"]) for p in curve] == [
        (pytest.approx(0.9), 0.5, pytest.approx(1 / 3)), (0.5, pytest.approx(2 / 3), pytest.approx(2 / 3)),
        (pytest.approx(0.2), 0.5, pytest.approx(2 / 3))]

    class Bench:
        annotation = {"q": {"DA": ["p"]}}
        transforms = {
            "q": {"source": "s1", "span_s": [0, 30], "chain": []},
            "p": {"source": "s1", "span_s": [5, 35], "chain": []},
            "d1": {"source": "s2", "span_s": [0, 20], "chain": []},
            "d2": {"source": "s2", "span_s": [16, 40], "chain": []},  # 4 s shared: too little
            "d3": {"source": "s3", "span_s": [0, 20], "chain": [{"name": "embed_long", "background": [["s2", [10, 60]]]}]},
            # 20 s of s4 padded with 30 s of s5's 8-s excerpt, looped: it holds all of s5 [100, 108]
            "d4": {"source": "s4", "span_s": [0, 20], "duration_s": 50, "chain": [
                {"name": "embed", "pad_factor": 1.5, "other_source": "s5", "other_span_s": [100, 108], "other_start_frac": 0.5}]},
            "d5": {"source": "s5", "span_s": [95, 130], "chain": []},
        }

    assert cal.group_pairs(Bench) == {("p", "q")}
    assert cal.span_pairs(Bench) == {("p", "q"), ("d1", "d3"), ("d2", "d3"), ("d4", "d5")}


def test_audio_truth_finds_a_loop_that_time_spans_miss(tmp_path):
    """A recording whose bars at 40-52 s repeat those at 2-14 s: excerpts of the two places share
    audio though their spans do not touch; an excerpt of other bars of the same recording does not."""

    from ausil_search.audio import SAMPLE_RATE

    sources = tmp_path / "sources"
    sources.mkdir()
    music = synth_music(60.0, SAMPLE_RATE, seed=41)[0]
    music[40 * SAMPLE_RATE: 52 * SAMPLE_RATE] = music[2 * SAMPLE_RATE: 14 * SAMPLE_RATE]
    write_audio_file(sources / "loop.flac", music[None], SAMPLE_RATE)
    write_audio_file(sources / "other.flac", synth_music(30.0, SAMPLE_RATE, seed=42), SAMPLE_RATE)
    loop, other = str(sources / "loop.flac"), str(sources / "other.flac")

    class Bench:
        annotation = {}
        transforms = {
            "early": {"source": loop, "span_s": [0, 16], "chain": []},
            "late": {"source": loop, "span_s": [39, 54], "chain": []},
            "middle": {"source": loop, "span_s": [18, 36], "chain": []},
            "elsewhere": {"source": other, "span_s": [0, 30], "chain": []},
        }

    assert cal.span_pairs(Bench) == set()
    assert cal.audio_pairs(Bench, tmp_path / "cache") == {("early", "late")}


@pytest.mark.slow
def test_calibration_run_on_a_tiny_benchmark(tmp_path, model_path, capsys):
    from ausil_search.audio import SAMPLE_RATE
    from ausil_search.benchmark import make_benchmark

    sources = tmp_path / "sources"
    sources.mkdir()
    for seed in range(4):
        write_audio_file(sources / f"track{seed}.ogg", synth_music(30.0, SAMPLE_RATE, seed=600 + seed), SAMPLE_RATE)
    bench = tmp_path / "bench"
    make_benchmark([sources], bench, groups=2, seed=3, workers=1, cache_dir=tmp_path / "cache")
    out = tmp_path / "calibration.json"
    assert cal.main([str(bench), "--model", str(model_path), "--exhaustive", "--workers", "0", "--out", str(out),
                     "--work", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())

    annotation = json.loads((bench / "annotation.json").read_text())
    n_videos = len((bench / "database.txt").read_text().splitlines()) + len(annotation)
    assert report["videos"] == n_videos and report["scored_pairs"] == comb(n_videos, 2)  # --exhaustive: every pair
    assert report["truth"] == "audio"
    saved = json.loads((bench / "audio_pairs.json").read_text())  # kept for the next model's calibration
    assert len(saved["pairs"]) == report["by_truth"]["audio"]["true_pairs"]
    assert report["by_truth"]["groups"]["true_pairs"] == sum(comb(1 + len(v["DA"]), 2) for v in annotation.values())
    truths = {name: entry["true_pairs"] for name, entry in report["by_truth"].items()}
    assert truths["groups"] <= truths["spans"] <= truths["audio"]  # each truth extends the one before
    for entry in report["by_truth"].values():
        groups = entry["curve"]["groups"]
        assert [p["threshold"] for p in groups] == sorted((p["threshold"] for p in groups), reverse=True)
        assert groups[-1]["recall"] == 1.0  # at the lowest score everything is one group
        assert all(a["recall"] <= b["recall"] for a, b in zip(groups, groups[1:]))
        average = entry["curve"]["average"]  # dedup's default grouping, over the level groups join at
        assert [p["threshold"] for p in average] == sorted((p["threshold"] for p in average), reverse=True)
        assert all(a["recall"] <= b["recall"] for a, b in zip(average, average[1:]))
    if report["threshold"] is not None:
        assert report["by_truth"][report["truth"]]["at_threshold"]["groups"]["precision"] >= 0.99
    if report["group_threshold"] is not None:
        assert report["by_truth"][report["truth"]]["at_threshold"]["average"]["precision"] >= 0.99
    overlap = report["recall_by_overlap"]
    assert sum(row["pairs"] for row in overlap) == report["by_truth"]["spans"]["true_pairs"]
    assert all(0 <= v <= 1 for row in overlap for v in row["at_least"].values())
    printed = capsys.readouterr().out
    assert "truth 'groups'" in printed
    for name in ("match threshold (single linkage)", "group threshold (average linkage)"):
        assert f"calibrated {name}" in printed or f"no {name} reaches" in printed
