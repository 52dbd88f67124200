"""Finding the media files of a collection, and telling whether one changed since it was indexed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv "
    ".m4a .mp3 .ogg .oga .opus .wav .flac .aac .wma .mka .aiff .aif .ac3".split()
)
# Extensions that are never media: not worth opening a container to find out.
NON_MEDIA_EXTENSIONS = frozenset(
    ".txt .md .json .csv .xml .html .htm .pdf .doc .docx .jpg .jpeg .png .gif .bmp .webp .svg .tif .tiff "
    ".py .sh .c .h .js .css .zip .tar .gz .bz2 .xz .7z .npz .npy .h5 .hdf5 .safetensors .pkl .db .mdb .lock "
    ".srt .vtt .ass .nfo .log .ini .cfg .yaml .yml .toml .faiss .part .tmp".split()
)
FINGERPRINT_BLOCK = 1 << 16


@dataclass(frozen=True)
class FileState:
    """What is compared to decide whether a file must be indexed again."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileState":
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


def fingerprint(path: Path) -> str:
    """A content hash of the size and three 64 KiB blocks (start, middle, end).

    Cheap on multi-GB files yet changes with any re-encode; it lets a touched but unchanged file
    (new mtime, same bytes) skip re-extraction.
    """
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
            handle.seek(offset)
            digest.update(handle.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()


def walk_media(
    roots: Iterable[Path],
    has_audio: Callable[[Path], bool],
    on_skip: Callable[[Path, str], None] = lambda path, reason: None,
) -> Iterator[Path]:
    """Media files under `roots` (files are taken as given), each once, in a stable order.

    Symbolic links are followed; a directory reached twice (a link loop, or two links to one place)
    is walked once. Files of unknown extension are kept if `has_audio` says so.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def accept(path: Path) -> bool:
        try:
            stat = path.stat()
        except OSError as exc:
            on_skip(path, f"cannot read ({exc.strerror})")
            return False
        key = (stat.st_dev, stat.st_ino)
        if key in seen_files:
            return False
        suffix = path.suffix.lower()
        if suffix in NON_MEDIA_EXTENSIONS or path.name.startswith("."):
            return False
        if suffix not in MEDIA_EXTENSIONS and not has_audio(path):
            return False
        seen_files.add(key)
        return True

    for root in roots:
        root = Path(root)
        if root.is_file():
            if accept(root):
                yield root
            continue
        if not root.is_dir():
            on_skip(root, "no such file or directory")
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            stat = os.stat(dirpath)
            if (stat.st_dev, stat.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if accept(path):
                    yield path
