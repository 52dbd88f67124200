"""SegmentStore: round trips, id policy, map growth, writer lock, crash safety, HDF5 exchange."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ausil_search.errors import IndexStoreError
from ausil_search.stores import SegmentStore, VideoFile

REPO = Path(__file__).resolve().parents[1]
FLOAT16_TOLERANCE = 2.0**-11  # relative rounding error of float16
FLOAT16_SUBNORMAL_ERROR = 2.0**-25  # absolute rounding error below float16's normal range
INT8_ERROR = 0.5 / 127 * 1.0001  # int8 with a max-abs scale per row: half a step of a row whose values are in [0, 1)


def make_video(
    path: str, n_segments: int, seed: int, segment_dim: int = 2528, global_dim: int = 2528
) -> tuple[VideoFile, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    video = VideoFile(
        path=path,
        size=int(rng.integers(1, 10**9)),
        mtime_ns=int(rng.integers(1, 2**62)),
        fingerprint=f"{seed:032x}",
        duration_s=n_segments * 1.01 + 0.37,
        extra={"codec": "aac", "seed": seed},
    )
    segments = rng.random((n_segments, segment_dim), dtype=np.float32)
    global_vector = rng.standard_normal(global_dim).astype(np.float32)
    return video, segments, global_vector


def run_python(code: str, **kwargs) -> subprocess.Popen:
    """Start a child interpreter running `code` with the package importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_segments_and_metadata_round_trip(tmp_path: Path) -> None:
    items = [make_video(f"/videos/clip{i}.mp4", n, seed=i) for i, n in enumerate([1, 7, 33])]
    with SegmentStore(tmp_path / "store") as store:
        result = store.add_videos(items)
        assert result.replaced == []
        assert len(set(result.ids)) == 3
        for video_id, (video, segments, global_vector) in zip(result.ids, items):
            record = store.get(video_id)
            assert record.id == video_id
            assert record.n_segments == len(segments)
            for name in ("path", "size", "mtime_ns", "fingerprint", "duration_s", "extra"):
                assert getattr(record, name) == getattr(video, name)
            stored = store.segments(video_id)
            assert stored.dtype == np.float32 and stored.shape == segments.shape
            np.testing.assert_allclose(stored, segments, atol=INT8_ERROR)
            assert not np.array_equal(stored, segments)  # it really is stored as int8 codes
            assert store.id_for_path(video.path) == video_id
            assert store.record_for_path(video.path) == record
        for stored, (_, segments, _) in zip(store.segments_many(result.ids[::-1]), items[::-1]):
            np.testing.assert_allclose(stored, segments, atol=INT8_ERROR)
        ids, vectors = store.all_globals()
        np.testing.assert_array_equal(ids, sorted(result.ids))
        np.testing.assert_array_equal(vectors, np.stack([g for _, _, g in items]))
        assert store.id_for_path("/videos/unknown.mp4") is None
        assert store.record_for_path("/videos/unknown.mp4") is None
        with pytest.raises(KeyError):
            store.get(max(result.ids) + 1)
        stats = store.stats()
        assert stats.videos == 3
        assert stats.total_segments == 1 + 7 + 33
        assert stats.total_duration_s == pytest.approx(sum(v.duration_s for v, _, _ in items))
        assert stats.disk_bytes > 41 * 2528


def test_float32_option_is_exact(tmp_path: Path) -> None:
    video, segments, _ = item = make_video("/a.mkv", 5, seed=1)
    with SegmentStore(tmp_path / "store", dtype="float32") as store:
        [video_id] = store.add_videos([item]).ids
        np.testing.assert_array_equal(store.segments(video_id), segments)
    with pytest.raises(IndexStoreError, match="float32"):
        SegmentStore(tmp_path / "store", dtype="float16")
    with SegmentStore(tmp_path / "store", readonly=True) as store:
        assert store.dtype == np.float32


