"""Every group of indexed videos that share audio (`ausil-search dedup`).

Each video is matched against the rest like a query (FAISS recall of its global descriptor, then the
AuSiL rerank of the candidates from their stored segments). Groups are formed from the scores in one
of two ways (`decision.py` holds both calibrated thresholds):
- average linkage (the default): two groups join when the mean score over all pairs between them
  reaches the group threshold, an unscored pair counting 0 (`average_linkage`); every recalled pair
  is scored. One wrong pair cannot merge two groups, which at the same precision on the dev benchmark
  about doubles the pairs found (BENCHMARKS.md, "Duplicate groups and the match threshold");
- single linkage: pairs scoring at least the match threshold join their videos, strongest first
  (connected components). Pairs are scored one at a time, the most similar global descriptors first,
  and a pair whose two videos are already joined through pairs above the threshold is skipped: its
  score could not change who is in a group (with "not duplicates" decisions it could, and every pair
  is scored).

What is kept in the index, in its own LMDB environment `INDEX/dedup/` (the segment store stays
untouched, and an index can be searched and extended while a dedup runs):
  pairs      model key + query id + database id -> float32 score, for every pair ever scored; NaN
             (SKIPPED) for a pair left unscored because its videos were already joined
  done       model key + video id -> the recall depth of the complete run that matched that video
  decisions  the two content fingerprints, sorted -> JSON: "not duplicates", said by a user
  meta       format version
Ids are never reused by the segment store, so a stored score always belongs to the same two
contents; the model key (the first 8 bytes of the model's SHA-256) keeps scores of different models
apart. A rerun therefore only scores pairs that involve a video not yet matched by a complete run
of at least the same recall depth, pairs an interrupted run did not reach, and skipped pairs whose
videos are no longer joined (another threshold, a removed video, a decision). Decisions are keyed by content fingerprint, so they
survive re-indexing (an unchanged file gets the same fingerprint, even under a new id or path).
Every write is one LMDB transaction: a crash keeps what committed and loses nothing else.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import math
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb
import numpy as np
import torch

from .decision import group_threshold_for, shared_spans, threshold_for
from ..errors import IndexStoreError, InputError
from ..media.scan import fingerprint
from ..progress import Progress, Stage, silent
from .stores import VideoRecord, WriterLock

DEDUP_DIR = "dedup"
FORMAT_VERSION = 1
LINKAGES = ("average", "single")
DEFAULT_CANDIDATES = 20  # recall per video; groups need only a chain of strong pairs, not every pair
RECALL_CHUNK = 128  # videos whose recall windows are searched at a time
COMMIT_PAIRS = 4096  # scores per write transaction
COMMIT_SECONDS = 10.0
_DB_NAMES = (b"pairs", b"done", b"decisions", b"meta")
_MAP_SIZE = 64 << 20  # grows by doubling when full
SEGMENT_CACHE_VALUES = 1 << 26  # segment values (float32) of recently scored videos kept between pairs
SKIPPED = float("nan")  # the stored score of a pair not scored because its videos were already joined


def _id_bytes(video_id: int) -> bytes:
    return int(video_id).to_bytes(8, "big")


def _pair_id(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per (query id, database id) pair, for set operations on many pairs at once."""
    return (np.asarray(a, np.int64) << 32) | np.asarray(b, np.int64)


def decision_key(fingerprint_a: str, fingerprint_b: str) -> bytes:
    return "|".join(sorted((fingerprint_a, fingerprint_b))).encode()


