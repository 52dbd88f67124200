"""The dev benchmark and the training audio: game music, sound effects and speech from Debian packages.

    python benchmarks/dev_data.py [--install] [--out bench-data] [--only small|medium|hard|heldout] [--split-only]

Installs the packages (with --install; needs root and apt), lists their audio files (dpkg -L; audio
inside .pk3/.zip game archives is extracted), and splits recordings by a hash of the file name into
a ``dev`` half and a ``train`` half. The benchmarks are built from the dev half of the six
``BENCHMARK_PACKAGES`` only, so they stay the same as more training audio is added; the dev half of
the ``TRAINING_PACKAGES`` is held out (``heldout.txt``), never trained or tuned on. From the
training packages, sound effects shorter than 20 s are skipped (speech prompts are kept).

Writes ``OUT/sources/{dev,train,heldout}.txt`` and ``OUT/sources/hours.json`` (files and hours per
package and half), and builds ``OUT/small`` (50 groups), ``OUT/medium`` (150 groups) and
``OUT/hard`` (30 groups of the generator's hard mode) with ``ausil-search bench make``.
``--only heldout`` builds ``OUT/heldout`` (50 groups, as small) from the held-out half instead: audio
of other packages than the dev benchmarks', for a last check of a model chosen on them. Using it to
choose between models would make it one more dev set.
Nothing here is committed; OUT is git-ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import av

BENCHMARK_PACKAGES = ["wesnoth-1.16-music", "ufoai-music", "warzone2100-music", "planetblupi-music-ogg",
                      "colobot-common-sounds", "asterisk-core-sounds-en-wav"]
TRAINING_PACKAGES = [
    "supertux-data", "supertuxkart-data", "megaglest-data", "hedgewars-data", "freedroidrpg-data", "naev-data",
    "widelands-data", "freeorion-data", "flare-game", "trigger-rally-data", "marsshooter-data", "ri-li-data",
    "boswars-data", "lincity-ng-data", "neverball-data", "xmoto-data", "scorched3d-data", "extremetuxracer-data",
    "lugaru-data", "openarena-data", "redeclipse-data", "asterisk-moh-opsound-wav", "asterisk-prompt-es-co",
    "asterisk-prompt-it-menardi-wav",
]
SPEECH_PACKAGES = {"asterisk-prompt-es-co", "asterisk-prompt-it-menardi-wav"}  # short by nature: kept whole
MIN_EFFECT_SECONDS = 20.0  # shorter files of the other training packages are sound effects
PACKAGES = BENCHMARK_PACKAGES + TRAINING_PACKAGES
AUDIO = (".ogg", ".opus", ".wav", ".mp3", ".flac", ".gsm")
ARCHIVES = (".pk3", ".zip")
# name -> (groups, generator mode, source list)
BENCHMARKS = {"small": (50, "normal", "dev"), "medium": (150, "normal", "dev"), "hard": (30, "hard", "dev"),
              "heldout": (50, "normal", "heldout")}
DEFAULT_BENCHMARKS = ["small", "medium", "hard"]


def package_files(package: str, extract_dir: Path) -> list[Path]:
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split("\n")
    files = [Path(p) for p in listed if p.lower().endswith(AUDIO) and Path(p).is_file()]
    for archive in (Path(p) for p in listed if p.lower().endswith(ARCHIVES) and Path(p).is_file()):
        with zipfile.ZipFile(archive) as pk3:
            for name in sorted(n for n in pk3.namelist() if n.lower().endswith(AUDIO)):
                target = extract_dir / package / name
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(pk3.read(name))
                files.append(target)
    return sorted(files)


def half(path: Path) -> str:
    """dev or train, by a hash of the installed path (or the path inside the .pk3): stable across machines."""
    return "dev" if hashlib.sha256(str(path).encode()).digest()[0] % 2 == 0 else "train"


def duration_s(path: Path) -> float:
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return (container.duration or 0) / 1e6
    except av.FFmpegError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="apt-get install the packages first")
    parser.add_argument("--out", type=Path, default=Path("bench-data"))
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="build only these benchmarks")
    parser.add_argument("--split-only", action="store_true", help="write the source lists, build nothing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.install:
        wanted = [*PACKAGES, "libchromaprint-tools"]  # fpcalc, for the Chromaprint baseline
        missing = [p for p in wanted if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
        if missing:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True)
    out = args.out.resolve()
    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[Path]] = {"dev": [], "train": [], "heldout": []}
    stats: dict[str, dict] = {}
    for package in PACKAGES:
        for path in package_files(package, sources / "extracted"):
            extracted = path.is_relative_to(sources / "extracted")
            which = half(path.relative_to(sources / "extracted") if extracted else path)
            seconds = duration_s(path)
            if package in TRAINING_PACKAGES:
                if seconds <= 0 or (package not in SPEECH_PACKAGES and seconds < MIN_EFFECT_SECONDS):
                    continue
                which = "heldout" if which == "dev" else which
            lists[which].append(path)
            entry = stats.setdefault(which, {}).setdefault(package, {"files": 0, "hours": 0.0})
            entry["files"] += 1
            entry["hours"] += seconds / 3600
    for which, paths in lists.items():
        (sources / f"{which}.txt").write_text("".join(f"{p}\n" for p in sorted(paths)))
        total_hours = sum(e["hours"] for e in stats.get(which, {}).values())
        print(f"{which}: {len(paths)} files, {total_hours:.2f} h  → {sources / f'{which}.txt'}")
        for package, entry in sorted(stats.get(which, {}).items()):
            print(f"    {package:32s} {entry['files']:5d} files {entry['hours']:6.2f} h")
    (sources / "hours.json").write_text(json.dumps(
        {which: {p: {"files": e["files"], "hours": round(e["hours"], 3)} for p, e in sorted(by.items())}
         for which, by in stats.items()}, indent=1) + "\n")
    if args.split_only:
        return
    for name in args.only or DEFAULT_BENCHMARKS:
        groups, mode, source_list = BENCHMARKS[name]
        began = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "ausil_search", "bench", "make", str(sources / f"{source_list}.txt"), str(out / name), "--groups",
             str(groups), "--mode", mode, "--seed", str(args.seed), "--cache", str(out / "cache"), "--json"],
            check=True, capture_output=True, text=True)
        summary = json.loads(result.stdout)
        print(f"{name}: {summary['groups']} groups, {summary['database_videos']} database videos "
              f"({summary['database_hours']:.2f} h), {summary['queries']} queries ({summary['query_hours']:.2f} h), "
              f"built in {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