def test_float16_option_refuses_overflow_and_int8_keeps_each_rows_scale(tmp_path: Path) -> None:
    video, segments, global_vector = make_video("/a.mkv", 3, seed=2, segment_dim=16, global_dim=8)
    with SegmentStore(tmp_path / "half", dtype="float16") as store:
        with pytest.raises(ValueError, match="overflow"):
            store.add_videos([(video, segments * 1e6, global_vector)])
        [video_id] = store.add_videos([(video, segments, global_vector)]).ids
        np.testing.assert_allclose(store.segments(video_id), segments, rtol=FLOAT16_TOLERANCE, atol=FLOAT16_SUBNORMAL_ERROR)
    rows = segments * np.array([[1e-4], [1.0], [1e3]], np.float32)  # very different magnitudes per row
    rows[0] = 0.0  # an all-zero row has no scale to take
    rows[2, 5] = -2e3
    with SegmentStore(tmp_path / "codes") as store:
        assert store.dtype == np.int8
        [video_id] = store.add_videos([(video, rows, global_vector)]).ids
        stored = store.segments(video_id)
    np.testing.assert_array_equal(stored[0], 0.0)
    for row, want in zip(stored[1:], rows[1:]):
        step = np.abs(want).max() / 127
        assert np.abs(row - want).max() <= step / 2 * 1.0001
        assert row[np.argmax(np.abs(want))] == pytest.approx(want[np.argmax(np.abs(want))], rel=1e-6)


def test_ids_are_stable_across_reopen_and_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    items = [make_video(f"/v/{i}.webm", 3, seed=i, segment_dim=16, global_dim=8) for i in range(4)]
    with SegmentStore(path) as store:
        ids = store.add_videos(items).ids
    with SegmentStore(path, readonly=True) as store:
        assert [store.id_for_path(v.path) for v, _, _ in items] == ids
        np.testing.assert_allclose(store.segments(ids[2]), items[2][1], atol=INT8_ERROR)
    with SegmentStore(path) as store:
        assert store.remove([ids[-1]]) == [ids[-1]]
    with SegmentStore(path) as store:  # the highest id was removed, and a new process still skips it
        [new_id] = store.add_videos([make_video("/v/new.webm", 2, 9, 16, 8)]).ids
        assert new_id > max(ids)
        assert store.ids().tolist() == ids[:-1] + [new_id]


def test_re_adding_a_path_replaces_it_under_a_new_id(tmp_path: Path) -> None:
    with SegmentStore(tmp_path / "store") as store:
        first = store.add_videos([make_video("/v/a.mp4", 4, 1, 16, 8), make_video("/v/b.mp4", 6, 2, 16, 8)])
        changed = make_video("/v/a.mp4", 9, 3, 16, 8)
        result = store.add_videos([changed])
        assert result.replaced == [first.ids[0]]
        assert result.ids[0] not in first.ids
        assert len(store) == 2
        assert store.id_for_path("/v/a.mp4") == result.ids[0]
        with pytest.raises(KeyError):
            store.get(first.ids[0])
        with pytest.raises(KeyError):
            store.segments(first.ids[0])
        assert store.get(result.ids[0]).fingerprint == changed[0].fingerprint
        np.testing.assert_allclose(store.segments(result.ids[0]), changed[1], atol=INT8_ERROR)
        stats = store.stats()
        assert stats.total_segments == 6 + 9
        assert stats.total_duration_s == pytest.approx(6 * 1.01 + 0.37 + 9 * 1.01 + 0.37)
        with pytest.raises(ValueError, match="same path"):
            store.add_videos([changed, changed])


