"""How much degradation does a model survive? Top-1 accuracy per transformation and strength.

    python benchmarks/degradation_curve.py [SOURCES.txt] [--model PATH] [--recordings 24] [--seconds 20]
        [--only WORDS] [--out curve.json]
    python benchmarks/degradation_curve.py --compare A.json B.json   # two runs' --out files, paired

The dev tables give one number per transformation, mixed over strengths and over chains of two or
three steps. To know where the descriptors break (and so which training views matter) this takes
`--recordings` dev recordings (default `bench-data/sources/dev.txt`, the half never trained on), cuts
two non-overlapping excerpts of `--seconds` from each (a quarter and three quarters of the way in),
and asks for every single transformation at every strength: does a degraded copy of the first
excerpt score highest against its own clean source, among all clean excerpts (the recording's other
excerpt included, the benchmark's hard negative)? It prints top-1 accuracy and the median margin
(source score minus the best other score) per row, with the full AuSiL score of the model and with
the backbone's MAC descriptors alone (mean over the excerpt, cosine), so a row shows whether the backbone or the head fails.

`--compare` sets two runs side by side (a new backbone against the old, say) and gives B − A in top-1 over
the rows where the descriptors break (mixing, noise at 10 dB or less, the chains), with a 95 % interval
from resampling recordings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from compare_runs import paired_difference  # noqa: E402

# (label, steps) in the generator's own step format (ausil_search.media.augment.apply_step), applied in
# order; the mix's "other" (index 0) is an excerpt of the next recording. The last rows chain steps as
# the hard benchmark does (2–3 strong steps, sometimes a time change).
MIX = {"name": "mix", "other": 0, "other_start_frac": 0.0}
NOISE = {"name": "noise", "color": "pink"}
TELEPHONE = {"name": "band", "kind": "telephone", "low_hz": 300.0, "high_hz": 3400.0}
REROOM = {"name": "rerecord", "rt60_s": 0.6, "wet": 0.5, "low_hz": 250, "high_hz": 5000, "snr_db": 20.0}


def _codec(codec: str, kbps: int) -> dict:
    return {"name": "codec", "codec": codec, "bitrate": kbps * 1000}


CONDITIONS: list[tuple[str, list[dict]]] = (
    [("clean", [])]
    + [(f"mix {level:+d} dB", [dict(MIX, level_db=float(level))]) for level in (-15, -10, -6, -4, -2, 0)]
    + [(f"noise {snr} dB", [dict(NOISE, snr_db=float(snr))]) for snr in (20, 10, 5, 0)]
    + [(f"{codec} {kbps} kbps", [_codec(codec, kbps)])
       for codec, rates in (("mp3", (64, 32)), ("aac", (48, 24)), ("opus", (24, 12))) for kbps in rates]
    + [(f"resample {rate} Hz", [{"name": "resample", "rate": rate}]) for rate in (22050, 16000, 8000)]
    + [("telephone band", [TELEPHONE]), ("rerecord", [REROOM])]
    + [(f"high-pass {hz} Hz", [{"name": "band", "kind": "highpass", "low_hz": float(hz), "high_hz": None}])
       for hz in (250, 500, 800)]
    + [(f"low-pass {hz} Hz", [{"name": "band", "kind": "lowpass", "low_hz": 0.0, "high_hz": float(hz)}])
       for hz in (6000, 3000)]
    + [("echo 0.2 s", [{"name": "echo", "delay_s": 0.2, "decay": 0.5, "taps": 3}])]
    + [(f"tempo ×{factor}", [{"name": "tempo", "factor": factor}]) for factor in (0.87, 0.93, 1.07, 1.15)]
    + [(f"speed ×{factor}", [{"name": "speed", "factor": factor}]) for factor in (0.87, 1.15)]
    + [("opus 16 kbps + noise 5 dB", [dict(NOISE, snr_db=5.0), _codec("opus", 16)]),
       ("telephone + mix −4 dB", [dict(MIX, level_db=-4.0), TELEPHONE]),
       ("rerecord + noise 5 dB + opus 16 kbps", [REROOM, dict(NOISE, snr_db=5.0), _codec("opus", 16)]),
       ("tempo ×1.1 + noise 5 dB + opus 16 kbps", [{"name": "tempo", "factor": 1.1}, dict(NOISE, snr_db=5.0), _codec("opus", 16)]),
       ("speed ×1.1 + noise 5 dB + opus 16 kbps", [{"name": "speed", "factor": 1.1}, dict(NOISE, snr_db=5.0), _codec("opus", 16)]),
       ("tempo ×1.1 + mix −4 dB + telephone", [{"name": "tempo", "factor": 1.1}, dict(MIX, level_db=-4.0), TELEPHONE])]
)


def excerpts(paths: list[str], count: int, seconds: float, rate: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, first excerpt, second excerpt) from the first `count` recordings long enough for both."""
    from ausil_search.errors import InputError
    from ausil_search.media.audio import load_audio

    out = []
    n = round(seconds * rate)
    for path in paths:
        try:
            samples = load_audio(path, rate)
        except InputError:
            continue
        if len(samples) < 2.5 * n:
            continue
        a, b = len(samples) // 4 - n // 2, 3 * len(samples) // 4 - n // 2
        first, second = samples[a:a + n], samples[b:b + n]  # both inside: the recording is >= 2.5 n long
        if np.sqrt(np.mean(first ** 2)) < 1e-3 or np.sqrt(np.mean(second ** 2)) < 1e-3:
            continue  # near silence says nothing about degradation
        out.append((Path(path).name, first, second))
        if len(out) == count:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="?", type=Path, default=REPO / "bench-data/sources/dev.txt",
                        help="A list of audio files, one per line (default: the dev half).")
    parser.add_argument("--model", default=None, help="Model file; default: the shipped default.")
    parser.add_argument("--recordings", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, metavar="WORDS",
                        help="Only the rows whose label contains one of these comma-separated words, e.g. 'pass,echo'.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the rows as JSON here.")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), default=None,
                        help="Compare two runs' --out files (same recordings) instead of measuring: per row, and B − A "
                             "over the mixing/noise/chain rows with a 95 %% interval over recordings.")
    args = parser.parse_args(argv)
    if args.compare:
        return compare_runs(*args.compare, seed=args.seed)
    words = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    conditions = [(label, steps) for label, steps in CONDITIONS if words is None or any(w in label for w in words)]
    if not conditions:
        raise SystemExit(f"--only {args.only!r}: no row's label contains any of those words")

    import torch

    from ausil_search.features.extraction import Extractor, signal_descriptors
    from ausil_search.media.augment import apply_chain
    from ausil_search.model import load_model

    model = load_model(args.model)
    rate = model.frontend.sample_rate
    encoder = Extractor(model, workers=0).encoder
    paths = [line.strip() for line in args.sources.read_text().splitlines() if line.strip()]
    paths = [paths[i] for i in np.random.default_rng(args.seed).permutation(len(paths))]  # every package, not the first
    began = time.monotonic()
    material = excerpts(paths, args.recordings, args.seconds, rate)
    if len(material) < 2:
        raise SystemExit(f"{args.sources}: fewer than 2 recordings of at least {2.5 * args.seconds:.0f} s")
    print(f"{len(material)} recordings, 2 excerpts of {args.seconds:.0f} s each; model {model.identity}", file=sys.stderr)

    def describe(signal: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        descriptors = signal_descriptors(signal, encoder, model.frontend)
        with torch.inference_mode():
            embedded = model.head.embed(torch.from_numpy(np.ascontiguousarray(descriptors)))
        mac = descriptors.mean(axis=0)
        return embedded, mac / max(np.linalg.norm(mac), 1e-12)

    clean = [describe(x) for _, first, second in material for x in (first, second)]
    clean_embedded = [e for e, _ in clean]
    clean_mac = np.stack([m for _, m in clean])
    rows = []
    for label, steps in conditions:
        hits = {"full": [], "mac": []}
        margins = {"full": [], "mac": []}
        for i, (_, first, _) in enumerate(material):
            rng = np.random.default_rng([args.seed, i])
            other = material[(i + 1) % len(material)][1]
            copy = apply_chain(first, rate, steps, rng, (other,))
            embedded, mac = describe(copy)
            with torch.inference_mode():
                full = model.head.score_many(embedded, clean_embedded).float().numpy()
            for name, scores in (("full", full), ("mac", clean_mac @ mac)):
                source = scores[2 * i]
                best_other = np.max(np.delete(scores, 2 * i))
                hits[name].append(source > best_other)
                margins[name].append(float(source - best_other))
        row = {"condition": label, "copies": len(material)}
        for name in ("full", "mac"):
            row[f"{name}_top1"] = float(np.mean(hits[name]))
            row[f"{name}_margin"] = float(np.median(margins[name]))
            row[f"{name}_hits"] = [int(hit) for hit in hits[name]]  # per recording, for --compare
        rows.append(row)
        print(f"{label}: full {row['full_top1']:.2f}, mac {row['mac_top1']:.2f} ({time.monotonic() - began:.0f} s)",
              file=sys.stderr)
    print("\n| condition | top-1, full | median margin, full | top-1, MAC | median margin, MAC |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['condition']} | {row['full_top1']:.2f} | {row['full_margin']:+.3f} | {row['mac_top1']:.2f} | "
              f"{row['mac_margin']:+.3f} |")
    if args.out:
        args.out.write_text(json.dumps({"model": model.identity, "recordings": [m[0] for m in material],
                                        "seconds": args.seconds, "rows": rows}, indent=1))
    return 0


def is_hard_row(condition: str) -> bool:
    """The rows where the descriptors break: mixing, noise at 10 dB or less, and the chains (read off
    the row's steps in CONDITIONS, not its label)."""
    steps = dict(CONDITIONS).get(condition, [])
    return len(steps) > 1 or any(step["name"] == "mix" or (step["name"] == "noise" and step["snr_db"] <= 10)
                                 for step in steps)


def _mean_hits_per_recording(rows: list[dict], name: str) -> dict[int, float]:
    """Each recording's top-1 rate over `rows` (`name`: full or mac), keyed as `paired_difference` pairs them."""
    hits = np.array([row[f"{name}_hits"] for row in rows], float)
    return dict(enumerate(hits.mean(axis=0)))


def compare_runs(path_a: Path, path_b: Path, seed: int = 0, resamples: int = 10_000) -> int:
    """Per-row top-1 of two runs and B − A over the hard rows, the interval from resampling recordings
    (a recording's copies under all conditions move together, so recordings are the unit)."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    if a["recordings"] != b["recordings"] or a["seconds"] != b["seconds"]:
        raise SystemExit("the two runs used other recordings or excerpt lengths: rerun with the same --recordings/--seed")
    rows_b = {row["condition"]: row for row in b["rows"]}
    common = [row for row in a["rows"] if row["condition"] in rows_b and "mac_hits" in row and "mac_hits" in rows_b[row["condition"]]]
    if not common:
        raise SystemExit("no rows with per-recording hits in both runs (runs before --compare existed lack them)")
    print(f"A = {a['model']}\nB = {b['model']}\n")
    print("| condition | A full | B full | A MAC | B MAC |\n|---|---|---|---|---|")
    for row in common:
        other = rows_b[row["condition"]]
        print(f"| {row['condition']} | {row['full_top1']:.2f} | {other['full_top1']:.2f} | {row['mac_top1']:.2f} | "
              f"{other['mac_top1']:.2f} |")
    hard = [row for row in common if is_hard_row(row["condition"])]
    print(f"\nB − A over the {len(hard)} mixing/noise/chain rows, mean top-1 (95 % interval over recordings):")
    for name in ("full", "mac"):
        paired = paired_difference(_mean_hits_per_recording(hard, name),
                                   _mean_hits_per_recording([rows_b[row["condition"]] for row in hard], name),
                                   resamples=resamples, seed=seed)
        low, high = paired["ci95"]
        print(f"  {name}: {paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
