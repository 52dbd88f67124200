"""`ausil-search serve` against a real server: uvicorn on 127.0.0.1 (a free port), real HTTP through httpx.

One server runs for the module, started the hardest way: with a token, a --root, and a 1 MiB upload
limit, so every security rule is live in every test. Each security test checks a refusal that would
turn into a success (or another code) if its check were removed, and then that the server still answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.engine import SearchEngine
from ausil_search.service.app import Service
from ausil_search.service.config import ServiceConfig
from ausil_search.stores import WriterLock
from media import synth_music, write_audio_file

TOKEN = "test-token-0123456789abcdef"
SR = 44100
LIMIT = 1 << 20


def clip(seconds: float, seed: int) -> np.ndarray:
    return synth_music(seconds, SR, seed=seed)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/db: indexed at start; root/new, root/more: for index jobs; outside/: never reachable."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "root", base / "outside"
    for folder in ("db", "new", "more", "cli", "queries"):
        (root / folder).mkdir(parents=True)
    outside.mkdir()
    signals = {}
    for i in range(3):
        signals[f"db{i}"] = clip(10.0, 100 + i)
        write_audio_file(root / "db" / f"original{i}.ogg", signals[f"db{i}"], SR)
    for i in range(2):
        signals[f"new{i}"] = clip(10.0, 200 + i)
        write_audio_file(root / "new" / f"added{i}.ogg", signals[f"new{i}"], SR)
    signals["cli0"] = clip(10.0, 400)
    write_audio_file(root / "cli" / "by-cli0.ogg", signals["cli0"], SR)
    for i in range(14):
        write_audio_file(root / "more" / f"more{i:02d}.ogg", clip(12.0, 300 + i), SR)
    write_audio_file(outside / "secret.ogg", clip(6.0, 999), SR)
    os.symlink(outside / "secret.ogg", root / "new" / "escape.ogg")  # a link in a root leading out of it
    os.symlink(outside, root / "linkdir")
    # queries: a re-encoded excerpt of original1 and one of added0 (mp3, well under the upload limit)
    write_audio_file(root / "queries" / "copy-db1.mp3", signals["db1"][:, 2 * SR:9 * SR], SR, bitrate=64000)
    write_audio_file(root / "queries" / "copy-new0.mp3", signals["new0"][:, 1 * SR:8 * SR], SR, bitrate=64000)
    write_audio_file(root / "queries" / "copy-cli0.mp3", signals["cli0"][:, 1 * SR:8 * SR], SR, bitrate=64000)
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def service(tree, model_path):
    index_dir = tree["base"] / "index"
    with SearchEngine(index_dir, model_path, writable=True, workers=0) as engine:
        engine.index_paths(sorted((tree["root"] / "db").iterdir()))
    uploads = tree["base"] / "uploads"
    uploads.mkdir()
    config = ServiceConfig(index_dir=index_dir, host="127.0.0.1", port=0, roots=(tree["root"],), token=TOKEN,
                           max_upload_bytes=LIMIT, upload_dir=uploads, index_workers=0, query_threads=2)
    served = Service(config).open(log_level="warning").start()
    yield {"url": served.url, "uploads": uploads, "index": index_dir, "service": served}
    served.stop()


@pytest.fixture
def client(service):
    with httpx.Client(base_url=service["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        yield c


def alive(client: httpx.Client) -> None:
    """The server still answers, with the engine usable."""
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/info").status_code == 200


def upload_dirs(service) -> list[Path]:
    return list(service["uploads"].iterdir())


def wait_job(client, job_id, timeout_s=180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("starting", "running", "stopping"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# --------------------------------------------------------------------------- queries


def test_query_by_upload_is_the_cli_json_object(service, client, tree):
    query = tree["root"] / "queries" / "copy-db1.mp3"
    with open(query, "rb") as handle:
        response = client.post("/query", data={"top_k": "3"}, files={"file": ("copy-db1.mp3", handle, "audio/mpeg")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == "copy-db1.mp3"  # the client's name, not the server's temporary path
    assert Path(answer["matches"][0]["path"]).name == "original1.ogg"
    assert len(answer["matches"]) == 3
    assert upload_dirs(service) == []  # removed after the request
    # the CLI in its own process (one LMDB environment per process), on the index the server has open
    cli_run = subprocess.run([sys.executable, "-m", "ausil_search", "query", str(query), "--index", str(service["index"]),
                              "--json", "-k", "3"], capture_output=True, text=True, timeout=300)
    assert cli_run.returncode == 0, cli_run.stderr
    expected = json.loads(cli_run.stdout.splitlines()[0])
    assert set(answer) == set(expected) and set(answer["matches"][0]) == set(expected["matches"][0])
    assert [m["video_id"] for m in answer["matches"]] == [m["video_id"] for m in expected["matches"]]
    assert answer["matches"][0]["score"] == pytest.approx(expected["matches"][0]["score"], abs=1e-5)


def test_query_by_path_with_options(client, tree):
    path = tree["root"] / "queries" / "copy-db1.mp3"
    response = client.post("/query", json={"path": str(path), "top_k": 1})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == str(path) and len(answer["matches"]) == 1
    assert Path(answer["matches"][0]["path"]).name == "original1.ogg"
    best = answer["matches"][0]["score"]
    filtered = client.post("/query", params={"min_score": min(best + 1e-3, 1.0), "exhaustive": True},
                           json={"path": str(path)}).json()
    assert filtered["matches"] == [] and filtered["exhaustive"] is True


def test_bad_requests_are_json_4xx(client, tree):
    cases = [
        client.post("/query", params={"top_k": 0}, json={"path": str(tree["root"] / "queries" / "copy-db1.mp3")}),
        client.post("/query", content=b"{not json", headers={"Content-Type": "application/json"}),
        client.post("/query", json={"nothing": 1}),
        client.post("/query", json={"path": str(tree["root"] / "queries" / "copy-db1.mp3"), "topk": 3}),
        client.post("/query", params={"topk": 3}, json={"path": str(tree["root"] / "queries" / "copy-db1.mp3")}),
        client.post("/query", data={"top_k": "many"}, files={"file": ("a.mp3", b"x")}),
        client.post("/query", content=b"plain text", headers={"Content-Type": "text/plain"}),
        client.post("/query", files={"other": ("a.mp3", b"x")}),
        client.post("/query", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        client.post("/query", json={"path": str(tree["root"] / "missing.mp3")}),
        client.post("/query", json={"path": str(tree["root"] / "db")}),
        client.post("/index", json={"paths": []}),
        client.get("/videos/not-a-number"),
        client.get("/videos/99999999999999999999999"),
        client.delete("/videos/-1"),
        client.post("/query", params={"nprobe": 2**40}, json={"path": str(tree["root"] / "queries" / "copy-db1.mp3")}),
        client.get("/videos", params={"limit": 0}),
        client.get("/jobs/unknown"),
        client.delete("/videos/999999"),
        client.get("/no-such-route"),
        client.put("/query"),
    ]
    huge = client.post("/query", content=b'{"path": "' + b"x" * (2 << 20) + b'"}',
                       headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    for response in cases + [huge]:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert set(response.json()) == {"error"} and response.json()["error"]
    alive(client)


# --------------------------------------------------------------------------- security


def test_token_required_except_health(service, tree):
    url = service["url"]
    query = {"path": str(tree["root"] / "queries" / "copy-db1.mp3")}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path, body in (("GET", "/info", None), ("POST", "/query", query), ("GET", "/videos", None),
                                   ("GET", "/docs", None), ("GET", "/openapi.json", None)):
            response = httpx.request(method, url + path, headers=headers, json=body)
            assert response.status_code == 401, (headers, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "error" in response.json()
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + "/info", headers=good).json()["videos"] >= 3
    assert httpx.get(url + "/docs", headers=good).status_code == 200
    schema = httpx.get(url + "/openapi.json", headers=good).json()
    assert {"/query", "/index", "/jobs/{job_id}", "/videos", "/videos/{video_id}", "/info", "/health"} <= set(schema["paths"])


def test_paths_outside_the_roots_are_refused_alike(client, tree):
    root, outside = tree["root"], tree["outside"]
    refused = [
        outside / "secret.ogg",  # exists
        outside / "nothing-here.ogg",  # does not exist
        root / ".." / "outside" / "secret.ogg",  # traversal
        root / "db" / ".." / ".." / "outside" / "nothing-here.ogg",
        Path("/etc/passwd"),
        Path("relative/../../x.ogg"),
    ]
    bodies = set()
    for path in refused:
        response = client.post("/query", json={"path": str(path)})
        assert response.status_code == 403, (path, response.text)
        bodies.add(response.text)
        response = client.post("/index", json={"paths": [str(path)]})
        assert response.status_code == 403, (path, response.text)
    assert len(bodies) == 1 and "secret" not in bodies.pop()  # same answer whether or not the file exists
    assert client.post("/query", json={"path": "bad\x00path"}).status_code in (400, 403)
    alive(client)


def test_symlink_escape_is_refused(client, tree):
    root = tree["root"]
    for path in (root / "new" / "escape.ogg", root / "linkdir" / "secret.ogg", root / "linkdir"):
        assert client.post("/query", json={"path": str(path)}).status_code == 403, path
        assert client.post("/index", json={"paths": [str(path)]}).status_code == 403, path
    alive(client)


def test_oversized_upload_is_413(service, client):
    big = np.random.default_rng(0).bytes(LIMIT + LIMIT // 2)
    response = client.post("/query", files={"file": ("big.mp4", big)})
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunked():  # no Content-Length: the limit must hold while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n\r\n"
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
        yield b"\r\n--b--\r\n"

    response = client.post("/query", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text
    assert upload_dirs(service) == []
    alive(client)


def test_garbage_upload_is_415_with_the_decoders_reason(service, client):
    response = client.post("/query", files={"file": ("clip.mp4", np.random.default_rng(1).bytes(50_000))})
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error.startswith("clip.mp4: ") and "media" in error
    assert str(service["uploads"]) not in error  # the private path does not leak
    assert upload_dirs(service) == []
    alive(client)


def test_uploads_are_private_and_removed_on_disconnect(service, client, tree):
    seen = {}
    data = (tree["root"] / "queries" / "copy-db1.mp3").read_bytes()

    def slow_then_abort():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.mp3\"\r\n\r\n" + data[:1000]
        time.sleep(0.5)
        dirs = upload_dirs(service)
        seen["dirs"] = [(d.stat().st_mode & 0o777, [f.stat().st_mode & 0o777 for f in d.iterdir()]) for d in dirs]
        raise ConnectionAbortedError("client gives up")

    with pytest.raises(Exception):
        client.post("/query", content=slow_then_abort(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert seen["dirs"] == [(0o700, [0o600])]
    deadline = time.monotonic() + 10
    while upload_dirs(service) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upload_dirs(service) == []
    alive(client)


def test_non_loopback_bind_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("AUSIL_SEARCH_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        result = CliRunner().invoke(cli, ["serve", "--host", host, "--index", str(tmp_path / "none")])
        assert result.exit_code == 1 and "token" in result.output, (host, result.output)
        with pytest.raises(Exception, match="token"):
            ServiceConfig(index_dir=tmp_path, host=host).checked()
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        ServiceConfig(index_dir=tmp_path, host=host).checked()
    ServiceConfig(index_dir=tmp_path, host="0.0.0.0", token=TOKEN).checked()
    with pytest.raises(Exception, match="at least"):
        ServiceConfig(index_dir=tmp_path, host="0.0.0.0", token="short").checked()
    # the token from the environment counts: the check passes and the command goes on to open the index
    monkeypatch.setenv("AUSIL_SEARCH_TOKEN", TOKEN)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--index", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no index" in result.output, result.output


def test_missing_serve_packages_is_one_clear_line(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from ausil_search.cli import main; sys.argv = ['ausil-search', 'serve', '--index', sys.argv[1]]; main()")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "pip install 'ausil-search[serve]'" in run.stderr, run.stderr


# --------------------------------------------------------------------------- writing


def test_index_job_with_progress_while_queries_run(client, tree):
    before = client.get("/info").json()["videos"]
    query_path = str(tree["root"] / "queries" / "copy-db1.mp3")
    failures, answered, stop = [], [], threading.Event()

    def keep_querying():
        with httpx.Client(base_url=str(client.base_url), headers=client.headers, timeout=120) as own:
            while not stop.is_set():
                response = own.post("/query", json={"path": query_path, "top_k": 1})
                if response.status_code != 200 or Path(response.json()["matches"][0]["path"]).name != "original1.ogg":
                    failures.append(response.text)
                answered.append(response.status_code)

    queriers = [threading.Thread(target=keep_querying) for _ in range(2)]
    for thread in queriers:
        thread.start()
    try:
        response = client.post("/index", json={"paths": [str(tree["root"] / "new")]})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        snapshots = []
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            snapshots.append((job["state"], job["files_done"], job["files_total"]))
            if job["state"] not in ("starting", "running", "stopping"):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in queriers:
            thread.join()
    assert job["state"] == "done", job
    assert job["files_total"] == 2 and job["files_done"] == 2 and job["audio_seconds"] == pytest.approx(20.0, abs=0.5)
    assert [e["path"] for e in job["errors"]] == [str(tree["root"] / "new" / "escape.ogg")]  # the link out is refused
    assert job["report"]["added"] == 2
    assert not failures and len(answered) >= 2
    assert client.get("/jobs").json()["jobs"][-1]["id"] == job_id
    # the new videos are searchable right away, by the warm engine
    answer = client.post("/query", json={"path": str(tree["root"] / "queries" / "copy-new0.mp3"), "top_k": 1}).json()
    assert Path(answer["matches"][0]["path"]).name == "added0.ogg"
    videos = client.get("/videos", params={"limit": 1000}).json()
    assert videos["total"] == before + 2
    assert not any("secret" in v["path"] or "escape" in v["path"] for v in videos["videos"])


def test_stopping_a_job_keeps_whole_videos(client, tree):
    before = client.get("/info").json()["videos"]
    job_id = client.post("/index", json={"paths": [str(tree["root"] / "more")]}).json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job_id}").json()["files_done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    job = client.delete(f"/jobs/{job_id}").json()
    assert job["state"] == "stopped", job
    assert job["report"]["interrupted"] and 1 <= job["files_done"] < job["files_total"] == 14
    videos = client.get("/videos", params={"limit": 1000}).json()["videos"]
    assert len(videos) == before + job["report"]["added"] == before + job["files_done"]
    assert all(v["n_segments"] >= 10 for v in videos if "/more/" in v["path"])  # 12-s files, stored whole
    alive(client)


def test_cli_and_server_share_the_index_and_its_writer_lock(client, service, tree):
    lock = WriterLock(service["index"] / "segments")  # what a CLI `index` holds while it runs
    lock.acquire()
    try:
        response = client.post("/index", json={"paths": [str(tree["root"] / "db")]})
        assert response.status_code == 409 and "being written" in response.json()["error"]
        assert client.delete("/videos/1").status_code == 409
        assert client.post("/query", json={"path": str(tree["root"] / "queries" / "copy-db1.mp3")}).status_code == 200
    finally:
        lock.release()
    # a CLI `index` while the server runs: the server's warm engine sees its commit
    cli_run = subprocess.run([sys.executable, "-m", "ausil_search", "index", str(tree["root"] / "cli"),
                              "--index", str(service["index"]), "--workers", "0"], capture_output=True, text=True,
                             timeout=300)
    assert cli_run.returncode == 0, cli_run.stderr
    answer = client.post("/query", json={"path": str(tree["root"] / "queries" / "copy-cli0.mp3"), "top_k": 1}).json()
    assert Path(answer["matches"][0]["path"]).name == "by-cli0.ogg"


def test_video_listing_and_removal(client, tree):
    page = client.get("/videos", params={"offset": 1, "limit": 2}).json()
    assert page["offset"] == 1 and len(page["videos"]) == 2
    target = next(v for v in client.get("/videos", params={"limit": 1000}).json()["videos"] if v["path"].endswith("added0.ogg"))
    assert client.get(f"/videos/{target['id']}").json()["path"] == target["path"]
    response = client.delete(f"/videos/{target['id']}")
    assert response.status_code == 200 and response.json() == {"removed": [target["id"]]}
    assert client.get(f"/videos/{target['id']}").status_code == 404
    answer = client.post("/query", json={"path": str(tree["root"] / "queries" / "copy-new0.mp3"), "top_k": 50}).json()
    assert target["id"] not in [m["video_id"] for m in answer["matches"]]


# --------------------------------------------------------------------------- compare and dedup


def video_id(client, name: str) -> int:
    videos = client.get("/videos", params={"limit": 1000}).json()["videos"]
    return next(v["id"] for v in videos if Path(v["path"]).name == name)


def test_compare_uploads_ids_and_paths(service, client, tree, model_path):
    copy, original = tree["root"] / "queries" / "copy-db1.mp3", tree["root"] / "db" / "original1.ogg"
    cli_run = subprocess.run([sys.executable, "-m", "ausil_search", "compare", str(copy), str(original), "--model",
                              str(model_path), "--json"], capture_output=True, text=True, timeout=300)
    assert cli_run.returncode == 0, cli_run.stderr
    expected = json.loads(cli_run.stdout)
    with open(copy, "rb") as a, open(original, "rb") as b:
        response = client.post("/compare", files={"a": ("copy.mp3", a), "b": ("original.ogg", b)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == set(expected) and (answer["a"], answer["b"]) == ("copy.mp3", "original.ogg")
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert answer["span_a"] == expected["span_a"] and answer["span_b"] == expected["span_b"]
    assert answer["occurrences"] == expected["occurrences"] and len(answer["occurrences"]) >= 1
    assert upload_dirs(service) == []
    # the same pair with the original as its indexed video (stored segments), and then against an unrelated one
    original_id, unrelated_id = video_id(client, "original1.ogg"), video_id(client, "original0.ogg")
    with open(copy, "rb") as a:
        by_id = client.post("/compare", data={"b_id": str(original_id)}, files={"a": ("copy.mp3", a)}).json()
    assert by_id["b"] == str(original) and by_id["score"] == pytest.approx(answer["score"], abs=0.01)
    unrelated = client.post("/compare", json={"a": {"path": str(copy)}, "b": {"id": unrelated_id}}).json()
    assert unrelated["score"] < by_id["score"]
    threshold = (unrelated["score"] + by_id["score"]) / 2
    decided = [client.post("/compare", json={"a": {"path": str(copy)}, "b": {"id": other}, "min_score": threshold}).json()
               for other in (original_id, unrelated_id)]
    assert [d["duplicate"] for d in decided] == [True, False] and decided[0]["threshold"] == threshold
    itself = client.post("/compare", json={"a": {"id": original_id}, "b": {"id": original_id}}).json()
    assert itself["score"] >= by_id["score"] and itself["span_a"] == itself["span_b"]


def test_compare_bad_requests(service, client, tree):
    copy = str(tree["root"] / "queries" / "copy-db1.mp3")
    cases = [
        ({"json": {"a": {"path": copy}, "b": {"id": 10**9}}}, 404),
        ({"json": {"a": {"path": copy}, "b": {"id": 1, "path": copy}}}, 422),
        ({"json": {"a": {"path": copy}}}, 422),
        ({"json": {"a": {"path": copy}, "b": {"path": str(tree["outside"] / "secret.ogg")}}}, 403),
        ({"files": {"a": ("x.mp3", b"0" * 100)}}, 400),  # no b at all
        ({"data": {"a_id": "1", "b_id": "x"}}, 422),
        ({"files": {"a": ("clip.mp4", np.random.default_rng(2).bytes(20_000))}, "data": {"b_id": "1"}}, 415),
    ]
    for request, status in cases:
        if "data" in request and "files" not in request:  # a form without files still goes as multipart
            request = {**request, "files": {"unused": ("", b"")}}
        response = client.post("/compare", **request)
        assert response.status_code == status, (request.get("json"), response.text)
        assert "error" in response.json()
    assert upload_dirs(service) == []
    alive(client)


def test_dedup_in_the_background_matches_the_cli(service, client, tree):
    job_id = client.post("/index", json={"paths": [str(tree["root"] / "queries"), str(tree["root"] / "cli")]}).json()["id"]
    assert wait_job(client, job_id)["state"] == "done"
    ids = {name: video_id(client, name) for name in ("copy-db1.mp3", "original1.ogg", "copy-cli0.mp3", "by-cli0.ogg")}
    pairs = [client.post("/compare", json={"a": {"id": ids[a]}, "b": {"id": ids[b]}}).json()["score"]
             for a, b in (("copy-db1.mp3", "original1.ogg"), ("copy-cli0.mp3", "by-cli0.ogg"))]
    threshold = round(min(pairs) - 0.005, 4)
    first = client.get("/dedup", params={"min_score": threshold})
    assert first.status_code == 202 and first.json()["status"] == "running"  # answered at once, computed aside
    assert first.json()["pairs_skipped"] >= 0  # pairs whose videos were already joined, not scored
    assert client.get("/dedup", params={"min_score": threshold - 0.1}).status_code in (200, 409)  # one run at a time
    alive(client)
    deadline = time.monotonic() + 300
    while (response := client.get("/dedup", params={"min_score": threshold})).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert response.status_code == 200, response.text
    answer = response.json()
    groups = [{Path(m["path"]).name for m in g["members"]} for g in answer["groups"]]
    assert any({"copy-db1.mp3", "original1.ogg"} <= g for g in groups)
    assert any({"copy-cli0.mp3", "by-cli0.ogg"} <= g for g in groups)
    assert answer["total_groups"] == len(groups) and answer["stats"]["pairs_scored"] > 0
    # the CLI on the same index finds the server's scores stored and gives the same groups
    cli_run = subprocess.run([sys.executable, "-m", "ausil_search", "dedup", "--index", str(service["index"]),
                              "--min-score", str(threshold), "--json"], capture_output=True, text=True, timeout=300)
    assert cli_run.returncode == 0, cli_run.stderr
    expected = json.loads(cli_run.stdout)
    assert expected["stats"]["pairs_scored"] == 0
    assert answer["groups"] == expected["groups"] and answer["linkage"] == expected["linkage"] == "average"
    # paging, and a finished result is served again without a new run
    page = client.get("/dedup", params={"min_score": threshold, "offset": 1, "limit": 1}).json()
    assert page["groups"] == expected["groups"][1:2] and page["total_groups"] == len(groups)
    assert client.get("/dedup", params={"since": "yesterday"}).status_code == 400
    assert client.get("/dedup", params={"limit": 0}).status_code == 422
    assert client.get("/dedup", params={"linkage": "complete"}).status_code == 422
    alive(client)


def test_serve_falls_back_to_an_uncompiled_backbone_when_compiling_fails(tree, model_path, tmp_path, monkeypatch):
    """Without a working C compiler, torch.compile fails on the first call, not when it wraps the network.
    The warm engine must then reopen uncompiled, say so once, and answer queries as before."""
    import torch

    from ausil_search.service.search import WarmSearch

    index_dir = tmp_path / "index"
    with SearchEngine(index_dir, model_path, writable=True, workers=0) as engine:
        engine.index_paths(sorted((tree["root"] / "db").iterdir()))

    calls = []

    def compile_without_a_compiler(module, **kwargs):
        def first_call_fails(*args, **kw):
            calls.append(module)
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return first_call_fails

    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    warm = WarmSearch(index_dir, str(model_path), compile=True)
    try:
        assert len(calls) == 1  # the compiled network was tried, at warm-up
        assert len(warm.warnings) == 1 and "could not be compiled (RuntimeError)" in warm.warnings[0]
        result = warm.query(tree["root"] / "queries" / "copy-db1.mp3", top_k=1, candidates=10, nprobe=None,
                            exhaustive=False, min_score=None)
        assert Path(result.matches[0].path).name == "original1.ogg"
        assert len(calls) == 1  # the query ran on the uncompiled network
    finally:
        warm.close()