def test_removals_keep_totals_exact(tmp_path: Path) -> None:
    items = [make_video(f"/v/{i}.avi", 1 + i, seed=i, segment_dim=16, global_dim=8) for i in range(6)]
    with SegmentStore(tmp_path / "store") as store:
        ids = store.add_videos(items).ids
        assert store.remove([ids[0], ids[0], 10**9]) == [ids[0]]
        assert sorted(store.remove_paths(["/v/3.avi", "/v/5.avi", "/v/missing.avi"])) == [ids[3], ids[5]]
        remaining = [1, 2, 4]
        assert store.ids().tolist() == [ids[i] for i in remaining]
        assert [r.path for r in store.iter_records()] == [items[i][0].path for i in remaining]
        assert store.id_for_path("/v/3.avi") is None
        stats = store.stats()
        assert stats.videos == 3
        assert stats.total_segments == sum(1 + i for i in remaining)
        assert stats.total_duration_s == pytest.approx(sum(items[i][0].duration_s for i in remaining))
        store.remove(store.ids())
        stats = store.stats()
        assert (stats.videos, stats.total_segments, stats.total_duration_s) == (0, 0, 0.0)


def test_iteration_crosses_chunks_and_allows_writes(tmp_path: Path) -> None:
    count = 2600  # more than two read chunks
    with SegmentStore(tmp_path / "store") as store:
        store.add_videos([make_video(f"/v/{i:05d}", 1, i, 4, 4) for i in range(count)])
        seen = []
        for record in store.iter_records():
            seen.append(record.path)
            if record.id % 100 == 0:  # a write transaction between two read chunks
                store.remove([record.id])
        assert seen == [f"/v/{i:05d}" for i in range(count)]
        assert len(store) == count - count // 100


def test_long_and_undecodable_paths(tmp_path: Path) -> None:
    long_path = "/" + "/".join(["directory-with-a-long-name-ü"] * 40) + "/clip.mp4"
    odd_path = "/v/latin1-\udce9t\udce9.mp4"  # bytes that are not UTF-8, as os.fsdecode gives them
    assert len(os.fsencode(long_path)) > 1000
    with SegmentStore(tmp_path / "store") as store:
        ids = store.add_videos([make_video(long_path, 2, 1, 8, 8), make_video(odd_path, 2, 2, 8, 8)]).ids
        assert [store.id_for_path(long_path), store.id_for_path(odd_path)] == ids
        assert store.get(ids[1]).path == odd_path


def test_invalid_input_is_rejected_before_writing(tmp_path: Path) -> None:
    with SegmentStore(tmp_path / "store") as store:
        store.add_videos([make_video("/v/ok", 2, 1, 16, 8)])
        with pytest.raises(ValueError, match="shape"):
            store.add_videos([make_video("/v/wide", 2, 2, 17, 8)])
        with pytest.raises(ValueError, match="global"):
            store.add_videos([make_video("/v/g", 2, 3, 16, 9)])
        video, segments, global_vector = make_video("/v/big", 2, 4, 16, 8)
        segments[1, 3] = np.nan
        with pytest.raises(ValueError, match="finite"):
            store.add_videos([(video, segments, global_vector)])
        assert len(store) == 1
    with pytest.raises(IndexStoreError, match="no segment store"):
        SegmentStore(tmp_path / "missing", readonly=True)
    with SegmentStore(tmp_path / "store", readonly=True) as store:
        with pytest.raises(IndexStoreError, match="read-only"):
            store.add_videos([make_video("/v/new", 2, 5, 16, 8)])


def test_map_grows_automatically(tmp_path: Path) -> None:
    initial = 1 << 16
    items = [make_video(f"/v/{i}", 100, seed=i, segment_dim=2528, global_dim=64) for i in range(12)]
    with SegmentStore(tmp_path / "store", map_size=initial) as store:
        for start in range(0, 12, 4):
            store.add_videos(items[start : start + 4])
        stats = store.stats()
        assert stats.map_size_bytes > 12 * 100 * (2528 + 4) > initial  # int8 codes and a float32 scale per row
    with SegmentStore(tmp_path / "store", readonly=True) as store:
        assert len(store) == 12
        for record, (_, segments, _) in zip(store.iter_records(), items):
            np.testing.assert_allclose(store.segments(record.id), segments, atol=INT8_ERROR)


