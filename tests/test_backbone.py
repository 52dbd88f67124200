"""The weak_mxh64_1024 backbone: official state-dict layout, the 2528-d MAC descriptor, the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media import synth_music

from ausil_search.backbone import (
    DESCRIPTOR_DIM,
    MAC_LAYERS,
    SegmentEncoder,
    WeakMxH64,
    strip_module_prefix,
)
from ausil_search.errors import WeightsError
from ausil_search.spectrogram import FrontEnd, log_mel, segment

# DESIGN.md §2, written out by hand: conv blocks (layer, in, out, kernel); the classifier is separate.
DESIGN_CONV_BLOCKS = [
    (1, 1, 16, 3), (2, 16, 16, 3),
    (4, 16, 32, 3), (5, 32, 32, 3),
    (7, 32, 64, 3), (8, 64, 64, 3),
    (10, 64, 128, 3), (11, 128, 128, 3),
    (13, 128, 256, 3), (14, 256, 256, 3),
    (16, 256, 512, 3),
    (18, 512, 1024, 2),
]
DESIGN_MAC_LAYERS = [1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 18]
DESIGN_MAC_WIDTHS = [16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 1024]


def official_layout() -> dict[str, tuple[int, ...]]:
    layout: dict[str, tuple[int, ...]] = {}
    for layer, c_in, c_out, k in DESIGN_CONV_BLOCKS:
        layout[f"layer{layer}.0.weight"] = (c_out, c_in, k, k)
        layout[f"layer{layer}.0.bias"] = (c_out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"layer{layer}.1.{name}"] = (c_out,)
        layout[f"layer{layer}.1.num_batches_tracked"] = ()
    layout["layer19.0.weight"] = (527, 1024, 1, 1)
    layout["layer19.0.bias"] = (527,)
    return layout


def calibrated_backbone(segments: np.ndarray, seed: int = 0) -> WeakMxH64:
    """A random backbone whose BatchNorm statistics come from real log-mel input, like a trained one."""
    torch.manual_seed(seed)
    model = WeakMxH64()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    with torch.no_grad():
        model.train()(torch.from_numpy(segments).unsqueeze(1))
    return model.eval()


@pytest.fixture(scope="module")
def segments() -> np.ndarray:
    """12 log-mel segments (174 x 128) of synthetic music through the project's front-end."""
    frontend = FrontEnd()
    audio = synth_music(13.5, frontend.sample_rate, seed=7)[0]
    return segment(log_mel(audio, frontend), frontend)[:12]


@pytest.fixture(scope="module")
def backbone(segments: np.ndarray) -> WeakMxH64:
    return calibrated_backbone(segments)


@pytest.fixture(scope="module")
def reference_descriptors(backbone: WeakMxH64, segments: np.ndarray) -> np.ndarray:
    return SegmentEncoder(backbone, device="cpu", precision="fp32").encode(segments)


def test_state_dict_has_the_official_layout() -> None:
    state = WeakMxH64().state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == official_layout()


def test_official_state_dict_with_module_prefix_loads(tmp_path, backbone: WeakMxH64, segments: np.ndarray) -> None:
    path = tmp_path / "mx-h64-1024_0d3-1.17.pkl"
    torch.save({f"module.{key}": value for key, value in backbone.state_dict().items()}, path)
    loaded = WeakMxH64.from_state_dict(torch.load(path))
    x = torch.from_numpy(segments[:2]).unsqueeze(1)
    with torch.inference_mode():
        assert torch.equal(loaded(x), backbone(x))
    stripped = strip_module_prefix({"module.layer1.0.bias": 1, "layer2.0.bias": 2})
    assert stripped == {"layer1.0.bias": 1, "layer2.0.bias": 2}


def test_wrong_state_dict_is_a_weights_error(backbone: WeakMxH64) -> None:
    state = backbone.state_dict()
    del state["layer18.1.running_var"]
    with pytest.raises(WeightsError, match="missing layer18.1.running_var"):
        WeakMxH64.from_state_dict(state)
    state = backbone.state_dict()
    state["layer1.0.weight"] = torch.zeros(16, 1, 5, 5)
    with pytest.raises(WeightsError, match="layer1.0.weight has shape"):
        WeakMxH64.from_state_dict(state)


