"""Self-supervised backbone training on real encoded files: the loss learns, runs resume exactly,
Ctrl-C checkpoints, and the written model file is an ordinary weak_mxh64_1024 model."""

from __future__ import annotations

import json
import os
import signal

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from media import synth_music, write_audio_file

from ausil_search.backbone import WeakMxH64
from ausil_search.train.backbone_trainer import (
    CHECKPOINT_FILE,
    BackboneTrainer,
    BackboneTrainingJob,
    frozen_anchor,
    nt_xent,
    train_backbone,
)
from ausil_search.train.configs import BackboneTrainConfig, ViewRecipe
from ausil_search.train.backbone_views import (
    AudioCorpus,
    ViewBatches,
    centre_window,
    draw_view_chain,
    make_view_batch,
    plan_excerpts,
    repeat_correlation,
)
from ausil_search.cli import cli
from ausil_search.errors import AusilError
from ausil_search.model import AuSiLModel
from ausil_search.spectrogram import FrontEnd, log_mel

RATE = 44100
FRONTEND = FrontEnd()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """Five recordings in three containers; one shorter than an excerpt."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for seed, (name, seconds) in enumerate([("a.ogg", 8), ("b.mp3", 7), ("c.wav", 6), ("d.ogg", 9), ("short.wav", 1.5)]):
        write_audio_file(folder / name, synth_music(seconds, RATE, seed=100 + seed), RATE)
    (folder / "notes.txt.bak").write_text("not media")
    return folder


def small_config(**changes) -> BackboneTrainConfig:
    settings = dict(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=1, calibration_batches=1,
                    recipe=ViewRecipe(excerpt_s=2.6, max_shift_s=0.1, p_codec=0.3))
    settings.update(changes)
    return BackboneTrainConfig(**settings)


def test_view_batches_are_a_function_of_seed_and_index(media_dir):
    corpus = AudioCorpus.from_sources([media_dir])
    assert len(corpus) == 5  # the .bak file is not media
    recipe = ViewRecipe(excerpt_s=2.6)
    first = make_view_batch(corpus, recipe, FRONTEND, seed=1, index=4, batch_size=3).views
    assert first.shape == (2, 3, FRONTEND.window_frames, FRONTEND.n_mels) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, make_view_batch(corpus, recipe, FRONTEND, seed=1, index=4, batch_size=3).views)
    assert not np.array_equal(first, make_view_batch(corpus, recipe, FRONTEND, seed=1, index=5, batch_size=3).views)
    with pytest.raises(AusilError, match="larger than the number of recordings"):
        make_view_batch(corpus, recipe, FRONTEND, seed=1, index=0, batch_size=6)
    with pytest.raises(AusilError, match="too short"):
        ViewBatches(corpus, ViewRecipe(excerpt_s=2.2), FRONTEND, 0, 2, workers=0)


def test_view_chains_keep_the_centre(media_dir):
    """Only transforms that keep the excerpt's centre in place; time changes stay within ±15 %."""
    rng = np.random.default_rng(0)
    chains = [draw_view_chain(rng, ViewRecipe(), n_others=3) for _ in range(300)]
    names = {step["name"] for chain in chains for step in chain}
    assert names == {"speed", "tempo", "pitch", "echo", "reverb", "mix", "babble", "noise", "band", "resample", "gain",
                     "codec", "level", "cut"}
    factors = [s["factor"] for c in chains for s in c if s["name"] in ("speed", "tempo")]
    assert min(factors) >= 0.85 and max(factors) <= 1.15
    assert any(chain == [] for chain in chains)


@pytest.fixture(scope="module")
def long_media(tmp_path_factory):
    """Three long recordings: two of varied notes, one a 3.5-s bar looped six times (game-music style)."""
    folder = tmp_path_factory.mktemp("long")
    write_audio_file(folder / "varied-a.flac", synth_music(22, RATE, seed=7), RATE)
    write_audio_file(folder / "varied-b.ogg", synth_music(20, RATE, seed=8), RATE)
    write_audio_file(folder / "loop.flac", np.tile(synth_music(3.5, RATE, seed=9), 6), RATE)
    return folder


