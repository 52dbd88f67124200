"""Backbone throughput (segments/s) per precision mode and batch size, and each mode's deviation from fp32.

    python benchmarks/backbone_throughput.py [--model PATH] [--segments 64] [--runs 3] [--device cpu] [--no-compile]

Input: log-mel segments of generated music through the project's front-end. Without --model the
backbone is random, with BatchNorm statistics calibrated on that input so that activations have
trained-like scales (throughput does not depend on the weights; the deviations do, a little).
Each cell is the median of --runs timed passes after one warm-up pass (which, with compile, includes
compiling: its time is printed apart); wall-clock time, so anything else running on the machine
shows up in the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from a checkout, installed or not
from media import synth_music  # noqa: E402

from ausil_search.backbone import PRECISIONS, SegmentEncoder, WeakMxH64  # noqa: E402
from ausil_search.spectrogram import FrontEnd, log_mel, segment  # noqa: E402

BATCH_SIZES = (16, 64)


def real_ish_segments(count: int, seed: int) -> np.ndarray:
    frontend = FrontEnd()
    seconds = (count + 1) * frontend.step_frames * frontend.hop_length / frontend.sample_rate
    audio = synth_music(seconds, frontend.sample_rate, seed=seed)[0]
    return segment(log_mel(audio, frontend), frontend)[:count]


def calibrated_backbone(segments: np.ndarray) -> WeakMxH64:
    torch.manual_seed(0)
    model = WeakMxH64()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    with torch.no_grad():
        model.train()(torch.from_numpy(segments).unsqueeze(1))
    return model.eval()


def segments_per_second(encoder: SegmentEncoder, segments: np.ndarray, runs: int) -> tuple[float, float]:
    """Throughput, and the seconds the warm-up pass took."""
    start = time.perf_counter()
    encoder.encode(segments)
    warm_up = time.perf_counter() - start
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        encoder.encode(segments)
        durations.append(time.perf_counter() - start)
    return len(segments) / statistics.median(durations), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a model file; default: calibrated random backbone")
    parser.add_argument("--segments", type=int, default=64, help="segments per timed pass")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: torch's own choice")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (slow to compile)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    segments = real_ish_segments(args.segments, seed=1)
    if args.model is not None:
        from ausil_search.model import load_model

        backbone = load_model(args.model).backbone
    else:
        backbone = calibrated_backbone(real_ish_segments(32, seed=2))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(segments)} segments of "
          f"{segments.shape[1]}x{segments.shape[2]}, median of {args.runs} runs")

    reference = SegmentEncoder(backbone, device=args.device, precision="fp32").encode(segments)
    print(f"{'mode':<16}" + "".join(f"{f'batch {b} seg/s':>16}" for b in BATCH_SIZES)
          + f"{'max |d - d_fp32|':>18}{'min cosine':>12}{'warm-up s':>11}")
    modes = [(precision, False) for precision in PRECISIONS]
    if not args.no_compile:
        modes += [(precision, True) for precision in PRECISIONS if precision != "fp32"]
    for precision, compile in modes:
        encoders = [SegmentEncoder(backbone, args.device, batch, precision, compile) for batch in BATCH_SIZES]
        try:
            rates, warm_ups = zip(*(segments_per_second(encoder, segments, args.runs) for encoder in encoders))
        except Exception as error:  # torch.compile needs a working C++ toolchain on CPU
            if not compile:
                raise
            print(f"{precision}+compile unavailable: {str(error).splitlines()[0]}")
            continue
        descriptors = encoders[0].encode(segments)
        norms = np.linalg.norm(descriptors, axis=1) * np.linalg.norm(reference, axis=1)
        cosine = (descriptors * reference).sum(1) / norms
        name = precision + ("+compile" if compile else "")
        print(f"{name:<16}" + "".join(f"{rate:>16.1f}" for rate in rates)
              + f"{np.abs(descriptors - reference).max():>18.2e}{cosine.min():>12.6f}{max(warm_ups):>11.1f}")


if __name__ == "__main__":
    main()
