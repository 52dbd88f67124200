"""Index format version 2 (issue 11): compact segments, heads of reduced width, and converting a
version-1 index with `ausil-search index --rebuild`, also when the rebuild is killed.

A version-1 index is made the way version 1 wrote one: a float16 segment store whose meta, store
manifest and manifest.json say format version 1 (a fresh index with those fields set back).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

import ausil_search
from ausil_search.cli import cli
from ausil_search.dedup import DedupStore
from ausil_search.engine import SearchEngine
from ausil_search.search.rebuild import staging_dir
from ausil_search.errors import IndexStoreError
from ausil_search.model import AuSiLModel
from ausil_search.stores import SegmentStore
from media import synth_music, write_audio_file

SR = 22050
REPO = Path(ausil_search.__file__).resolve().parents[1]
N_SONGS = 5


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("songs")
    db, queries = root / "db", root / "queries"
    db.mkdir()
    queries.mkdir()
    for k in range(N_SONGS):
        signal_ = synth_music(7.0 + k, SR, seed=40 + k)
        write_audio_file(db / f"song{k}.wav", signal_, SR)
        if k < 2:  # a re-encoded excerpt of the song
            write_audio_file(queries / f"clip{k}.mp3", signal_[..., int(1.3 * SR):int(6.3 * SR)], SR, bitrate=64000)
    return {"db": db, "queries": sorted(queries.iterdir())}


def set_format_version(index_dir: Path, version: int) -> None:
    """Write `version` where version 1 kept it: manifest.json, the store's manifest copy, the store's meta."""
    manifest_path = index_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = version
    manifest_path.write_text(json.dumps(manifest))
    env = lmdb.open(str(index_dir / "segments"), max_dbs=5)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format_version", json.dumps(version).encode(), db=meta)
            txn.put(b"attr:manifest", json.dumps(manifest).encode(), db=meta)
    finally:
        env.close()


def build_v1_index(index_dir: Path, songs: dict, model_path: Path) -> None:
    SegmentStore(index_dir / "segments", dtype="float16").close()  # version 1 stored float16
    result = run("index", songs["db"], "--index", index_dir, "--model", model_path, "--workers", "0")
    assert result.exit_code == 0, result.output
    set_format_version(index_dir, 1)


@pytest.fixture(scope="module")
def v1_index(songs, model_path, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("v1") / "idx"
    build_v1_index(index_dir, songs, model_path)
    return index_dir


@pytest.fixture(scope="module")
def fresh_index(songs, model_path, tmp_path_factory) -> Path:
    index_dir = tmp_path_factory.mktemp("v2") / "idx"
    result = run("index", songs["db"], "--index", index_dir, "--model", model_path, "--workers", "0")
    assert result.exit_code == 0, result.output
    return index_dir


def answers(index_dir: Path, queries: list[Path]) -> list[list[tuple[str, float]]]:
    with SearchEngine(index_dir, workers=0) as engine:
        return [[(m.path, m.score) for m in engine.query(q, top_k=N_SONGS).matches] for q in queries]


def records(index_dir: Path) -> list[tuple[int, str]]:
    with SegmentStore(index_dir / "segments", readonly=True, any_version=True) as store:
        return [(r.id, r.path) for r in store.iter_records()]


def test_new_indexes_store_int8_segments_in_format_2(fresh_index):
    manifest = json.loads((fresh_index / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["segment_dtype"] == "int8"
    with SegmentStore(fresh_index / "segments", readonly=True) as store:
        assert store.format_version == 2 and store.dtype == np.int8


@pytest.mark.parametrize("command", [["query", "QUERY"], ["info"], ["index", "DB"], ["remove", "DB"]])
def test_a_version_1_index_is_refused_with_the_rebuild_command(v1_index, songs, command):
    args = [{"QUERY": songs["queries"][0], "DB": songs["db"]}.get(a, a) for a in command]
    result = run(*args, "--index", v1_index)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert "format version 1" in line and f"ausil-search index --rebuild --index {v1_index}" in line


def test_rebuild_converts_a_version_1_index_to_the_answers_of_a_fresh_one(v1_index, fresh_index, songs, tmp_path):
    index_dir = tmp_path / "idx"
    shutil.copytree(v1_index, index_dir)
    before = records(index_dir)
    with DedupStore(index_dir, "0" * 64) as dedup:  # a user's "not duplicates" decision survives the rebuild
        dedup.add_decisions([("a" * 32, "b" * 32, {"decided": "today"})])
    result = run("index", "--rebuild", "--index", index_dir, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == N_SONGS and not report["skipped"]
    assert records(index_dir) == before  # same ids and paths
    assert not staging_dir(index_dir).exists() and not any(tmp_path.glob(".idx.*"))
    with SegmentStore(index_dir / "segments", readonly=True) as store:
        assert store.format_version == 2 and store.dtype == np.int8
    with DedupStore(index_dir, "1" * 64) as dedup:
        assert list(dedup.decisions().values()) == [{"decided": "today"}]
    rebuilt, fresh = answers(index_dir, songs["queries"]), answers(fresh_index, songs["queries"])
    for got, want in zip(rebuilt, fresh):
        assert [path for path, _ in got] == [path for path, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert [row[0][0] for row in rebuilt] == [str(songs["db"] / f"song{k}.wav") for k in range(2)]
    # rebuilding a current index works too (it only extracts again)
    assert run("index", "--rebuild", "--index", index_dir, "--workers", "0").exit_code == 0
    assert records(index_dir) == before


def test_rebuild_usage_errors(tmp_path, songs):
    assert "--rebuild" in run("index", "--index", tmp_path / "x").output
    assert run("index", songs["db"], "--rebuild", "--index", tmp_path / "x").exit_code == 2
    result = run("index", "--rebuild", "--index", tmp_path / "missing")
    assert result.exit_code == 1 and "no index at" in result.output


def _count(store_dir: Path) -> int:
    try:
        with SegmentStore(store_dir, readonly=True, any_version=True) as store:
            return len(store)
    except IndexStoreError:
        return 0


@pytest.mark.slow
def test_kill_9_during_rebuild_leaves_an_index_that_opens_and_answers(v1_index, songs, tmp_path):
    """SIGKILL while extracting (after 1 and after all but one file) and right around the swap: the
    index then opens and answers as version 2, or is still version 1 and a rerun finishes the job."""
    base = tmp_path / "work"
    before = records(v1_index)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    outcomes = []
    for kill_at in (1, N_SONGS - 1, N_SONGS):
        index_dir = base / f"at{kill_at}-{len(outcomes)}" / "idx"
        shutil.copytree(v1_index, index_dir)
        staging = staging_dir(index_dir) / "segments"
        command = [sys.executable, "-m", "ausil_search", "index", "--rebuild", "--index", str(index_dir),
                   "--workers", "0", "--commit-every", "1"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 900  # generous: loaded CI machines
        try:
            while _count(staging) < kill_at and process.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        result = run("query", songs["queries"][0], "--index", index_dir, "--json")
        if result.exit_code == 0:
            outcomes.append("v2")
        else:
            assert "index --rebuild" in result.output, result.output
            outcomes.append("v1")
            rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            assert rerun.returncode == 0, rerun.stderr
            result = run("query", songs["queries"][0], "--index", index_dir, "--json")
            assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["matches"][0]["path"] == str(songs["db"] / "song0.wav")
        assert records(index_dir) == before
    print("outcomes", outcomes)
    assert outcomes[:2] == ["v1", "v1"]


def test_a_narrow_head_indexes_and_answers(songs, model_path, tmp_path):
    """A model whose whitening keeps 64 components: the file loads at that width, the index stores 64-d segments."""
    model = AuSiLModel.load(model_path)
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((model.head.pca_mean.shape[0], 64)))
    model.head.set_whitening(model.head.pca_mean.detach(), __import__("torch").from_numpy(basis.astype(np.float32)))
    narrow = tmp_path / "narrow.safetensors"
    model.save(narrow)
    loaded = AuSiLModel.load(narrow)
    assert loaded.head.width == 64 and tuple(loaded.head.context.shape) == (64,)
    assert loaded.metadata["embedding_dim"] == 64
    index_dir = tmp_path / "idx"
    assert run("index", songs["db"], "--index", index_dir, "--model", narrow, "--workers", "0").exit_code == 0
    with SegmentStore(index_dir / "segments", readonly=True) as store:
        assert store.segment_dim == store.global_dim == 64
    [top] = answers(index_dir, songs["queries"][:1])
    assert top[0][0] == str(songs["db"] / "song0.wav")


def test_spilled_spectrograms_are_read_back_to_the_same_segments(songs, model_path, fresh_index, tmp_path, monkeypatch):
    """Long files' log-mels are read from their spill file by plain reads: the stored segments are unchanged."""
    from ausil_search import extraction

    monkeypatch.setattr(extraction, "INLINE_FRAMES_MAX", 10)  # every file spills, as a > 10 min file does
    with SearchEngine(tmp_path / "idx", model_path, writable=True, workers=0) as engine:
        assert engine.index_paths([songs["db"]]).added == N_SONGS
        spilled = {record.path: engine.store.segments(record.id) for record in engine.records()}
    with SegmentStore(fresh_index / "segments", readonly=True) as store:
        for record in store.iter_records():
            np.testing.assert_array_equal(store.segments(record.id), spilled[record.path])
