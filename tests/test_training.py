"""Training the AuSiL head: whitening maths, self-supervised triplets from real encoded audio,
loss going down, and checkpoints that resume to exactly the uninterrupted state."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.model import AuSiLModel
from ausil_search.train.descriptors import DescriptorCache, DescriptorSource, backbone_fingerprint
from ausil_search.train.configs import SelfSupervisedConfig, TrainConfig
from ausil_search.train.examples import self_supervised_examples
from ausil_search.train.head_trainer import HeadTrainer
from ausil_search.train.mining import global_features, mine_hard_negatives
from ausil_search.train.pools import examples_pool
from ausil_search.train.whitening import fit_whitening, fit_whitening_report
from ausil_search.head import AuSiLHead
from media import synth_music, write_audio_file

SR = 44100
SELF_SUPERVISED = SelfSupervisedConfig(examples_per_recording=2, database_seconds=(9.0, 11.0), query_seconds=(6.0, 7.0))


# --------------------------------------------------------------------------- whitening


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_whitening_gives_identity_covariance_in_leading_dims():
    rng = np.random.default_rng(0)
    dim, n = 48, 6000
    mixing = rng.standard_normal((dim, dim)) * np.geomspace(3.0, 0.05, dim)[:, None]
    data = (rng.standard_normal((n, dim)) @ mixing + 4.0).astype(np.float32)  # strongly correlated, off-centre
    mean, weights = fit_whitening(np.array_split(data, 7))  # streamed in uneven chunks
    assert weights.shape == (dim, dim) and mean.shape == (dim,)
    whitened = (_l2(data) - mean) @ weights
    covariance = np.cov(whitened[:, :16], rowvar=False, bias=True)
    assert np.abs(covariance - np.eye(16)).max() < 0.05
    # columns are scaled eigenvectors: mutually orthogonal, norms 1/sqrt(λ + eps) growing as λ falls
    gram = weights.T @ weights
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-3 * np.diag(gram).max()
    assert np.all(np.diff(np.diag(gram)) >= -1e-3 * np.diag(gram)[:-1])


def test_ledoit_wolf_estimate_matches_its_definition_and_guards_few_segments():
    rng = np.random.default_rng(1)
    dim, n = 40, 300
    data = (rng.standard_normal((n, dim)) * np.geomspace(2.0, 0.2, dim) + 1.0).astype(np.float32)
    fit = fit_whitening_report([data[:100], data[100:]])
    y = _l2(data.astype(np.float64))
    y -= y.mean(0)
    covariance = y.T @ y / n
    mu = np.trace(covariance) / dim
    delta_sq = np.square(covariance - mu * np.eye(dim)).sum() / dim
    beta_sq = sum(np.square(np.outer(row, row) - covariance).sum() for row in y) / (n * n * dim)
    assert fit.ledoit_wolf == pytest.approx(min(beta_sq, delta_sq) / delta_sq, rel=1e-4)
    assert fit.shrinkage == pytest.approx(max(fit.ledoit_wolf, dim / (n + dim)))
    # fewer segments than dims: finite, and matching rows are not whitened apart
    few = data[:20]
    few_fit = fit_whitening_report([np.repeat(few, 2, axis=0) + 0.01 * rng.standard_normal((40, dim)).astype(np.float32)])
    assert few_fit.shrinkage >= dim / (40 + dim) and np.isfinite(few_fit.weights).all()
    w = _l2((_l2(few) - few_fit.mean) @ few_fit.weights)
    assert np.mean(np.abs(w @ w.T)[~np.eye(20, dtype=bool)]) > 0.05


def test_batched_comparator_equals_one_pair_at_a_time():
    torch.manual_seed(0)
    head = AuSiLHead.identity(32, seed=3)
    queries = [torch.randn(n, 32) for n in (4, 9, 13)]
    databases = [torch.randn(n, 32) for n in (10, 23, 11)]
    maps, valid = head.compare_pairs(queries, databases)
    for i, (q, p) in enumerate(zip(queries, databases)):
        alone = head.comparator_map(q, p, clip=False)
        h, w = alone.shape
        assert valid[i].sum() == h * w and valid[i, :h, :w].all()
        torch.testing.assert_close(maps[i, :h, :w], alone, atol=1e-5, rtol=1e-5)


def test_training_scores_are_the_engine_scores():
    """The batched, masked Chamfer the trainer optimises equals what a query ranks by."""
    torch.manual_seed(1)
    head = AuSiLHead.identity(32, seed=4)
    queries = [head.embed(torch.randn(n, 32)) for n in (4, 9, 13, 6)]
    databases = [head.embed(torch.randn(n, 32)) for n in (10, 23, 11, 40)]
    scores = head.chamfer_pairs(*head.compare_pairs(queries, databases))
    expected = [head.score(q, p) for q, p in zip(queries, databases)]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    head.use_comparator = False
    scores = head.chamfer_pairs(*head.compare_pairs(queries, databases))
    torch.testing.assert_close(scores, torch.tensor([head.score(q, p) for q, p in zip(queries, databases)]))


# --------------------------------------------------------------------------- training on generated audio


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    for i in range(5):
        write_audio_file(root / f"rec{i}.flac", synth_music(13.0 + i, SR, seed=500 + i), SR)
    return root


@pytest.fixture(scope="module")
def pool_setup(recordings, tmp_path_factory):
    """A self-supervised pool (real augmentations, real backbone), a whitening fitted to it, hard negatives."""
    model = AuSiLModel.initialise(seed=7)
    cache_path = tmp_path_factory.mktemp("cache") / "descriptors.h5"
    with DescriptorCache(cache_path, backbone_fingerprint(model.backbone, model.frontend)) as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache)
        left_out = []
        examples = self_supervised_examples(sorted(recordings.glob("*.flac")), source, SELF_SUPERVISED,
                                            lambda stage, done, total=None, skipped=None, **_: skipped and left_out.append(skipped))
    assert not left_out and len(examples) == 10
    assert {e.mode for e in examples} == {"core", "speed"}
    pool = examples_pool(examples)
    mean, weights = fit_whitening(pool.videos)  # fewer segments than dims: the low-rank path
    model.head.pca_mean.data, model.head.pca_weights.data = torch.from_numpy(mean), torch.from_numpy(weights)
    features = global_features(model.head, pool.videos, torch.device("cpu"))
    hard, report = mine_hard_negatives(pool, features, margin=0.2)
    return model, pool, hard, cache_path


def test_self_supervised_pool_has_the_right_negatives(pool_setup):
    _, pool, hard, _ = pool_setup
    groups = [name.split(":")[0] for name in pool.names]
    for (anchor, positive), allowed, chosen in zip(pool.pairs, pool.negatives, hard):
        assert groups[anchor] == groups[positive] and pool.names[positive].endswith("database")
        assert positive not in allowed and anchor not in allowed
        assert all(pool.names[n].endswith("database") for n in allowed)
        assert set(chosen) <= set(allowed) and len(chosen) > 0
        assert any(groups[n] != groups[anchor] for n in allowed)


def _trainer(pool_setup, steps, checkpoint_dir=None, lr=3e-3):
    model, pool, hard, _ = pool_setup
    config = TrainConfig(steps=steps, batch_size=6, lr=lr, checkpoint_every=4, seed=5)
    return HeadTrainer(copy.deepcopy(model.head), pool, hard, config, "cpu", checkpoint_dir)


def test_training_lowers_the_loss(pool_setup):
    trainer = _trainer(pool_setup, steps=30)
    everything = trainer.all_triplets()
    before = trainer.evaluate_loss(everything)
    trainer.train()
    after = trainer.evaluate_loss(everything)
    losses = [r.loss for r in trainer.history]
    print(f"loss on every triplet {before:.4f} -> {after:.4f}")
    assert after < before - 0.01, (before, after)
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert trainer.head.context.abs().sum() > 0  # attention moved from neutral


def test_checkpoint_resume_reaches_the_uninterrupted_state(pool_setup, tmp_path):
    uninterrupted = _trainer(pool_setup, steps=10)
    uninterrupted.train()

    interrupted = _trainer(pool_setup, steps=10, checkpoint_dir=tmp_path)

    def stop_at_7(record):
        if record.step == 7:
            raise KeyboardInterrupt  # what Ctrl-C does after finishing a step

    with pytest.raises(KeyboardInterrupt):
        interrupted.train(stop_at_7)
    assert interrupted.step == 7 and (tmp_path / "checkpoint.pt").is_file()

    resumed = _trainer(pool_setup, steps=10, checkpoint_dir=tmp_path)
    resumed.load_checkpoint()
    assert resumed.step == 7
    resumed.train()
    expected, got = uninterrupted.head.state_dict(), resumed.head.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [r.loss for r in resumed.history] == [r.loss for r in uninterrupted.history]

    changed = _trainer(pool_setup, steps=10, checkpoint_dir=tmp_path, lr=1e-2)
    with pytest.raises(Exception, match="lr"):
        changed.load_checkpoint()


def test_train_command_writes_a_model_and_report(pool_setup, recordings, tmp_path):
    _, _, _, cache_path = pool_setup
    start = tmp_path / "start.safetensors"
    AuSiLModel.initialise(seed=7).save(start)
    out = tmp_path / "trained.safetensors"
    args = [
        "train", str(recordings), "--model", str(start), "-o", str(out), "--steps", "6", "--batch", "4",
        "--whitening", "keep", "--cache", str(cache_path), "--examples-per-file", "2",
        "--database-seconds", "9:11", "--query-seconds", "6:7", "--checkpoint-dir", str(tmp_path / "ckpt"), "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # every descriptor comes from the cache the fixture filled (same examples, same keys)
    assert report["steps"] == 6 and report["extraction"]["segments_extracted"] == 0
    # the report's keys and their order are an interface (scripts read them): HeadTrainingReport.to_dict()
    assert list(report) == ["steps", "resumed_at", "train_seconds", "steps_per_s", "loss", "pool", "extraction",
                            "mining", "device", "seconds", "output", "model"]
    assert list(report["loss"]) == ["first_steps_mean", "last_steps_mean", "curve", "last_active_fraction",
                                    "last_regularisation"]
    trained = AuSiLModel.load(out)
    assert trained.metadata["training"]["config"]["steps"] == 6
    assert not torch.equal(trained.head.context, torch.zeros_like(trained.head.context))
    assert (tmp_path / "trained.report.json").read_text() == json.dumps(report, indent=1)
    # the checkpoint exists now: a second run must say how to continue instead of overwriting it
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output and "Traceback" not in again.output


def test_fit_whitening_reads_whole_recordings_when_no_limit_is_given(recordings, tmp_path):
    """Without --max-seconds every segment of every recording counts (it used to crash on the unbounded read)."""
    from ausil_search.spectrogram import FrontEnd, segment_count

    model_path = tmp_path / "init.safetensors"
    AuSiLModel.initialise(seed=2).save(model_path)
    out = tmp_path / "whitened.safetensors"
    result = CliRunner().invoke(cli, ["fit-whitening", str(recordings), "--model", str(model_path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    frontend = FrontEnd()
    expected = sum(segment_count(1 + round((13.0 + i) * SR) // frontend.hop_length, frontend) for i in range(5))
    assert summary["files"] == 5 and summary["segments"] == expected
    assert list(summary) == ["segments", "shrinkage", "ledoit_wolf", "eps", "mean_eigenvalue", "dims_for_90pct_variance",
                             "width", "files", "extraction", "output", "model"]
    assert summary["model"] == AuSiLModel.load(out).identity
    assert not out.with_suffix(".report.json").exists()  # fit-whitening prints its report; the model records the fit
    whitened = AuSiLModel.load(out)
    assert not torch.equal(whitened.head.pca_weights, torch.eye(whitened.head.pca_weights.shape[0]))


def test_train_width_narrows_the_head_from_cached_descriptors(pool_setup, recordings, tmp_path):
    """`train --width D` keeps the top D whitening components, with the descriptors from an existing cache."""
    _, _, _, cache_path = pool_setup
    start = tmp_path / "start.safetensors"
    AuSiLModel.initialise(seed=7).save(start)
    out = tmp_path / "narrow.safetensors"
    result = CliRunner().invoke(cli, [
        "train", str(recordings), "--model", str(start), "-o", str(out), "--steps", "3", "--batch", "4",
        "--width", "48", "--cache", str(cache_path), "--examples-per-file", "2", "--database-seconds", "9:11",
        "--query-seconds", "6:7", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["extraction"]["segments_extracted"] == 0 and report["whitening"]["width"] == 48
    narrow = AuSiLModel.load(out)
    assert tuple(narrow.head.pca_weights.shape) == (2528, 48) and tuple(narrow.head.context.shape) == (48,)
    assert narrow.metadata["training"]["config"]["width"] == 48
    segments = torch.from_numpy(np.random.default_rng(1).standard_normal((6, 2528)).astype(np.float32))
    assert tuple(narrow.head.embed(segments).shape) == (6, 48)


def test_fit_whitening_width_keeps_the_leading_components(tmp_path):
    rng = np.random.default_rng(3)
    files = []
    for k in range(2):
        files.append(tmp_path / f"f{k}.npz")
        np.savez(files[-1], features=rng.standard_normal((150, 2528)).astype(np.float32) * np.geomspace(5, 0.1, 2528))
    model_path = tmp_path / "init.safetensors"
    AuSiLModel.initialise(seed=2).save(model_path)
    full, narrow = tmp_path / "full.safetensors", tmp_path / "narrow.safetensors"
    for out, extra in ((full, []), (narrow, ["--width", "32"])):
        result = CliRunner().invoke(cli, ["fit-whitening", *map(str, files), "--model", str(model_path), "-o", str(out),
                                          "--json", *extra])
        assert result.exit_code == 0, result.output
    wide, thin = AuSiLModel.load(full).head, AuSiLModel.load(narrow).head
    assert wide.width == 2528 and thin.width == 32
    torch.testing.assert_close(thin.pca_weights, wide.pca_weights[:, :32])
    too_wide = CliRunner().invoke(cli, ["fit-whitening", str(files[0]), "--model", str(model_path), "-o",
                                        str(tmp_path / "x.safetensors"), "--width", "3000"])
    assert too_wide.exit_code == 1 and "width" in too_wide.output and "Traceback" not in too_wide.output


def test_old_import_paths_still_work():
    import ausil_search.backbone_training as old_backbone
    import ausil_search.training as old_head
    from ausil_search.train import backbone_trainer, backbone_views, head_job, head_trainer

    assert old_head.HeadTrainer is head_trainer.HeadTrainer and old_head.train_model is head_job.train_model
    assert old_backbone.ViewRecipe is backbone_views.ViewRecipe
    assert old_backbone.train_backbone is backbone_trainer.train_backbone


def test_long_examples_put_a_short_query_inside_a_long_window(recordings, pool_setup):
    """long_fraction draws database windows and queries from their own ranges; 0 keeps the old draws."""
    from dataclasses import replace

    model, _, _, cache_path = pool_setup
    paths = sorted(recordings.glob("*.flac"))[:2]
    with DescriptorCache(cache_path, backbone_fingerprint(model.backbone, model.frontend)) as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache)
        default = self_supervised_examples(paths, source, SELF_SUPERVISED)
        unchanged = self_supervised_examples(paths, source, replace(SELF_SUPERVISED, long_database_seconds=(1.0, 2.0)))
        long = self_supervised_examples(paths, source, replace(SELF_SUPERVISED, long_fraction=1.0, modes=("hard",),
                                                                 long_database_seconds=(12.5, 13.0),
                                                                 short_query_seconds=(3.0, 4.0)))
    assert [(e.database_span, e.query_span) for e in unchanged] == [(e.database_span, e.query_span) for e in default]
    for example in long:
        (d0, d1), (q0, q1) = example.database_span, example.query_span
        assert 12.5 <= d1 - d0 <= 13.0 and 3.0 <= q1 - q0 <= 4.0 and d0 <= q0 and q1 <= d1
        assert example.mode == "hard"


def test_degraded_database_windows_keep_every_span_and_query_and_change_only_the_window(recordings, pool_setup):
    """degraded_database_fraction=1 degrades each database window (same span, same length, other
    audio), leaves the augmented queries as they were; 0 is the old draw exactly."""
    from dataclasses import replace

    model, _, _, cache_path = pool_setup
    paths = sorted(recordings.glob("*.flac"))[:3]
    with DescriptorCache(cache_path, backbone_fingerprint(model.backbone, model.frontend)) as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache)
        clean = self_supervised_examples(paths, source, SELF_SUPERVISED)
        degraded = self_supervised_examples(paths, source, replace(SELF_SUPERVISED, degraded_database_fraction=1.0))
        half = self_supervised_examples(paths, source, replace(SELF_SUPERVISED, degraded_database_fraction=0.5))
    assert [(e.database_span, e.query_span) for e in degraded] == [(e.database_span, e.query_span) for e in clean]
    assert len(degraded) == len(clean) == 6
    changed = []
    for a, b, h in zip(clean, degraded, half):
        np.testing.assert_array_equal(a.query, b.query)
        np.testing.assert_array_equal(a.query, h.query)
        assert a.database.shape == b.database.shape  # no time change: the window keeps its segments
        cosine = np.sum(_l2(a.database) * _l2(b.database), axis=1)
        assert cosine.mean() < 0.999  # really degraded
        changed.append(not np.array_equal(a.database, h.database))
    assert 0 < sum(changed) < len(changed)  # a share, not all or none
