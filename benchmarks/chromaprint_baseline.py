"""Chromaprint baseline: `fpcalc -raw` fingerprints and an alignment matcher of our own.

Benchmark-only: needs the `fpcalc` binary (Debian: `apt-get install libchromaprint-tools`), which
is never a dependency of the ausil-search package.

Matching. A raw Chromaprint fingerprint is one 32-bit word per ~0.124 s of audio. Two recordings of
the same audio, aligned, differ in few bits; unrelated audio differs in about half of them. For a
query q (m words) and a database video d (n words), every relative offset o (q[i] against
d[i + o]) whose overlap is at least `min_overlap` words is scored by its bit-error rate

    BER(o) = popcount(q[i] XOR d[i + o]) summed over the overlap / (32 × overlap),

and the pair's similarity is 1 − 2 × min_o BER(o): about 0 for unrelated audio, 1 for identical
fingerprints. The minimum overlap is half the shorter fingerprint (and at least MIN_OVERLAP_WORDS
or the whole shorter fingerprint when it is shorter), so that a few words at the edge of the
offset range cannot produce a spuriously low error rate.

Usage:
    python benchmarks/chromaprint_baseline.py BENCH_DIR -o chromaprint.json
    ausil-search evaluate -r chromaprint.json -a BENCH_DIR/annotation.json -d ids.txt

BENCH_DIR holds `queries.txt` and `database.txt` (`<id> <path>` lines); the output is the release
similarity JSON `{query_id: {db_id: similarity}}`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ITEM_SECONDS = 4096 / 3 / 11025  # Chromaprint's default algorithm: one word per 1365.33 samples at 11025 Hz
MIN_OVERLAP_WORDS = 16  # ~2 s
FPCALC_SAMPLE_RATE = 11025


class FingerprintError(RuntimeError):
    pass


# --------------------------------------------------------------------------- matching (pure numpy)


def popcount32(words: np.ndarray) -> np.ndarray:
    """Set bits per uint32 word."""
    return np.bitwise_count(np.asarray(words, dtype=np.uint32))


def min_overlap_for(m: int, n: int) -> int:
    shorter = min(m, n)
    return min(shorter, max(MIN_OVERLAP_WORDS, shorter // 2))


def bit_errors_by_offset(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, bit errors, overlap words) for every offset o = j − i of q[i] against d[j].

    All m × n word pairs are XORed and popcounted at once, then summed along each diagonal
    (constant j − i) with one bincount.
    """
    q = np.asarray(query, dtype=np.uint32)
    d = np.asarray(reference, dtype=np.uint32)
    m, n = len(q), len(d)
    if m == 0 or n == 0:
        raise ValueError("empty fingerprint")
    errors = popcount32(q[:, None] ^ d[None, :])
    diagonal = (np.arange(n)[None, :] - np.arange(m)[:, None]) + (m - 1)
    totals = np.bincount(diagonal.ravel(), weights=errors.ravel(), minlength=m + n - 1)
    offsets = np.arange(-(m - 1), n)
    overlap = np.minimum(m, n - offsets) - np.maximum(0, -offsets)
    return offsets, totals, overlap


def best_alignment(query: np.ndarray, reference: np.ndarray, min_overlap: int | None = None) -> tuple[float, int, float]:
    """(similarity = 1 − 2·BER, offset in words of the query's start in the reference, BER) at the best offset."""
    offsets, errors, overlap = bit_errors_by_offset(query, reference)
    if min_overlap is None:
        min_overlap = min_overlap_for(len(query), len(reference))
    allowed = overlap >= min_overlap
    ber = np.where(allowed, errors / (32.0 * np.maximum(overlap, 1)), np.inf)
    best = int(np.argmin(ber))
    return 1.0 - 2.0 * float(ber[best]), int(offsets[best]), float(ber[best])


