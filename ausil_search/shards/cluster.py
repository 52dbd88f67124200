"""A sharded index on a Ray cluster (`--ray local|ADDRESS`; the optional extra `ausil-search[cluster]`).

Indexing: one writer actor per shard (LMDB has one writer) runs that shard's ordinary, kill-safe
`index_paths`; its extraction is a Ray Data pipeline in which decoding runs as tasks and the
network in an actor pool (`ActorPoolStrategy`). Queries: one shard server actor per shard recalls
and reranks on its own data; the coordinator extracts the query once, sends the descriptors to
every server and merges the answers, flagging a partial result when a server does not answer.

Each shard's LMDB must sit on a local filesystem of the node that opens it (not NFS/FUSE).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import AusilError, IndexStoreError
from ..features.backbone import DESCRIPTOR_DIM
from ..features.extraction import ExtractedVideo, Extractor, LogMel, SinkFactory, _log_mel_job, into_sink
from ..model import AuSiLModel
from ..progress import Progress, Stage, silent
from ..search.engine import COMMIT_EVERY_VIDEOS, IndexReport, QueryResult
from .sharded_index import QueryDescriptors, ShardedIndex, ShardedQueryResult, ShardEngine, add_reports, merge_answers

CLUSTER_DEPS_HINT = "pip install 'ausil-search[cluster]' (Ray Data)"
LOCAL_OBJECT_STORE_BYTES = 512 << 20  # `--ray local`: enough for the log-mels in flight, small beside the model
DECODE_CPUS = 0.5  # a decode task's share of a CPU; the network actors leave at least this much free
QUERY_TIMEOUT_S = 600.0


def _ray():
    try:
        import ray
    except ImportError:
        raise AusilError(f"--ray needs Ray, which is not installed: {CLUSTER_DEPS_HINT}") from None
    return ray


def on_this_node() -> dict:
    """Actor options that keep an actor on the coordinator's node, where the shards' disks are."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = _ray().get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def connect(address: str) -> None:
    """Join the cluster at `address`, or start a local one for `local`; an initialised Ray is kept."""
    ray = _ray()
    if ray.is_initialized():
        return
    if address == "local":
        try:
            ray.init(num_cpus=os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False)
        except Exception as error:  # Ray says only "Exception" when its processes do not come up in time
            raise AusilError(f"cannot start a local Ray cluster: {str(error).splitlines()[0]}") from None
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise AusilError(f"cannot join the Ray cluster at {address}: {error}") from None


# --------------------------------------------------------------------------- extraction on Ray Data


def decode_row(row: dict, frontend) -> dict:
    """A Ray Data task: one file's log-mel, or the one-line reason it cannot be used."""
    outcome = _log_mel_job(row["path"], frontend, None)
    if isinstance(outcome, str):
        return {"path": row["path"], "frames": b"", "n_frames": 0, "duration_s": 0.0, "error": outcome}
    try:
        frames = np.ascontiguousarray(outcome.array(), dtype=np.float32)
    finally:
        outcome.release()
    return {"path": row["path"], "frames": frames.tobytes(), "n_frames": len(frames),
            "duration_s": outcome.duration_s, "error": ""}


class BackboneWorker:
    """A Ray Data actor: the network, loaded once per actor, over the log-mels of a batch."""

    def __init__(self, model: AuSiLModel, device: str | None, batch_size: int | None, precision: str):
        self.extractor = Extractor(model, device=device, batch_size=batch_size, workers=0, precision=precision)

    def __call__(self, batch: dict) -> dict:
        descriptors, errors = [], []
        for frames, n_frames, duration, error in zip(batch["frames"], batch["n_frames"], batch["duration_s"],
                                                     batch["error"]):
            if error:
                descriptors.append(b"")
                errors.append(str(error))
                continue
            array = np.frombuffer(frames, dtype=np.float32).reshape(int(n_frames), -1)
            try:
                encoded = self.extractor.encode_log_mel(LogMel(array, None, float(duration)))
            except AusilError as exc:
                descriptors.append(b"")
                errors.append(str(exc))
                continue
            descriptors.append(np.ascontiguousarray(encoded, dtype=np.float32).tobytes())
            errors.append("")
        return {"path": batch["path"], "descriptors": np.array(descriptors, dtype=object),
                "duration_s": batch["duration_s"], "error": np.array(errors, dtype=object)}


