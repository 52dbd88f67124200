"""The paired comparison of two dev runs (benchmarks/compare_runs.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_runs  # noqa: E402


def run_file(path: Path, aps: dict[str, float], mode: str = "engine") -> Path:
    path.write_text(json.dumps({
        "meta": {"benchmark": "bench", "model": path.stem},
        "runs": {mode: {"mAP": float(np.mean(list(aps.values()))), "average_precision": aps,
                        "groups": {"core": {"mAP": 0.5}}}},
    }))
    return path


def test_a_uniform_gain_is_exact_and_certain():
    base = {f"q{i}": i / 40 for i in range(30)}
    other = {q: v + 0.1 for q, v in base.items()}
    d = compare_runs.paired_difference(base, other)
    assert d["difference"] == pytest.approx(0.1)
    assert d["ci95"] == pytest.approx([0.1, 0.1])
    assert (d["better"], d["worse"], d["queries"]) == (30, 0, 30)


def test_the_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    n = 400
    diff = rng.normal(0.05, 0.2, n)
    base = {f"q{i}": 0.5 for i in range(n)}
    other = {f"q{i}": 0.5 + diff[i] for i in range(n)}
    d = compare_runs.paired_difference(base, other)
    half = 1.96 * diff.std() / np.sqrt(n)
    assert d["difference"] == pytest.approx(diff.mean())
    assert d["ci95"][0] == pytest.approx(diff.mean() - half, abs=0.005)
    assert d["ci95"][1] == pytest.approx(diff.mean() + half, abs=0.005)


def test_only_shared_queries_are_compared():
    d = compare_runs.paired_difference({"a": 0.2, "b": 0.4}, {"b": 0.9, "c": 0.0})
    assert d["queries"] == 1 and d["difference"] == pytest.approx(0.5)


def test_command_line_verdicts(tmp_path, capsys):
    base = run_file(tmp_path / "base.json", {f"q{i}": 0.3 for i in range(30)})
    better = run_file(tmp_path / "better.json", {f"q{i}": 0.3 + 0.2 * (i % 3 > 0) for i in range(30)})
    mixed = run_file(tmp_path / "mixed.json", {f"q{i}": 0.3 + (0.2 if i % 2 else -0.2) for i in range(30)})
    assert compare_runs.main([str(base), str(better), str(mixed)]) == 0
    out = capsys.readouterr().out
    better_part, mixed_part = out.split("mixed.json")[0], out.split("mixed.json")[1]
    assert "(higher)" in better_part and "20 queries better, 0 worse of 30" in better_part
    assert "(not distinguishable)" in mixed_part and "15 queries better, 15 worse" in mixed_part


def test_a_file_without_the_mode_is_a_one_line_error(tmp_path):
    base = run_file(tmp_path / "base.json", {"q": 0.3})
    other = run_file(tmp_path / "other.json", {"q": 0.3}, mode="exhaustive")
    with pytest.raises(SystemExit, match="no 'engine' run"):
        compare_runs.main([str(base), str(other)])


def test_fusing_two_runs_weights_scores_and_fills_a_missing_candidate_with_the_runs_lowest():
    import fuse_runs

    a = {"q": {"v1": 0.9, "v2": 0.1}}
    b = {"q": {"v1": 0.5, "v3": 0.7}}
    fused = fuse_runs.fuse(a, b, 0.5)["q"]
    assert fused["v1"] == pytest.approx(0.7)
    assert fused["v2"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)  # b never recalled v2: b's lowest for q
    assert fused["v3"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.7)
    assert fuse_runs.fuse(a, b, 0.0)["q"]["v1"] == pytest.approx(0.9)
