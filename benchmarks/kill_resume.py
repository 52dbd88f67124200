"""`kill -9` an index run at random moments, then check what it left (issue 16).

Writes FILES short songs, starts `ausil-search index` on them (decode workers on) and kills it with
SIGKILL at a random moment, KILLS times (every other one after the run has committed something),
each run resuming the last; then lets one run finish.
After every kill: no decode worker outlives its parent (checked within 10 s). At the end: no
scratch file is left in the run's TMPDIR, the index opens, and it holds every file exactly once.

    python benchmarks/kill_resume.py [--files 40] [--kills 20] [--seed 0] [--work DIR] [--model FILE]

Prints a JSON summary; exits 1 if any check failed. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ausil_search.errors import IndexStoreError  # noqa: E402
from ausil_search.stores import SegmentStore  # noqa: E402
from media import synth_music, write_audio_file  # noqa: E402

SAMPLE_RATE = 22050


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _count(index_dir: Path) -> int:
    """Videos committed so far; 0 while a first run is still creating the store."""
    try:
        return len(_stored(index_dir))
    except IndexStoreError:
        return 0


def _stored(index_dir: Path) -> list[str]:
    with SegmentStore(index_dir / "segments", readonly=True) as store:
        return [record.path for record in store.iter_records()]


def stress(work: Path, model: Path, files: int = 40, kills: int = 20, seed: int = 0, workers: int = 1) -> dict:
    """Run the experiment in `work`; returns the summary (see the module doc)."""
    rng = random.Random(seed)
    db, index_dir, tmpdir = work / "db", work / "idx", work / "tmp"
    db.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(exist_ok=True)
    songs = []
    for k in range(files):
        path = db / f"song{k:03d}.wav"
        if not path.exists():
            write_audio_file(path, synth_music(rng.uniform(8.0, 20.0), SAMPLE_RATE, seed=seed * 1000 + k), SAMPLE_RATE)
        songs.append(str(path.resolve()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "ausil_search", "index", str(db), "--index", str(index_dir), "--model", str(model),
               "--workers", str(workers), "--commit-every", "2"]
    orphans, delays, counts, finished_early = [], [], [], []
    for kill in range(kills):
        before = _count(index_dir)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        started = time.monotonic()
        children: set[int] = set()
        # Even kills land anywhere from start-up to extraction; odd ones after this run committed.
        deadline = started + rng.uniform(0.5, 5.0) if kill % 2 == 0 else None
        while process.poll() is None:
            children.update(_children(process.pid))
            if deadline is None and _count(index_dir) > before:
                deadline = time.monotonic() + rng.uniform(0.0, 2.0)
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        delays.append(round(time.monotonic() - started, 2))
        if process.poll() is not None:
            finished_early.append(process.returncode)
            continue
        process.kill()
        process.wait()
        gone_by = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < gone_by:
            time.sleep(0.1)
        orphans += [pid for pid in children if _alive(pid)]
        counts.append(_count(index_dir))
    final = subprocess.run(command, capture_output=True, text=True, env=env)
    stored = _stored(index_dir)
    leftovers = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("ausil-"))
    summary = {
        "files": files,
        "kills": kills - len(finished_early),
        "exit_codes_of_runs_done_before_their_kill": finished_early,
        "seconds_to_each_kill": delays,
        "stored_after_each_kill": counts,
        "orphaned_workers": orphans,
        "final_run_exit_code": final.returncode,
        "temp_files_left": leftovers,
        "stored": len(stored),
        "every_file_exactly_once": sorted(stored) == sorted(songs),
    }
    summary["ok"] = bool(not orphans and final.returncode == 0 and not leftovers and summary["every_file_exactly_once"]
                         and all(code == 0 for code in finished_early))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    parser.add_argument("--model", type=Path, default=None, help="Model file (default: a seeded random one).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ausil-kill-resume-"))
    model = args.model
    if model is None:
        from ausil_search.model import AuSiLModel

        model = work / "random.safetensors"
        AuSiLModel.initialise(seed=7, name="kill-resume-random").save(model)
    summary = stress(work, model, args.files, args.kills, args.seed, args.workers)
    print(json.dumps({"work": str(work), **summary}, indent=2))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