class DedupStore:
    """Pair scores, per-video progress and user decisions of one index, for one model."""

    def __init__(self, index_dir: Path, model_sha256: str):
        self.path = Path(index_dir) / DEDUP_DIR
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.path)
        self._lock.acquire()  # one dedup run per index at a time, with a clear message for the second
        try:
            self._env = lmdb.open(str(self.path), map_size=_MAP_SIZE, max_dbs=len(_DB_NAMES), readahead=False)
            with self._env.begin(write=True) as txn:
                self._dbs = {name.decode(): self._env.open_db(name, txn=txn) for name in _DB_NAMES}
                version = txn.get(b"format_version", db=self._dbs["meta"])
                if version is None:
                    txn.put(b"format_version", str(FORMAT_VERSION).encode(), db=self._dbs["meta"])
                elif int(version) != FORMAT_VERSION:
                    raise IndexStoreError(f"{self.path}: dedup data of format {int(version)}, this program reads {FORMAT_VERSION}")
        except lmdb.Error as error:
            self.close()
            raise IndexStoreError(f"cannot open {self.path}: {error}") from None
        except BaseException:
            self.close()
            raise
        self.model_key = bytes.fromhex(model_sha256[:16])

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None
        self._lock.release()

    def __enter__(self) -> DedupStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, body: Callable[[lmdb.Transaction], None]) -> None:
        """One write transaction, the map doubled and the body rerun while it does not fit."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])

    def _scan(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        """Entries of this model in `db`, keys without the model prefix."""
        with self._env.begin(db=self._dbs[db], buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(self.model_key):
                return
            for key, value in cursor:
                if not key.startswith(self.model_key):
                    return
                yield key[len(self.model_key):], value

    # ---------------------------------------------------------------- pair scores

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored pair of this model: (query ids, database ids, scores)."""
        keys, scores = bytearray(), bytearray()  # 20 bytes a pair, never a Python object per pair
        for key, value in self._scan("pairs"):
            keys += key
            scores += value
        ids = np.frombuffer(bytes(keys), dtype=">u8").reshape(-1, 2).astype(np.int64)
        return ids[:, 0], ids[:, 1], np.frombuffer(bytes(scores), dtype="<f4").astype(np.float32)

    def put_scores(self, items: Iterable[tuple[int, int, float]]) -> None:
        items = list(items)

        def body(txn: lmdb.Transaction) -> None:
            for query, database, score in items:
                key = self.model_key + _id_bytes(query) + _id_bytes(database)
                txn.put(key, np.float32(score).tobytes(), db=self._dbs["pairs"])

        self._write(body)

    def done_ids(self, candidates: int = 1) -> set[int]:
        """Videos a complete run has matched with at least this recall depth (a deeper run redoes them)."""
        return {int.from_bytes(key, "big") for key, value in self._scan("done") if int(value) >= candidates}

    def mark_done(self, ids: Iterable[int], candidates: int) -> None:
        ids, depth = list(ids), str(int(candidates)).encode()
        self._write(lambda txn: [txn.put(self.model_key + _id_bytes(i), depth, db=self._dbs["done"]) for i in ids])

    def forget(self, gone: set[int]) -> int:
        """Drop the scores and progress marks of videos no longer in the index; returns how many entries."""
        stale_pairs = [k for k, _ in self._scan("pairs")
                       if int.from_bytes(k[:8], "big") in gone or int.from_bytes(k[8:], "big") in gone]
        stale_done = [k for k, _ in self._scan("done") if int.from_bytes(k, "big") in gone]
        if stale_pairs or stale_done:
            def body(txn: lmdb.Transaction) -> None:
                for key in stale_pairs:
                    txn.delete(self.model_key + key, db=self._dbs["pairs"])
                for key in stale_done:
                    txn.delete(self.model_key + key, db=self._dbs["done"])

            self._write(body)
        return len(stale_pairs) + len(stale_done)

    # ---------------------------------------------------------------- decisions

    def add_decisions(self, decisions: Iterable[tuple[str, str, dict]]) -> int:
        """Record `(fingerprint a, fingerprint b, details)` as "not duplicates"; returns the count."""
        decisions = list(decisions)

        def body(txn: lmdb.Transaction) -> None:
            for fp_a, fp_b, details in decisions:
                txn.put(decision_key(fp_a, fp_b), json.dumps(details).encode(), db=self._dbs["decisions"])

        self._write(body)
        return len(decisions)

    def decisions(self) -> dict[bytes, dict]:
        with self._env.begin(db=self._dbs["decisions"]) as txn:
            return {bytes(key): json.loads(value) for key, value in txn.cursor()}


