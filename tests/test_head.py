"""The AuSiL head: embedding, comparator CNN, Chamfer similarity, batched scoring, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ausil_search.head import COMPARATOR_STRIDE, AuSiLHead, best_alignment, chamfer, tile_segments

DIM = 48


@pytest.fixture(autouse=True)
def no_autograd():
    """The head's context is a trainable parameter; these tests only run it forward."""
    with torch.no_grad():
        yield


def numpy_comparator(sim: np.ndarray, head: AuSiLHead, clip: bool = True) -> np.ndarray:
    """The comparator written out with explicit loops, TF's SYMMETRIC padding and floor pooling."""
    params = {name: p.detach().double().numpy() for name, p in head.comparator.named_parameters()}

    def conv(x: np.ndarray, name: str) -> np.ndarray:  # x (C, H, W), valid cross-correlation
        weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        k = weight.shape[-1]
        out = np.empty((weight.shape[0], x.shape[1] - k + 1, x.shape[2] - k + 1))
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[:, i, j] = np.tensordot(weight, x[:, i:i + k, j:j + k], axes=3) + bias
        return out

    def pool(x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], x.shape[1] // 2, x.shape[2] // 2))
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
        return out

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="symmetric")

    x = sim[None].astype(np.float64)
    x = pool(np.maximum(conv(pad(x), "conv1"), 0))
    x = pool(np.maximum(conv(pad(x), "conv2"), 0))
    x = conv(np.maximum(conv(pad(x), "conv3"), 0), "fconv")[0]
    return np.clip(x, -1, 1) if clip else x


def random_head(seed: int, **flags: bool) -> AuSiLHead:
    """A head with non-trivial whitening, attention and comparator biases."""
    head = AuSiLHead.identity(DIM, seed=seed, **flags)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.pca_mean.copy_(0.05 * torch.randn(DIM, generator=generator))
        head.pca_weights.copy_(torch.randn(DIM, DIM, generator=generator) / math.sqrt(DIM))
        head.context.copy_(0.3 * torch.randn(DIM, generator=generator) / math.sqrt(DIM))
        for name, parameter in head.comparator.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return head


def passthrough_head(dim: int) -> AuSiLHead:
    """Identity embedding and a comparator whose channel 0 is ReLU then the two max-pools of S."""
    head = AuSiLHead.identity(dim)
    with torch.no_grad():
        for conv in (head.comparator.conv1, head.comparator.conv2, head.comparator.conv3, head.comparator.fconv):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = 1.0
    return head


def test_parameter_names_and_shapes_are_the_model_file_keys() -> None:
    shapes = {key: tuple(value.shape) for key, value in AuSiLHead().state_dict().items()}
    assert shapes == {
        "pca_mean": (2528,),
        "pca_weights": (2528, 2528),
        "context": (2528,),
        "comparator.conv1.weight": (32, 1, 3, 3),
        "comparator.conv1.bias": (32,),
        "comparator.conv2.weight": (64, 32, 3, 3),
        "comparator.conv2.bias": (64,),
        "comparator.conv3.weight": (128, 64, 3, 3),
        "comparator.conv3.bias": (128,),
        "comparator.fconv.weight": (1, 128, 1, 1),
        "comparator.fconv.bias": (1,),
    }


def test_identity_head_is_keras_initialised_and_seeded() -> None:
    first, again, other = (AuSiLHead.identity(DIM, seed=seed) for seed in (1, 1, 2))
    for name, parameter in first.comparator.named_parameters():
        assert torch.equal(parameter, dict(again.comparator.named_parameters())[name])
        if name.endswith("bias"):
            assert not parameter.any()
        else:
            out_channels, in_channels, kh, kw = parameter.shape
            limit = math.sqrt(6 / (kh * kw * (in_channels + out_channels)))
            assert parameter.abs().max() <= limit
            assert parameter.abs().max() > 0.8 * limit  # uniform over the whole range
            assert not torch.equal(parameter, dict(other.comparator.named_parameters())[name])