def test_excerpts_of_one_recording_in_a_batch_never_overlap(long_media):
    corpus = AudioCorpus.from_sources([long_media])
    recipe = ViewRecipe(excerpt_s=3.0, excerpts_per_recording=3, min_gap_s=1.0)
    shared = 0
    for index in range(200):
        plan = plan_excerpts(corpus, recipe, np.random.default_rng([0, 0, index]), batch_size=3)
        assert len(plan) == 3
        for item, start in plan:
            assert 0 <= start <= corpus.durations[item] - recipe.excerpt_s
        for i, (item_a, start_a) in enumerate(plan):
            for item_b, start_b in plan[i + 1 :]:
                if item_a == item_b:
                    shared += 1
                    assert abs(start_a - start_b) >= recipe.excerpt_s + recipe.min_gap_s - 1e-9
    assert shared >= 200  # most batches are one recording's three excerpts
    single = ViewRecipe(excerpt_s=3.0, excerpts_per_recording=1)
    plan = plan_excerpts(corpus, single, np.random.default_rng(0), batch_size=3)
    assert sorted(item for item, _ in plan) == [0, 1, 2]


def test_looped_bars_are_not_negatives_but_other_parts_are(long_media):
    corpus = AudioCorpus.from_sources([long_media])
    loop = corpus.paths.index(str(long_media / "loop.flac"))
    recipe = ViewRecipe(excerpt_s=3.0, p_clean=1.0)  # clean views: only the pairing is under test
    seen = {True: 0, False: 0}
    for index in range(12):
        batch = make_view_batch(corpus, recipe, FRONTEND, seed=3, index=index, batch_size=2)
        if batch.recordings[0] == batch.recordings[1]:
            expected = bool(batch.recordings[0] == loop)
            assert bool(batch.not_negative[0, 1]) == expected, (index, batch.recordings)
            seen[expected] += 1
    assert seen[True] and seen[False]


