"""Where the media of a command come from: folders (walked), media files, and path lists.

One resolver for every command that takes media (index walks folders itself with the same
:func:`~ausil_search.media.scan.walk_media` and extension table; train, train-backbone, fit-whitening and
`bench make` call :func:`collect_media`; the release commands read `<id> <path>` lists with
:func:`read_video_list`). A path list (`.txt`, `.lst`, `.list`) holds a path a line, or the
release's `<id> <path>` lines; a relative path is taken from the working directory when it exists
there (as the release does), else from the list's own folder, so a list can travel with its media.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import AusilError, InputError
from .scan import MEDIA_EXTENSIONS, walk_media

PATH_LIST_SUFFIXES = (".txt", ".lst", ".list")
__all__ = ["MEDIA_EXTENSIONS", "PATH_LIST_SUFFIXES", "ListEntry", "collect_media", "read_path_list", "read_video_list"]


@dataclass(frozen=True)
class ListEntry:
    video_id: str
    path: Path


def collect_media(sources: Sequence[Path | str],
                  on_skip: Callable[[Path, str], None] = lambda path, reason: None) -> list[Path]:
    """Media files (resolved, each once, in the order found) from folders, files and path lists.

    Folders are walked for files with a media extension (:data:`MEDIA_EXTENSIONS`); what the walk
    cannot use is passed to `on_skip`. A source that does not exist is an error.
    """
    paths: list[Path] = []
    direct: list[Path] = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() in PATH_LIST_SUFFIXES:
            paths.extend(read_path_list(source))
        elif source.is_file() or source.is_dir():
            direct.append(source)
        else:
            raise InputError(f"{source}: no such file or directory")
    paths.extend(walk_media(direct, has_audio=lambda path: False, on_skip=on_skip))
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    if not unique:
        raise InputError("no media files found in " + ", ".join(map(str, sources)))
    return unique


def _lines(list_path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a list's non-empty, non-comment lines."""
    for number, raw in enumerate(Path(list_path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _listed_path(text: str, list_path: Path) -> Path:
    path = Path(text)
    if not path.is_absolute() and not path.exists() and (Path(list_path).parent / path).exists():
        return Path(list_path).parent / path
    return path


def read_path_list(list_path: Path) -> list[Path]:
    """The files of a path list: a path a line, or `<id> <path>` lines (the path may hold spaces)."""
    paths = []
    for number, line in _lines(list_path):
        parts = line.split(maxsplit=1)
        for text in [line] + parts[1:]:
            path = _listed_path(text, list_path)
            if path.is_file():
                paths.append(path)
                break
        else:
            raise InputError(f"{list_path}:{number}: no such file: {line!r}")
    return paths


def read_video_list(list_path: Path) -> list[ListEntry]:
    """The release's `<id> <path>` lines; ids must be unique, the path is the rest of the line."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise AusilError(f"{list_path}: list file not found")
    entries: list[ListEntry] = []
    seen: set[str] = set()
    for number, line in _lines(list_path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise AusilError(f"{list_path}:{number}: expected '<id> <path>', got {line!r}")
        video_id, path_text = parts
        if video_id in seen:
            raise AusilError(f"{list_path}:{number}: duplicate id {video_id!r}")
        seen.add(video_id)
        entries.append(ListEntry(video_id, _listed_path(path_text, list_path)))
    return entries
