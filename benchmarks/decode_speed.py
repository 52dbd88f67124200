"""How fast the audio front-end runs, in multiples of real time, on a generated 5-minute AAC/MP4 file.

    python benchmarks/decode_speed.py [--minutes 5] [--runs 5] [--torch-threads N]

Prints the median of several runs for decoding alone (48 kHz stereo AAC → 44.1 kHz mono) and for
the streaming log-mel on already decoded samples. The log-mel's STFT runs in torch, whose threads
compete with anything else on the machine; ``--torch-threads`` pins their number.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from a checkout, installed or not
from media import synth_music, write_audio_file  # noqa: E402

from ausil_search.audio import SAMPLE_RATE, decode_audio  # noqa: E402
from ausil_search.spectrogram import FrontEnd, LogMelAccumulator  # noqa: E402

SOURCE_RATE = 48000


def median_seconds(task: Callable[[], object], runs: int) -> float:
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        task()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None, help="default: torch's own choice")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    seconds = args.minutes * 60

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "music.mp4"
        write_audio_file(path, synth_music(seconds, SOURCE_RATE, seed=0, channels=2), SOURCE_RATE)
        print(f"{args.minutes:g} min AAC in MP4, 48 kHz stereo, {path.stat().st_size / 1e6:.1f} MB; "
              f"torch threads: {torch.get_num_threads()}")

        chunks = list(decode_audio(path))
        decode = median_seconds(lambda: sum(len(chunk) for chunk in decode_audio(path)), args.runs)
        print(f"decode: {seconds / decode:.0f}× realtime (median of {args.runs}, {decode:.2f} s)")

        def log_mel_from_chunks() -> object:
            accumulator = LogMelAccumulator(FrontEnd(sample_rate=SAMPLE_RATE))
            for chunk in chunks:
                accumulator.push(chunk)
            return accumulator.finish()

        log_mel = median_seconds(log_mel_from_chunks, args.runs)
        print(f"log-mel: {seconds / log_mel:.0f}× realtime (median of {args.runs}, {log_mel:.2f} s)")
        print(f"decode + log-mel: {seconds / (decode + log_mel):.0f}× realtime")


if __name__ == "__main__":
    main()
