"""The `similarity --components` ablation: each set computes exactly what the paper's ablation names.

Scores are recomputed here from the descriptors with plain numpy, independently of the head's code,
for a model whose whitening and attention are far from neutral (so that every component matters).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.model import AuSiLModel
from ausil_search.release import COMPONENTS, head_with_components

DIM = 2528


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chamfer(q: np.ndarray, p: np.ndarray) -> float:
    return float((q @ p.T).max(axis=1).mean())


@pytest.fixture(scope="module")
def ablation_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    rng = np.random.default_rng(3)
    model = AuSiLModel.initialise(seed=5, name="ablation-test")
    with torch.no_grad():
        model.head.pca_mean.copy_(torch.from_numpy(rng.normal(0, 0.01, DIM).astype(np.float32)))
        model.head.pca_weights.copy_(torch.from_numpy(rng.normal(0, 1 / np.sqrt(DIM), (DIM, DIM)).astype(np.float32)))
        model.head.context.copy_(torch.from_numpy(rng.normal(0, 1 / np.sqrt(DIM), DIM).astype(np.float32)))
    model_path = root / "model.safetensors"
    model.save(model_path)

    # MAC descriptors are non-negative; a shared component makes some pairs similar.
    base = np.abs(rng.normal(size=(40, DIM)))
    videos = {}
    for name, rows in {"q1": 12, "q2": 6, "d1": 30, "d2": 7, "d3": 15}.items():
        start = rng.integers(0, 40 - min(rows, 20))
        shared = base[start:start + min(rows, 20)]
        shared = np.resize(shared, (rows, DIM))
        videos[name] = (shared + 0.8 * np.abs(rng.normal(size=(rows, DIM)))).astype(np.float32)
        np.save(root / f"{name}.npy", videos[name])
    (root / "queries.txt").write_text("".join(f"{q} {root / q}.npy\n" for q in ("q1", "q2")))
    (root / "database.txt").write_text("".join(f"{d} {root / d}.npy\n" for d in ("d1", "d2", "d3")))
    return root, model_path, videos, AuSiLModel.load(model_path)


def _run_similarity(root, model_path, components: str) -> dict:
    out = root / f"sim-{components}.json"
    args = ["similarity", "-q", str(root / "queries.txt"), "-d", str(root / "database.txt"),
            "-o", str(out), "--model", str(model_path), "--device", "cpu", "--components", components]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _expected(model: AuSiLModel, videos: dict, components: str) -> dict:
    mean = model.head.pca_mean.detach().double().numpy()
    weights = model.head.pca_weights.detach().double().numpy()
    context = model.head.context.detach().double().numpy()

    def embed(x: np.ndarray) -> np.ndarray:
        x = _normalise(x.astype(np.float64))
        if components != "mac":
            x = _normalise((x - mean) @ weights)
        if components == "mac+w+a":
            x = x * ((x @ context) / 2 + 0.5)[:, None]
        return x

    return {q: {d: _chamfer(embed(videos[q]), embed(videos[d])) for d in ("d1", "d2", "d3")} for q in ("q1", "q2")}


@pytest.mark.parametrize("components", ["mac", "mac+w", "mac+w+a"])
def test_components_without_comparator_are_chamfer_over_the_named_embedding(ablation_setup, components):
    root, model_path, videos, model = ablation_setup
    got = _run_similarity(root, model_path, components)
    expected = _expected(model, videos, components)
    for q in expected:
        for d in expected[q]:
            assert got[q][d] == pytest.approx(expected[q][d], abs=1e-5), (components, q, d)


def test_full_uses_the_comparator_and_each_component_changes_the_scores(ablation_setup):
    root, model_path, videos, model = ablation_setup
    results = {c: _run_similarity(root, model_path, c) for c in COMPONENTS}
    # The default (no flag) is the full model.
    args = ["similarity", "-q", str(root / "queries.txt"), "-d", str(root / "database.txt"),
            "-o", str(root / "default.json"), "--model", str(model_path), "--device", "cpu"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert json.loads((root / "default.json").read_text()) == results["full"]

    head = model.head.eval()
    with torch.no_grad():
        for q in ("q1", "q2"):
            qe = head.embed(torch.from_numpy(videos[q]))
            for d in ("d1", "d2", "d3"):
                full = head.score(qe, head.embed(torch.from_numpy(videos[d])))
                assert results["full"][q][d] == pytest.approx(full, abs=1e-5)
    flat = {c: np.array([results[c][q][d] for q in ("q1", "q2") for d in ("d1", "d2", "d3")]) for c in COMPONENTS}
    names = list(COMPONENTS)
    for a, b in zip(names, names[1:]):
        assert np.abs(flat[a] - flat[b]).max() > 1e-3, f"{a} and {b} give the same scores"


def test_component_view_leaves_the_model_untouched(ablation_setup):
    _, _, _, model = ablation_setup
    view = head_with_components(model.head, "mac")
    assert not (view.use_whitening or view.use_attention or view.use_comparator)
    assert model.head.use_whitening and model.head.use_attention and model.head.use_comparator
    assert view.pca_weights is model.head.pca_weights


def test_unknown_components_are_a_one_line_error(ablation_setup):
    root, model_path, _, _ = ablation_setup
    result = CliRunner().invoke(cli, ["similarity", "-q", str(root / "queries.txt"), "-d", str(root / "database.txt"),
                                      "--model", str(model_path), "--components", "whitening"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