def carry_decisions(old_index: Path, new_index: Path) -> int:
    """Copy the user's "not duplicates" decisions of an index into its rebuilt copy; returns the count.

    They are keyed by content fingerprint, so they hold there as they are. Pair scores and progress
    stay behind: the rebuilt index's segments are scored anew.
    """
    if not (Path(old_index) / DEDUP_DIR / "data.mdb").is_file():
        return 0
    with DedupStore(old_index, _ANY_MODEL) as old:
        decisions = old.decisions()
    if not decisions:
        return 0
    with DedupStore(new_index, _ANY_MODEL) as new:
        return new.add_decisions((*key.decode().split("|", 1), details) for key, details in decisions.items())


_ANY_MODEL = "0" * 64  # decisions are not per model


# --------------------------------------------------------------------------- results


@dataclass
class Member:
    video_id: int
    path: str
    duration_s: float
    size: int
    spans: list[tuple[float, float]]  # the audio it shares with the others in its group, seconds, merged


@dataclass
class Link:
    """A pair that joined a group, with where the shared audio is in each.

    A group of n members lists n - 1 links: the strongest pairs that connect it (a maximum spanning
    tree, the pairs that merged it when grouping). Locating the shared audio of every pair above the
    threshold would cost a similarity matrix per pair; this costs one per member.
    """

    a: str
    b: str
    score: float
    span_a: tuple[float, float]
    span_b: tuple[float, float]


@dataclass
class Group:
    number: int
    score: float  # the strongest pair
    mean_score: float  # over the links
    members: list[Member]
    links: list[Link]


@dataclass
class DedupStats:
    videos: int = 0
    focus_videos: int = 0  # videos whose pairs were considered (--since limits them)
    candidate_pairs: int = 0  # distinct pairs from the recall stage that this run needed
    pairs_scored: int = 0  # of those, scored now (the others were stored by earlier runs)
    pairs_skipped: int = 0  # of those, not scored: their two videos were already joined through scored pairs
    pairs_stored: int = 0  # all pair scores in the index for this model, after the run (skipped pairs not counted)
    kept_apart: int = 0  # joins above the threshold refused because of a "not duplicates" decision
    seconds: float = 0.0


@dataclass
class DedupResult:
    groups: list[Group]
    threshold: float
    linkage: str
    candidates: int
    since: float | None
    model: str
    index: str
    stats: DedupStats = field(default_factory=DedupStats)

    def to_dict(self) -> dict:
        return asdict(self)

    def csv_rows(self) -> Iterator[list]:
        """One row per member: group, group size, group score, path, duration, bytes, shared spans."""
        yield ["group", "group_size", "group_score", "path", "duration_s", "size_bytes", "shared_spans_s"]
        for group in self.groups:
            for member in group.members:
                spans = ";".join(f"{start:.2f}-{end:.2f}" for start, end in member.spans)
                yield [group.number, len(group.members), f"{group.score:.4f}", member.path, member.duration_s,
                       member.size, spans]


