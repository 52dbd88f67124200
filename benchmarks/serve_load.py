"""Load test of `ausil-search serve` on loopback: latency, throughput and errors under concurrent uploads.

    python benchmarks/serve_load.py [--videos 1000] [--clients 8] [--queries 200] [--clip-seconds 10:30]
                                    [--single 20] [--source DIR] [--model PATH] [--work DIR] [--reuse] [--json]

1. An index of --videos videos, built as benchmarks/engine_speed.py builds its large one: the source
   audio is indexed for real, then excerpts of its stored segment matrices are added under new ids
   (`SearchEngine.add_embedded`). With --reuse an index already in --work is used as it is.
2. Query clips: mp3 excerpts of the source audio, 10-30 s (--clip-seconds), and 30-s ones.
3. The server: `ausil-search serve` in its own process on 127.0.0.1, an ephemeral port (loopback only).
4. Single: --single warm queries one after another with a 30-s clip (the issue's latency target).
   Load: --clients concurrent clients send --queries uploads in all, stopping at --max-seconds.
   Each reports p50/p95/p99 latency, throughput and errors; the server is stopped at the end.

Without the source folder (the Debian wesnoth music by default) the audio is generated (tests/media.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_speed import DEFAULT_SOURCE, audio_files, build_large_index, pct, run_index_process, write_queries  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this tool never exposes the server


def generated_source(folder: Path, count: int = 24, seconds: float = 90.0) -> list[Path]:
    """Synthetic music files, for machines without the source folder."""
    from media import synth_music, write_audio_file

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"generated-{i:02d}.ogg"
        if not path.exists():
            write_audio_file(path, synth_music(seconds, 44_100, seed=1000 + i), 44_100)
        files.append(path)
    return files


def clip_pool(files: list[Path], folder: Path, low: float, high: float, count: int) -> list[Path]:
    """`count` clips with lengths spread evenly over [low, high] seconds."""
    lengths = np.linspace(low, high, min(count, 5))
    pool = []
    for j, seconds in enumerate(lengths):
        n = count // len(lengths) + (j < count % len(lengths))
        pool += write_queries(files, folder / f"{seconds:.0f}s", n, float(seconds), seed=10 + j)
    return pool


class Server:
    """`ausil-search serve` as a child process; its port is read from its start-up line."""

    def __init__(self, index_dir: Path, log_path: Path, threads: int | None) -> None:
        command = [sys.executable, "-m", "ausil_search", "serve", "--index", str(index_dir), "--host", HOST, "--port", "0"]
        if threads:
            command += ["--query-threads", str(threads)]
        env = {key: value for key, value in os.environ.items() if key != "AUSIL_SEARCH_TOKEN"}
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_url(timeout_s=600)

    def _wait_for_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"on (http://127\.0\.0\.1:\d+) ", self.log_path.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not start in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def send_queries(url: str, clips: list[Path], n_queries: int, clients: int, max_seconds: float) -> dict:
    """`clients` threads share `n_queries` uploads (clips in turn); none starts after `max_seconds`."""
    import httpx

    latencies: list[float] = []
    engine_s: list[float] = []  # the engine's own time per query (its `timings`), to show what HTTP adds
    errors: list[str] = []
    lock = threading.Lock()
    taken = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    def client() -> None:
        nonlocal taken
        with httpx.Client(base_url=url, timeout=max(1.0, max_seconds)) as http:
            while True:
                with lock:
                    if taken >= n_queries or time.perf_counter() > deadline:
                        return
                    clip = clips[taken % len(clips)]
                    taken += 1
                clock = time.perf_counter()
                try:
                    with open(clip, "rb") as handle:
                        response = http.post("/query", params={"top_k": 10}, files={"file": (clip.name, handle)},
                                             timeout=max(0.5, deadline + 60 - clock))
                    ok = response.status_code == 200 and "matches" in response.json()
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                    timings = response.json().get("timings", {}) if ok else {}
                except Exception as exc:  # a failed request is a result of the test, not a crash of it
                    problem = f"{type(exc).__name__}: {exc}"
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(time.perf_counter() - clock)
                        engine_s.append(sum(timings.values()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = len(latencies) + len(errors)
    return {
        "clients": clients, "sent": done, "ok": len(latencies), "errors": len(errors), "error_samples": errors[:5],
        "not_sent": n_queries - done, "seconds": round(elapsed, 3),
        "throughput_qps": round(len(latencies) / elapsed, 3) if elapsed else 0.0,
        **({f"p{q}_s": round(pct(latencies, q), 3) for q in (50, 95, 99)} if latencies else {}),
        "mean_s": round(float(np.mean(latencies)), 3) if latencies else None,
        "engine_p50_s": round(pct(engine_s, 50), 3) if engine_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clip-seconds", default="10:30", help="MIN:MAX length of the load clips")
    parser.add_argument("--clips", type=int, default=20, help="distinct load clips (sent in turn)")
    parser.add_argument("--single", type=int, default=20, help="sequential 30-s queries first (0: none)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="no query starts after this")
    parser.add_argument("--query-threads", type=int, default=None, help="the server's --query-threads")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--source-files", type=int, default=None, help="use only the first N source files")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the default model)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="use the index and clips already in --work")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.as_json else (lambda *a: print(*a, flush=True))

    from ausil_search.model import resolve_model_path

    work = args.work or Path(tempfile.mkdtemp(prefix="ausil-serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    files = audio_files(args.source) if args.source.is_dir() else []
    source_kind = f"real audio from {args.source}"
    if not files:
        files, source_kind = generated_source(work / "generated"), "generated audio (tests/media.py synth_music)"
    files = files[: args.source_files] if args.source_files else files
    model = args.model or resolve_model_path(None)
    large = work / f"index-{args.videos}"
    low, high = (float(x) for x in args.clip_seconds.split(":"))
    if not (args.reuse and (large / "manifest.json").exists()):
        shutil.rmtree(work / "index-source", ignore_errors=True)
        shutil.rmtree(large, ignore_errors=True)
        shutil.rmtree(work / "clips", ignore_errors=True)
        indexed = run_index_process(files, work / "index-source", model)
        say(f"source: {indexed['added']} files, {indexed['audio_s'] / 3600:.2f} h indexed in {indexed['seconds']:.0f} s")
        build_large_index(work / "index-source", large, args.videos, seed=1)
    clips_dir = work / "clips"
    if not clips_dir.exists():
        clip_pool(files, clips_dir / "load", low, high, args.clips)
        write_queries(files, clips_dir / "single", max(1, min(args.single, 10)), 30.0, seed=3)
    load_clips = sorted((clips_dir / "load").rglob("*.mp3"))
    single_clips = sorted((clips_dir / "single").glob("*.mp3"))

    server = Server(large, work / "server.log", args.query_threads)
    report: dict = {"source": source_kind, "model": str(model), "cpu_count": os.cpu_count(), "host": HOST}
    try:
        import httpx

        info = httpx.get(server.url + "/info", timeout=60).json()
        report["videos"] = info["videos"]
        say(f"server {server.url}: {info['videos']} videos, model {info['model'].get('identity')}")
        send_queries(server.url, single_clips[:1], 1, 1, args.max_seconds)  # warm-up
        if args.single:
            report["single"] = send_queries(server.url, single_clips, args.single, 1, args.max_seconds)
            s = report["single"]
            say(f"single: {s['ok']} sequential 30-s uploads, p50 {s.get('p50_s')} s (engine {s['engine_p50_s']} s), "
                f"p95 {s.get('p95_s')} s, errors {s['errors']}")
        report["load"] = send_queries(server.url, load_clips, args.queries, args.clients, args.max_seconds)
        report["load"]["clip_seconds"] = [low, high]
        x = report["load"]
        say(f"load: {x['clients']} clients, {x['sent']} of {args.queries} queries ({low:g}-{high:g} s clips) in "
            f"{x['seconds']:.1f} s: p50 {x.get('p50_s')} s, p95 {x.get('p95_s')} s, p99 {x.get('p99_s')} s, "
            f"{x['throughput_qps']} queries/s, errors {x['errors']}, not sent {x['not_sent']}")
        for sample in x["error_samples"]:
            say(f"  error: {sample}")
    finally:
        server.stop()
    (work / "serve_load.json").write_text(json.dumps(report, indent=2))
    if args.as_json:
        print(json.dumps(report, indent=2))
    else:
        say(f"full report: {work / 'serve_load.json'}")
    if report.get("load", {}).get("errors") or report.get("single", {}).get("errors"):
        sys.exit(1)


if __name__ == "__main__":
    main()
