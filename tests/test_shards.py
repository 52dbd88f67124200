"""Sharded indexes in one process: the same commands and the same answers as one index.

Real media (generated), the real pipeline and real LMDB/FAISS shards; the model is the seeded
random one of `conftest.model_path`. The single index and the sharded one are built from the same
files, so every query must give the same videos with the same scores in the same order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.errors import IndexStoreError
from ausil_search.shards import SHARDS_MANIFEST, ShardedIndex, open_index, shard_of
from ausil_search.shards.reshard import reshard
from media import synth_music, write_audio_file, write_video_file

SR = 44100
N_VIDEOS = 10
SHARDS = 3


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def answers(*args) -> list[dict]:
    result = run("query", *args, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_same_answers(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert [m["path"] for m in a["matches"]] == [m["path"] for m in b["matches"]]
        np.testing.assert_allclose([m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-5)
        assert [m["rank"] for m in a["matches"]] == list(range(1, len(a["matches"]) + 1))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """`db/` with N_VIDEOS recordings (some in video containers), `queries/` with noisy crops of three."""
    root = tmp_path_factory.mktemp("shard-media")
    db, queries = root / "db", root / "queries"
    (db / "sub").mkdir(parents=True)
    queries.mkdir()
    for i in range(N_VIDEOS):
        signal = synth_music(6.0 + i % 3, SR, seed=300 + i)
        if i % 3 == 0:
            write_video_file(db / "sub" / f"v{i}.mp4", signal, SR)
        else:
            write_audio_file(db / f"a{i}.flac", signal, SR)
        if i in (1, 4, 8):
            crop = signal[:, int(1.3 * SR):int(5.3 * SR)]
            crop = crop + 0.01 * np.random.default_rng(i).standard_normal(crop.shape).astype(np.float32)
            write_audio_file(queries / f"q{i}.wav", crop, SR)
    return {"db": db, "queries": sorted(queries.iterdir())}


@pytest.fixture(scope="module")
def indexes(media, tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("shard-indexes")
    single, sharded = root / "single", root / "sharded"
    for target, extra in ((single, []), (sharded, ["--shards", SHARDS])):
        result = run("index", media["db"], "--index", target, "--model", model_path, "--workers", "0", "--json", *extra)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["added"] == N_VIDEOS
    return single, sharded


@pytest.fixture(scope="module")
def single_answers(media, indexes) -> list[dict]:
    return answers(*media["queries"], "--index", indexes[0], "-k", "20")


def test_sharded_answers_equal_one_index(media, indexes, single_answers):
    single, sharded = indexes
    layout = json.loads((sharded / SHARDS_MANIFEST).read_text())
    assert len(layout["shards"]) == SHARDS
    info = json.loads(run("info", "--index", sharded, "--json").stdout)
    assert info["videos"] == N_VIDEOS and len(info["shards"]) == SHARDS
    assert sum(s["videos"] > 0 for s in info["shards"]) >= 2  # the merge is exercised
    for shard in info["shards"]:  # each video sits in the shard its path hashes to
        with open_index(Path(shard["index"])) as engine:
            assert all(shard_of(r.path, SHARDS) == shard["shard"] for r in engine.records())
    got = answers(*media["queries"], "--index", sharded, "-k", "6")
    assert_same_answers(got, [{**a, "matches": a["matches"][:6]} for a in single_answers])
    for answer in got:
        assert answer["partial"] is False and answer["shards"]["answered"] == list(range(SHARDS))
        assert answer["candidates"] == N_VIDEOS


def test_sharded_index_is_incremental_and_removes(media, indexes, tmp_path, model_path):
    _, sharded = indexes
    copy = tmp_path / "sharded"
    shutil.copytree(sharded, copy)
    again = run("index", media["db"], "--index", copy, "--json")  # no --shards: an existing sharded index
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["unchanged"] == N_VIDEOS and json.loads(again.stdout)["added"] == 0
    wrong = run("index", media["db"], "--index", copy, "--shards", SHARDS + 1)
    assert wrong.exit_code == 1 and "reshard" in wrong.output
    removed = run("remove", media["db"] / "sub", "--index", copy, "--json")
    assert removed.exit_code == 0, removed.output
    assert len(json.loads(removed.stdout)["removed"]) == len(range(0, N_VIDEOS, 3))
    with ShardedIndex(copy) as index:
        assert len(index.records()) == N_VIDEOS - len(range(0, N_VIDEOS, 3))


def test_rebuild_of_a_sharded_index_rebuilds_every_shard(media, indexes, single_answers, tmp_path):
    _, sharded = indexes
    copy = tmp_path / "sharded"
    shutil.copytree(sharded, copy)
    before = {shard["index"]: shard["videos"] for shard in json.loads(run("info", "--index", copy, "--json").stdout)["shards"]}
    result = run("index", "--rebuild", "--index", copy, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == N_VIDEOS
    after = {shard["index"]: shard["videos"] for shard in json.loads(result.stdout)["index"]["shards"]}
    assert after == before  # every shard rebuilt in place, each video still where its path routes
    assert_same_answers(answers(*media["queries"], "--index", copy, "-k", "20"), single_answers)
    refused = run("index", media["db"], "--rebuild", "--index", copy)
    assert refused.exit_code == 2 and "--rebuild takes no PATHS" in refused.output


def test_missing_shard_gives_a_flagged_partial_result(media, indexes, single_answers, tmp_path):
    _, sharded = indexes
    copy = tmp_path / "sharded"
    shutil.copytree(sharded, copy)
    with ShardedIndex(copy) as index:
        held = {n: {r.path for r in e.records()} for n, e in index.engines.items()}
    lost = max(held, key=lambda n: len(held[n]))
    shutil.rmtree(copy / f"shard-{lost:03d}")
    result = run("query", *media["queries"], "--index", copy, "--json", "-k", "20")
    assert result.exit_code == 0, result.output
    assert f"shard {lost}" in result.stderr and "left out" in result.stderr
    for line, full in zip(result.stdout.splitlines(), single_answers):
        answer = json.loads(line)
        assert answer["partial"] is True
        assert answer["shards"]["answered"] == [n for n in range(SHARDS) if n != lost]
        assert list(answer["shards"]["failed"]) == [str(lost)]
        kept = [m for m in full["matches"] if m["path"] not in held[lost]]  # the others' answers, unchanged
        assert [m["path"] for m in answer["matches"]] == [m["path"] for m in kept]
    assert run("remove", media["db"], "--index", copy).exit_code == 1  # writes need every shard


def test_shard_failing_mid_session_gives_a_flagged_partial_result(media, indexes):
    _, sharded = indexes
    with ShardedIndex(sharded) as index:
        whole = index.query(media["queries"][0], top_k=20)
        assert not whole.partial
        failing = next(n for n, e in index.engines.items() if e.records())
        index.engines[failing].store.close()  # its store is gone under a running engine
        result = index.query(media["queries"][0], top_k=20)
    assert result.partial and str(failing) in result.shards["failed"]
    assert failing not in result.shards["answered"]
    assert [m.path for m in result.matches] == [m.path for m in whole.matches if m.shard != failing]


def test_sharded_index_refuses_bad_layouts(indexes, tmp_path, model_path):
    single, _ = indexes
    with pytest.raises(IndexStoreError, match="reshard"):
        ShardedIndex(single, writable=True, shards=2)
    with pytest.raises(IndexStoreError, match="between 1 and"):
        ShardedIndex(tmp_path / "new", model_path, writable=True, shards=0)


def test_reshard_copies_without_extracting(media, indexes, single_answers, tmp_path):
    single, sharded = indexes
    two = tmp_path / "two"
    result = run("reshard", sharded, two, "--shards", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["copied"] == N_VIDEOS and sum(report["videos_per_shard"]) == N_VIDEOS
    assert_same_answers(answers(*media["queries"], "--index", two, "-k", "20"), single_answers)
    with open_index(sharded) as a, open_index(two) as b:  # the same file facts: nothing was re-extracted
        before = {r.path: (r.fingerprint, r.mtime_ns, r.extra["indexed_at"]) for r in a.records()}
        assert {r.path: (r.fingerprint, r.mtime_ns, r.extra["indexed_at"]) for r in b.records()} == before
    again = json.loads(run("reshard", single, two, "--shards", 2, "--json").stdout)  # a rerun copies nothing
    assert (again["copied"], again["unchanged"]) == (0, N_VIDEOS)
    indexed = json.loads(run("index", media["db"], "--index", two, "--json").stdout)
    assert indexed["unchanged"] == N_VIDEOS and indexed["added"] == 0
    assert run("reshard", two, two, "--shards", 3).exit_code == 1


def test_sharded_indexing_and_reshard_report_through_the_progress_protocol(media, tmp_path, model_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    calls = []

    def record(stage, completed, total=None, *, item=None, skipped=None, metrics=None):
        calls.append((stage, completed, total, item, skipped))

    files = len(list((media["db"] / "sub").iterdir()))
    with ShardedIndex(tmp_path / "index", model_path, writable=True, shards=SHARDS, workers=0) as index:
        report = index.index_paths([media["db"] / "sub", corrupt], progress=record)
    assert report.added == files and list(report.skipped) == [str(corrupt.resolve())]
    stages = [c[0] for c in calls]
    assert stages == sorted(stages, key=["scan", "index"].index), stages  # one scan, then one index stage
    assert [c[1] for c in calls if c[0] == "scan"][-1] == files + 1
    index_calls = [c for c in calls if c[0] == "index"]
    counts = [c[1] for c in index_calls]
    assert counts == sorted(counts) and index_calls[0][1] == 0  # counted on across the shards
    assert index_calls[-1][1:3] == (files + 1, files + 1)  # the total grew to every file that needed work
    assert [c[3] for c in index_calls if c[4]] == [str(corrupt.resolve())]

    calls.clear()
    copy = reshard(tmp_path / "index", tmp_path / "two", 2, progress=record)
    assert copy.copied == files
    assert [c[:3] for c in calls] == [("reshard", n, files) for n in range(files + 1)]