def network_actor_cpus(cluster_cpus: float, workers: int) -> float:
    """Each network actor's CPU reservation: a whole CPU where the cluster has room, else a share
    that leaves a decode task its DECODE_CPUS (as many actors as CPUs would hold every CPU while
    waiting for decoded audio that no task could then be scheduled to make: a deadlock)."""
    return min(1.0, max(0.05, (cluster_cpus - DECODE_CPUS) / max(1, workers)))


class RayDataExtraction(QueryDescriptors):
    """A shard engine's extraction spread over the cluster; `workers` network actors."""

    def __init__(self, model: AuSiLModel, workers: int, device: str | None, batch_size: int | None, precision: str):
        super().__init__(lambda: Extractor(model, device=device, batch_size=batch_size, workers=0, precision=precision))
        self.model, self.workers = model, workers
        self.options = (device, batch_size, precision)

    def run(self, paths: Iterable[Path], sink: SinkFactory | None = None) -> Iterator[ExtractedVideo]:
        ray = _ray()
        paths = [str(p) for p in paths]
        if not paths:
            return
        from ray.data import ActorPoolStrategy

        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
        dataset = dataset.map(decode_row, fn_kwargs={"frontend": self.model.frontend}, num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(BackboneWorker, fn_constructor_args=(self.model, *self.options), batch_size=1,
                                      batch_format="numpy", compute=ActorPoolStrategy(size=self.workers),
                                      num_cpus=network_actor_cpus(ray.cluster_resources().get("CPU", 1), self.workers))
        for row in dataset.iter_rows():
            if row["error"]:
                yield ExtractedVideo(Path(row["path"]), error=str(row["error"]))
                continue
            descriptors = np.frombuffer(row["descriptors"], dtype=np.float32).reshape(-1, DESCRIPTOR_DIM)
            if sink is None:
                yield ExtractedVideo(Path(row["path"]), descriptors, float(row["duration_s"]))
            else:
                yield ExtractedVideo(Path(row["path"]), None, float(row["duration_s"]),
                                     consumed=into_sink(descriptors, sink))


class ShardWriter:
    """A Ray actor owning one shard's writer: its store, its FAISS file and its writer lock."""

    def __init__(self, shard_dir: str, model: AuSiLModel, workers: int, device: str | None, batch_size: int | None,
                 precision: str, commit_every: int):
        self.engine = ShardEngine(Path(shard_dir), model, writable=True, device=device, commit_every=commit_every,
                                  create=False)
        self.engine.shared = RayDataExtraction(model, workers, device, batch_size, precision)

    def index(self, paths: list[str]) -> IndexReport:
        return self.engine.index_paths([Path(p) for p in paths])

    def close(self) -> None:
        self.engine.close()


class ShardServer:
    """A Ray actor answering queries on one shard from descriptors the coordinator extracted."""

    def __init__(self, shard_dir: str, model: AuSiLModel, device: str | None):
        self.engine = ShardEngine(Path(shard_dir), model, writable=False, device=device)
        self.engine.shared = QueryDescriptors()

    def ready(self) -> int:
        return os.getpid()

    def query(self, video: ExtractedVideo, options: dict) -> QueryResult:
        self.engine.shared.preset(video)
        try:
            return self.engine.query(video.path, **options)
        finally:
            self.engine.shared.release()

    def info(self) -> dict:
        return self.engine.info()


def index_on_cluster(
    index_dir: Path,
    roots: Iterable[Path],
    address: str,
    model: AuSiLModel | str | Path | None = None,
    shards: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    precision: str = "fused",
    commit_every: int = COMMIT_EVERY_VIDEOS,
    prune: bool = False,
    progress: Progress = silent,
) -> IndexReport:
    """`index DIR --shards S --ray ADDRESS`: each shard's files indexed by its writer actor, the
    extraction spread over the cluster (`workers` network actors, default: the cluster's CPUs).

    `progress` (:mod:`ausil_search.progress`) hears of the `scan` of the media here, then of
    `index shards`: each shard as its writer finishes (`metrics`: the files added, updated and
    unchanged so far; what the writer skipped, one `skipped` each)."""
    connect(address)
    ray = _ray()
    started = time.perf_counter()
    with ShardedIndex(index_dir, model, writable=True, shards=shards, device=device, workers=0) as local:
        # Creates what is missing (shards, shards.json) and resolves the model; the writers open the shards after.
        model_object, layout = local.model, local.layout
        parts, skipped = local.plan(roots, progress)
    report = IndexReport(skipped=skipped)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    model_ref = ray.put(model_object)
    writer_class = ray.remote(num_cpus=0, max_restarts=0)(ShardWriter).options(**on_this_node())
    stage = Stage(progress, "index shards", sum(1 for part in parts.values() if part))
    for number, shard_dir in enumerate(layout.shard_dirs):
        if not parts[number]:
            continue
        writer = writer_class.remote(str(shard_dir), model_ref, workers, device, batch_size, precision, commit_every)
        try:
            shard_report = ray.get(writer.index.remote([str(p) for p in parts[number]]))
            ray.get(writer.close.remote())
        except ray.exceptions.RayError as error:
            raise IndexStoreError(f"shard {number} ({shard_dir}): {_cause(error)}; what it committed is kept, "
                                  "rerun to continue") from None
        finally:
            ray.kill(writer)
        add_reports(report, shard_report)
        for path, reason in shard_report.skipped.items():
            stage.advance(path, skipped=f"{path}: {reason}", count=0)
        stage.advance(f"shard {number}", metrics={"added": report.added, "updated": report.updated,
                                                  "unchanged": report.unchanged})
    if prune:
        with ShardedIndex(index_dir, writable=True, workers=0) as local:
            report.removed = local.prune(roots)
    report.seconds = time.perf_counter() - started
    return report


class ClusterIndex:
    """Queries over a sharded index whose shards are served by Ray actors (`query --ray`)."""

    def __init__(self, index_dir: Path, address: str, model: AuSiLModel | str | Path | None = None,
                 device: str | None = None):
        connect(address)
        ray = _ray()
        self.index_dir = Path(index_dir)
        self.warnings: list[str] = []
        with ShardedIndex(self.index_dir, model, device=device, workers=0) as local:  # checks the layout, loads the model
            self.layout, self.model, self.device = local.layout, local.model, local.device
            self.warnings.extend(local.warnings)
        model_ref = ray.put(self.model)
        server = ray.remote(num_cpus=0, max_restarts=0)(ShardServer).options(**on_this_node())
        self.servers = {n: server.remote(str(d), model_ref, device) for n, d in enumerate(self.layout.shard_dirs)}
        self.failed: dict[int, str] = {}
        for number, actor in list(self.servers.items()):
            try:
                ray.get(actor.ready.remote(), timeout=QUERY_TIMEOUT_S)
            except Exception as error:  # a shard that cannot be opened on its node
                self.failed[number] = _cause(error)
                self.warnings.append(f"shard {number} ({self.layout.shard_dirs[number]}) is left out: {self.failed[number]}")
                del self.servers[number]
        if not self.servers:
            raise IndexStoreError(f"no shard of {self.index_dir} can be served: {next(iter(self.failed.values()))}")
        self.extraction = QueryDescriptors(lambda: Extractor(self.model, device=str(self.device), workers=0))

    def query(self, path: Path, top_k: int = 10, candidates: int = 100, nprobe: int | None = None,
              exhaustive: bool = False, spans: bool = True) -> ShardedQueryResult:
        ray = _ray()
        clock = time.perf_counter()
        video = self.extraction.descriptors(Path(path))
        self.extraction.release()
        extract_s = time.perf_counter() - clock
        options = {"top_k": top_k, "candidates": candidates, "nprobe": nprobe, "exhaustive": exhaustive, "spans": spans}
        video_ref = ray.put(video)
        pending = {n: actor.query.remote(video_ref, options) for n, actor in self.servers.items()}
        answers, failed = {}, dict(self.failed)
        for number, future in pending.items():
            try:
                answers[number] = ray.get(future, timeout=QUERY_TIMEOUT_S)
            except Exception as error:  # a dead actor, a lost node, a failing disk: answer with the others
                failed[number] = _cause(error)
        return merge_answers(str(path), video.duration_s, answers, failed, self.layout.count, top_k, exhaustive,
                             extract_s, [f"shard {n}: {r}" for n, r in failed.items()])

    def actor_pids(self) -> dict[int, int]:
        ray = _ray()
        return {n: ray.get(actor.ready.remote()) for n, actor in self.servers.items()}

    def close(self) -> None:
        ray = _ray()
        for actor in self.servers.values():
            ray.kill(actor)
        self.servers = {}

    def __enter__(self) -> "ClusterIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cause(error: BaseException) -> str:
    """A one-line reason from a Ray error (whose text carries the remote traceback)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and str(cause):
        return f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