# --------------------------------------------------------------------------- time filters


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since` as a Unix time: an ISO date or date-time (local time unless it says otherwise), or an
    age such as 30m, 12h, 7d, 2w."""
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        moment = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--since {text!r}: expected a date (2026-11-30), a date-time or an age (12h, 7d)") from None
    return moment.timestamp()


def indexed_at(record: VideoRecord) -> float:
    """When a video entered the index; indexes made before that was recorded: its file's mtime."""
    value = record.extra.get("indexed_at")
    return float(value) if value is not None else record.mtime_ns / 1e9


# --------------------------------------------------------------------------- grouping


class ConstrainedUnion:
    """Union-find that refuses a union putting two videos a user called "not duplicates" together.

    Pairs are offered strongest first, so a refused union leaves each side with its strongest
    partners; with no decisions this is plain connected components.
    """

    def __init__(self, apart: dict[int, set[int]]):
        self.parent: dict[int, int] = {}
        self.members: dict[int, set[int]] = {}
        self.apart = apart

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        self.members.setdefault(x, {x})
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> bool:
        """Join the groups of a and b; False when a decision keeps them apart (or they are joined already)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        small, large = sorted((ra, rb), key=lambda r: len(self.members[r]))
        if any(self.apart.get(x, set()) & self.members[large] for x in self.members[small]):
            return False
        self.parent[small] = large
        self.members[large] |= self.members.pop(small)
        return True

    def groups(self) -> list[set[int]]:
        return [members for root, members in self.members.items() if self.parent[root] == root and len(members) > 1]


@dataclass(frozen=True)
class Merge:
    """Two groups joined by average linkage: at `level`, through their strongest scored pair (a, b)."""

    level: float  # mean score over every pair between the two groups; an unscored pair counts 0
    score: float  # the score of (a, b), the link a report shows
    a: int
    b: int


def average_linkage(pairs: Iterable[tuple[int, int, float]], floor: float,
                    apart: dict[int, set[int]] | None = None) -> tuple[list[Merge], int]:
    """Average-linkage (UPGMA) merges of the scored pairs, highest level first, while the level is >= `floor`.

    Connected components join two groups through a single strong pair, so one wrong pair merges two
    whole groups; here two groups join only when their pairs *on average* reach the floor, an unscored
    pair (the recall stage did not propose it) counting 0. Each merge is at or below the one before
    (average linkage is monotone), so cutting the merges at any level >= `floor` gives that level's
    groups; merging stops above level 0. `apart`: videos that must never share a group; the joins it
    refuses are counted and returned with the merges.
    """
    members: dict[int, list[int]] = {}
    cross: dict[int, dict[int, list]] = {}  # group -> neighbour group -> [score sum, best score, a, b], one shared list
    for a, b, score in pairs:
        if a == b or not math.isfinite(score):
            continue
        for x in (a, b):
            members.setdefault(x, [x])
            cross.setdefault(x, {})
        entry = cross[a].get(b)
        if entry is None:
            entry = cross[a][b] = cross[b][a] = [0.0, -np.inf, a, b]
        entry[0] += score
        if score > entry[1]:
            entry[1:] = [score, a, b]
    version = dict.fromkeys(members, 0)

    def level(x: int, y: int) -> float:
        return cross[x][y][0] / (len(members[x]) * len(members[y]))

    # A level below the floor is left out of the heap: it changes only when one of its two groups merges,
    # and that merge pushes it again.
    heap = [(-level(x, y), x, y, 0, 0) for x in cross for y in cross[x] if x < y and level(x, y) >= floor]
    heapq.heapify(heap)
    merges, refused = [], 0
    while heap:
        negative, x, y, version_x, version_y = heapq.heappop(heap)
        if version.get(x) != version_x or version.get(y) != version_y or y not in cross[x]:
            continue  # a group changed or was merged since this entry was pushed
        if -negative < floor or negative >= 0:
            break  # below level 0 groups with no scored pair between them (level 0) would have to merge first
        if apart and any(apart.get(v, set()).intersection(members[y]) for v in members[x]):
            refused += 1
            del cross[x][y], cross[y][x]  # never together, whatever joins them later
            continue
        entry = cross[x].pop(y)
        del cross[y][x]
        merges.append(Merge(-negative, float(entry[1]), int(entry[2]), int(entry[3])))
        keep, gone = (x, y) if len(members[x]) >= len(members[y]) else (y, x)
        for other, theirs in cross.pop(gone).items():
            del cross[other][gone]
            mine = cross[keep].get(other)
            if mine is None:
                cross[keep][other] = cross[other][keep] = theirs
            else:
                mine[0] += theirs[0]
                if theirs[1] > mine[1]:
                    mine[1:] = theirs[1:]
        members[keep] += members.pop(gone)
        del version[gone]
        version[keep] += 1
        for other in cross[keep]:
            first, second = min(keep, other), max(keep, other)
            if level(first, second) >= floor:
                heapq.heappush(heap, (-level(first, second), first, second, version[first], version[second]))
    return merges, refused


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# --------------------------------------------------------------------------- the run


def _canonical(a: np.ndarray, b: np.ndarray, lengths: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each pair as (query, database): the shorter video is the query, on a tie the lower id."""
    n_a = np.array([lengths[int(i)] for i in a], np.int64)
    n_b = np.array([lengths[int(i)] for i in b], np.int64)
    a_first = (n_a < n_b) | ((n_a == n_b) & (a < b))  # decision.a_is_query, for many pairs at once
    return np.where(a_first, a, b), np.where(a_first, b, a)


def _recall_pairs(engine, ids: np.ndarray, candidates: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(video, candidate) id arrays from the FAISS recall of every video (its recall windows
    against everyone's, as distinct videos), chunk by chunk, self-matches dropped."""
    for start in range(0, len(ids), RECALL_CHUNK):
        chunk = ids[start:start + RECALL_CHUNK].tolist()
        windows = [engine.layout.pool(segments) for segments in engine.store.segments_many(chunk)]
        answers = engine.global_index.search_videos_many(windows, candidates, exclude=chunk)
        yield (np.repeat(chunk, [len(found) for found, _ in answers]).astype(np.int64),
               np.concatenate([found for found, _ in answers]))


def pairs_to_score(engine, records: dict[int, VideoRecord], focus: set[int], done: set[int], candidates: int,
                   stored: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """The canonical pairs this run must look at: from recall, involving a focus video and a video no
    complete run has matched yet, without a stored score; and every pair of indexed videos an earlier
    run skipped (`stored`: the store's pairs, SKIPPED ones included), since what joined its videos
    then may be gone or below this run's threshold. Also returns how many such pairs there were."""
    ids = np.array(sorted(records), np.int64)
    fresh = np.array(sorted(set(records) - done), np.int64)
    focus_ids = np.array(sorted(focus), np.int64)
    if len(ids) < 2 or len(focus_ids) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), 0
    stored_q, stored_d, stored_scores = stored
    scored = np.isfinite(stored_scores)
    skipped = ~scored & np.isin(stored_q, ids) & np.isin(stored_d, ids)
    keys = [_pair_id(stored_q[skipped], stored_d[skipped])]
    if len(fresh):
        lengths = {i: r.n_segments for i, r in records.items()}
        for a, b in _recall_pairs(engine, ids, candidates):
            wanted = (np.isin(a, focus_ids) | np.isin(b, focus_ids)) & (np.isin(a, fresh) | np.isin(b, fresh))
            query, database = _canonical(a[wanted], b[wanted], lengths)
            keys.append(_pair_id(query, database))
    keys = np.unique(np.concatenate(keys))
    needed = len(keys)
    keys = keys[~np.isin(keys, _pair_id(stored_q[scored], stored_d[scored]))]
    return keys >> 32, keys & 0xFFFFFFFF, needed


def score_pairs(engine, store: DedupStore, queries: np.ndarray, databases: np.ndarray, progress: Progress = silent,
                joined: ConstrainedUnion | None = None, threshold: float = float("inf"),
                stored_skips: np.ndarray | None = None) -> tuple[int, int]:
    """AuSiL scores of the given (query, database) pairs, stored as they come (`progress`: the `dedup`
    stage, in pairs looked at, with the pairs skipped so far as a metric).

    Without `joined`, query by query, each against all its candidates in one batch. With `joined` (a
    union-find of the videos joined by pairs scoring >= `threshold`), pair by pair, the most similar
    global descriptors first: a pair whose two videos are joined already is stored as SKIPPED instead
    of scored, and a pair scoring >= `threshold` joins its videos, so the strong pairs, which come
    early, make most of the later ones redundant. `stored_skips`: pair ids already stored as SKIPPED
    (not written again). A skip is written after the scores that justify it, in the same or a later
    transaction. Commits every COMMIT_PAIRS pairs or COMMIT_SECONDS; an interruption keeps what was
    committed. Returns (pairs scored, pairs skipped).
    """
    known_skips = set() if stored_skips is None else set(stored_skips.tolist())
    pending: list[tuple[int, int, float]] = []
    scored, skipped, last_commit = 0, 0, time.monotonic()
    stage = Stage(progress, "dedup", len(queries))

    def record(items: list[tuple[int, int, float]], looked_at: int) -> None:
        nonlocal pending, last_commit
        pending += items
        stage.advance(count=looked_at, metrics={"pairs_skipped": skipped} if joined is not None else None)
        if len(pending) >= COMMIT_PAIRS or time.monotonic() - last_commit > COMMIT_SECONDS:
            store.put_scores(pending)
            pending, last_commit = [], time.monotonic()

    try:
        if joined is None:
            for query, others in _batches_by_query(queries, databases):
                scores = _score(engine, query, others)
                scored += len(others)
                record([(query, other, float(s)) for other, s in zip(others, scores)], len(others))
        else:
            # pairs joined before the run starts (a rerun's earlier skips, mostly) stay joined: skipped in one go
            open_pairs = np.array([joined.find(a) != joined.find(b) for a, b in zip(queries.tolist(), databases.tolist())],
                                  bool).reshape(-1)
            closed = _pair_id(queries[~open_pairs], databases[~open_pairs]).tolist()
            skipped = len(closed)
            record([(key >> 32, key & 0xFFFFFFFF, SKIPPED) for key in closed if key not in known_skips], skipped)
            queries, databases = queries[open_pairs], databases[open_pairs]
            cache: OrderedDict[int, torch.Tensor] = OrderedDict()
            for k in _most_similar_first(engine, queries, databases):
                query, other = int(queries[k]), int(databases[k])
                if joined.find(query) == joined.find(other):
                    skipped += 1
                    record([] if (query << 32 | other) in known_skips else [(query, other, SKIPPED)], 1)
                    continue
                score = float(_score(engine, query, [other], cache)[0])
                scored += 1
                if score >= threshold:
                    joined.union(query, other)
                record([(query, other, score)], 1)
    finally:
        store.put_scores(pending)  # also on Ctrl-C: what was scored is kept
    return scored, skipped


def _batches_by_query(queries: np.ndarray, databases: np.ndarray) -> Iterator[tuple[int, list[int]]]:
    """(query, its databases) for each distinct query."""
    order = np.argsort(queries, kind="stable")
    queries, databases = queries[order], databases[order]
    bounds = np.flatnonzero(np.diff(queries)) + 1
    for rows in np.split(np.arange(len(queries)), bounds) if len(queries) else []:
        yield int(queries[rows[0]]), databases[rows].tolist()


def _most_similar_first(engine, queries: np.ndarray, databases: np.ndarray) -> np.ndarray:
    """Positions of the pairs by decreasing cosine of their videos' global descriptors (read in chunks)."""
    cosines = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), RECALL_CHUNK):
        a = engine.store.globals(queries[start:start + RECALL_CHUNK].tolist())
        b = engine.store.globals(databases[start:start + RECALL_CHUNK].tolist())
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines[start:start + len(a)] = np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    return np.argsort(-cosines, kind="stable")


def _score(engine, query: int, others: list[int], cache: OrderedDict | None = None) -> np.ndarray:
    """Scores of `query` against `others` from their stored segments. `cache`, when given, keeps the
    most recently used videos' segments between calls, up to SEGMENT_CACHE_VALUES values: pairs taken
    by similarity rather than by query share videos with the pairs just before them."""
    cache = OrderedDict() if cache is None else cache
    wanted = [query, *others]
    missing = [i for i in dict.fromkeys(wanted) if i not in cache]
    with torch.inference_mode():
        for i, matrix in zip(missing, engine.store.segments_many(missing)):
            cache[i] = torch.from_numpy(matrix).to(engine.device)
        scores = engine.model.head.score_many(cache[query], [cache[i] for i in others]).float().cpu().numpy()
    for i in wanted:
        cache.move_to_end(i)
    held = sum(matrix.numel() for matrix in cache.values())
    while len(cache) > 1 and held > SEGMENT_CACHE_VALUES:
        held -= cache.popitem(last=False)[1].numel()
    return scores


def resolve_decision_path(engine, path: str | Path) -> tuple[str, str]:
    """(absolute path, content fingerprint) of a file named in a decision: its index record, else the file."""
    absolute = str(Path(path).absolute())
    record = engine.store.record_for_path(absolute)
    if record is not None:
        return absolute, record.fingerprint
    if Path(absolute).is_file():
        return absolute, fingerprint(Path(absolute))
    raise InputError(f"{path}: not in the index and no such file")


def record_not_duplicates(engine, store: DedupStore, pairs: Iterable[tuple[str | Path, str | Path]]) -> int:
    """Remember that each pair of files is not a duplicate; later runs keep them in separate groups."""
    decisions = []
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for a, b in pairs:
        (path_a, fp_a), (path_b, fp_b) = resolve_decision_path(engine, a), resolve_decision_path(engine, b)
        if fp_a == fp_b:
            raise InputError(f"{a} and {b} have the same content: they cannot be kept apart")
        decisions.append((fp_a, fp_b, {"paths": [path_a, path_b], "decided": stamp}))
    return store.add_decisions(decisions)


def read_decisions_file(path: Path) -> list[tuple[str, str]]:
    """Pairs from a JSON file: `[[A, B], ...]` or `{"not_duplicates": [[A, B], ...]}`; relative paths
    are taken relative to the file's folder."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read decisions ({error})") from None
    items = payload.get("not_duplicates") if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise InputError(f'{path}: expected [["A", "B"], ...] or {{"not_duplicates": [["A", "B"], ...]}}')
    base = Path(path).parent
    return [(str(base / a), str(base / b)) for a, b in items]


def _joined_by(stored: tuple[np.ndarray, np.ndarray, np.ndarray], records: dict[int, VideoRecord],
               threshold: float) -> ConstrainedUnion:
    """A union-find of the indexed videos joined by stored pairs scoring at least `threshold`."""
    joined = ConstrainedUnion({})
    queries, databases, scores = stored
    strong = scores >= threshold  # False for SKIPPED (NaN)
    for a, b in zip(queries[strong].tolist(), databases[strong].tolist()):
        if a in records and b in records:
            joined.union(a, b)
    return joined


def _apart_ids(decisions: dict[bytes, dict], records: dict[int, VideoRecord]) -> dict[int, set[int]]:
    """For each video, the videos a decision keeps it apart from."""
    by_fingerprint: dict[str, list[int]] = {}
    for video_id, record in records.items():
        by_fingerprint.setdefault(record.fingerprint, []).append(video_id)
    apart: dict[int, set[int]] = {}
    for key in decisions:
        fp_a, _, fp_b = key.decode().partition("|")
        for a in by_fingerprint.get(fp_a, []):
            for b in by_fingerprint.get(fp_b, []):
                apart.setdefault(a, set()).add(b)
                apart.setdefault(b, set()).add(a)
    return apart


def find_duplicate_groups(
    engine,
    threshold: float | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    since: float | None = None,
    not_duplicates: Iterable[tuple[str | Path, str | Path]] = (),
    progress: Progress = silent,
    all_pairs: bool = False,
    linkage: str = "average",
) -> DedupResult:
    """Every group of videos sharing audio in `engine`'s index, biggest and most confident first.

    `linkage`: "average" (default): groups whose pairs score `threshold` on average (`average_linkage`;
    every recalled pair is scored); "single": connected components of the pairs scoring >= `threshold`
    (faster: pairs already joined are skipped, but one wrong pair merges two groups).
    `threshold`: default `decision.group_threshold_for(engine.model)` for average linkage,
    `decision.threshold_for(engine.model)` (the match threshold) for single linkage.
    `candidates`: recall depth per video. `since` (Unix time): only pairs involving videos indexed
    since then are considered, and only groups holding such a video are returned.
    `not_duplicates`: pairs of files to record as not duplicates first (kept in the index).
    `progress` hears of the `dedup` stage: the pairs looked at (scored or skipped), of those that need
    a score. `all_pairs`: also score the pairs whose two videos are already joined through other pairs
    above the threshold; by default they are skipped (the groups' members are the same; a group's
    links and shared spans come from the pairs that were scored). While "not duplicates" decisions
    concern indexed videos every pair is scored, since a decision can cut the chain that joined two.
    """
    started = time.perf_counter()
    if linkage not in LINKAGES:
        raise InputError(f"linkage {linkage!r}: expected one of {', '.join(LINKAGES)}")
    threshold = (group_threshold_for if linkage == "average" else threshold_for)(engine.model, threshold)
    records = {r.id: r for r in engine.store.iter_records()}
    stats = DedupStats(videos=len(records))
    with DedupStore(engine.index_dir, engine.model.sha256) as store:
        not_duplicates = list(not_duplicates)
        if not_duplicates:
            record_not_duplicates(engine, store, not_duplicates)
        focus = {i for i, r in records.items() if since is None or indexed_at(r) >= since}
        stats.focus_videos = len(focus)
        done = store.done_ids(candidates)
        gone = store.done_ids() - set(records)
        stored = store.pairs()
        queries, databases, stats.candidate_pairs = pairs_to_score(engine, records, focus, done & set(records),
                                                                   candidates, stored)
        apart = _apart_ids(store.decisions(), records)
        joined = None if all_pairs or apart or linkage == "average" else _joined_by(stored, records, threshold)
        stats.pairs_scored, stats.pairs_skipped = score_pairs(
            engine, store, queries, databases, progress, joined, threshold,
            _pair_id(stored[0], stored[1])[~np.isfinite(stored[2])])
        if since is None:
            store.mark_done(set(records) - done, candidates)
        pair_q, pair_d, pair_scores = store.pairs()
        gone |= (set(pair_q.tolist()) | set(pair_d.tolist())) - set(records)
        if gone:
            store.forget(gone)
    live = np.isin(pair_q, list(records)) & np.isin(pair_d, list(records)) & np.isfinite(pair_scores)
    stats.pairs_stored = int(live.sum())
    if linkage == "average":
        merges, stats.kept_apart = average_linkage(
            zip(pair_q[live].tolist(), pair_d[live].tolist(), pair_scores[live].tolist()), threshold, apart)
        union, joining = ConstrainedUnion({}), [(m.score, m.a, m.b) for m in merges]
        for merge in merges:
            union.union(merge.a, merge.b)
    else:
        strong = live & (pair_scores >= threshold)
        edges = sorted(zip(pair_scores[strong].tolist(), pair_q[strong].tolist(), pair_d[strong].tolist()), reverse=True)
        union = ConstrainedUnion(apart)
        joining = []
        for score, a, b in edges:
            if union.union(a, b):
                joining.append((score, a, b))
            elif union.find(a) != union.find(b):
                stats.kept_apart += 1
    groups = [g for g in union.groups() if since is None or g & focus]
    result = DedupResult(groups=_describe(engine, records, groups, joining, union), threshold=threshold,
                         linkage=linkage, candidates=candidates, since=since, model=engine.model.identity, index=str(engine.index_dir.absolute()),
                         stats=stats)
    stats.seconds = round(time.perf_counter() - started, 3)
    return result


def _describe(engine, records: dict[int, VideoRecord], groups: list[set[int]], joining: list[tuple[float, int, int]],
              union: ConstrainedUnion) -> list[Group]:
    """Members, links and shared spans of each group (from the pairs that joined it), the biggest and
    most confident first."""
    device, head, frontend = engine.device, engine.model.head, engine.model.frontend
    by_root: dict[int, list[tuple[float, int, int]]] = {}
    for score, a, b in joining:
        by_root.setdefault(union.find(a), []).append((score, a, b))
    described = []
    for members in groups:
        links: list[Link] = []
        spans: dict[int, list] = {i: [] for i in members}
        for score, a, b in by_root[union.find(next(iter(members)))]:
            seg_a, seg_b = (torch.from_numpy(m).to(device) for m in engine.store.segments_many([a, b]))
            span_a, span_b = shared_spans(head, seg_a, seg_b, records[a].duration_s, records[b].duration_s, frontend)
            spans[a].append(span_a)
            spans[b].append(span_b)
            links.append(Link(records[a].path, records[b].path, round(score, 4), span_a, span_b))
        scores = [link.score for link in links]
        ordered = sorted(members, key=lambda i: records[i].path)
        described.append(Group(
            number=0, score=max(scores), mean_score=round(float(np.mean(scores)), 4),
            members=[Member(i, records[i].path, round(records[i].duration_s, 3), records[i].size, _merge(spans[i]))
                     for i in ordered],
            links=links,
        ))
    described.sort(key=lambda g: (-len(g.members), -g.mean_score, g.members[0].path))
    for number, group in enumerate(described, 1):
        group.number = number
    return described


__all__ = ["DEDUP_DIR", "DEFAULT_CANDIDATES", "LINKAGES", "ConstrainedUnion", "DedupResult", "DedupStats", "DedupStore",
           "Group", "Link", "Member", "Merge", "average_linkage", "find_duplicate_groups", "parse_since",
           "read_decisions_file", "record_not_duplicates"]
