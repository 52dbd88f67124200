"""How far off are the spans `query` prints? Column errors of `find_occurrences` on similarity matrices with a known answer.

    python benchmarks/span_accuracy.py [--seeds 8] [--segments 200]

Each case builds segment embeddings like a real video's (neighbouring 2-s windows share half their
audio, so neighbours correlate), puts a copy at a known place and reads back the occurrence with the
best similarity. Cases: an exact copy of the whole video whose last tenth is quieter (weighed less by
attention); a degraded excerpt, a quarter of the query's length, found from the long query; copies
played 5–15 % faster or slower, degraded, between unrelated segments. The error is |found start −
true start| + |found end − true end| in database segments (about 1 s each). Printed per case: median
and maximum over seeds, and the seconds `find_occurrences` took (median).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--segments", type=int, default=200, help="Query length in segments.")
    args = parser.parse_args(argv)

    import torch

    from ausil_search.model.head import find_occurrences

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def video(n: int, generator: torch.Generator) -> torch.Tensor:
        raw = torch.randn(n + 1, 64, generator=generator)
        return unit(raw[:-1] + raw[1:])

    def best(query: torch.Tensor, database: torch.Tensor) -> tuple[range, float]:
        started = time.perf_counter()
        found = find_occurrences(query @ database.T)
        return max(found, key=lambda item: item[2])[1], time.perf_counter() - started

    n = args.segments
    cases: dict[str, list[tuple[int, float]]] = {}
    for seed in range(args.seeds):
        generator = torch.Generator().manual_seed(seed)
        query = video(n, generator)
        whole = query.clone()
        whole[-(n // 10):] *= 0.9
        columns, seconds = best(whole, whole)
        cases.setdefault("exact copy, quieter ending", []).append((abs(columns.start) + abs(columns.stop - n), seconds))
        start, length = n // 3, n // 4
        excerpt = unit(query[start:start + length] + 0.5 * torch.randn(length, 64, generator=generator))
        columns, seconds = best(query, excerpt)
        cases.setdefault("degraded excerpt inside the long query", []).append(
            (abs(columns.start) + abs(columns.stop - length), seconds))
        for factor in (0.87, 0.9, 0.95, 1.05, 1.1, 1.15):  # database segments per query segment
            copy_length = round(n * factor)
            copy = torch.stack([query[min(n - 1, int(k / factor))] for k in range(copy_length)])
            before = n // 2
            database = torch.cat([unit(torch.randn(before, 64, generator=generator)),
                                  unit(copy + 0.4 * torch.randn(copy.shape, generator=generator)),
                                  unit(torch.randn(n // 3, 64, generator=generator))])
            columns, seconds = best(query, database)
            error = abs(columns.start - before) + abs(columns.stop - before - copy_length)
            cases.setdefault(f"copy at {factor:.2f}× length", []).append((error, seconds))

    print(f"{args.seeds} seeds, query {n} segments; error = start + end, in database segments\n")
    print("| case | median error | max error | median s |")
    print("|---|---|---|---|")
    for name, results in cases.items():
        errors, seconds = np.array([e for e, _ in results]), np.array([s for _, s in results])
        print(f"| {name} | {np.median(errors):g} | {errors.max():g} | {np.median(seconds):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
