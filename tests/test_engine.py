"""The search engine end to end: real encoded media, real LMDB and FAISS files on disk.

The model is a seeded random backbone with identity whitening and a pass-through comparator
(`conftest.model_path`). Random convolutional features of a log-mel are a deterministic, local
function of the audio, so copies of a recording that keep its spectro-temporal shape (re-encodes,
added noise, crops) keep their segment descriptors close while different recordings do not; that
is what ranking the partner first checks. Speed-changed copies need a trained model.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ausil_search.augment import speed_change, tempo_change
from ausil_search.cli import cli
from ausil_search.engine import SearchEngine
from ausil_search.errors import IndexStoreError
from ausil_search.model import BUNDLED_MODEL
from ausil_search.stores import SegmentStore
from media import synth_music, write_audio_file, write_video_file, write_video_without_audio

N_ORIGINALS = 6
N_DISTRACTORS = 8
CONTAINERS = [".mp4", ".mkv", ".webm", ".m4a", ".ogg", ".wav"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def noisy(samples: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(samples.shape).astype(np.float32)
    scale = np.sqrt(np.mean(samples**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(samples + scale * noise, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """`db/` holds originals, distractors and broken files; `queries/` the transformed copies."""
    root = tmp_path_factory.mktemp("collection")
    db, queries = root / "db", root / "queries"
    (db / "nested" / "deeper").mkdir(parents=True)
    queries.mkdir()
    sr = 44100
    pairs = {}
    for i in range(N_ORIGINALS):
        signal_ = synth_music(12.0 + i, sr, seed=100 + i, channels=2)
        original = db / ("nested" if i % 2 else "") / f"original{i}{CONTAINERS[i % len(CONTAINERS)]}"
        write = write_audio_file if original.suffix in (".m4a", ".ogg", ".wav") else write_video_file
        write(original, signal_, sr)
        kind = ("reencode", "noise", "crop")[i % 3]
        if kind == "reencode":  # low-bitrate MP3 at 22.05 kHz
            copy = queries / f"copy{i}.mp3"
            write_audio_file(copy, signal_[:, ::2], sr // 2, bitrate=32000)
        elif kind == "noise":  # white noise at 10 dB SNR, AAC in MP4
            copy = queries / f"copy{i}.mp4"
            write_video_file(copy, noisy(signal_, 10, seed=i), sr)
        else:  # the middle 60%, cut off the segment grid
            n = signal_.shape[1]
            start = int(0.2 * n) + int(0.3 * sr)
            copy = queries / f"copy{i}.mkv"
            write_video_file(copy, signal_[:, start:start + int(0.6 * n)], sr)
        pairs[copy] = original
    for j in range(N_DISTRACTORS):
        folder = db / "nested" / "deeper" if j % 2 else db
        write_audio_file(folder / f"distractor{j}.flac", synth_music(10.0, sr, seed=500 + j), sr)
    # broken inputs that must be reported and skipped
    (db / "empty.mp4").write_bytes(b"")
    (db / "corrupt.mkv").write_bytes(np.random.default_rng(1).bytes(40_000))
    write_video_without_audio(db / "no_audio.mp4")
    write_audio_file(db / "tiny.wav", synth_music(0.5, sr, seed=9), sr)  # < 1 s: indexed, padded to one segment
    (db / "notes.txt").write_text("not media")
    os.symlink(db, db / "nested" / "loop")  # a symlink loop must not hang the walk
    return {"root": root, "db": db, "queries": queries, "pairs": pairs}


@pytest.fixture(scope="module")
def built_index(collection, tmp_path_factory, model_path):
    index_dir = tmp_path_factory.mktemp("index") / "idx"
    result = run("index", collection["db"], "--index", index_dir, "--model", model_path, "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    return index_dir, json.loads(result.stdout)


def test_index_reports_broken_files_and_counts(collection, built_index):
    _, report = built_index
    expected_videos = N_ORIGINALS + N_DISTRACTORS + 1  # + tiny.wav
    assert report["added"] == expected_videos and report["updated"] == 0
    skipped = {Path(p).name for p in report["skipped"]}
    assert skipped == {"empty.mp4", "corrupt.mkv", "no_audio.mp4", "loop"}  # loop: a link back to db/
    assert report["index"]["videos"] == expected_videos
    assert report["index"]["global_index"]["type"] == "flat"  # exact at this size


def test_each_copy_finds_its_original_first(collection, built_index):
    index_dir, _ = built_index
    copies = sorted(collection["pairs"])
    result = run("query", *copies, "--index", index_dir, "--json", "-k", "5")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(copies)
    for copy, answer in zip(copies, answers):
        top = answer["matches"][0]
        assert Path(top["path"]) == collection["pairs"][copy].absolute(), (copy.name, answer["matches"][:3])
        assert top["score"] > answer["matches"][1]["score"]
        assert answer["candidates"] == N_ORIGINALS + N_DISTRACTORS + 1
        if "crop" in copy.name or copy.suffix == ".mkv":
            # the crop started 20% + 0.3 s into the original: the match span starts near there
            original_length = 12.0 + int(copy.stem[-1])
            assert abs(top["match_span"][0] - 0.2 * original_length) <= 3.0, top


def test_exhaustive_agrees_with_recall_path(collection, built_index):
    index_dir, _ = built_index
    engine = SearchEngine(index_dir, writable=False, workers=0)
    with engine:
        for copy in sorted(collection["pairs"]):
            fast = engine.query(copy, top_k=3, candidates=8)
            full = engine.query(copy, top_k=3, exhaustive=True)
            assert fast.matches[0].path == full.matches[0].path
            assert fast.matches[0].score == pytest.approx(full.matches[0].score, abs=1e-5)
            assert full.candidates == N_ORIGINALS + N_DISTRACTORS + 1 and fast.candidates == 8


def test_added_embedded_excerpt_is_found_beside_its_original(collection, built_index, tmp_path):
    import shutil

    from ausil_search.stores import VideoFile

    def synthetic(name: str, seconds: float) -> VideoFile:
        return VideoFile(path=f"/synthetic/{name}", size=0, mtime_ns=0, fingerprint=name, duration_s=seconds)

    index_dir = tmp_path / "idx"
    shutil.copytree(built_index[0], index_dir)
    copy = sorted(collection["pairs"])[0]
    original = str(collection["pairs"][copy].absolute())
    with SearchEngine(index_dir, writable=True, workers=0) as engine:
        record = next(r for r in engine.records() if r.path == original)
        excerpt = engine.store.segments(record.id)[2:9]
        with pytest.raises(ValueError, match="non-empty"):
            engine.add_embedded([(synthetic("empty.mp4", 0.0), excerpt[:0])])
        added = engine.add_embedded([(synthetic("excerpt.mp4", 7.0), excerpt)])
        assert added == 1
        answer = engine.query(copy, top_k=3, candidates=4)
    expected = N_ORIGINALS + N_DISTRACTORS + 2
    with SearchEngine(index_dir, writable=False) as reopened:
        assert reopened.info()["videos"] == expected
    assert {m.path for m in answer.matches[:2]} == {original, "/synthetic/excerpt.mp4"}, answer.matches


def test_rerun_is_incremental_and_prune_follows_the_disk(collection, tmp_path, model_path):
    db = tmp_path / "db"
    db.mkdir()
    sr = 22050
    for k in range(4):
        write_audio_file(db / f"song{k}.ogg", synth_music(6.0, sr, seed=900 + k), sr)
    index_dir = tmp_path / "idx"
    first = json.loads(run("index", db, "--index", index_dir, "--model", model_path, "--workers", "0", "--json").stdout)
    assert first["added"] == 4
    again = json.loads(run("index", db, "--index", index_dir, "--workers", "0", "--json").stdout)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 4)

    os.utime(db / "song0.ogg", ns=(0, 123_456_789_000))  # touched, same bytes: not re-extracted
    write_audio_file(db / "song1.ogg", synth_music(7.0, sr, seed=999), sr)  # changed content
    (db / "song2.ogg").unlink()
    write_audio_file(db / "song4.ogg", synth_music(5.0, sr, seed=904), sr)  # new
    before = {r.path: r.id for r in SearchEngine(index_dir, writable=False).records()}

    no_prune = json.loads(run("index", db, "--index", index_dir, "--workers", "0", "--json").stdout)
    assert (no_prune["added"], no_prune["updated"], no_prune["unchanged"], no_prune["removed"]) == (1, 1, 2, 0)
    pruned = json.loads(run("index", db, "--index", index_dir, "--workers", "0", "--prune", "--json").stdout)
    assert pruned["removed"] == 1 and pruned["unchanged"] == 4

    with SearchEngine(index_dir, writable=False) as engine:
        records = {Path(r.path).name: r for r in engine.records()}
        assert set(records) == {"song0.ogg", "song1.ogg", "song3.ogg", "song4.ogg"}
        assert records["song0.ogg"].id == before[str((db / "song0.ogg").absolute())]
        assert records["song1.ogg"].id != before[str((db / "song1.ogg").absolute())]
        assert len(engine.global_index.video_ids()) == 4
        top = engine.query(db / "song1.ogg", top_k=1).matches[0]
        assert Path(top.path).name == "song1.ogg"

    removed = json.loads(run("remove", db / "song3.ogg", "--index", index_dir, "--json").stdout)
    assert [Path(p).name for p in removed["removed"]] == ["song3.ogg"]
    info = json.loads(run("info", "--index", index_dir, "--json").stdout)
    assert info["videos"] == 3 and info["global_index"]["videos"] == 3
    assert info["model"]["sha256"] and info["disk_bytes"] > 0


def test_recall_file_from_before_windows_is_rebuilt_from_the_segments(built_index, tmp_path):
    """An index whose FAISS file holds one descriptor per video (`global.faiss`, before recall
    windows) opens: readers rebuild the windows in memory, a writer saves them and drops the old file."""
    import faiss
    import shutil

    index_dir = tmp_path / "idx"
    shutil.copytree(built_index[0], index_dir)
    (windows_file,) = index_dir.glob("windows-*.faiss")
    windows_file.unlink()
    with SegmentStore(index_dir / "segments", readonly=True) as store:
        ids, vectors = store.all_globals()
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    old.add_with_ids(vectors, ids)
    faiss.write_index(old, str(index_dir / "global.faiss"))
    with SearchEngine(index_dir, writable=False, workers=0) as engine:
        assert engine.global_index.video_ids().tolist() == ids.tolist()
        assert not windows_file.exists()  # readers never write
    with SearchEngine(index_dir, writable=True, workers=0) as engine:
        assert engine.global_index.video_ids().tolist() == ids.tolist()
    assert windows_file.is_file() and not (index_dir / "global.faiss").exists()


def test_index_refuses_another_model(collection, built_index, tmp_path):
    index_dir, _ = built_index
    other = tmp_path / "other.safetensors"
    assert run("weights", "init", "-o", other, "--seed", "99").exit_code == 0
    result = run("index", collection["db"], "--index", index_dir, "--model", other)
    assert result.exit_code == 1 and "was built with model" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_query_without_index_is_one_line(tmp_path, collection):
    result = run("query", next(iter(collection["pairs"])), "--index", tmp_path / "nothing")
    assert result.exit_code == 1 and "no index at" in result.output and "Traceback" not in result.output


def _store_count(segments_dir: Path) -> int:
    try:
        store = SegmentStore(segments_dir, readonly=True)
    except IndexStoreError:
        return 0
    try:
        return len(store)
    finally:
        store.close()


def test_killed_run_resumes_to_the_same_index(collection, tmp_path, model_path, built_index):
    """SIGKILL after the first commits; the index opens, answers, and a rerun completes it exactly."""
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "ausil_search.cli", "index", str(collection["db"]), "--index", str(killed_dir),
               "--model", str(model_path), "--workers", "0", "--commit-every", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while _store_count(killed_dir / "segments") < 2:
            assert process.poll() is None, "the indexer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    partial = _store_count(killed_dir / "segments")
    assert 2 <= partial < N_ORIGINALS + N_DISTRACTORS + 1

    # The interrupted index opens and answers queries (the FAISS file may be missing or stale).
    with SearchEngine(killed_dir, writable=False, workers=0) as engine:
        assert len(engine.global_index.video_ids()) == partial
        assert len(engine.query(next(iter(collection["pairs"])), top_k=1).matches) == 1

    result = run("index", collection["db"], "--index", killed_dir, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    assert resumed["unchanged"] == partial

    with SearchEngine(killed_dir, writable=False) as killed, SearchEngine(built_index[0], writable=False) as clean:
        killed_map = sorted((r.id, r.path) for r in killed.records())
        clean_map = sorted((r.id, r.path) for r in clean.records())
        assert killed_map == clean_map
        assert len({path for _, path in killed_map}) == len(killed_map)
        assert len(killed.global_index.video_ids()) == len(killed_map)


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled default model is not in this checkout")
def test_speed_changed_copies_rank_first_with_the_default_model(tmp_path):
    """Speed (pitch moves with it) and tempo (pitch kept) changes of ±8–12%, through a lossy codec:
    the trained default model must still rank each copy's original first among distractors."""
    sr = 44100
    db, queries = tmp_path / "db", tmp_path / "queries"
    db.mkdir()
    queries.mkdir()
    changes = [(speed_change, 1.1), (tempo_change, 0.9), (speed_change, 0.92), (tempo_change, 1.12)]
    expected = {}
    for i, (change, factor) in enumerate(changes):
        original = synth_music(25.0, sr, seed=300 + i)[0]
        write_video_file(db / f"original{i}.mp4", original, sr)
        copy = queries / f"copy{i}-{change.__name__}-{factor}.mp3"
        write_audio_file(copy, change(original, sr, factor), sr, bitrate=96_000)
        expected[copy] = str(db / f"original{i}.mp4")
    for j in range(6):
        write_audio_file(db / f"distractor{j}.ogg", synth_music(25.0, sr, seed=700 + j), sr)
    with SearchEngine(tmp_path / "index", writable=True, workers=0) as engine:
        assert engine.model.path == BUNDLED_MODEL
        engine.index_paths([db])
        for copy, original in expected.items():
            top = engine.query(copy, top_k=3).matches
            assert top[0].path == original, (copy.name, [(m.path, round(m.score, 3)) for m in top])


