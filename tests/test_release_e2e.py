"""The release's three steps end to end on real encoded media, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ausil_search.cli import cli
from media import synth_music, write_audio_file, write_video_file, write_video_without_audio


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def add_noise(samples: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(samples.shape).astype(np.float32)
    scale = np.sqrt(np.mean(samples**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(samples + scale * noise, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    """Five recordings in different containers, codecs and rates; `a2` is a degraded re-encode of `a`."""
    root = tmp_path_factory.mktemp("media")
    a = synth_music(14.0, 48000, seed=1, channels=2)
    files = {key: root / name for key, name in
             [("a", "a.mp4"), ("a2", "a_copy.webm"), ("b", "b.mkv"), ("c", "c.mp3"), ("d", "d.wav")]}
    write_video_file(files["a"], a, 48000)
    # the near-duplicate: resampled, noisy, low-bitrate Opus in WebM with a video stream
    write_video_file(files["a2"], add_noise(a[:, ::2], 20, seed=5), 24000, bitrate=24000)
    write_video_file(files["b"], synth_music(12.0, 44100, seed=2, channels=2), 44100)
    write_audio_file(files["c"], synth_music(10.0, 22050, seed=3), 22050)
    write_audio_file(files["d"], synth_music(16.0, 16000, seed=4), 16000)
    return files


def write_list(path: Path, entries: dict[str, Path]) -> Path:
    path.write_text("".join(f"{vid} {p}\n" for vid, p in entries.items()))
    return path


def test_extract_similarity_evaluate(tmp_path, collection, model_path):
    videos = write_list(tmp_path / "videos.txt", collection)
    features = tmp_path / "features"
    result = run("extract", "-f", videos, "-o", features, "--model", model_path, "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 5 and summary["skipped"] == {}
    for vid in collection:
        with np.load(features / vid / "wlaf.npz") as data:
            assert list(data.keys()) == ["features"]
            matrix = data["features"]
        assert matrix.dtype == np.float32 and matrix.shape[1] == 2528
        # ≈ one segment per second: 10–16 s of audio gives 8–15 segments
        assert 8 <= matrix.shape[0] <= 15
        assert np.all(np.isfinite(matrix))

    # Queries by feature file; database mixes feature files and a media file given directly.
    queries = write_list(tmp_path / "queries.txt", {"a": features / "a" / "wlaf.npz", "b": features / "b" / "wlaf.npz"})
    database = write_list(
        tmp_path / "database.txt",
        {vid: (collection[vid] if vid == "d" else features / vid / "wlaf.npz") for vid in collection},
    )
    sims_path = tmp_path / "similarities.json"
    result = run("similarity", "-q", queries, "-d", database, "-o", sims_path, "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    sims = json.loads(sims_path.read_text())
    assert set(sims) == {"a", "b"} and all(set(row) == set(collection) for row in sims.values())
    assert all(isinstance(score, float) and -1.0 <= score <= 1.0 for row in sims.values() for score in row.values())
    others = {vid: score for vid, score in sims["a"].items() if vid != "a"}
    assert max(others, key=others.get) == "a2", others
    assert sims["a"]["a"] >= sims["a"]["a2"]

    annotation = tmp_path / "annotation.json"
    annotation.write_text(json.dumps({"a": {"DA": ["a2"]}, "a2": {"DA": ["a"]}}))
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(collection) + "\n")
    png = tmp_path / "pr.png"
    result = run("evaluate", "-r", sims_path, "-a", annotation, "-d", ids, "-rl", "DA", "--plot", png, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mAP"] == pytest.approx(1.0) and report["queries"] == 1  # a2 has no results row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run("evaluate", "-r", sims_path, "-a", annotation, "-d", ids)
    assert text.exit_code == 0 and "mAP=1.0000" in text.output


def test_hdf5_output_matches_npz(tmp_path, collection, model_path):
    import h5py

    videos = write_list(tmp_path / "videos.txt", {"b": collection["b"], "c": collection["c"]})
    assert run("extract", "-f", videos, "-o", tmp_path / "npz", "--model", model_path, "--workers", "0").exit_code == 0
    result = run("extract", "-f", videos, "-o", tmp_path / "feats.h5", "--format", "hdf5", "--model", model_path)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "feats.h5") as handle:
        assert set(handle) == {"b", "c"}
        for vid in ("b", "c"):
            with np.load(tmp_path / "npz" / vid / "wlaf.npz") as data:
                np.testing.assert_allclose(handle[vid][()], data["features"], atol=1e-5)


def test_bad_inputs_are_reported_and_skipped(tmp_path, collection, model_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    write_video_without_audio(bad / "silent_film.mp4")
    short = bad / "short.wav"
    write_audio_file(short, synth_music(0.6, 44100, seed=9), 44100)
    entries = {
        "good": collection["c"],
        "missing": bad / "nope.mp4",
        "empty": bad / "empty.mp4",
        "corrupt": bad / "corrupt.mp4",
        "noaudio": bad / "silent_film.mp4",
        "short": short,
    }
    videos = write_list(tmp_path / "videos.txt", entries)
    for workers in ("0", "1"):
        out = tmp_path / f"out{workers}"
        result = run("extract", "-f", videos, "-o", out, "--model", model_path, "--workers", workers, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert set(summary["skipped"]) == {"missing", "empty", "corrupt", "noaudio"}
        assert all(reason.startswith(str(bad)) for reason in summary["skipped"].values()), summary["skipped"]
        # a clip shorter than one window is padded to one segment
        with np.load(out / "short" / "wlaf.npz") as data:
            assert data["features"].shape == (1, 2528)

    only_bad = write_list(tmp_path / "bad.txt", {"corrupt": bad / "corrupt.mp4"})
    result = run("extract", "-f", only_bad, "-o", tmp_path / "none", "--model", model_path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "Error: no video could be extracted" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "-f", "nowhere.txt", "-o", "x"], "nowhere.txt: list file not found"),
        (["similarity", "-q", "{list}", "-d", "{list}", "--model", "nowhere.safetensors"], "model file not found"),
        (["similarity", "-q", "{list}", "-d", "{list}", "--model", "official"], "the official weights are not in"),
        (["weights", "info", "{list}"], "not a"),
        (["evaluate", "-r", "{list}", "-a", "{list}", "-d", "{list}"], "not valid JSON"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    listing = tmp_path / "list.txt"
    listing.write_text("x some/file.npz\n")
    result = CliRunner().invoke(cli, [a.replace("{list}", str(listing)) for a in args])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_weights_init_and_info(tmp_path):
    target = tmp_path / "m.safetensors"
    result = run("weights", "init", "-o", target, "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["descriptor_dim"] == 2528 and len(info["sha256"]) == 64
    assert info["identity"].endswith("@" + info["sha256"][:12])
    # weak_mxh64_1024 as DESIGN.md lists it: 3×3 conv blocks with BatchNorm, a 2×2 conv, a 1×1 classifier
    blocks = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    expected = sum(i * o * 9 + o + 2 * o for i, o in blocks) + (512 * 1024 * 4 + 1024 + 2 * 1024) + (1024 * 527 + 527)
    assert info["parameters"]["backbone"] == expected
    again = json.loads(run("weights", "info", target, "--json").output)
    assert again["sha256"] == info["sha256"]
    # the same seed gives the same tensors (and file), another seed does not
    run("weights", "init", "-o", tmp_path / "same.safetensors", "--seed", "3")
    run("weights", "init", "-o", tmp_path / "other.safetensors", "--seed", "4")
    same = json.loads(run("weights", "info", tmp_path / "same.safetensors", "--json").output)
    other = json.loads(run("weights", "info", tmp_path / "other.safetensors", "--json").output)
    assert same["sha256"] == info["sha256"] != other["sha256"]