def test_repeat_correlation_finds_a_shifted_repeat_only():
    rng_signal = synth_music(6, RATE, seed=11)[0]
    a = log_mel(rng_signal[: 3 * RATE], FRONTEND)
    b = log_mel(rng_signal[RATE // 2 : RATE // 2 + 3 * RATE], FRONTEND)  # the same notes, 0.5 s later
    other = log_mel(synth_music(3, RATE, seed=12)[0], FRONTEND)
    assert repeat_correlation(a, b, FRONTEND.window_frames // 2) > 0.9
    assert repeat_correlation(a, other, FRONTEND.window_frames // 2) < 0.5


def test_level_view_matches_a_quiet_passage_of_a_louder_file():
    """The ``level`` window equals what the front-end computes for the same audio inside a file
    whose peak is ``drop_db`` higher (away from the join)."""
    excerpt = synth_music(3, RATE, seed=13)[0]
    drop = 30.0
    whole = np.concatenate([excerpt * np.float32(10 ** (-drop / 20)), excerpt])
    inside = log_mel(whole, FRONTEND)[: len(log_mel(excerpt, FRONTEND))]
    window = centre_window(excerpt, FRONTEND, window_steps=[{"name": "level", "drop_db": drop}])
    start = (len(inside) - FRONTEND.window_frames) // 2
    expected = inside[start : start + FRONTEND.window_frames]
    # Frames that do not reach across the join, bands above the lowest two (the mean removal differs
    # there); the file's peak differs a little from the excerpt's, a constant offset in dB.
    difference = (window - expected)[: FRONTEND.window_frames - 8, 2:]
    assert abs(np.median(difference)) < 0.5
    assert np.quantile(np.abs(difference - np.median(difference)), 0.99) < 0.5
    assert np.abs(window - centre_window(excerpt, FRONTEND)).max() > drop - 1


def test_cut_view_pads_the_end_of_the_window_as_a_short_query_is_padded():
    excerpt = synth_music(3, RATE, seed=14)[0]
    full = centre_window(excerpt, FRONTEND)
    cut = centre_window(excerpt, FRONTEND, window_steps=[{"name": "cut", "keep": 0.5}])
    keep = round(0.5 * FRONTEND.window_frames)
    np.testing.assert_array_equal(cut[:keep], full[:keep])
    assert (cut[keep:] == FRONTEND.pad_value).all()


def test_repeats_are_taken_out_of_the_negatives():
    torch.manual_seed(0)
    z = torch.randn(4, 16)
    z[1] = z[0] + 0.01 * torch.randn(16)  # items 0 and 1: the same bars of a loop
    second = z + 0.01 * torch.randn(4, 16)
    confused, _ = nt_xent(z, second, 0.1)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    masked, accuracy = nt_xent(z, second, 0.1, mask)
    assert masked < confused - 0.3 and accuracy == 1.0


def test_nt_xent_prefers_matching_partners():
    torch.manual_seed(0)
    z = torch.randn(6, 32)
    aligned, accuracy = nt_xent(z, z + 0.01 * torch.randn(6, 32), 0.1)
    shuffled, _ = nt_xent(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.1)
    assert accuracy == 1.0 and aligned < 0.1 < shuffled


def test_loss_decreases_on_a_fixed_batch(media_dir):
    corpus = AudioCorpus.from_sources([media_dir])
    views = make_view_batch(corpus, ViewRecipe(excerpt_s=2.6), FRONTEND, seed=0, index=0, batch_size=4)
    backbone = AuSiLModel.initialise(seed=0).backbone
    trainer = BackboneTrainer(backbone, None, corpus, small_config(lr=1e-3), torch.device("cpu"))
    losses = [trainer.train_step(views).loss for _ in range(6)]
    assert losses[-1] < losses[0] - 0.1, losses


def _state(backbone: WeakMxH64) -> dict:
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def test_resume_reproduces_an_uninterrupted_run(media_dir, tmp_path):
    # Uninterrupted, with a worker process making the batches ...
    straight = AuSiLModel.initialise(seed=0).backbone
    report = train_backbone(straight, BackboneTrainingJob([media_dir], small_config(), tmp_path / "a", workers=1))
    assert report.steps == 3 and report.steps_this_session == 3

    # ... and interrupted by Ctrl-C after step 2, then resumed, batches made in-process.
    def interrupt_at_two(stage, completed, total=None, **_):  # the progress protocol
        if stage == "train-backbone" and completed == 2:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = AuSiLModel.initialise(seed=0).backbone
    job = BackboneTrainingJob([media_dir], small_config(), tmp_path / "b", workers=0)
    with pytest.raises(KeyboardInterrupt):
        train_backbone(interrupted, job, progress=interrupt_at_two)
    saved = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)
    assert saved["step"] == 2

    with pytest.raises(AusilError, match="--resume"):
        train_backbone(AuSiLModel.initialise(seed=0).backbone, job)
    with pytest.raises(AusilError, match="other settings"):
        train_backbone(AuSiLModel.initialise(seed=0).backbone,
                       BackboneTrainingJob([media_dir], small_config(lr=5e-4), tmp_path / "b", resume=True, workers=0))

    resumed = AuSiLModel.initialise(seed=0).backbone  # fresh weights: everything must come from the checkpoint
    report = train_backbone(resumed, BackboneTrainingJob([media_dir], small_config(), tmp_path / "b", resume=True, workers=0))
    assert report.resumed_at == 2 and report.steps == 3
    expected, got = _state(straight), _state(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    a = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=False)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_anchor_starts_at_zero_and_holds_the_descriptors_near_the_start(media_dir):
    corpus = AudioCorpus.from_sources([media_dir])
    views = make_view_batch(corpus, ViewRecipe(excerpt_s=2.6), FRONTEND, seed=0, index=0, batch_size=4)
    x = torch.from_numpy(views.views).reshape(8, 1, *views.views.shape[2:])
    start = AuSiLModel.initialise(seed=0).backbone
    with torch.no_grad():
        before = frozen_anchor(start)(x)

    def distance_after(weight: float) -> tuple[list, float]:
        backbone = AuSiLModel.initialise(seed=0).backbone
        trainer = BackboneTrainer(backbone, None, corpus, small_config(lr=1e-3, anchor_weight=weight), torch.device("cpu"))
        records = [trainer.train_step(views) for _ in range(5)]
        with torch.no_grad():
            after = frozen_anchor(trainer.backbone)(x)
        return records, float((1 - torch.nn.functional.cosine_similarity(after, before, dim=1)).mean())

    free_records, free = distance_after(0.0)
    anchored_records, anchored = distance_after(50.0)
    assert all(r.drift is None for r in free_records)
    assert anchored_records[0].drift == pytest.approx(0.0, abs=1e-5)  # the same weights and statistics at the start
    assert anchored_records[-1].drift > 0
    assert free > 1e-3 and anchored < 0.5 * free, (free, anchored)


def test_resumed_anchored_run_keeps_its_own_start(media_dir, tmp_path):
    config = small_config(anchor_weight=1.0)
    straight = AuSiLModel.initialise(seed=0).backbone
    train_backbone(straight, BackboneTrainingJob([media_dir], config, tmp_path / "a", workers=0))
    first = AuSiLModel.initialise(seed=0).backbone
    train_backbone(first, BackboneTrainingJob([media_dir], small_config(anchor_weight=1.0, steps=2), tmp_path / "b",
                                              workers=0))
    other_start = AuSiLModel.initialise(seed=5).backbone  # handed other weights: the anchor must come from the checkpoint
    report = train_backbone(other_start, BackboneTrainingJob([media_dir], config, tmp_path / "b", resume=True, workers=0))
    assert report.resumed_at == 2 and report.loss.last_steps_drift is not None
    expected, got = _state(straight), _state(other_start)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    with pytest.raises(AusilError, match="other settings"):
        train_backbone(AuSiLModel.initialise(seed=0).backbone,
                       BackboneTrainingJob([media_dir], small_config(), tmp_path / "b", resume=True, workers=0))


def _with_running_statistics(seed: int) -> WeakMxH64:
    """A backbone whose BatchNorm statistics are not the initial 0/1, as a trained one's are not."""
    backbone = AuSiLModel.initialise(seed=0).backbone
    generator = torch.Generator().manual_seed(seed)
    for norm in backbone.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.copy_(0.1 * torch.randn(norm.running_mean.shape, generator=generator))
            norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=generator))
    return backbone.eval()


def test_frozen_batchnorm_trains_the_weights_under_the_starting_statistics(media_dir, tmp_path):
    corpus = AudioCorpus.from_sources([media_dir])
    views = make_view_batch(corpus, ViewRecipe(excerpt_s=2.6), FRONTEND, seed=0, index=0, batch_size=4)
    x = torch.from_numpy(views.views).reshape(8, 1, *views.views.shape[2:])
    start = _with_running_statistics(seed=1)
    with torch.no_grad():
        expected_loss, _ = nt_xent(*start(x).split(4), temperature=0.1)

    trainer = BackboneTrainer(_with_running_statistics(seed=1), None, corpus,
                              small_config(frozen_batchnorm=True, anchor_weight=1.0), torch.device("cpu"))
    first = trainer.train_step(views)
    # The first step's loss is the inference-mode (running statistics) descriptors' loss, not a batch-statistics one.
    assert first.loss == pytest.approx(float(expected_loss), abs=1e-4)
    assert first.drift == pytest.approx(0.0, abs=1e-5)  # the anchor normalises the same way

    backbone = _with_running_statistics(seed=1)
    report = train_backbone(backbone, BackboneTrainingJob([media_dir], small_config(frozen_batchnorm=True), tmp_path / "a",
                                                          workers=0))
    assert report.steps == 3 and not backbone.training
    before, after = _state(start), _state(backbone)
    for key in before:
        if "running_" in key or "num_batches_tracked" in key:
            assert torch.equal(before[key], after[key]), key  # never updated, not recomputed at the end
    assert not torch.equal(before["layer1.0.weight"], after["layer1.0.weight"])
    assert not torch.equal(before["layer1.1.weight"], after["layer1.1.weight"])  # BatchNorm's own scale learns
    with pytest.raises(AusilError, match="other settings"):  # a resume must keep the statistics frozen
        train_backbone(_with_running_statistics(seed=1),
                       BackboneTrainingJob([media_dir], small_config(steps=4), tmp_path / "a", resume=True, workers=0))

    result = CliRunner().invoke(cli, ["train-backbone", str(media_dir), "-o", str(tmp_path / "m.safetensors"),
                                      "--frozen-batchnorm", "--steps", "1"])
    assert result.exit_code == 2 and "--model" in result.output


def test_cli_writes_a_loadable_model_with_the_official_layout(media_dir, tmp_path):
    out = tmp_path / "ssl.safetensors"
    result = CliRunner().invoke(cli, ["train-backbone", str(media_dir), "-o", str(out), "--steps", "2", "--batch", "2",
                                      "--excerpt-seconds", "2.6", "--calibration-batches", "1", "--workers", "0",
                                      "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"] == 2 and report["data"]["files"] == 5

    model = AuSiLModel.load(out)
    initial = AuSiLModel.initialise(seed=3)
    state = model.backbone.state_dict()
    assert list(state) == list(WeakMxH64().state_dict())  # the official key layout, in order
    WeakMxH64.from_state_dict({f"module.{k}": v for k, v in state.items()})  # loads as the release's .pkl would
    assert not torch.equal(state["layer1.0.weight"], initial.backbone.state_dict()["layer1.0.weight"])
    assert torch.equal(state["layer19.0.weight"], initial.backbone.state_dict()["layer19.0.weight"])
    for number in (1, 18):  # recomputed BatchNorm statistics: a plain average, finite, positive variances
        norm = getattr(model.backbone, f"layer{number}")[1]
        assert int(norm.num_batches_tracked) == 1
        assert torch.isfinite(norm.running_mean).all() and (norm.running_var > 0).all()
        assert not torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    assert torch.equal(model.head.pca_weights, initial.head.pca_weights)
    training = model.metadata["backbone_training"]
    assert training["steps"] == 2 and training["config"]["temperature"] == 0.1
    assert model.metadata["source"].startswith("ausil-search")  # the command line (here pytest's)
    assert (tmp_path / "ssl.report.json").is_file()


def test_views_option_changes_the_recipe_that_is_trained_and_recorded(media_dir, tmp_path):
    out = tmp_path / "ssl.safetensors"
    views = tmp_path / "views.json"
    views.write_text(json.dumps({"p_clean": 0.0, "p_mix": 1.0, "mix_level_db": [-6, 0], "noise_snr_db": [0, 5]}))
    result = CliRunner().invoke(cli, ["train-backbone", str(media_dir), "-o", str(out), "--steps", "1", "--batch", "2",
                                      "--excerpt-seconds", "2.6", "--calibration-batches", "1", "--workers", "0",
                                      "--views", str(views), "--json"])
    assert result.exit_code == 0, result.output
    recipe = AuSiLModel.load(out).metadata["backbone_training"]["config"]["recipe"]
    assert recipe["p_mix"] == 1.0 and recipe["mix_level_db"] == [-6.0, 0.0] and recipe["noise_snr_db"] == [0.0, 5.0]
    assert recipe["p_noise"] == ViewRecipe.p_noise and recipe["excerpt_s"] == 2.6  # the rest as before

    trained = ViewRecipe.from_dict(recipe)
    rng = np.random.default_rng(0)
    chains = [draw_view_chain(rng, trained, n_others=3) for _ in range(50)]
    levels = [step["level_db"] for chain in chains for step in chain if step["name"] == "mix"]
    assert len(levels) == 50 and all(-6 <= level <= 0 for level in levels)

    for bad, message in (('{"p_mixx": 1}', "unknown view setting 'p_mixx'"), ('{"p_mix": 1.5}', "p_mix is a probability"),
                         ('{"noise_snr_db": [5, 0]}', "low <= high"), ('[1]', "JSON object"),
                         ('{"excerpts_per_recording": 1.5}', "excerpts_per_recording takes an integer"),
                         ('{"codec_kbps": [12.5, 48]}', "codec_kbps takes a pair of integers")):
        result = CliRunner().invoke(cli, ["train-backbone", str(media_dir), "-o", str(out), "--views", bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_learning_rate_warms_up_then_decays_to_zero_at_the_end():
    config = BackboneTrainConfig(steps=100, lr=1e-3, warmup_steps=10, decay_steps=20)
    rates = [config.learning_rate(step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10:80] == [pytest.approx(1e-3)] * 70
    assert rates[90] == pytest.approx(0.5e-3) and rates[99] == pytest.approx(0.05e-3)
    assert all(a >= b for a, b in zip(rates[80:], rates[81:]))
    # an extended run decays at its new end; the decay may be changed on resume
    assert BackboneTrainConfig(steps=200, lr=1e-3, decay_steps=20).learning_rate(99) == pytest.approx(1e-3)
    assert not config.incompatible(BackboneTrainConfig(steps=150, lr=1e-3, warmup_steps=10).to_dict())


def test_library_returns_the_model_with_its_provenance(media_dir, tmp_path):
    """A Python user gets what `train-backbone` writes, without the CLI."""
    from ausil_search.train.backbone_trainer import train_backbone_model
    from ausil_search.train.reports import BackboneTrainingReport

    job = BackboneTrainingJob([media_dir], small_config(steps=1), workers=0)
    trained = train_backbone_model(job, name="api-backbone")
    meta = trained.model.metadata
    assert meta["name"] == "api-backbone" and meta["backbone_training"]["steps"] == 1
    assert meta["backbone_training"]["from"] == "seeded random initialisation (seed 0)"
    assert meta["backbone_training"]["config"]["recipe"]["excerpts_per_recording"] == 2
    report_path = trained.save(tmp_path / "api.safetensors")
    report = json.loads(report_path.read_text())
    assert report["model"]["identity"] == AuSiLModel.load(tmp_path / "api.safetensors").identity
    # typed for Python users, and its to_dict() is the file, keys in the order scripts have always seen
    assert isinstance(trained.report, BackboneTrainingReport) and trained.report.steps == 1
    assert report_path.read_text() == json.dumps(trained.report.to_dict(), indent=1)
    assert list(report) == ["steps", "resumed_at", "steps_this_session", "train_seconds", "steps_per_s", "segments_per_s",
                            "total_train_seconds", "calibration_seconds", "device", "workers", "loss", "data", "config",
                            "output", "model"]
    assert list(report["loss"]) == ["first_steps_mean", "last_steps_mean", "first_steps_accuracy", "last_steps_accuracy",
                                    "steps_averaged", "curve", "last_steps_drift"]
    assert report["loss"]["last_steps_drift"] is None  # no anchor


def test_view_workers_die_with_a_killed_trainer(media_dir, tmp_path):
    """kill -9 of the training process must not leave its batch-making worker running."""
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(f"""
import time
from ausil_search.train.backbone_views import AudioCorpus, ViewBatches
from ausil_search.train.configs import ViewRecipe
from ausil_search.spectrogram import FrontEnd
if __name__ == "__main__":  # the workers are spawned: they import this file
    corpus = AudioCorpus.from_sources([{str(media_dir)!r}])
    batches = ViewBatches(corpus, ViewRecipe(excerpt_s=2.6), FrontEnd(), 0, 2, workers=1)
    next(batches.iterate(0, 100))
    print("ready", flush=True)
    time.sleep(600)
""")
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "ready"
        workers = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
                   if _parent_pid(stat) == trainer.pid]
        assert workers
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        time.sleep(0.2)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]]
    assert not alive, f"workers outlived the trainer: {alive}"


def _parent_pid(stat_file) -> int | None:
    try:
        return int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