def test_reader_follows_a_map_grown_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with SegmentStore(path, map_size=1 << 16) as store:
        store.add_videos([make_video("/v/first", 1, 0, 2528, 8)])
    with SegmentStore(path, readonly=True, map_size=1 << 16) as reader:  # maps no more than it sees
        assert len(reader) == 1
        writer = run_python(
            f"""
            import numpy as np
            from ausil_search.stores import SegmentStore, VideoFile
            with SegmentStore({str(path)!r}) as store:
                for i in range(1, 9):
                    video = VideoFile(path=f"/v/{{i}}", size=1, mtime_ns=1, fingerprint="x", duration_s=1.0)
                    store.add_videos([(video, np.full((300, 2528), i / 10, np.float32), np.ones(8))])
                print(store.stats().map_size_bytes)
            """
        )
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert int(out) > 8 * 300 * 2528 * 2
        assert len(reader) == 9
        assert np.allclose(reader.segments(reader.id_for_path("/v/8")), 0.8, atol=INT8_ERROR)


def test_concurrent_readers_survive_the_writer_growing_the_map(tmp_path: Path) -> None:
    """Threads of one process reading while another process doubles the map again and again: adopting
    the new size must wait for the other threads' transactions (LMDB's rule for set_mapsize). Without
    that the readers' process dies of a segmentation fault, so it runs apart from pytest."""
    path = tmp_path / "store"
    with SegmentStore(path, map_size=1 << 16) as store:
        store.add_videos([make_video("/v/first", 50, 0, 2528, 8)])
    readers = run_python(
        f"""
        import json, subprocess, sys, threading
        import numpy as np
        from ausil_search.stores import SegmentStore
        with SegmentStore({str(path)!r}, readonly=True, map_size=1 << 16) as reader:
            expected = reader.segments(reader.id_for_path("/v/first"))
            writer = subprocess.Popen([sys.executable, "-c", sys.stdin.read()])
            errors, reads = [], [0] * 4
            def read(slot):
                try:
                    while writer.poll() is None:
                        for matrix in reader.segments_many([reader.id_for_path("/v/first")] * 8):
                            assert np.array_equal(matrix, expected)
                        len(reader)
                        reads[slot] += 1
                except BaseException as error:
                    errors.append(repr(error))
            threads = [threading.Thread(target=read, args=(slot,)) for slot in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(json.dumps({{"writer": writer.returncode, "fewest_reads": min(reads), "videos": len(reader),
                              "errors": errors[:3], "last": float(reader.segments(reader.id_for_path("/v/40"))[0, 0])}}))
        """,
        stdin=subprocess.PIPE,
    )
    out, err = readers.communicate(
        textwrap.dedent(
            f"""
            import numpy as np
            from ausil_search.stores import SegmentStore, VideoFile
            with SegmentStore({str(path)!r}, map_size=1 << 16) as store:
                for i in range(1, 41):
                    video = VideoFile(path=f"/v/{{i}}", size=1, mtime_ns=1, fingerprint="x", duration_s=1.0)
                    store.add_videos([(video, np.full((300, 2528), i / 100, np.float32), np.ones(8))])
            """
        ),
        timeout=180,
    )
    assert readers.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert (result["writer"], result["videos"], result["errors"]) == (0, 41, []), result
    assert result["fewest_reads"] > 0
    assert abs(result["last"] - 0.4) < 1e-3


