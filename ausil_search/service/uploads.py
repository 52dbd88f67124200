"""Multipart uploads streamed straight into a private directory, under a size limit.

Starlette's own form parsing spools a whole upload to a shared temporary file before the application
sees it; here the body is parsed as it arrives (python-multipart's streaming parser), the `file` part
goes to a file in a directory only the server's user can open (mkdtemp: mode 0700), and the limit is
enforced on the bytes as they come, so an oversized upload never reaches the disk in full. The caller
deletes the directory when the request ends, whatever happened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096  # other form fields (top_k, ...) are short values
MAX_PARTS = 16
ENVELOPE_SLACK = 1 << 20  # Content-Length may exceed the file by the multipart framing and small fields
DRAIN_BYTES = 16 << 20  # after refusing, read this much more so the client gets the 413 instead of a reset
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


class UploadError(Exception):
    """A refused upload: `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UploadedFile:
    path: Path  # where the part was written
    filename: str  # the client's name for it, only for display


@dataclass
class Upload:
    files: dict[str, UploadedFile] = field(default_factory=dict)  # by form field name
    size: int = 0  # of all files together
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.files[FILE_FIELD].path

    @property
    def filename(self) -> str:
        return self.files[FILE_FIELD].filename


class _PartCollector:
    """python-multipart callbacks: headers per part, file parts to disk, short fields to memory."""

    def __init__(self, directory: Path, limit: int, file_fields: tuple[str, ...]) -> None:
        self.directory, self.limit, self.file_fields = directory, limit, file_fields
        self.upload = Upload()
        self.too_large = False
        self.parts = 0
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._handle = None
        self._file: UploadedFile | None = None
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"too many form fields (at most {MAX_PARTS})")
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name in self.file_fields:
            if self._name in self.upload.files:
                raise UploadError(400, f"send one `{self._name}` field, not several")
            filename = Path(options.get(b"filename", b"upload").decode("utf-8", "replace")).name or "upload"
            suffix = Path(filename).suffix
            self._file = self.upload.files[self._name] = UploadedFile(
                self.directory / (self._name + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else "")), filename)
            fd = os.open(self._file.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._handle = os.fdopen(fd, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._handle is not None:
            self.upload.size += size
            if self.upload.size > self.limit:
                self.too_large = True
                self._handle.close()
                self._handle = None
                self._file.path.unlink(missing_ok=True)
            else:
                self._handle.write(data[start:end])
        elif self._name not in self.file_fields:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadError(400, f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif self._name and self._name not in self.file_fields:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def receive_upload(request: Request, directory: Path, limit: int, file_fields: tuple[str, ...] = (FILE_FIELD,),
                         require_file: bool = True) -> Upload:
    """Parse a multipart/form-data body into `directory`; UploadError (400/413) for a bad or oversized one.

    `file_fields`: the form fields that carry files (`limit` bounds them together); with `require_file`,
    a form without the first of them is refused.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadError(415, f"send multipart/form-data with a `{file_fields[0]}` field")
    refusal = f"upload larger than this server's limit of {limit / 2**20:g} MiB (--max-upload-mb)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + ENVELOPE_SLACK:
        raise UploadError(413, refusal)
    collector = _PartCollector(directory, limit, file_fields)
    parser = MultipartParser(boundary, collector.callbacks())
    drained = 0
    try:
        async for chunk in request.stream():
            if collector.too_large:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    break
                continue
            parser.write(chunk)
        if not collector.too_large:
            parser.finalize()
    except FormParserError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        collector.close()
    if collector.too_large:
        raise UploadError(413, refusal)
    if require_file and file_fields[0] not in collector.upload.files:
        raise UploadError(400, f"no `{file_fields[0]}` field in the form")
    return collector.upload
