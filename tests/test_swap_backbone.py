"""Screening a backbone under another model's head (benchmarks/swap_backbone.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import swap_backbone  # noqa: E402

from ausil_search.features.spectrogram import FrontEnd  # noqa: E402
from ausil_search.model import AuSiLModel  # noqa: E402


def saved(path: Path, seed: int, frontend: FrontEnd | None = None) -> AuSiLModel:
    model = AuSiLModel.initialise(seed=seed, name=f"seed{seed}", frontend=frontend)
    model.save(path)
    return model


def test_the_output_holds_one_models_backbone_and_the_others_head(tmp_path):
    backbone_model = saved(tmp_path / "a.safetensors", seed=1)
    head_model = saved(tmp_path / "b.safetensors", seed=2)
    assert swap_backbone.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                               str(tmp_path / "out.safetensors"), "--name", "screen"]) == 0
    out = AuSiLModel.load(tmp_path / "out.safetensors")
    for key, tensor in backbone_model.backbone.state_dict().items():
        assert torch.equal(out.backbone.state_dict()[key], tensor), key
    for key, tensor in head_model.head.state_dict().items():
        assert torch.equal(out.head.state_dict()[key], tensor), key
    # the seeds' backbones differ, so keeping the head model's backbone would fail the loop above
    assert any(not torch.equal(tensor, head_model.backbone.state_dict()[key])
               for key, tensor in backbone_model.backbone.state_dict().items())
    assert out.name == "screen"
    assert out.metadata["swapped"] == {"backbone_from": backbone_model.identity, "head_from": head_model.identity}


def test_models_with_different_front_ends_are_refused(tmp_path, capsys):
    saved(tmp_path / "a.safetensors", seed=1, frontend=FrontEnd.from_step_ms(500))
    saved(tmp_path / "b.safetensors", seed=2)
    with pytest.raises(SystemExit) as exit_info:
        swap_backbone.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert "different front-ends" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
