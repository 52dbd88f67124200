"""Finding the media files of a collection, and telling whether one changed since it was indexed."""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mode
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
HASH_BLOCK = 1 << 20


class NotRegularFile(OSError):
    """A FIFO, socket or device where a media file was expected: opening it could block forever."""


def file_kind(mode: int) -> str:
    """A short name for a non-regular file type, for skip messages."""
    kinds = (
        (stat_mode.S_ISFIFO, "a FIFO"),
        (stat_mode.S_ISSOCK, "a socket"),
        (stat_mode.S_ISCHR, "a character device"),
        (stat_mode.S_ISBLK, "a block device"),
        (stat_mode.S_ISDIR, "a directory"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def describe_os_error(error: OSError) -> str:
    """One line for a skip report: `cannot read (Permission denied)` and the like."""
    if isinstance(error, NotRegularFile):
        return str(error)
    return f"cannot read ({error.strerror or error})"


@dataclass(frozen=True)
class FileState:
    """What is compared to decide whether a file must be indexed again."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileState":
        """The state of a regular file; raises OSError (`NotRegularFile` for FIFOs and the like)."""
        stat = path.stat()
        if not stat_mode.S_ISREG(stat.st_mode):
            raise NotRegularFile(f"{file_kind(stat.st_mode)}, not a media file")
        return cls(stat.st_size, stat.st_mtime_ns)


def _open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file.

    O_NONBLOCK makes opening a FIFO return at once (instead of waiting for a writer), and the
    `fstat` of what was opened closes the race with a file replaced by one after `walk_media`.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    mode = os.fstat(fd).st_mode
    if not stat_mode.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{file_kind(mode)}, not a media file")
    return fd


def fingerprint(path: Path) -> str:
    """A content hash of the size and three 64 KiB blocks (start, middle, end).

    Cheap on multi-GB files yet changes with any re-encode: a cache key for training features. It
    can miss an edit that keeps the size and spares those blocks; indexing uses `content_hash`.
    """
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
            handle.seek(offset)
            digest.update(handle.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """A hash of every byte (streamed, constant memory): what tells a touched file from an edited one.

    The indexer computes it only for new files and files whose size or mtime changed, so an
    unchanged collection is never read; reading a whole file costs far less than decoding it.
    Raises OSError (`NotRegularFile` for a FIFO, socket or device).
    """
    digest = hashlib.blake2b(b"full:", digest_size=16)
    with os.fdopen(_open_regular(Path(path)), "rb", buffering=0) as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def walk_media(
    roots: Iterable[Path],
    has_audio: Callable[[Path], bool],
    on_skip: Callable[[Path, str], None] = lambda path, reason: None,
) -> Iterator[Path]:
    """Media files under `roots` (files are taken as given), each once, in a stable order.

    Symbolic links are followed; a file reached through two names (links, hard links) is yielded
    once, under the first name met. What cannot be used is passed to `on_skip` with a reason: a
    directory that cannot be listed, a broken or looping link, a FIFO/socket/device with a media
    extension (told by `stat`, never opened), a directory reached a second time (a link loop). Files
    of unknown extension are kept if `has_audio` says so.
    """
    seen_dirs: dict[tuple[int, int], str] = {}
    seen_files: set[tuple[int, int]] = set()

    def accept(path: Path) -> bool:
        suffix = path.suffix.lower()
        if suffix in NON_MEDIA_EXTENSIONS or path.name.startswith("."):
            return False
        try:
            stat = path.stat()
        except OSError as exc:
            broken = path.is_symlink()
            on_skip(path, f"broken symbolic link ({exc.strerror})" if broken else describe_os_error(exc))
            return False
        if not stat_mode.S_ISREG(stat.st_mode):
            if suffix in MEDIA_EXTENSIONS:
                on_skip(path, f"{file_kind(stat.st_mode)}, not a media file")
            return False
        key = (stat.st_dev, stat.st_ino)
        if key in seen_files:
            return False
        if suffix not in MEDIA_EXTENSIONS and not has_audio(path):
            return False
        seen_files.add(key)
        return True

    def unlistable(error: OSError) -> None:
        on_skip(Path(error.filename), f"cannot list directory ({error.strerror})")

    for root in roots:
        root = Path(root)
        try:
            mode = root.stat().st_mode
        except OSError as exc:
            on_skip(root, "no such file or directory" if exc.errno == errno.ENOENT else describe_os_error(exc))
            continue
        if not stat_mode.S_ISDIR(mode):
            if not stat_mode.S_ISREG(mode):
                on_skip(root, f"{file_kind(mode)}, not a media file")
            elif accept(root):
                yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable, followlinks=True):
            try:
                stat = os.stat(dirpath)
            except OSError as exc:
                on_skip(Path(dirpath), f"cannot list directory ({exc.strerror})")
                dirnames[:] = []
                continue
            first = seen_dirs.setdefault((stat.st_dev, stat.st_ino), dirpath)
            if first != dirpath:
                on_skip(Path(dirpath), f"already walked as {first} (symbolic link loop or second link)")
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if accept(path):
                    yield path
