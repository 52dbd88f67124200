"""Digests of what the training, indexing and release commands write, for refactors that must not change them.

    python tools/artifact_digest.py OUT.json [--work DIR]

Generates a few recordings (the test suite's synthetic music), then runs, through the CLI:
`weights init`, `train-backbone` (3 steps), `fit-whitening`, `train` (head, 6 steps), `index` and
`query --json`, `extract` and `similarity`. It records the SHA-256 of every model tensor, of the
model metadata minus what varies between runs (timings, dates, paths), of every stored segment
matrix and global vector, and of the release outputs. Run it on two commits and diff the JSON
files: equal digests mean byte-identical artifacts for the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media import synth_music, write_audio_file  # noqa: E402

RATE = 44100
# Metadata that legitimately differs between two runs of the same command.
VOLATILE = {"train_seconds", "total_train_seconds", "seconds", "steps_per_s", "segments_per_s", "calibration_seconds",
            "version", "source", "created", "sources", "path", "elapsed_s", "fingerprint", "cache_path", "timings"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, str):  # model identities hash the whole file, timings included
        return re.sub(r"@[0-9a-f]{12}\b", "@<identity>", value)
    return value


def model_digest(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "np") as handle:
        for key in sorted(handle.keys()):
            out[key] = _sha(np.ascontiguousarray(handle.get_tensor(key)).tobytes())
        metadata = handle.metadata() or {}
    decoded = {k: json.loads(v) if v[:1] in "{[" else v for k, v in metadata.items()}
    out["metadata"] = _sha(json.dumps(_stable(decoded), sort_keys=True).encode())
    return out


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "ausil_search", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ausil-search {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="artifact-digest-"))
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        write_audio_file(media / f"rec{i}.flac", synth_music(14.0 + i, RATE, seed=900 + i), RATE)
    digest: dict = {}
    run("weights", "init", "-o", str(work / "init.safetensors"), "--seed", "3", cwd=work)
    digest["init"] = model_digest(work / "init.safetensors")
    run("train-backbone", str(media), "-o", str(work / "ssl.safetensors"), "--steps", "3", "--batch", "3", "--workers", "0",
        "--calibration-batches", "1", "--seed", "1", cwd=work)
    digest["train-backbone"] = model_digest(work / "ssl.safetensors")
    run("fit-whitening", str(media), "--model", str(work / "ssl.safetensors"), "-o", str(work / "white.safetensors"),
        "--max-seconds", "600", cwd=work)
    digest["fit-whitening"] = model_digest(work / "white.safetensors")
    run("train", str(media), "--model", str(work / "ssl.safetensors"), "-o", str(work / "head.safetensors"), "--steps", "6",
        "--batch", "4", "--examples-per-file", "2", "--database-seconds", "9:11", "--query-seconds", "6:7",
        "--val-fraction", "0.5", cwd=work)
    digest["train"] = model_digest(work / "head.safetensors")
    model = str(work / "head.safetensors")
    run("index", str(media), "--index", str(work / "index"), "--model", model, "--workers", "0", cwd=work)
    query = json.loads(run("query", str(media / "rec1.flac"), "--index", str(work / "index"), "--json", cwd=work).splitlines()[0])
    digest["query"] = _sha(json.dumps(_stable(query), sort_keys=True).encode())
    from ausil_search.engine import SearchEngine

    engine = SearchEngine(work / "index", model=model)
    try:
        ids, vectors = engine.store.all_globals()
        digest["index"] = {"globals": _sha(np.ascontiguousarray(vectors).tobytes()),
                           **{Path(engine.store.get(int(i)).path).name: _sha(engine.store.segments(int(i)).tobytes())
                              for i in ids}}
    finally:
        engine.close()
    (work / "list.txt").write_text("".join(f"r{i} {media / f'rec{i}.flac'}\n" for i in range(4)))
    run("extract", "-f", str(work / "list.txt"), "-o", str(work / "features"), "--model", model, "--workers", "0", cwd=work)
    digest["extract"] = {p.parent.name: _sha(np.load(p)["features"].tobytes())
                         for p in sorted((work / "features").glob("*/*.npz"))}
    (work / "features.txt").write_text("".join(f"{p.parent.name} {p}\n" for p in sorted((work / "features").glob("*/*.npz"))))
    run("similarity", "-q", str(work / "features.txt"), "-d", str(work / "features.txt"), "--model", model,
        "-o", str(work / "similarities.json"), cwd=work)
    digest["similarity"] = _sha((work / "similarities.json").read_bytes())
    args.out.write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
    print(f"digests → {args.out} (work in {work})")


if __name__ == "__main__":
    main()