def test_second_writer_is_refused_while_readers_read(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with SegmentStore(path) as store:
        [video_id] = store.add_videos([make_video("/v/a", 3, 1, 16, 8)]).ids
    holder = run_python(
        f"""
        import sys
        from ausil_search.stores import SegmentStore
        store = SegmentStore({str(path)!r})
        print("locked", flush=True)
        sys.stdin.readline()
        """,
        stdin=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexStoreError, match=rf"being written by another process \(pid {holder.pid}\)"):
            SegmentStore(path)
        with SegmentStore(path, readonly=True) as reader:
            assert reader.get(video_id).path == "/v/a"
    finally:
        holder.communicate("done\n", timeout=30)
    with SegmentStore(path) as store:  # released when the holder exits
        assert len(store) == 1


CRASH_WRITER = """
import sys
import numpy as np
from ausil_search.stores import SegmentStore, VideoFile

def batch(b):
    items = []
    for i in range(BATCH):
        rng = np.random.default_rng(1000 * b + i)
        n = int(rng.integers(1, 200))
        video = VideoFile(path=f"/v/{b:04d}-{i}", size=n, mtime_ns=b, fingerprint=f"{b}-{i}", duration_s=float(n))
        items.append((video, rng.random((n, DIM), dtype=np.float32), rng.standard_normal(GLOBAL_DIM).astype(np.float32)))
    return items
"""


def expected_batch(b: int, batch: int, dim: int, global_dim: int) -> dict[str, tuple]:
    namespace = {"BATCH": batch, "DIM": dim, "GLOBAL_DIM": global_dim}
    exec(CRASH_WRITER, namespace)
    return {video.path: (video, segments, g) for video, segments, g in namespace["batch"](b)}


def test_sigkill_mid_batch_keeps_only_whole_batches_and_resumes(tmp_path: Path) -> None:
    path, batch, dim, global_dim = tmp_path / "store", 6, 2528, 32
    writer = run_python(
        f"BATCH, DIM, GLOBAL_DIM = {batch}, {dim}, {global_dim}\n"
        + CRASH_WRITER
        + f"""
store = SegmentStore({str(path)!r}, map_size=1 << 20)
for b in range(10_000):
    store.add_videos(batch(b))
"""
    )
    deadline = time.monotonic() + 60
    committed = 0
    while committed < 5 * batch and time.monotonic() < deadline:
        time.sleep(0.05)
        if (path / "data.mdb").exists():
            try:
                with SegmentStore(path, readonly=True) as reader:
                    committed = len(reader)
            except IndexStoreError:  # created but not initialised yet
                pass
    time.sleep(0.137)  # land somewhere inside a later batch
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL, writer.stderr.read()

    with SegmentStore(path) as store:  # the lock died with the writer
        records = list(store.iter_records())
        assert len(records) >= 5 * batch and len(records) % batch == 0
        n_batches = len(records) // batch
        expected = {}
        for b in range(n_batches):  # exactly a prefix of whole batches
            expected.update(expected_batch(b, batch, dim, global_dim))
        assert sorted(r.path for r in records) == sorted(expected)
        ids = store.ids()
        assert ids.tolist() == [r.id for r in records]
        for record, segments in zip(records, store.segments_many(ids.tolist())):
            video, want_segments, want_global = expected[record.path]
            assert record.fingerprint == video.fingerprint and record.n_segments == len(want_segments)
            assert store.id_for_path(record.path) == record.id
            np.testing.assert_allclose(segments, want_segments, atol=INT8_ERROR)
            np.testing.assert_array_equal(store.globals([record.id])[0], want_global)
        stats = store.stats()
        assert stats.videos == len(records)
        assert stats.total_segments == sum(r.n_segments for r in records)
        assert stats.total_duration_s == pytest.approx(sum(r.duration_s for r in records))

        # Rerun like an incremental indexer: skip what is stored unchanged, add the rest.
        for b in range(n_batches + 2):
            todo = [
                item
                for item in expected_batch(b, batch, dim, global_dim).values()
                if (stored := store.record_for_path(item[0].path)) is None
                or stored.fingerprint != item[0].fingerprint
            ]
            assert len(todo) == (batch if b >= n_batches else 0)
            store.add_videos(todo)
        records = list(store.iter_records())
        assert len(records) == len(store) == (n_batches + 2) * batch
        assert len({r.path for r in records}) == len({r.id for r in records}) == len(records)


def test_failed_commit_leaves_earlier_batches_intact(tmp_path: Path) -> None:
    """A write that the file system refuses (here: a file size limit, as a stand-in for a full disk)
    raises IndexStoreError and loses only the batch in progress."""
    path = tmp_path / "store"
    with SegmentStore(path) as store:
        store.add_videos([make_video("/v/seed", 1, 0, 2528, 8)])
    limited = run_python(
        f"""
        import resource, signal
        import numpy as np
        from ausil_search.errors import IndexStoreError
        from ausil_search.stores import SegmentStore, VideoFile
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = __import__("os").path.getsize({str(path / "data.mdb")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + (4 << 20), resource.RLIM_INFINITY))
        store = SegmentStore({str(path)!r})
        for b in range(1, 100):
            video = VideoFile(path=f"/v/{{b}}", size=b, mtime_ns=b, fingerprint="x", duration_s=1.0)
            try:
                store.add_videos([(video, np.full((400, 2528), b / 100, np.float32), np.ones(8))])
            except IndexStoreError as error:
                print(b, error)
                break
        """
    )
    out, err = limited.communicate(timeout=60)
    assert limited.returncode == 0, err
    failed_batch, message = out.strip().split(" ", 1)
    assert "failed" in message and "everything committed before it is intact" in message
    assert int(failed_batch) > 1
    with SegmentStore(path) as store:
        assert len(store) == int(failed_batch)  # the seed video + batches 1 .. failed - 1
        assert store.id_for_path(f"/v/{failed_batch}") is None
        last = store.id_for_path(f"/v/{int(failed_batch) - 1}")
        assert np.allclose(store.segments(last), (int(failed_batch) - 1) / 100, atol=INT8_ERROR)
        store.add_videos([make_video(f"/v/{failed_batch}", 400, 1, 2528, 8)])
        assert len(store) == int(failed_batch) + 1


def test_hdf5_export_import_round_trip(tmp_path: Path) -> None:
    items = [make_video(f"/v/{i}.mov", 2 + i, seed=i) for i in range(12)]
    items.append(make_video("/v/latin1-\udce9.mov", 3, seed=99))
    exported = tmp_path / "features.h5"
    with SegmentStore(tmp_path / "source") as source:
        ids = source.add_videos(items).ids
        source.remove([ids[0]])
        assert source.export_hdf5(exported) == len(items) - 1
    assert not exported.with_name("features.h5.tmp").exists()

    with h5py.File(exported, "r") as file:  # the layout other tools read
        assert sorted(file["videos"], key=int) == [str(i) for i in ids[1:]]
        group = file["videos"][str(ids[5])]
        assert group.attrs["path"] == "/v/5.mov"
        assert group.attrs["duration_s"] == items[5][0].duration_s
        assert group["features"].shape == (7, 2528)
        np.testing.assert_allclose(group["features"][()], items[5][1], atol=INT8_ERROR)

    with SegmentStore(tmp_path / "copy", dtype="float32") as copy:
        result = copy.import_hdf5(exported, batch_size=5)
        assert result.replaced == [] and len(result.ids) == len(copy) == len(items) - 1
        for video, segments, global_vector in items[1:]:
            record = copy.record_for_path(video.path)
            assert record is not None
            for name in ("size", "mtime_ns", "fingerprint", "duration_s", "extra"):
                assert getattr(record, name) == getattr(video, name)
            np.testing.assert_allclose(copy.segments(record.id), segments, atol=INT8_ERROR)
            np.testing.assert_array_equal(copy.globals([record.id])[0], global_vector)
        assert copy.import_hdf5(exported).replaced == result.ids  # importing again replaces by path
    with SegmentStore(tmp_path / "source", readonly=True) as source, SegmentStore(tmp_path / "codes") as codes:
        codes.import_hdf5(exported)  # int8 values exported as floats come back as the same codes
        for video, _, _ in items[1:]:
            np.testing.assert_array_equal(codes.segments(codes.id_for_path(video.path)),
                                          source.segments(source.id_for_path(video.path)))

    not_an_export = tmp_path / "other.h5"
    with h5py.File(not_an_export, "w") as file:
        file["features"] = np.zeros((3, 4))
    with SegmentStore(tmp_path / "copy") as copy:
        with pytest.raises(IndexStoreError, match="not an ausil-search segment export"):
            copy.import_hdf5(not_an_export)
