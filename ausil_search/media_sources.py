"""Where the media of a command come from: folders (walked), media files, and path lists.

A path list (`.txt`, `.lst`, `.list`) holds a path a line, or the release's `<id> <path>` lines;
relative paths are taken from the list's folder. Training, whitening and the backbone trainer
resolve their sources here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .scan import walk_media

PATH_LIST_SUFFIXES = (".txt", ".lst", ".list")


def collect_media(sources: Sequence[Path | str]) -> list[Path]:
    """Media files from directories (walked), path-list files (`.txt`: a path or `<id> <path>` a line) and files."""
    paths: list[Path] = []
    direct: list[Path] = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() in PATH_LIST_SUFFIXES:
            paths.extend(read_path_list(source))
        elif source.is_file() or source.is_dir():
            direct.append(source)
        else:
            raise InputError(f"{source}: no such file or directory")
    paths.extend(walk_media(direct, has_audio=lambda path: False))
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    if not unique:
        raise InputError("no media files found in " + ", ".join(map(str, sources)))
    return unique


def read_path_list(list_path: Path) -> list[Path]:
    paths = []
    for number, raw in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        candidates = [line] + ([line.split(maxsplit=1)[1]] if len(line.split(maxsplit=1)) == 2 else [])
        for text in candidates:
            path = Path(text) if Path(text).is_absolute() or Path(text).exists() else list_path.parent / text
            if path.is_file():
                paths.append(path)
                break
        else:
            raise InputError(f"{list_path}:{number}: no such file: {line!r}")
    return paths
