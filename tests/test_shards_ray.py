"""A sharded index on a local Ray cluster capped to 2 CPUs: the same answers as in one process,
a shard server killed during a session, a network worker killed mid-extraction.

Real media, the real pipeline and Ray itself (no stand-ins); slow because a Ray cluster takes
tens of seconds to start on 2 loaded cores.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.shards import ShardedIndex
from media import synth_music, write_audio_file, write_video_file

ray = pytest.importorskip("ray")
# slow; a deadlocked Ray pipeline fails the test instead of hanging the run
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SR = 44100
N_VIDEOS = 6
SHARDS = 2


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def answers(*args) -> list[dict]:
    result = run("query", *args, "--json", "-k", "10")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def local_ray():
    for attempt in range(3):  # Ray gives its processes 30 s to come up, which a loaded machine can miss
        try:
            ray.init(num_cpus=2, object_store_memory=96 << 20, include_dashboard=False, log_to_driver=False)
            break
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
            ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-media")
    db, queries = root / "db", root / "queries"
    db.mkdir()
    queries.mkdir()
    for i in range(N_VIDEOS):
        signal_ = synth_music(5.0 + i % 2, SR, seed=700 + i)
        (write_video_file if i % 2 else write_audio_file)(db / f"r{i}{'.mp4' if i % 2 else '.flac'}", signal_, SR)
        if i < 2:
            write_audio_file(queries / f"q{i}.wav", signal_[:, SR:4 * SR], SR)
    return {"db": db, "queries": sorted(queries.iterdir())}


@pytest.fixture(scope="module")
def built(local_ray, media, tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("ray-indexes")
    single, on_ray = root / "single", root / "on-ray"
    result = run("index", media["db"], "--index", single, "--model", model_path, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    # Default --workers: as many network actors as the cluster has CPUs (each held a whole CPU and
    # the decode tasks, which need half of one, could never run: the pipeline deadlocked).
    result = run("index", media["db"], "--index", on_ray, "--model", model_path, "--shards", SHARDS, "--ray", "local",
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == N_VIDEOS
    return single, on_ray


def test_index_and_query_on_ray_equal_one_process(media, built):
    single, on_ray = built
    expected = answers(*media["queries"], "--index", single)
    for got in (answers(*media["queries"], "--index", on_ray, "--ray", "local"),  # shard server actors
                answers(*media["queries"], "--index", on_ray)):  # the same shards opened in this process
        for a, b in zip(got, expected, strict=True):
            assert [m["path"] for m in a["matches"]] == [m["path"] for m in b["matches"]]
            np.testing.assert_allclose([m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-5)
            assert a["partial"] is False and a["shards"]["answered"] == [0, 1]
    again = run("index", media["db"], "--index", on_ray, "--ray", "local", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["unchanged"] == N_VIDEOS


def test_killed_shard_server_gives_a_flagged_partial_result(media, built):
    from ausil_search.shards.cluster import ClusterIndex

    _, on_ray = built
    with ClusterIndex(on_ray, "local") as index:
        whole = index.query(media["queries"][0])
        victim = next(m.shard for m in whole.matches)
        os.kill(index.actor_pids()[victim], signal.SIGKILL)
        result = index.query(media["queries"][0])
    assert result.partial and list(result.shards["failed"]) == [str(victim)]
    assert result.shards["answered"] == [n for n in range(SHARDS) if n != victim]
    assert [m.path for m in result.matches] == [m.path for m in whole.matches if m.shard != victim]


def _descendants_named(word: str) -> list[int]:
    """Processes below this one (its own Ray cluster) whose command line holds `word`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            pid, parents = int(entry.name), []
            while pid > 1:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.append(pid)
        except (OSError, ValueError, IndexError):
            continue
        if word in command and os.getpid() in parents:
            found.append(int(entry.name))
    return found


def test_worker_killed_mid_extraction_then_rerun_indexes_every_file_once(local_ray, media, tmp_path, model_path):
    from ausil_search.errors import AusilError
    from ausil_search.shards.cluster import index_on_cluster

    target = tmp_path / "killed"
    killed: list[int] = []

    def kill_first_network_worker() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid in _descendants_named("BackboneWorker"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.2)

    killer = threading.Thread(target=kill_first_network_worker, daemon=True)
    killer.start()
    try:
        index_on_cluster(target, [media["db"]], "local", model_path, shards=SHARDS, workers=1)
    except AusilError:
        pass  # the run may stop with the worker; the rerun must complete it
    killer.join(5)
    assert killed, "no network worker was seen to kill"
    report = index_on_cluster(target, [media["db"]], "local", shards=SHARDS, workers=1)
    assert report.added + report.unchanged == N_VIDEOS and not report.skipped
    with ShardedIndex(target) as index:
        paths = [record.path for record in index.records()]
    assert sorted(paths) == sorted(str(p.resolve()) for p in media["db"].iterdir())