def test_identity_embedding_is_half_the_unit_vector() -> None:
    x = np.random.default_rng(0).standard_normal((7, DIM)).astype(np.float32)
    embedded = AuSiLHead.identity(DIM).embed(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(embedded, 0.5 * x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    assert not AuSiLHead.identity(DIM).embed(torch.zeros(2, DIM)).isnan().any()


def test_embedding_whitens_then_attends() -> None:
    head = random_head(3)
    x = np.random.default_rng(1).random((5, DIM))
    mean, weights, context = (p.detach().double().numpy() for p in (head.pca_mean, head.pca_weights, head.context))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    white = (unit - mean) @ weights
    white /= np.linalg.norm(white, axis=1, keepdims=True)
    attended = white * (white @ context / 2 + 0.5)[:, None]
    np.testing.assert_allclose(head.embed(torch.from_numpy(x).float()).numpy(), attended, atol=1e-5)
    head.use_attention = False
    np.testing.assert_allclose(head.embed(torch.from_numpy(x).float()).numpy(), white, atol=1e-5)
    head.use_whitening = False
    np.testing.assert_allclose(head.embed(torch.from_numpy(x).float()).numpy(), unit, atol=1e-6)


@pytest.mark.parametrize(("rows", "columns"), [(4, 4), (9, 13), (17, 10), (6, 23)])
def test_comparator_matches_a_loop_reference(rows: int, columns: int) -> None:
    head = random_head(rows * columns)
    rng = np.random.default_rng(rows)
    q, p = rng.standard_normal((rows, DIM)), rng.standard_normal((columns, DIM))
    q_t, p_t = torch.from_numpy(q).float(), torch.from_numpy(p).float()
    for clip in (True, False):
        expected = numpy_comparator(q @ p.T, head, clip=clip)
        assert expected.shape == (rows // 4, columns // 4)
        np.testing.assert_allclose(head.comparator_map(q_t, p_t, clip=clip).detach().numpy(), expected, atol=1e-5)


def test_comparator_needs_four_segments_a_side() -> None:
    with pytest.raises(ValueError, match=">= 4"):
        AuSiLHead.identity(DIM).comparator_map(torch.ones(3, DIM), torch.ones(10, DIM))


def test_hard_tanh_clips_the_output() -> None:
    head = AuSiLHead.identity(DIM, seed=0)
    q = torch.randn(8, DIM)
    with torch.no_grad():
        head.comparator.fconv.weight.zero_()
        head.comparator.fconv.bias.fill_(5.0)
    assert torch.equal(head.comparator_map(q, q), torch.ones(2, 2))
    assert torch.equal(head.comparator_map(q, q, clip=False), torch.full((2, 2), 5.0))
    with torch.no_grad():
        head.comparator.fconv.bias.fill_(-5.0)
    assert torch.equal(head.comparator_map(q, q), -torch.ones(2, 2))


def test_chamfer_of_a_known_matrix() -> None:
    sim = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, -1.0]])
    assert chamfer(sim).item() == pytest.approx((3 + 4) / 2)
    assert torch.allclose(chamfer(torch.stack([sim, -sim])), torch.tensor([3.5, (-1 + 1) / 2]))


def test_tile_rule() -> None:
    x = torch.arange(3.0)[:, None]
    assert tile_segments(x)[:, 0].tolist() == [0, 1, 2] * 4
    assert len(tile_segments(torch.zeros(5, 2))) == 10
    assert len(tile_segments(torch.zeros(10, 2))) == 10
    assert len(tile_segments(torch.zeros(11, 2))) == 11
    assert len(tile_segments(torch.zeros(1, 2), minimum=4)) == 4
    assert len(tile_segments(torch.zeros(3, 2), minimum=4)) == 6
    with pytest.raises(ValueError):
        tile_segments(torch.zeros(0, 2))


def test_score_tiles_short_videos_like_the_release() -> None:
    head = random_head(5)
    rng = np.random.default_rng(2)
    q, p = (head.embed(torch.from_numpy(rng.standard_normal((n, DIM))).float()) for n in (3, 4))
    # Query doubled to 6 rows, database doubled twice to 16 columns.
    expected = numpy_comparator((torch.cat([q, q]) @ torch.cat([p, p, p, p]).T).detach().numpy(), head).max(1).mean()
    assert head.score(q, p) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("use_comparator", [True, False])
