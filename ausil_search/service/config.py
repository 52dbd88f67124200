"""Service settings and the security rules they carry: who may connect, and which server files a request may name."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AusilError

TOKEN_ENV = "AUSIL_SEARCH_TOKEN"
MIN_TOKEN_LENGTH = 16
DEFAULT_MAX_UPLOAD_MB = 2048


class PathRefused(AusilError):
    """A server-side path outside the `--root` directories (or any path when there are none)."""


def is_loopback(host: str) -> bool:
    """True only for addresses that other machines cannot reach; names other than localhost count as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Roots:
    """The directories whose files requests may name, compared after resolving `..` and symbolic links.

    The refusal says the same whether or not the path exists, so the API cannot be used to probe the disk.
    """

    def __init__(self, directories: tuple[Path, ...] | list[Path]) -> None:
        resolved = []
        for directory in directories:
            path = Path(directory).expanduser().resolve()
            if not path.is_dir():
                raise AusilError(f"--root {directory}: not a directory")
            resolved.append(path)
        self.directories = tuple(resolved)

    def contains(self, resolved: Path) -> bool:
        return any(resolved.is_relative_to(root) for root in self.directories)

    def resolve(self, text: str) -> Path:
        """The resolved path of `text` if it lies under a root, else PathRefused."""
        if not self.directories:
            raise PathRefused("this server accepts no server-side paths (started without --root): upload the file")
        try:
            resolved = Path(os.path.expanduser(text)).resolve()
        except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes: refused like any other path
            resolved = None
        if resolved is None or not self.contains(resolved):
            raise PathRefused("path refused: only files under the server's --root directories can be used")
        return resolved


@dataclass(frozen=True)
class ServiceConfig:
    index_dir: Path
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    roots: tuple[Path, ...] = ()
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20
    upload_dir: Path | None = None
    device: str | None = None
    index_workers: int | None = None  # decoding processes of index jobs (None: the engine's default)
    query_threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    compile_backbone: bool = True  # torch.compile at start: faster queries for a few seconds more start-up

    def checked(self) -> ServiceConfig:
        """Refuse settings that would expose the index: a reachable address without a token, a weak token."""
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise AusilError(
                f"the token must have at least {MIN_TOKEN_LENGTH} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if not self.token and not is_loopback(self.host):
            raise AusilError(
                f"binding {self.host} makes the index reachable from other machines: set a token with "
                f"--token or {TOKEN_ENV} (clients then send 'Authorization: Bearer <token>')"
            )
        if self.max_upload_bytes <= 0:
            raise AusilError("--max-upload-mb must be positive")
        if self.upload_dir is not None and not Path(self.upload_dir).is_dir():
            raise AusilError(f"--upload-dir {self.upload_dir}: not a directory")
        Roots(self.roots)
        return self
