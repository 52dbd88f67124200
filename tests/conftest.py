"""Shared fixtures: a model file written by the tests themselves (no downloads, no shipped weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """A seeded random model: random backbone, identity whitening, neutral attention, pass-through comparator.

    Random convolutional features of a log-mel still separate different recordings and survive
    re-encoding, which is all the end-to-end tests need; trained weights are not required for them.
    """
    from ausil_search.model import AuSiLModel

    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    AuSiLModel.initialise(seed=7, name="test-random").save(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep tests away from the user's weight cache, so 'no model' paths behave the same everywhere."""
    monkeypatch.setenv("AUSIL_SEARCH_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
