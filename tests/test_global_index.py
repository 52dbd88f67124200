"""GlobalIndex: exactness of the flat index, the type policy, IVF recall, removal, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ausil_search.errors import IndexStoreError
from ausil_search.stores import GlobalIndex, SegmentStore, VideoFile
from ausil_search.stores.global_index import FLAT_RETURN_SIZE, IVF_MIN_SIZE, nlist_for
from ausil_search.stores.windows import WindowLayout, video_of, window_ids


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


class ClusteredDescriptors:
    """Descriptors shaped like real ones rather than uniform noise: a few hundred clusters in a
    64-d latent space seen through a decaying spectrum in `dim` dims, 5% off-cluster points, and
    isotropic noise on top; unit length."""

    def __init__(self, seed: int, dim: int = 2528, n_clusters: int = 300, latent_dim: int = 64) -> None:
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.standard_normal((dim, latent_dim)))
        self.embedding = (basis / np.sqrt(1 + np.arange(latent_dim))).T.astype(np.float32)
        self.centres = self.rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
        self.spreads = self.rng.uniform(0.3, 0.8, n_clusters).astype(np.float32)

    def sample(self, n: int) -> np.ndarray:
        labels = self.rng.integers(0, len(self.centres), n)
        latent = self.centres[labels] + self.spreads[labels, None] * self.rng.standard_normal(
            (n, self.centres.shape[1]), dtype=np.float32
        )
        off_cluster = self.rng.random(n) < 0.05
        latent[off_cluster] = 1.5 * self.rng.standard_normal(
            (off_cluster.sum(), latent.shape[1]), dtype=np.float32
        )
        return self.perturb(unit_rows(latent @ self.embedding), 0.3)

    def perturb(self, vectors: np.ndarray, noise: float) -> np.ndarray:
        dim = vectors.shape[1]
        return unit_rows(vectors + noise * self.rng.standard_normal(vectors.shape, dtype=np.float32) / np.sqrt(dim))


def brute_force(database: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    scores = unit_rows(queries) @ unit_rows(database).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def test_flat_index_equals_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((700, 96)).astype(np.float32) * rng.uniform(0.1, 5, (700, 1))
    ids = rng.choice(2**40, 700, replace=False).astype(np.int64)
    queries = rng.standard_normal((25, 96)).astype(np.float32)
    index = GlobalIndex.build(ids, database)
    description = index.describe()
    assert {k: description[k] for k in ("type", "dim", "ntotal", "nlist", "nprobe")} == {
        "type": "flat", "dim": 96, "ntotal": 700, "nlist": None, "nprobe": None
    }
    scores, found = index.search(queries, 20)
    want_scores, want_ids = brute_force(database, ids, queries, 20)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)

    small = GlobalIndex.build(ids[:3], database[:3])
    scores, found = small.search(queries[:2], 5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert set(found[0, :3]) == set(ids[:3])
    empty = GlobalIndex.build(np.empty(0, np.int64), np.empty((0, 96), np.float32))
    assert (empty.search(queries[:1], 4)[1] == -1).all()


def test_nlist_policy() -> None:
    # The power of two nearest to 4·√n, with at least 39 training points per list.
    assert [nlist_for(n) for n in (20_000, 50_000, 100_000, 10**6, 10**8, 10**10)] == [
        512, 1024, 1024, 4096, 32_768, 65_536
    ]
    for n in range(IVF_MIN_SIZE, 10**7, 7919):
        nlist = nlist_for(n)
        assert 39 * nlist <= n and 4 * np.sqrt(n) / 2 <= nlist <= 4 * np.sqrt(n) * np.sqrt(2)


def test_type_switches_at_the_threshold() -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng.standard_normal((4 * IVF_MIN_SIZE, 16)).astype(np.float32))
    ids = np.arange(len(vectors), dtype=np.int64)

    below = GlobalIndex.build(ids[: IVF_MIN_SIZE - 1], vectors[: IVF_MIN_SIZE - 1])
    assert below.nlist is None and not below.needs_rebuild()
    below.add(ids[IVF_MIN_SIZE - 1 : IVF_MIN_SIZE], vectors[IVF_MIN_SIZE - 1 : IVF_MIN_SIZE])
    assert below.needs_rebuild()

    at = GlobalIndex.build(ids[:IVF_MIN_SIZE], vectors[:IVF_MIN_SIZE])
    assert at.describe()["type"] == "ivf" and at.nlist == 512 and 1 <= at.nprobe <= 512
    assert not at.needs_rebuild()
    at.add(ids[IVF_MIN_SIZE:], vectors[IVF_MIN_SIZE:])  # 4x the training size: more lists are due
    assert at.needs_rebuild()
    at.remove(ids[FLAT_RETURN_SIZE + 1 :])
    assert not at.needs_rebuild()  # hysteresis: between the two thresholds IVF stays
    at.remove(ids[:2])
    assert at.needs_rebuild()


def test_ivf_recall_at_default_nprobe() -> None:
    """IVF top-100 contains the exact top-10 for >= 99% of queries on 20,000 2528-d descriptors."""
    data = ClusteredDescriptors(seed=7)
    database = data.sample(20_000)
    ids = np.arange(10, 10 + len(database), dtype=np.int64) * 3
    perturbed = data.perturb(database[data.rng.choice(len(database), 200, replace=False)], 0.3)
    fresh = data.sample(200)
    queries = np.vstack([perturbed, fresh])

    index = GlobalIndex.build(ids, database)
    assert index.nlist == 512
    assert index.nprobe <= index.nlist // 4  # a real IVF search, not an exhaustive one
    _, exact = brute_force(database, ids, queries, 10)
    _, found = index.search(queries, 100)
    contained = np.array([np.isin(want, got).all() for want, got in zip(exact, found)])
    assert contained.mean() >= 0.99, f"recall {contained.mean():.3f} at nprobe {index.nprobe}"
    assert contained[:200].mean() >= 0.98 and contained[200:].mean() >= 0.98

    _, found_one_list = index.search(queries, 100, nprobe=1)
    one_list = np.mean([np.isin(want, got).all() for want, got in zip(exact, found_one_list)])
    assert one_list < 0.9  # the data is hard enough that nprobe matters
    scores, found_all = index.search(queries[:20], 10, nprobe=index.nlist)  # every list: exact
    want_scores, want_ids = brute_force(database, ids, queries[:20], 10)
    np.testing.assert_array_equal(found_all, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.slow
def test_ivf_recall_at_100k() -> None:
    data = ClusteredDescriptors(seed=11)
    database = data.sample(100_000)
    ids = np.arange(len(database), dtype=np.int64)
    queries = np.vstack([data.perturb(database[:200], 0.3), data.sample(200)])
    index = GlobalIndex.build(ids, database)
    assert index.nlist == 1024
    _, exact = brute_force(database, ids, queries, 10)
    _, found = index.search(queries, 100)
    assert np.mean([np.isin(want, got).all() for want, got in zip(exact, found)]) >= 0.99


@pytest.mark.parametrize("n", [500, IVF_MIN_SIZE])
def test_remove(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = unit_rows(rng.standard_normal((n, 32)).astype(np.float32))
    ids = np.arange(n, dtype=np.int64) + 1000
    index = GlobalIndex.build(ids, vectors)
    gone = ids[::7]
    assert index.remove(np.concatenate([gone, [5, 6]])) == len(gone)
    assert len(index) == n - len(gone)
    assert set(index.ids()) == set(ids) - set(gone)
    _, found = index.search(vectors[::7][:50], 10, nprobe=index.nlist)  # the removed vectors themselves
    assert not np.isin(found, gone).any()
    index.add(gone[:3], vectors[::7][:3])
    _, found = index.search(vectors[::7][:3], 1, nprobe=index.nlist)
    assert found[:, 0].tolist() == gone[:3].tolist()


@pytest.mark.parametrize("n", [300, IVF_MIN_SIZE])
def test_save_load_round_trip(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng.standard_normal((n, 24)).astype(np.float32))
    ids = rng.permutation(n).astype(np.int64) * 11
    index = GlobalIndex.build(ids, vectors)
    path = tmp_path / "global.faiss"
    index.save(path)
    loaded = GlobalIndex.load(path)
    assert loaded.describe() == index.describe()
    queries = rng.standard_normal((30, 24)).astype(np.float32)
    for nprobe in (None, 3):
        before, after = index.search(queries, 15, nprobe=nprobe), loaded.search(queries, 15, nprobe=nprobe)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_array_equal(before[0], after[0])
    assert not list(tmp_path.glob(".global.faiss.*"))


def test_interrupted_save_does_not_break_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = unit_rows(rng.standard_normal((50, 8)).astype(np.float32))
    index = GlobalIndex.build(np.arange(50), vectors)
    path = tmp_path / "global.faiss"
    index.save(path)
    partial = tmp_path / ".global.faiss.killed.part"
    partial.write_bytes(path.read_bytes()[:100])  # what a save killed half-way leaves behind
    loaded = GlobalIndex.load(path)
    np.testing.assert_array_equal(loaded.search(vectors, 3)[1], index.search(vectors, 3)[1])
    loaded.remove(np.arange(10))
    loaded.save(path)  # a later save goes through the stale temp file
    assert not partial.exists() and len(GlobalIndex.load(path)) == 40


def test_unreadable_file_is_an_index_store_error(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="no global index file"):
        GlobalIndex.load(tmp_path / "missing.faiss")
    path = tmp_path / "global.faiss"
    GlobalIndex.build(np.arange(20), np.eye(20, dtype=np.float32)).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IndexStoreError, match="cannot read global index"):
        GlobalIndex.load(path)


LAYOUT = WindowLayout(size=10, hop=5)


def _store_with_segments(path: Path, paths: list[str], rng: np.random.Generator) -> SegmentStore:
    """Videos of 1 to 40 random 32-d segments: one window each up to 10 segments, several beyond."""
    store = SegmentStore(path, dtype="float32")
    store.add_videos(
        [
            (
                VideoFile(path=p, size=1, mtime_ns=1, fingerprint=p, duration_s=1.0),
                rng.standard_normal((int(rng.integers(1, 41)), 32)).astype(np.float32),
                rng.standard_normal(32).astype(np.float32),
            )
            for p in paths
        ]
    )
    return store


def _expected_windows(store: SegmentStore) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = [], []
    for video_id, segments in zip(store.ids(), store.segments_many(store.ids().tolist())):
        pooled = LAYOUT.pool(segments)
        ids.append(window_ids(video_id, len(pooled)))
        vectors.append(pooled)
    return np.concatenate(ids), np.concatenate(vectors)


def test_load_or_rebuild_follows_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    index_path = tmp_path / "windows.faiss"
    with _store_with_segments(tmp_path / "store", [f"/v/{i}" for i in range(60)], rng) as store:
        index, changed = GlobalIndex.load_or_rebuild(index_path, store, LAYOUT)  # no file yet
        ids, vectors = _expected_windows(store)
        assert changed and np.array_equal(np.sort(index.ids()), np.sort(ids)) and len(ids) > 60
        _, found = index.search(vectors, 1)
        np.testing.assert_array_equal(found[:, 0], ids)  # each window holds its own pooled segments
        index.save(index_path)
        assert GlobalIndex.load_or_rebuild(index_path, store, LAYOUT)[1] is False

        # The store moves on without the FAISS file (a crash before it was saved): every window of
        # a removed or replaced video goes, the new content's windows come.
        store.remove_paths([f"/v/{i}" for i in range(5)])
        new_segments = rng.standard_normal((33, 32)).astype(np.float32)
        replaced = store.add_videos(
            [(VideoFile(path="/v/7", size=2, mtime_ns=2, fingerprint="new", duration_s=1.0), new_segments,
              np.ones(32, np.float32))]
        )
        index, changed = GlobalIndex.load_or_rebuild(index_path, store, LAYOUT)
        ids, vectors = _expected_windows(store)
        assert changed and np.array_equal(np.sort(index.ids()), np.sort(ids))
        np.testing.assert_array_equal(index.video_ids(), store.ids())
        videos, _ = index.search_videos(LAYOUT.pool(new_segments[8:16]), 1)
        assert videos.tolist() == replaced.ids

        index_path.write_bytes(b"not a faiss file")
        index, changed = GlobalIndex.load_or_rebuild(index_path, store, LAYOUT)
        assert changed and np.array_equal(np.sort(index.ids()), np.sort(ids))


def test_search_videos_ranks_videos_by_their_best_window() -> None:
    """Exact against brute force over windows, with enough distinct videos even when one video's
    windows fill the first window ranks; `exclude` leaves a video out."""
    rng = np.random.default_rng(11)
    counts = rng.integers(1, 30, 80)
    counts[3] = 200  # a long video whose windows crowd the top ranks
    vectors = rng.standard_normal((int(counts.sum()), 24)).astype(np.float32)
    owners = np.repeat(np.arange(1, 81), counts)
    ids = np.concatenate([window_ids(v, c) for v, c in zip(range(1, 81), counts)])
    index = GlobalIndex.build(ids, vectors)
    query = vectors[owners == 4][:3] + 0.01
    scores = unit_rows(query) @ unit_rows(vectors).T
    best = {v: scores[:, owners == v].max() for v in range(1, 81)}
    want = sorted(best, key=lambda v: -best[v])
    videos, found = index.search_videos(query, 10)
    assert videos.tolist() == want[:10]
    np.testing.assert_allclose(found, [best[v] for v in want[:10]], rtol=1e-5)
    (videos, _), = index.search_videos_many([query], 10, exclude=[4])
    assert videos.tolist() == want[1:11]


def test_window_layout_covers_every_segment() -> None:
    layout = WindowLayout(size=30, hop=15)
    assert layout.starts(1).tolist() == [0] and layout.starts(30).tolist() == [0]
    assert layout.starts(31).tolist() == [0, 1]
    assert layout.starts(100).tolist() == [0, 15, 30, 45, 60, 70]  # the last window ends at the end
    segments = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    pooled = layout.pool(segments)
    expected = segments[70:100].mean(0)
    np.testing.assert_allclose(pooled[-1], expected / np.linalg.norm(expected), rtol=1e-5)
    assert np.array_equal(video_of(window_ids(12345, 3)), [12345] * 3) and video_of(np.array([-1]))[0] == -1