def test_descriptor_is_the_multilayer_mac(backbone: WeakMxH64, segments: np.ndarray) -> None:
    """Compare with MAC computed in numpy from the raw block outputs captured by hooks."""
    assert list(MAC_LAYERS) == DESIGN_MAC_LAYERS
    captured: dict[int, np.ndarray] = {}
    hooks = [
        getattr(backbone, f"layer{n}").register_forward_hook(
            lambda _m, _i, out, n=n: captured.__setitem__(n, out.detach().clone().numpy())
        )
        for n in DESIGN_MAC_LAYERS
    ]
    try:
        with torch.inference_mode():
            descriptor = backbone(torch.from_numpy(segments[:3]).unsqueeze(1)).numpy()
    finally:
        for hook in hooks:
            hook.remove()
    expected = []
    for n in DESIGN_MAC_LAYERS:
        fmap = captured[n].astype(np.float64)  # (B, C, H, W)
        fmap = fmap / np.maximum(np.sqrt((fmap**2).sum(axis=1, keepdims=True)), 1e-12)
        pooled = fmap.reshape(*fmap.shape[:2], -1).max(axis=2)
        expected.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    assert [e.shape[1] for e in expected] == DESIGN_MAC_WIDTHS
    np.testing.assert_allclose(descriptor, np.concatenate(expected, axis=1), atol=1e-6)


def test_descriptor_blocks_have_unit_norm(reference_descriptors: np.ndarray) -> None:
    assert reference_descriptors.shape == (12, DESCRIPTOR_DIM) == (12, sum(DESIGN_MAC_WIDTHS))
    assert reference_descriptors.dtype == np.float32
    bounds = np.cumsum([0, *DESIGN_MAC_WIDTHS])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        np.testing.assert_allclose(np.linalg.norm(reference_descriptors[:, start:stop], axis=1), 1.0, atol=1e-5)
    # Different audio gives different descriptors (the network is not collapsed).
    assert np.abs(reference_descriptors[0] - reference_descriptors[6]).max() > 1e-2


def test_descriptor_does_not_depend_on_batch_composition(
    backbone: WeakMxH64, segments: np.ndarray, reference_descriptors: np.ndarray
) -> None:
    alone = SegmentEncoder(backbone, device="cpu", batch_size=1).encode(segments[5:6])
    np.testing.assert_allclose(alone[0], reference_descriptors[5], atol=1e-5)
    shuffled = SegmentEncoder(backbone, device="cpu", batch_size=5).encode(segments[::-1])
    np.testing.assert_allclose(shuffled[::-1], reference_descriptors, atol=1e-5)


def test_encode_batches_streams(backbone: WeakMxH64, segments: np.ndarray, reference_descriptors: np.ndarray) -> None:
    encoder = SegmentEncoder(backbone, device="cpu", batch_size=4)
    streamed = encoder.encode_batches(iter([segments[:7], segments[7:7], segments[7:]]))
    np.testing.assert_allclose(streamed, reference_descriptors, atol=1e-5)
    assert encoder.encode(np.zeros((0, 174, 128), np.float32)).shape == (0, DESCRIPTOR_DIM)
    with pytest.raises(ValueError, match="segments must be"):
        encoder.encode(segments[:, :, :64])


@pytest.mark.parametrize(("precision", "max_abs", "min_cosine"), [("fused", 1e-5, 0.99999), ("bf16", 0.1, 0.995)])
def test_fast_modes_stay_close_to_fp32(
    backbone: WeakMxH64, segments: np.ndarray, reference_descriptors: np.ndarray,
    precision: str, max_abs: float, min_cosine: float,
) -> None:
    fast = SegmentEncoder(backbone, device="cpu", precision=precision).encode(segments)
    reference = reference_descriptors
    cosine = (fast * reference).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.abs(fast - reference_descriptors).max() <= max_abs
    assert cosine.min() >= min_cosine
    # The fast copy leaves the original network untouched.
    assert isinstance(backbone.layer1[1], torch.nn.BatchNorm2d)


def test_classify_gives_class_probabilities(backbone: WeakMxH64, segments: np.ndarray) -> None:
    with torch.inference_mode():
        probabilities = backbone.classify(torch.from_numpy(segments[:2]).unsqueeze(1))
    assert probabilities.shape == (2, 527)
    assert bool(((probabilities > 0) & (probabilities < 1)).all())


def test_unknown_precision_is_rejected(backbone: WeakMxH64) -> None:
    with pytest.raises(ValueError, match="precision"):
        SegmentEncoder(backbone, device="cpu", precision="int8")


@pytest.mark.slow
def test_compiled_encoder_matches_eager(backbone: WeakMxH64, segments: np.ndarray) -> None:
    """Batches are padded to one shape for the compiled graph; the padding must not leak into results."""
    eager = SegmentEncoder(backbone, device="cpu", batch_size=8, precision="fused").encode(segments)
    compiled = SegmentEncoder(backbone, device="cpu", batch_size=8, precision="fused", compile=True)
    np.testing.assert_allclose(compiled.encode(segments), eager, atol=1e-5)  # 8 + a padded 4
    np.testing.assert_allclose(compiled.encode(segments[:3]), eager[:3], atol=1e-5)
