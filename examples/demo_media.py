"""Writes a small demo collection: original recordings, near-duplicate copies, and query clips.

    python examples/demo_media.py demo/

gives demo/media/ (to index) and demo/queries/ (to search with). Every copy names its original,
so the query output can be checked by eye: a clip of `tune-03` should find `tune-03.mp4` and
its copies at the top, with the clip's position in each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from media import synth_music, write_audio_file, write_video_file  # noqa: E402

RATE = 44_100
SECONDS = 40.0


def noisy(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    scale = np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    y = x + scale * noise
    return (0.9 * y / np.abs(y).max()).astype(np.float32)


def main(out: Path) -> None:
    media, queries = out / "media", out / "queries"
    media.mkdir(parents=True, exist_ok=True)
    queries.mkdir(parents=True, exist_ok=True)
    tunes = {i: synth_music(SECONDS, RATE, seed=100 + i) for i in range(1, 9)}
    for i, x in tunes.items():
        write_video_file(media / f"tune-{i:02d}.mp4", x, RATE)
    # Near-duplicates: a low-bitrate re-encode, a noisy copy, a cropped copy, an audio-only rip.
    write_video_file(media / "tune-01-reupload-lowbitrate.mkv", tunes[1], RATE, bitrate=48_000)
    write_video_file(media / "tune-02-noisy-copy.webm", noisy(tunes[2], 15, seed=1), RATE)
    write_video_file(media / "tune-03-cropped-20s.mp4", tunes[3][:, 10 * RATE : 30 * RATE], RATE)
    write_audio_file(media / "tune-04-audio-rip.ogg", 0.5 * tunes[4], RATE)
    # Queries: clips of the collection's audio, degraded like a phone recording would be.
    write_video_file(queries / "clip-of-tune-03.mp4", noisy(tunes[3][:, 15 * RATE : 27 * RATE], 20, seed=2), RATE)
    write_audio_file(queries / "clip-of-tune-01.mp3", tunes[1][:, 5 * RATE : 20 * RATE], RATE, bitrate=64_000)
    print(f"wrote {len(list(media.iterdir()))} videos to {media} and {len(list(queries.iterdir()))} queries to {queries}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/demo_media.py OUT_DIR")
    main(Path(sys.argv[1]))