def similarity_table(
    query_prints: dict[str, np.ndarray], database_prints: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Release-format similarities of every query against every database video."""
    return {
        qid: {did: round(best_alignment(q, d)[0], 6) for did, d in database_prints.items()}
        for qid, q in query_prints.items()
    }


# --------------------------------------------------------------------------- fingerprints (fpcalc)


def fpcalc_binary() -> str | None:
    return shutil.which("fpcalc")


def _run_fpcalc(path: Path) -> np.ndarray:
    binary = fpcalc_binary()
    if binary is None:
        raise FingerprintError("fpcalc not found: apt-get install libchromaprint-tools")
    # -length 0: the whole file (the default stops after 120 s).
    done = subprocess.run([binary, "-raw", "-length", "0", str(path)], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("FINGERPRINT="):
            values = line.split("=", 1)[1]
            if values:
                return np.array([int(v) for v in values.split(",")], dtype=np.int64).astype(np.uint32)
    raise FingerprintError(f"{path}: fpcalc failed ({done.stderr.strip() or 'no fingerprint'})")


def _decode_to_wav(path: Path, wav_path: Path) -> None:
    """PyAV decode (mono, 11025 Hz) for containers fpcalc's own FFmpeg cannot read."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ausil_search.audio import load_audio

    samples = load_audio(path, FPCALC_SAMPLE_RATE)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(FPCALC_SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def fingerprint(path: Path) -> np.ndarray:
    """Raw Chromaprint words of a media file; falls back to a PyAV-decoded WAV if fpcalc cannot read it."""
    try:
        return _run_fpcalc(Path(path))
    except FingerprintError:
        with tempfile.TemporaryDirectory(prefix="chromaprint-") as tmp:
            wav = Path(tmp) / "audio.wav"
            _decode_to_wav(Path(path), wav)
            return _run_fpcalc(wav)


def _cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def fingerprint_all(paths: dict[str, Path], cache_dir: Path | None = None, jobs: int = 2) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Fingerprints by id (cached as .npy by path, size and mtime); failures are returned, not raised."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, Path]) -> tuple[str, np.ndarray | str]:
        video_id, path = item
        cached = cache_dir / f"{_cache_key(path)}.npy" if cache_dir is not None and path.exists() else None
        if cached is not None and cached.exists():
            return video_id, np.load(cached)
        try:
            words = fingerprint(path)
        except Exception as exc:  # a bad file is reported and skipped, never aborts the run
            return video_id, f"{type(exc).__name__}: {exc}"
        if cached is not None:
            np.save(cached, words)
        return video_id, words

    prints: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for video_id, outcome in pool.map(one, paths.items()):
            if isinstance(outcome, str):
                failed[video_id] = outcome
            else:
                prints[video_id] = outcome
    return prints, failed


def read_list(list_path: Path) -> dict[str, Path]:
    entries: dict[str, Path] = {}
    for line in Path(list_path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            video_id, path = line.strip().split(maxsplit=1)
            p = Path(path)
            if not p.is_absolute() and not p.exists() and (Path(list_path).parent / p).exists():
                p = Path(list_path).parent / p
            entries[video_id] = p
    return entries


def run_baseline(bench_dir: Path, cache_dir: Path | None = None, jobs: int = 2) -> dict:
    """Fingerprint a benchmark and score every query against every database video.

    Returns {"similarities", "failed", "fingerprint_s", "match_s", "audio_s"}.
    """
    queries = read_list(bench_dir / "queries.txt")
    database = read_list(bench_dir / "database.txt")
    started = time.perf_counter()
    prints, failed = fingerprint_all({**database, **queries}, cache_dir, jobs)
    fingerprint_s = time.perf_counter() - started
    started = time.perf_counter()
    sims = similarity_table(
        {q: prints[q] for q in queries if q in prints}, {d: prints[d] for d in database if d in prints}
    )
    return {
        "similarities": sims,
        "failed": failed,
        "fingerprint_s": fingerprint_s,
        "match_s": time.perf_counter() - started,
        "audio_s": sum(len(prints[d]) for d in database if d in prints) * ITEM_SECONDS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("chromaprint.json"))
    parser.add_argument("--cache", type=Path, default=None, help="Folder for cached fingerprints (.npy).")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)), help="Parallel fpcalc processes.")
    args = parser.parse_args(argv)
    if fpcalc_binary() is None:
        print("Error: fpcalc not found: apt-get install libchromaprint-tools", file=sys.stderr)
        return 1
    result = run_baseline(args.bench_dir, args.cache, args.jobs)
    for video_id, reason in result["failed"].items():
        print(f"skipped {video_id}: {reason}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result["similarities"], indent=1), encoding="utf-8")
    print(f"{len(result['similarities'])} queries fingerprinted and matched in "
          f"{result['fingerprint_s']:.1f} + {result['match_s']:.1f} s → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