def test_score_many_equals_score_one_at_a_time(use_comparator: bool) -> None:
    head = random_head(11, use_comparator=use_comparator)
    rng = np.random.default_rng(3)
    widths = [1, 2, 3, 4, 5, 9, 10, 11, 17, 31, 60]
    candidates = [head.embed(torch.from_numpy(rng.standard_normal((w, DIM))).float()) for w in widths]
    for rows in (1, 2, 3, 4, 7, 30):
        q = head.embed(torch.from_numpy(rng.standard_normal((rows, DIM))).float())
        one_at_a_time = torch.tensor([head.score(q, p) for p in candidates])
        for budget in (None, 1 << 26, 20_000, 1):  # default, one batch, a few chunks, one per chunk
            batched = head.score_many(q, candidates, max_batch_elems=budget)
            assert batched.shape == (len(widths),)
            torch.testing.assert_close(batched, one_at_a_time, atol=1e-5, rtol=0)
    assert head.score_many(q, []).shape == (0,)


def test_a_video_matches_itself_and_its_excerpt_better_than_unrelated_audio() -> None:
    head = passthrough_head(256)
    rng = np.random.default_rng(4)
    video = head.embed(torch.from_numpy(rng.standard_normal((40, 256))).float())
    unrelated = head.embed(torch.from_numpy(rng.standard_normal((40, 256))).float())
    itself, other = head.score_many(video, [video, unrelated]).tolist()
    assert itself == pytest.approx(0.25, abs=1e-5)  # the identity head embeds to norm 0.5
    assert other < 0.1
    excerpt = video[12:28]
    assert head.score(excerpt, video) == pytest.approx(0.25, abs=1e-5)
    assert head.score(excerpt, unrelated) < 0.1


def test_passthrough_initialisation_carries_the_pooled_matrix() -> None:
    head = AuSiLHead.identity(DIM)
    head.init_passthrough_comparator(seed=0)
    q = head.embed(torch.randn(16, DIM))
    relu_sim = torch.relu(q @ q.T).numpy()
    pooled = relu_sim.reshape(4, 4, 4, 4).max(axis=(1, 3))
    np.testing.assert_allclose(head.comparator_map(q, q).detach().numpy(), pooled, atol=1e-2)