@pytest.mark.slow
def test_quiet_intro_finds_its_source_with_the_default_model(tmp_path):
    """A clip of an intro 38 dB below the rest of its track: the front-end normalises the clip alone
    (loud) but the track as a whole (the intro quiet), and the default model must still match them."""
    sr = 44100
    db, queries = tmp_path / "db", tmp_path / "queries"
    db.mkdir()
    queries.mkdir()
    track = synth_music(90.0, sr, seed=321)[0]
    track[: 40 * sr] *= 10 ** (-38 / 20) / np.abs(track[: 40 * sr]).max()  # the intro peaks at -38 dBFS
    write_video_file(db / "source.mp4", track, sr)
    for j in range(6):
        write_audio_file(db / f"distractor{j}.ogg", synth_music(60.0, sr, seed=800 + j), sr)
    clip = queries / "quiet-intro.mp3"
    write_audio_file(clip, track[5 * sr : 35 * sr], sr, bitrate=128_000)
    with SearchEngine(tmp_path / "index", writable=True, workers=0) as engine:
        engine.index_paths([db])
        top = engine.query(clip, top_k=3, exhaustive=True).matches
    assert top[0].path == str(db / "source.mp4"), [(Path(m.path).name, round(m.score, 3)) for m in top]
    assert top[0].match_span[0] < 40  # found in the intro, not in the loud part


