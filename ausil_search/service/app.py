"""The HTTP API of `ausil-search serve` (FastAPI) and its uvicorn runner.

Every error is JSON `{"error": "..."}`: 4xx for anything a request got wrong (validation included), 500
only for bugs, whose details stay in the server log. Blocking engine work runs in worker threads, at most
`query_threads` queries at once (torch, PyAV and NumPy release the GIL while they compute).
"""

from __future__ import annotations

import hmac
import logging
import shutil
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import anyio
import uvicorn
from fastapi import Body, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..search.dedup import DEFAULT_CANDIDATES, parse_since
from ..errors import AusilError, InputError
from .config import PathRefused, Roots, ServiceConfig
from .dedup_runs import DedupBusy, DedupParams, DedupRuns
from .search import ComparedVideo, WarmSearch
from .uploads import UploadError, receive_upload
from .writer import IndexWriter, WriterBusy

log = logging.getLogger("ausil_search.service")
PUBLIC_PATHS = frozenset({"/health"})
MAX_PAGE = 1000
MAX_NPROBE = 65_536
MAX_JSON_BYTES = 1 << 20
VideoId = PathParam(ge=1, le=2**63 - 1)  # store keys are 8 bytes


class ServiceError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class QueryOptions(BaseModel):
    """Query options, from the query string, the JSON body or the form fields (validated the same way)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(10, ge=1, le=1000)
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Drop matches scoring below this.")
    exhaustive: bool = Field(False, description="Rerank every indexed video (slow).")
    candidates: int = Field(100, ge=1, le=100_000, description="Videos taken from FAISS recall and reranked.")
    nprobe: int | None = Field(None, ge=1, le=MAX_NPROBE, description="IVF lists to visit.")

    def updated(self, values: dict) -> QueryOptions:
        """These options with `values` (strings from a form too) laid over them; 422 when invalid."""
        try:
            return QueryOptions.model_validate({**self.model_dump(), **values})
        except ValidationError as exc:
            raise ServiceError(422, _validation_message(exc.errors())) from None


class PathQuery(BaseModel):
    model_config = ConfigDict(extra="allow")  # the other keys are QueryOptions
    path: str = Field(description="A media file under one of the server's --root directories.")


def _path_query_schema() -> dict:
    schema = QueryOptions.model_json_schema()
    schema["properties"] = {**PathQuery.model_json_schema()["properties"], **schema["properties"]}
    schema["required"] = ["path"]
    return schema


class IndexRequest(BaseModel):
    paths: list[str] = Field(min_length=1, max_length=10_000,
                             description="Files or directories under the server's --root directories.")


class CompareSide(BaseModel):
    """One video of a comparison: an indexed one (`id`) or a file under a --root (`path`)."""

    model_config = ConfigDict(extra="forbid")
    id: int | None = Field(None, ge=1, le=2**63 - 1)
    path: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CompareSide:
        if (self.id is None) == (self.path is None):
            raise ValueError("give either `id` or `path`")
        return self


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: CompareSide
    b: CompareSide
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Match threshold (default: the calibrated one).")


class CompareForm(BaseModel):
    """The form fields of a multipart `POST /compare` (files go as `a` and `b`)."""

    a_id: int | None = Field(None, ge=1, le=2**63 - 1)
    b_id: int | None = Field(None, ge=1, le=2**63 - 1)
    min_score: float | None = Field(None, ge=-1.0, le=1.0)


class BearerAuth:
    """ASGI middleware: with a token set, every request but /health needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.token is not None and scope["path"] not in PUBLIC_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, credentials = header.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)):
                response = JSONResponse({"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SmallBodies:
    """ASGI middleware: bodies other than multipart uploads (JSON requests) are capped at MAX_JSON_BYTES,
    counted as they arrive, so a huge JSON body cannot fill the server's memory."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or dict(scope["headers"]).get(b"content-type", b"").startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_JSON_BYTES:
                raise ServiceError(413, f"request body over {MAX_JSON_BYTES >> 10} KiB (uploads go as multipart/form-data)")
            return message

        await self.app(scope, limited_receive, send)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors) -> str:
    """Pydantic's errors as one line: `field: problem; ...` (FastAPI's leading body/query/path dropped)."""
    parts = []
    for problem in errors:
        loc = list(problem.get("loc", ()))
        if len(loc) > 1 and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(config: ServiceConfig, search: WarmSearch) -> FastAPI:
    """The API over an opened `WarmSearch`; the app owns it from here on and closes it at shutdown."""
    roots = Roots(config.roots)
    writer = IndexWriter(search.engine.index_dir, search.model_path, roots.directories, config.index_workers,
                         config.device, on_commit=search.refresh)
    dedup_runs = DedupRuns(search)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["queries"] = anyio.CapacityLimiter(config.query_threads)
        yield
        await anyio.to_thread.run_sync(writer.close)
        await anyio.to_thread.run_sync(dedup_runs.close)
        search.close()

    app = FastAPI(title="ausil-search", summary="Find indexed videos that share audio with a query.",
                  lifespan=lifespan)
    app.add_middleware(SmallBodies)
    app.add_middleware(BearerAuth, token=config.token)  # added last: runs first

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (details in the server log)")

    def server_path(text: str, must_be_file: bool) -> Path:
        try:
            path = roots.resolve(text)
        except PathRefused as exc:
            raise ServiceError(403, str(exc)) from None
        if not path.exists():
            raise ServiceError(404, f"{text}: no such file or directory")
        if must_be_file and not path.is_file():
            raise ServiceError(400, f"{text}: not a file")
        return path

    @asynccontextmanager
    async def upload_dir():
        """A private directory (mode 0700) for one request's uploads, removed when it ends, whatever happened."""
        directory = Path(tempfile.mkdtemp(prefix="ausil-upload-", dir=config.upload_dir))
        try:
            yield directory
        except UploadError as exc:
            raise ServiceError(exc.status, str(exc)) from None
        except ClientDisconnect:
            raise ServiceError(400, "the client went away during the upload") from None
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def run_query(path: Path, options: QueryOptions, label: str) -> dict:
        try:
            result = await anyio.to_thread.run_sync(
                lambda: search.query(path, label=label, **options.model_dump()), limiter=state["queries"])
        except InputError as exc:
            raise ServiceError(415, str(exc).replace(str(path), label)) from None
        except AusilError as exc:
            raise ServiceError(400, str(exc)) from None
        return result.to_dict()  # the object `ausil-search query --json` prints per query

    @app.get("/health", summary="Liveness (no token needed).")
    async def health():
        return {"status": "ok"}

    @app.get("/info", summary="Counts, model and recall index of the served index (as `ausil-search info --json`).")
    async def info():
        return await anyio.to_thread.run_sync(search.info)

    @app.post(
        "/query",
        summary="Videos sharing audio with an uploaded file (multipart field `file`) or a server-side path (JSON).",
        openapi_extra={"requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "application/json": {"schema": _path_query_schema()},
        }}},
    )
    async def query(request: Request, options: Annotated[QueryOptions, Query()]):
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = PathQuery.model_validate_json(await request.body())
            except ValidationError as exc:
                raise ServiceError(422, _validation_message(exc.errors())) from None
            options = options.updated(body.model_extra or {})
            path = server_path(body.path, must_be_file=True)
            return await run_query(path, options, str(path))
        async with upload_dir() as directory:
            upload = await receive_upload(request, directory, config.max_upload_bytes)
            options = options.updated(upload.fields)
            return await run_query(upload.path, options, upload.filename)

    def load_side(side: Path | int, label: str) -> ComparedVideo:
        """An uploaded or served file (Path) or an indexed video (int), embedded; 404/415 when unusable."""
        if isinstance(side, int):
            video = search.embedded_video(side)
            if video is None:
                raise ServiceError(404, f"no video {side}")
            return video
        try:
            return search.embedded_file(side, label)
        except InputError as exc:
            raise ServiceError(415, str(exc).replace(str(side), label)) from None

    async def run_compare(sides: list[tuple[Path | int, str]], min_score: float | None) -> dict:
        def work() -> dict:
            a, b = (load_side(side, label) for side, label in sides)
            return search.compare(a, b, min_score).to_dict()

        return await anyio.to_thread.run_sync(work, limiter=state["queries"])

    @app.post(
        "/compare",
        summary="Do two videos share audio? Two uploads (multipart fields `a`, `b`; or `a_id`/`b_id` for indexed "
                "videos) or JSON `{\"a\": {\"id\"|\"path\": ...}, \"b\": ...}`: score, decision, shared spans "
                "(as `ausil-search compare --json`).",
        openapi_extra={"requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "a": {"type": "string", "format": "binary"}, "b": {"type": "string", "format": "binary"},
                "a_id": {"type": "integer"}, "b_id": {"type": "integer"}, "min_score": {"type": "number"}}}},
            "application/json": {"schema": CompareRequest.model_json_schema()},
        }}},
    )
    async def compare(request: Request):
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = CompareRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise ServiceError(422, _validation_message(exc.errors())) from None
            sides = []
            for side in (body.a, body.b):
                path = None if side.path is None else server_path(side.path, must_be_file=True)
                sides.append((side.id, str(side.id)) if path is None else (path, str(path)))
            return await run_compare(sides, body.min_score)
        async with upload_dir() as directory:
            upload = await receive_upload(request, directory, config.max_upload_bytes, ("a", "b"), require_file=False)
            extra = set(upload.fields) - {"a_id", "b_id", "min_score"}
            if extra:
                raise ServiceError(422, f"unknown form fields: {', '.join(sorted(extra))}")
            try:
                form = CompareForm.model_validate(upload.fields)
            except ValidationError as exc:
                raise ServiceError(422, _validation_message(exc.errors())) from None
            sides = []
            for name, video_id in (("a", form.a_id), ("b", form.b_id)):
                if (name in upload.files) == (video_id is not None):
                    raise ServiceError(400, f"send either a file `{name}` or a field `{name}_id`")
                file = upload.files.get(name)
                sides.append((file.path, file.filename) if file else (video_id, str(video_id)))
            return await run_compare(sides, form.min_score)

    @app.get("/dedup", summary="Duplicate groups over the index (as `ausil-search dedup --json`), a page at a time; "
                               "202 with progress while they are being computed.")
    async def dedup(min_score: float | None = Query(None, ge=-1.0, le=1.0),
                    candidates: int = Query(DEFAULT_CANDIDATES, ge=1, le=1000),
                    since: str | None = Query(None, description="Only groups with videos indexed since: 2026-11-30, 12h, 7d."),
                    linkage: Literal["average", "single"] = Query("average", description="How pairs form groups (see `ausil-search dedup --help`)."),
                    offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)):
        try:
            if since is not None:
                parse_since(since)
        except InputError as exc:
            raise ServiceError(400, str(exc).replace("--since", "since")) from None
        try:
            run = await anyio.to_thread.run_sync(dedup_runs.get, DedupParams(min_score, candidates, since, linkage))
        except DedupBusy as exc:
            raise ServiceError(409, str(exc)) from None
        if run.state == "running":
            return JSONResponse(run.progress(), status_code=202, headers={"Retry-After": "2"})
        if run.state == "failed":
            raise ServiceError(409 if run.conflict else 500, f"dedup failed: {run.error}")
        result = run.result
        page = result.groups[offset:offset + limit]
        return {"status": "done", "threshold": result.threshold, "linkage": result.linkage, "candidates": result.candidates, "since": result.since,
                "model": result.model, "index": result.index, "stats": asdict(result.stats),
                "total_groups": len(result.groups), "offset": offset, "limit": limit,
                "groups": [asdict(group) for group in page]}

    @app.post("/index", status_code=202, summary="Index files or directories under the --root directories, in the background.")
    async def start_index(request: IndexRequest = Body()):
        paths = [server_path(p, must_be_file=False) for p in request.paths]
        try:
            job = await anyio.to_thread.run_sync(writer.start_index, paths)
        except WriterBusy as exc:
            raise ServiceError(409, str(exc)) from None
        return writer.job(job.id)

    @app.get("/jobs", summary="Index jobs of this server, oldest first.")
    async def list_jobs():
        return {"jobs": writer.jobs()}

    @app.get("/jobs/{job_id}", summary="Progress of an index job: files done/total, audio seconds, errors so far.")
    async def get_job(job_id: str):
        job = writer.job(job_id)
        if job is None:
            raise ServiceError(404, f"no job {job_id}")
        return job

    @app.delete("/jobs/{job_id}", summary="Stop an index job after the file in progress (what was indexed stays).")
    async def stop_job(job_id: str):
        job = await anyio.to_thread.run_sync(writer.stop, job_id)
        if job is None:
            raise ServiceError(404, f"no job {job_id}")
        return job

    @app.get("/videos", summary="Indexed videos in id order, a page at a time.")
    async def list_videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_PAGE)):
        total, records = await anyio.to_thread.run_sync(search.videos, offset, limit)
        return {"total": total, "offset": offset, "limit": limit, "videos": [asdict(r) for r in records]}

    @app.get("/videos/{video_id}", summary="One indexed video.")
    async def get_video(video_id: int = VideoId):
        record = await anyio.to_thread.run_sync(search.video, video_id)
        if record is None:
            raise ServiceError(404, f"no video {video_id}")
        return asdict(record)

    @app.delete("/videos/{video_id}", summary="Remove a video from the index (not from the disk).")
    async def delete_video(video_id: int = VideoId):
        record = await anyio.to_thread.run_sync(search.video, video_id)
        if record is None:
            raise ServiceError(404, f"no video {video_id}")
        try:
            removed = await anyio.to_thread.run_sync(writer.remove, [record.path])
        except WriterBusy as exc:
            raise ServiceError(409, str(exc)) from None
        except AusilError as exc:
            raise ServiceError(400, str(exc)) from None
        return {"removed": [video_id] if removed else []}

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so that a busy port is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise AusilError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


class Service:
    """A configured server: `open()` loads the model and index, then `run()` serves in this thread, or
    `start()`/`stop()` serve from a background thread (tests, benchmarks)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config.checked()
        self.sock: socket.socket | None = None
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def open(self, log_level: str = "info") -> "Service":
        self.sock = bind(self.config.host, self.config.port)  # first: a busy port fails before the model loads
        search = None
        try:
            search = WarmSearch(self.config.index_dir, self.config.model, self.config.device,
                                compile=self.config.compile_backbone)
            app = create_app(self.config, search)
        except BaseException:
            if search is not None:
                search.close()
            self.sock.close()
            raise
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.search = search
        return self

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 60.0) -> "Service":
        self._thread = threading.Thread(target=self.run, name="ausil-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("the server did not start (see its log)")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)