def test_best_alignment_finds_the_planted_diagonal() -> None:
    sim = 0.1 * torch.rand(20, 50, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(5, 15)
    sim[rows, rows + 25] = 0.9  # query segments 5..14 are database segments 30..39
    sim[0, 49] = 1.0  # a lone corner cell, stronger than any single diagonal cell
    assert best_alignment(sim) == (range(5, 15), range(30, 40))
    assert best_alignment(sim, stride=COMPARATOR_STRIDE) == (range(20, 60), range(120, 160))
    # A dip inside the run does not split it; only the ends are trimmed.
    sim[9, 34] = 0.0
    assert best_alignment(sim) == (range(5, 15), range(30, 40))
    # With no minimum overlap, the corner cell wins.
    assert best_alignment(sim, min_overlap=1) == (range(0, 1), range(49, 50))


def test_best_alignment_of_tiny_matrices() -> None:
    assert best_alignment(torch.tensor([[0.3]])) == (range(0, 1), range(0, 1))
    assert best_alignment(torch.tensor([[0.1, 0.2, 0.9]])) == (range(0, 1), range(2, 3))


def test_locate_finds_an_excerpt() -> None:
    head = passthrough_head(256)
    video = head.embed(torch.from_numpy(np.random.default_rng(5).standard_normal((40, 256))).float())
    assert head.locate(video[12:28], video) == (range(0, 16), range(12, 28))
    assert head.locate(video, video[12:28]) == (range(12, 28), range(0, 16))
    assert head.locate(video[:3], video[:3]) == (range(0, 3), range(0, 3))
    # Non-negative descriptors (like MAC) without whitening: every similarity is positive.
    positive = head.embed(torch.from_numpy(np.random.default_rng(6).random((40, 256))).float())
    assert head.locate(positive[20:36], positive) == (range(0, 16), range(20, 36))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_every_occurrence_is_found_in_database_order_speed_changed_one_included():
    from ausil_search.head import find_occurrences

    generator = torch.Generator().manual_seed(0)
    query = _unit(torch.randn(20, 64, generator=generator))
    database = _unit(torch.randn(220, 64, generator=generator))
    noisy = lambda x: _unit(x + 0.3 * torch.randn(x.shape, generator=generator))  # noqa: E731
    database[100:120] = noisy(query)
    database[20:40] = noisy(query)
    slower = torch.stack([query[min(19, round(k / 1.1))] for k in range(22)])  # played 10 % slower
    database[160:182] = noisy(slower)
    found = find_occurrences(query @ database.T)
    assert len(found) == 3
    for (_, columns, _), (start, stop) in zip(found, [(20, 40), (100, 120), (160, 182)]):
        assert abs(columns.start - start) <= 1 and abs(columns.stop - stop) <= 1
    assert all(abs(r.start) <= 1 and abs(r.stop - 20) <= 1 for r, _, _ in found)
    unrelated = _unit(torch.randn(220, 64, generator=generator))
    assert len(find_occurrences(query @ unrelated.T)) == 1  # the best place only, no chance diagonals


def test_an_exact_copy_is_found_whole_even_with_a_weaker_ending():
    """Banded diagonal scores tie across the band; a shifted, shorter diagonal that leaves out a
    quieter ending must not win, or a re-upload's shared span loses its last tenth."""
    from ausil_search.head import find_occurrences

    generator = torch.Generator().manual_seed(0)
    for n in (30, 120, 600):
        raw = torch.randn(n + 1, 64, generator=generator)
        video = _unit(raw[:-1] + raw[1:])  # overlapping windows: neighbours share half their audio
        video[-(n // 10):] *= 0.9  # a quieter ending, weighed less by attention
        [(rows, columns, _)] = find_occurrences(video @ video.T)
        assert (rows, columns) == (range(0, n), range(0, n))
        # and a copy that starts later in a longer video
        longer = torch.cat([_unit(torch.randn(n // 2, 64, generator=generator)), video])
        found = find_occurrences(video @ longer.T)
        rows, columns, _ = max(found, key=lambda item: item[2])
        assert rows == range(0, n) and columns == range(n // 2, n // 2 + n)


def test_a_short_database_video_inside_a_long_query_is_spanned_whole():
    """The matched columns come from a line fitted to each row's best column; rows whose search band
    the matrix's edge cuts can only err inwards and must not shorten the span (they cut 11-17 of
    these 150 columns before)."""
    from ausil_search.head import find_occurrences

    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        raw = torch.randn(601, 64, generator=generator)
        long_video = _unit(raw[:-1] + raw[1:])
        clip = _unit(long_video[200:350] + 0.5 * torch.randn(150, 64, generator=generator))  # a degraded excerpt
        [(rows, columns, _)] = find_occurrences(long_video @ clip.T)
        assert (rows.start, rows.stop) == (200, 350)
        assert columns.start <= 2 and columns.stop >= 148, (seed, columns)


def test_a_speed_changed_copy_is_spanned_to_its_ends():
    """Fitting each row's best column in the whole search band pulls a tilted run's slope towards 1
    (rows that miss scatter around the diagonal): the span must reach the copy's true ends (over 8
    seeds and ±5-15 % it was up to 36 columns off at 200 segments, now at most 4)."""
    from ausil_search.head import find_occurrences

    generator = torch.Generator().manual_seed(1)
    n = 200
    raw = torch.randn(n + 1, 64, generator=generator)
    query = _unit(raw[:-1] + raw[1:])
    for factor in (0.87, 0.9, 1.1, 1.15):  # database segments per query segment
        length = round(n * factor)
        copy = torch.stack([query[min(n - 1, int(k / factor))] for k in range(length)])
        database = torch.cat([_unit(torch.randn(n // 2, 64, generator=generator)),
                              _unit(copy + 0.4 * torch.randn(copy.shape, generator=generator)),
                              _unit(torch.randn(n // 3, 64, generator=generator))])
        rows, columns, _ = max(find_occurrences(query @ database.T), key=lambda item: item[2])
        assert (rows.start, rows.stop) == (0, n)
        assert abs(columns.start - n // 2) <= 2 and abs(columns.stop - (n // 2 + length)) <= 2, (factor, columns)
