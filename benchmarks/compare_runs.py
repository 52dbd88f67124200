"""Is one model's dev score really higher than another's? A paired comparison of run_dev.py outputs.

    python benchmarks/compare_runs.py BASE.json OTHER.json [OTHER2.json ...] [--mode engine]

Each file is a `run_dev.py --out` JSON of the same benchmark. Dev hard has 30 queries and dev small
50, so two models' mAPs differ by a few hundredths by chance alone: a shipping decision needs to
know whether a gain is more than that. For each OTHER this prints its mAP against BASE's, the mean
per-query AP difference with a 95 % bootstrap interval over queries (paired: both models answer the
same queries), how many queries got better and worse, and the same difference per query group and
per transformation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_run(path: Path, mode: str) -> dict:
    data = json.loads(path.read_text())
    try:
        run = data["runs"][mode]
    except KeyError:
        raise SystemExit(f"{path}: no '{mode}' run (has: {', '.join(data.get('runs', {})) or 'none'})")
    if "average_precision" not in run:
        raise SystemExit(f"{path}: the '{mode}' run has no per-query average precision")
    return {"model": data.get("meta", {}).get("model", "?"), "benchmark": data.get("meta", {}).get("benchmark"), **run}


def paired_difference(base: dict[str, float], other: dict[str, float], resamples: int = 5000, seed: int = 0) -> dict:
    """Mean of other − base over shared queries, with a percentile bootstrap interval (95 %)."""
    shared = sorted(set(base) & set(other))
    if not shared:
        return {"queries": 0}
    diff = np.array([other[q] - base[q] for q in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "queries": len(shared),
        "difference": float(diff.mean()),
        "ci95": [float(low), float(high)],
        "better": int((diff > 1e-9).sum()),
        "worse": int((diff < -1e-9).sum()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    parser.add_argument("--mode", default="engine", help="Which run of each file: engine or exhaustive.")
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--json", action="store_true", help="One JSON object per OTHER instead of text.")
    args = parser.parse_args(argv)

    base = load_run(args.base, args.mode)
    if not args.json:
        print(f"base: {args.base}  {base['model']}  mAP {base['mAP']:.3f} ({len(base['average_precision'])} queries)")
    for path in args.others:
        other = load_run(path, args.mode)
        if other["benchmark"] != base["benchmark"]:
            print(f"warning: {path} is on {other['benchmark']}, base on {base['benchmark']}", file=sys.stderr)
        result = {"file": str(path), "model": other["model"], "mAP": other["mAP"], "base_mAP": base["mAP"],
                  "all": paired_difference(base["average_precision"], other["average_precision"],
                                           resamples=args.resamples)}
        if args.json:
            print(json.dumps(result))
            continue
        d = result["all"]
        if not d["queries"]:
            print(f"{path}: no queries in common with the base")
            continue
        verdict = "higher" if d["ci95"][0] > 0 else "lower" if d["ci95"][1] < 0 else "not distinguishable"
        print(f"{path}  {other['model']}\n  mAP {other['mAP']:.3f} vs {base['mAP']:.3f}: "
              f"{d['difference']:+.3f}, 95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] ({verdict}); "
              f"{d['better']} queries better, {d['worse']} worse of {d['queries']}")
        for kind in ("groups", "per_transform"):
            rows = []
            for name in sorted(set(base.get(kind, {})) & set(other.get(kind, {}))):
                rows.append(f"{name} {other[kind][name]['mAP'] - base[kind][name]['mAP']:+.3f}")
            if rows:
                print(f"  {kind.replace('_', ' ')}: " + ", ".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
