"""Run the dev benchmark: the search engine, exhaustive reranking, the paper's ablation, baselines.

    python benchmarks/run_dev.py BENCH_DIR [--mode engine|exhaustive|both] [--model PATH]
        [--ablation] [--steps 1000,500,250,125] [--components mac,mac+w,mac+w+a,full]
        [--baseline chromaprint] [--random] [--out results.json] [--markdown [results.md]]

BENCH_DIR is what `ausil-search bench make` writes: `database.txt` and `queries.txt` (`<id> <path>`),
`annotation.json` (`{query: {"DA": [db ids]}}`), `groups.json` (`{query: group}`) and
`transforms.json` (`{video: {"role", "chain": [{"name", ...}], ...}}`).

Every method writes release-format similarities (`WORK/<method>.json`, scorable with
`ausil-search evaluate`) and is evaluated with the FIVR protocol (ausil_search.evaluation):

- mAP over all queries and per query group (core / speed / hard / hard-speed);
- recall@1: the share of queries whose best-scored database video is a positive;
- mAP per transformation T: for each query with at least one positive whose transformation chain
  contains T, AP where the relevant set is those positives and the query's *other* positives are
  removed from the ranking (so they neither help nor hurt); averaged over those queries. "none" is
  the positives with an empty chain (exact copies);
- engine methods: indexing speed (database audio seconds per wall-clock second, "× realtime") and
  query latency p50/p95 of a user-facing query (top 10, including decoding and feature extraction).

`--random` scores a random similarity for every pair and prints the chance level: the expected AP
of a random ranking, per query E[AP] = (1/N)·(H_N + (R−1)/(N−1)·(N − H_N)) for R positives among
N ranked videos (H_N the N-th harmonic number), averaged over queries, next to a simulation of it.

Without --model the default model is used; when there is none, a seeded random model is created
and every table says so (numbers from a random model only show that the pipeline works).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run from a checkout, installed or not

from ausil_search.errors import InputError, WeightsError  # noqa: E402
from ausil_search.evaluation import average_precision, evaluate  # noqa: E402
from ausil_search.atomic import write_json_atomic  # noqa: E402
from ausil_search.cli.progress import ProgressDisplay  # noqa: E402
from ausil_search.formats import ListEntry, read_video_list  # noqa: E402

COMPONENT_SETS = ("mac", "mac+w", "mac+w+a", "full")
GROUP_ORDER = ("core", "speed", "hard", "hard-speed")
LATENCY_TOP_K = 10


# --------------------------------------------------------------------------- benchmark and metrics


class Benchmark:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.database = read_video_list(self.root / "database.txt")
        self.queries = read_video_list(self.root / "queries.txt")
        self.annotation = json.loads((self.root / "annotation.json").read_text(encoding="utf-8"))
        groups = self.root / "groups.json"
        self.groups: dict[str, str] = json.loads(groups.read_text(encoding="utf-8")) if groups.is_file() else {}
        transforms = self.root / "transforms.json"
        self.transforms: dict[str, dict] = json.loads(transforms.read_text(encoding="utf-8")) if transforms.is_file() else {}
        self.database_ids = [e.video_id for e in self.database]
        # Every video once: the database, then the queries not in it. evaluate() wants the queries in the
        # dataset too; they are never ranked against themselves.
        database_ids = set(self.database_ids)
        self.videos = self.database + [e for e in self.queries if e.video_id not in database_ids]
        self.dataset_ids = [e.video_id for e in self.videos]

    def key(self) -> str:
        """Names this benchmark's videos and their content, so cached features of two benchmarks never mix.

        File sizes are in it because a benchmark rebuilt under the same ids (a changed generator, other
        source audio) must not reuse features of the old files; an identical rebuild writes identical
        bytes and keeps the cache."""
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return -1

        listing = "".join(f"{e.video_id} {e.path} {size(e.path)}\n" for e in self.database + self.queries)
        return hashlib.sha256(listing.encode()).hexdigest()[:8]

    def positives(self, query: str) -> set[str]:
        return set(self.annotation.get(query, {}).get("DA", [])) & set(self.database_ids)

    def transform_names(self, video_id: str) -> set[str]:
        chain = self.transforms.get(video_id, {}).get("chain") or []
        names = {str(step["name"]) if isinstance(step, dict) else str(step) for step in chain}
        return names or {"none"}

    def audio_seconds(self, entries: list[ListEntry]) -> float:
        import av

        total = 0.0
        for entry in entries:
            try:
                with av.open(str(entry.path)) as container:
                    total += (container.duration or 0) / 1e6
            except Exception:
                pass
        return total


def ranked(scores: dict[str, float]) -> list[str]:
    return [v for v, _ in sorted(((v, float(s)) for v, s in scores.items()), key=lambda it: it[1], reverse=True)]


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}"


def score_run(bench: Benchmark, similarities: dict[str, dict[str, float]]) -> dict:
    """FIVR mAP overall and per group, recall@1, per-transformation mAP."""
    result = evaluate(similarities, bench.annotation, bench.dataset_ids)
    ap = result.average_precision
    groups: dict[str, list[float]] = defaultdict(list)
    for query, value in ap.items():
        groups[bench.groups.get(query, "ungrouped")].append(value)
    database = set(bench.database_ids)
    hits = []
    per_transform: dict[str, list[float]] = defaultdict(list)
    for query in ap:
        scores = {v: s for v, s in similarities.get(query, {}).items() if v in database and v != query}
        order = ranked(scores)
        positives = bench.positives(query)
        hits.append(bool(order) and order[0] in positives)
        by_transform: dict[str, set[str]] = defaultdict(set)
        for video in positives:
            for name in bench.transform_names(video):
                by_transform[name].add(video)
        for name, relevant in by_transform.items():
            kept = [v for v in order if v not in positives - relevant]
            per_transform[name].append(average_precision([v in relevant for v in kept], len(relevant)))
    return {
        "mAP": result.mean_ap,
        "queries": len(ap),
        "groups": {g: {"mAP": float(np.mean(v)), "queries": len(v)} for g, v in sorted(groups.items())},
        "recall@1": float(np.mean(hits)) if hits else 0.0,
        "per_transform": {t: {"mAP": float(np.mean(v)), "queries": len(v)} for t, v in sorted(per_transform.items())},
        "average_precision": ap,
        "warnings": result.warnings,
    }


def expected_random_ap(n_relevant: int, n_ranked: int) -> float:
    """E[AP] of a uniformly random ranking of n_ranked videos holding n_relevant positives.

    AP = (1/R) Σ_{relevant i} (1/i) Σ_{j ≤ i} rel_j; with P(rel_i) = R/N and
    P(rel_i ∧ rel_j) = R(R−1)/(N(N−1)) this sums to (1/N)(H_N + (R−1)/(N−1)(N − H_N)).
    """
    r, n = n_relevant, n_ranked
    if r == 0 or n == 0:
        return 0.0
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (harmonic + (r - 1) / (n - 1) * (n - harmonic)) / n


def simulated_random_ap(n_relevant: int, n_ranked: int, shuffles: int, rng: np.random.Generator) -> float:
    relevance = np.zeros(n_ranked, dtype=bool)
    relevance[:n_relevant] = True
    return float(np.mean([average_precision(rng.permutation(relevance), n_relevant) for _ in range(shuffles)]))


def random_run(bench: Benchmark, seed: int = 0, shuffles: int = 2000) -> dict:
    rng = np.random.default_rng(seed)
    sims = {q.video_id: {d: float(rng.random()) for d in bench.database_ids} for q in bench.queries}
    scored = score_run(bench, sims)
    n = len(bench.database_ids)
    queries = [q for q in scored["average_precision"]]
    analytic = [expected_random_ap(len(bench.positives(q)), n) for q in queries]
    simulated = [simulated_random_ap(len(bench.positives(q)), n, shuffles, rng) for q in queries]
    scored["chance"] = {
        "analytic_mAP": float(np.mean(analytic)),
        "simulated_mAP": float(np.mean(simulated)),
        "shuffles": shuffles,
        "database": n,
        "mean_positives": float(np.mean([len(bench.positives(q)) for q in queries])),
    }
    return scored, sims


# --------------------------------------------------------------------------- methods


def load_or_make_model(spec: str | None, work: Path):
    """The model to benchmark, saved to a file (an index records its model's path and checksum)."""
    from ausil_search.model import AuSiLModel, load_model, resolve_model_path

    try:
        path = resolve_model_path(spec)
        return load_model(path), False
    except WeightsError:
        if spec is not None:
            raise
    path = work / "random-model.safetensors"
    if not path.is_file():
        AuSiLModel.initialise(seed=0, name="random-benchmark").save(path)
    print(f"WARNING: no default model; using a seeded RANDOM model ({path}). "
          "Its numbers only show that the pipeline works.", file=sys.stderr)
    return AuSiLModel.load(path), True


def progress(iterable, stage: str):
    """The script's own loops, shown as the CLI shows the library's stages."""
    from ausil_search.progress import track

    with ProgressDisplay() as display:
        yield from track(display, stage, iterable, len(iterable))


def engine_runs(bench: Benchmark, model, work: Path, modes: list[str], args) -> dict:
    """Index the database into a scratch index, then query every query in each mode."""
    from ausil_search.engine import SearchEngine

    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    db_paths = [e.path for e in bench.database]
    with SearchEngine(index_dir, model, writable=True, device=args.device, workers=args.workers) as engine:
        with ProgressDisplay() as display:  # also prints what was skipped
            report = engine.index_paths(db_paths, progress=display)
    indexing = {
        "audio_s": report.audio_seconds,
        "seconds": report.seconds,
        "x_realtime": report.audio_seconds / report.seconds if report.seconds else 0.0,
        "skipped": len(report.skipped),
    }
    id_by_path = {str(Path(e.path).absolute()): e.video_id for e in bench.database}
    runs = {}
    with SearchEngine(index_dir, model, writable=False, device=args.device, workers=0) as engine:
        n_db = len(engine.records())
        for mode in modes:
            exhaustive = mode == "exhaustive"
            sims: dict[str, dict[str, float]] = {}
            failed: dict[str, str] = {}
            latencies: list[float] = []
            for i, entry in enumerate(progress(bench.queries, mode)):
                try:
                    # The scoring pass ranks every candidate; the latency pass is what a user runs.
                    result = engine.query(entry.path, top_k=n_db, candidates=args.candidates, exhaustive=exhaustive,
                                          spans=False)
                    if i < args.latency_queries:
                        started = time.perf_counter()
                        engine.query(entry.path, top_k=LATENCY_TOP_K, candidates=args.candidates, exhaustive=exhaustive)
                        latencies.append(time.perf_counter() - started)
                except InputError as exc:
                    failed[entry.video_id] = str(exc)
                    continue
                sims[entry.video_id] = {id_by_path[m.path]: m.score for m in result.matches if m.path in id_by_path}
            write_json_atomic(work / f"{mode}.json", sims)
            scored = score_run(bench, sims)
            scored.update({
                "indexing": indexing,
                "latency_s": {
                    "p50": float(np.percentile(latencies, 50)) if latencies else None,
                    "p95": float(np.percentile(latencies, 95)) if latencies else None,
                    "queries": len(latencies),
                    "top_k": LATENCY_TOP_K,
                },
                "candidates": n_db if exhaustive else args.candidates,
                "failed": failed,
                "similarities": str(work / f"{mode}.json"),
            })
            runs[mode] = scored
    return runs


class HDF5Source:
    """Descriptors of list entries from one features HDF5 file (a dataset per video id)."""

    def __init__(self, path: Path):
        import h5py

        self._file = h5py.File(path, "r")

    def descriptors(self, entry: ListEntry) -> np.ndarray:
        if entry.video_id not in self._file:
            raise InputError(f"{entry.video_id}: no features (skipped at extraction)")
        return np.asarray(self._file[entry.video_id], dtype=np.float32)

    def close(self) -> None:
        self._file.close()


def backbone_key(model) -> str:
    """Features depend on the backbone alone (not the head), so models sharing one share features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def ablation_runs(bench: Benchmark, model, work: Path, steps: list[int], components: list[str], args) -> dict:
    """Features once per time step (HDF5), then similarities per component set."""
    from ausil_search.devices import pick_device
    from ausil_search.extraction import Extractor
    from ausil_search.release import compute_similarities, extract_features
    from ausil_search.spectrogram import FrontEnd

    table: dict[str, dict[str, dict]] = {}
    entries = bench.database + [q for q in bench.queries if q.video_id not in set(bench.database_ids)]
    for step in steps:
        preset = FrontEnd.from_step_ms(step)
        frontend = FrontEnd.from_dict({**model.frontend.to_dict(), "step_frames": preset.step_frames,
                                       "window_frames": preset.window_frames})
        features = (args.features_dir or work) / f"features-{bench.key()}-{backbone_key(model)}-{step}ms.h5"
        if not features.is_file():
            partial = features.with_suffix(".partial.h5")
            partial.unlink(missing_ok=True)
            extractor = Extractor(model, device=args.device, workers=args.workers, frontend=frontend)
            started = time.perf_counter()
            with ProgressDisplay() as display:
                summary = extract_features(entries, partial, extractor, "hdf5", display)
            os.replace(partial, features)
            print(f"{step} ms: {summary.segments} segments of {summary.audio_seconds / 60:.1f} min audio "
                  f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        source = HDF5Source(features)
        try:
            for name in components:
                started = time.perf_counter()
                with ProgressDisplay() as display:
                    result = compute_similarities(bench.queries, bench.database, model, source,
                                                  device=pick_device(args.device), progress=display, components=name)
                out = work / f"ablation-{name}-{step}ms.json"
                write_json_atomic(out, result.similarities)
                scored = score_run(bench, result.similarities)
                scored["seconds"] = time.perf_counter() - started
                scored["similarities"] = str(out)
                table.setdefault(name, {})[str(step)] = scored
        finally:
            source.close()
    return table


def chromaprint_run(bench: Benchmark, work: Path, args) -> dict:
    import chromaprint_baseline as cb

    if cb.fpcalc_binary() is None:
        raise SystemExit("Error: --baseline chromaprint needs fpcalc: apt-get install libchromaprint-tools")
    entries = {e.video_id: e.path for e in bench.database + bench.queries}
    started = time.perf_counter()
    prints, failed = cb.fingerprint_all(entries, work / "chromaprint-cache", jobs=args.jobs)
    fingerprint_s = time.perf_counter() - started
    database = {d: prints[d] for d in bench.database_ids if d in prints}
    sims, latencies = {}, []
    for entry in progress(bench.queries, "chromaprint"):
        if entry.video_id not in prints:
            continue
        started = time.perf_counter()
        sims[entry.video_id] = cb.similarity_table({entry.video_id: prints[entry.video_id]}, database)[entry.video_id]
        latencies.append(time.perf_counter() - started)
    write_json_atomic(work / "chromaprint.json", sims)
    scored = score_run(bench, sims)
    audio_s = sum(len(p) for p in prints.values()) * cb.ITEM_SECONDS
    scored.update({
        # Cached fingerprints make a rerun's time meaningless, so the speed is only reported for a cold run.
        "indexing": {"x_realtime": audio_s / fingerprint_s if fingerprint_s > 1.0 else None, "audio_s": audio_s,
                     "seconds": fingerprint_s},
        "latency_s": {"p50": float(np.percentile(latencies, 50)) if latencies else None,
                      "p95": float(np.percentile(latencies, 95)) if latencies else None,
                      "queries": len(latencies), "note": "matching only (fingerprinting excluded)"},
        "failed": failed,
        "similarities": str(work / "chromaprint.json"),
    })
    return scored


# --------------------------------------------------------------------------- tables


def _f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"Benchmark `{meta['benchmark']}`: {meta['queries']} queries, {meta['database']} database videos "
                 f"({meta['database_audio_h']:.2f} h); model `{meta['model']}`"
                 + (" — **RANDOM model, pipeline check only**" if meta["random_model"] else "")
                 + f"; {meta['date']}, {meta['machine']}.")
    runs = results.get("runs", {})
    groups = [g for g in GROUP_ORDER if any(g in r["groups"] for r in runs.values())]
    groups += sorted({g for r in runs.values() for g in r["groups"]} - set(groups))
    if runs:
        lines += ["", "| method | mAP all | " + " | ".join(f"mAP {g}" for g in groups)
                  + " | recall@1 | indexing × realtime | query p50 s | query p95 s |",
                  "|---" * (6 + len(groups)) + "|"]
        for name, r in runs.items():
            index = r.get("indexing", {})
            latency = r.get("latency_s", {})
            lines.append(
                f"| {name} | {_f(r['mAP'])} | " + " | ".join(_f(r["groups"].get(g, {}).get("mAP")) for g in groups)
                + f" | {_f(r['recall@1'])} | {_f(index.get('x_realtime'), 0)} | {_f(latency.get('p50'), 2)} | {_f(latency.get('p95'), 2)} |"
            )
        transforms = sorted({t for r in runs.values() for t in r["per_transform"]})
        if transforms:
            names = list(runs)
            lines += ["", "mAP per transformation (relevant: the positives whose chain contains it; the query's other "
                      "positives removed from the ranking)", "",
                      "| transformation | queries | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
            for t in transforms:
                count = max(r["per_transform"].get(t, {}).get("queries", 0) for r in runs.values())
                lines.append(f"| {t} | {count} | " + " | ".join(_f(runs[n]["per_transform"].get(t, {}).get("mAP")) for n in names) + " |")
        if "random" in runs:
            chance = runs["random"]["chance"]
            lines += ["", f"Chance: a random ranking of {chance['database']} database videos with on average "
                      f"{chance['mean_positives']:.1f} positives per query has expected mAP {chance['analytic_mAP']:.4f} "
                      f"(analytic), {chance['simulated_mAP']:.4f} (simulated, {chance['shuffles']} shuffles per query); "
                      f"the random-similarity run scored {runs['random']['mAP']:.4f}."]
    ablation = results.get("ablation")
    if ablation:
        steps = sorted({s for row in ablation.values() for s in row}, key=lambda s: -int(s))
        present = {g for row in ablation.values() for r in row.values() if r for g in r["groups"]}
        cols = ["all"] + [g for g in GROUP_ORDER if g in present] + sorted(present - set(GROUP_ORDER))
        lines += ["", f"Ablation (exhaustive similarity, release `similarity --components`; mAP {' / '.join(cols)})", "",
                  "| components | " + " | ".join(f"{s} ms {c}" for s in steps for c in cols) + " |",
                  "|---" * (1 + len(steps) * len(cols)) + "|"]
        for name, row in ablation.items():
            cells = []
            for s in steps:
                r = row.get(s)
                for c in cols:
                    cells.append("—" if r is None else _f(r["mAP"] if c == "all" else r["groups"].get(c, {}).get("mAP")))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the dev benchmark (see the module docstring).")
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--mode", choices=["engine", "exhaustive", "both", "none"], default="engine")
    parser.add_argument("--model", default=None, help="Model file or 'official'; default: the default model, else a random one.")
    parser.add_argument("--ablation", action="store_true", help="Component × time-step ablation (exhaustive similarities).")
    parser.add_argument("--steps", default="1000,500,250,125", help="Time steps (ms) for --ablation.")
    parser.add_argument("--components", default=",".join(COMPONENT_SETS), help="Component sets for --ablation.")
    parser.add_argument("--baseline", action="append", default=[], choices=["chromaprint"])
    parser.add_argument("--random", action="store_true", help="Random-similarity sanity run and the chance level.")
    parser.add_argument("--candidates", type=int, default=100, help="Engine mode: FAISS candidates reranked per query.")
    parser.add_argument("--latency-queries", type=int, default=20, help="Queries timed as a user runs them (top 10).")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None, help="Decoding processes for indexing/extraction.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="Parallel fpcalc processes.")
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="Where --ablation keeps its HDF5 features, keyed by benchmark and backbone (default: --work); "
                             "runs of models with the same backbone share them.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (index, features, similarities); default BENCH_DIR/work.")
    parser.add_argument("--out", type=Path, default=None, help="Write all results as JSON here.")
    parser.add_argument("--markdown", nargs="?", type=Path, const=None, default=None, metavar="PATH",
                        help="The tables are always printed as markdown; with PATH they are also written there.")
    args = parser.parse_args(argv)

    bench = Benchmark(args.bench_dir)
    work = args.work or args.bench_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    # The dataset ids for `ausil-search evaluate -d`, so every similarity file here can be rescored alone.
    (work / "ids.txt").write_text("".join(f"{v}\n" for v in bench.dataset_ids), encoding="utf-8")
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = set(components) - set(COMPONENT_SETS)
    if unknown:
        parser.error(f"unknown components {sorted(unknown)}; choose from {', '.join(COMPONENT_SETS)}")

    needs_model = args.mode != "none" or args.ablation
    model, random_model = load_or_make_model(args.model, work) if needs_model else (None, False)
    results: dict = {
        "meta": {
            "benchmark": str(args.bench_dir),
            "queries": len(bench.queries),
            "database": len(bench.database),
            "database_audio_h": bench.audio_seconds(bench.database) / 3600,
            "model": model.identity if model else "—",
            "random_model": random_model,
            "date": _dt.date.today().isoformat(),
            "machine": describe_machine(),
        },
        "runs": {},
    }
    modes = {"engine": ["engine"], "exhaustive": ["exhaustive"], "both": ["engine", "exhaustive"], "none": []}[args.mode]
    if modes:
        results["runs"].update(engine_runs(bench, model, work, modes, args))
    if "chromaprint" in args.baseline:
        results["runs"]["chromaprint"] = chromaprint_run(bench, work, args)
    if args.random:
        scored, sims = random_run(bench)
        write_json_atomic(work / "random.json", sims)
        results["runs"]["random"] = scored
    if args.ablation:
        results["ablation"] = ablation_runs(bench, model, work, steps, components, args)
    if args.out:
        write_json_atomic(args.out, results)
    tables = markdown(results)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(tables + "\n", encoding="utf-8")
    print(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