@pytest.mark.slow
def test_every_occurrence_of_a_jingle_is_reported_in_time_order(tmp_path):
    """A 20-s clip played three times in a 150-s video, once 10 % faster: three spans within 1 s."""
    from ausil_search.augment import speed_change

    sr = 44100
    db = tmp_path / "db"
    db.mkdir()
    jingle = synth_music(20.0, sr, seed=41)[0]
    broadcast = synth_music(150.0, sr, seed=42)[0]
    places = [(20.0, jingle), (70.0, speed_change(jingle, sr, 1.1)), (120.0, jingle)]
    for start, audio in places:
        broadcast[round(start * sr) : round(start * sr) + len(audio)] = audio
    write_video_file(db / "broadcast.mp4", broadcast, sr)
    for j in range(3):
        write_audio_file(db / f"other{j}.ogg", synth_music(60.0, sr, seed=900 + j), sr)
    clip = tmp_path / "jingle.mp3"
    write_audio_file(clip, jingle, sr, bitrate=128_000)
    with SearchEngine(tmp_path / "index", writable=True, workers=0) as engine:
        engine.index_paths([db])
        top = engine.query(clip, top_k=2).matches
    assert top[0].path == str(db / "broadcast.mp4")
    spans = [o.match_span for o in top[0].occurrences]
    truth = [(start, start + len(audio) / sr) for start, audio in places]
    assert len(spans) == 3, spans
    for (start, end), (true_start, true_end) in zip(spans, truth):
        assert abs(start - true_start) <= 1.0 and abs(end - true_end) <= 1.0, (spans, truth)
    assert top[0].match_span in spans and len(top[1].occurrences) == 1  # an unrelated video: one best place only
    rows = list(csv.DictReader(io.StringIO(run("query", clip, "--index", tmp_path / "index", "--csv", "-k", 1).output)))
    assert [int(r["occurrence"]) for r in rows] == [1, 2, 3]
    assert [(float(r["match_start_s"]), float(r["match_end_s"])) for r in rows] == spans
    text = run("query", clip, "--index", tmp_path / "index", "-k", 1).output
    assert text.count("(occurrence, similarity") == 3


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled default model is not in this checkout")
def test_short_clip_inside_a_long_video_is_recalled_first(tmp_path):
    """A 6-s clip hidden at 100 s in a 3-minute video of other music: recall alone (one candidate, no
    rerank to correct it) brings that video first, scored by the window that holds the clip. Its
    whole-video descriptor is diluted (the clip is 1/30 of its mean) and scores well below that window."""
    sr = 44100
    db = tmp_path / "db"
    db.mkdir()
    clip = synth_music(6.0, sr, seed=61)[0]
    long_video = synth_music(180.0, sr, seed=62)[0]
    long_video[100 * sr:106 * sr] = clip
    write_video_file(db / "long.mp4", long_video, sr)
    for j in range(8):
        write_audio_file(db / f"distractor{j}.ogg", synth_music(20.0, sr, seed=900 + j), sr)
    query = tmp_path / "clip.mp3"
    write_audio_file(query, clip, sr, bitrate=128_000)
    with SearchEngine(tmp_path / "index", writable=True, workers=0) as engine:
        engine.index_paths([db])
        assert len(engine.global_index.video_ids()) == 9 and engine.global_index.ntotal > 9
        long_id = engine.store.id_for_path(str(db / "long.mp4"))
        embedded = engine.embed(engine.extractor().descriptors(query).descriptors).float().numpy()
        videos, scores = engine.global_index.search_videos(engine.layout.pool(embedded), 2)
        whole = engine.store.globals([long_id])[0] @ engine.layout.pool(embedded)[0]
        top = engine.query(query, top_k=1, candidates=1).matches
    assert videos[0] == long_id and scores[0] > whole + 0.02, (videos, scores, whole)
    assert Path(top[0].path).name == "long.mp4" and 99 <= top[0].match_span[0] <= 101
