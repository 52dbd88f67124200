"""The benchmark generator: deterministic, and its labels are true (by the logs and by audio)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from media import synth_music, write_audio_file

from ausil_search import benchmark
from ausil_search.audio import SAMPLE_RATE, load_audio
from ausil_search.formats import read_video_list

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three plain recordings, one that loops (its first 12 s come back at 36.03 s), short talkers."""
    root = tmp_path_factory.mktemp("sources")
    for seed, seconds, ext in [(1, 30, ".ogg"), (2, 26, ".mp3"), (3, 24, ".wav")]:
        write_audio_file(root / f"track{seed}{ext}", synth_music(seconds, SR, seed), SR)
    loop, middle = synth_music(12, SR, 7)[0], synth_music(24.03, SR, 8)[0]
    write_audio_file(root / "looping.flac", np.concatenate([loop, middle, loop])[None], SR)
    (root / "speech").mkdir()
    for seed in range(4):
        write_audio_file(root / "speech" / f"talker{seed}.wav", synth_music(2.5, SR, 100 + seed), SR)
    return root


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    first = tmp_path_factory.mktemp("bench_a")
    second = tmp_path_factory.mktemp("bench_b")
    summary = benchmark.make_benchmark([sources], first, groups=3, seed=5, workers=1, cache_dir=cache)
    benchmark.make_benchmark([sources], second, groups=3, seed=5, workers=2, cache_dir=cache)
    return first, second, summary


def load(directory, name):
    return json.loads((Path(directory) / name).read_text())


def test_material_index_finds_a_repeat_off_the_grid(sources, tmp_path):
    recordings = benchmark.decode_recordings(benchmark.collect_sources([sources]), tmp_path)
    names = [Path(r.path).name for r in recordings]
    looping, plain = names.index("looping.flac"), names.index("track1.ogg")
    index = benchmark.MaterialIndex(recordings)
    found = index.matches(looping, 2.0, 10.0)
    repeats = [(a, b) for rec, a, b in found[1:] if rec == looping and a > 30]
    assert repeats and min(a for a, _ in repeats) < 38.03 + 1 and max(b for _, b in repeats) > 46.03 - 1
    assert all(rec == looping for rec, _, _ in found)  # nothing in the other recordings
    assert not [1 for rec, a, b in index.matches(looping, 14.0, 34.0)[1:] if not 13 <= a and b <= 35]
    assert all(rec == plain and 4 <= a and b <= 16 for rec, a, b in index.matches(plain, 5.0, 15.0))


def test_same_seed_same_benchmark(built):
    first, second, summary = built
    for name in ["queries.txt", "database.txt", "annotation.json", "groups.json", "transforms.json"]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # The encoders used are deterministic too: the media are byte-identical.
    for entry in read_video_list(first / "database.txt") + read_video_list(first / "queries.txt"):
        other = second / entry.path.relative_to(first)
        assert hashlib.sha256(entry.path.read_bytes()).digest() == hashlib.sha256(other.read_bytes()).digest()
    assert summary["groups"] == 3 and summary["queries"] == 3


def test_release_formats(built):
    first, _, summary = built
    queries = read_video_list(first / "queries.txt")
    database = read_video_list(first / "database.txt")
    annotation, groups, transforms = (load(first, n) for n in ["annotation.json", "groups.json", "transforms.json"])
    assert set(annotation) == set(groups) == {q.video_id for q in queries}
    assert set(groups.values()) <= {"core", "speed"} and "speed" in groups.values()
    db_ids = {d.video_id for d in database}
    assert set(transforms) == db_ids | set(annotation)
    roles = [transforms[i]["role"] for i in db_ids]
    assert roles.count("distractor") >= 0.6 * len(roles)
    for entry in queries + database:
        assert entry.path.is_file() and entry.path.parent.name == "media"
        assert abs(len(load_audio(entry.path)) / SR - transforms[entry.video_id]["duration_s"]) < 0.1
    assert {p.suffix for p in (first / "media").iterdir()} & {".mp4", ".mkv", ".webm"}


def test_labels_are_true_by_logs_and_by_audio(built):
    first, _, _ = built
    annotation, transforms = load(first, "annotation.json"), load(first, "transforms.json")
    clean = {}

    def source_audio(path, span):
        if path not in clean:
            clean[path] = load_audio(path)
        return clean[path][round(span[0] * SR) : round(span[1] * SR)]

    def shared_seconds(a, b):
        return min(a[1], b[1]) - max(a[0], b[0])

    for query_id, labels in annotation.items():
        query = transforms[query_id]
        assert labels["DA"] and all(transforms[i]["role"] == "positive" for i in labels["DA"])
        assert {i for i, t in transforms.items() if t["role"] == "positive" and t["group"] == query["group"]} == set(labels["DA"])
        q_audio = source_audio(query["source"], query["span_s"])
        for video_id, video in transforms.items():
            if video["role"] == "query":
                continue
            same_source = video["source"] == query["source"]
            if video_id in labels["DA"]:
                # by the log: same recording, overlapping span; by audio: the shared seconds are identical
                assert same_source and shared_seconds(video["span_s"], query["span_s"]) >= 5.0
                overlap = (max(video["span_s"][0], query["span_s"][0]), min(video["span_s"][1], query["span_s"][1]))
                assert np.allclose(source_audio(video["source"], overlap), source_audio(query["source"], overlap))
                assert max_normalised_xcorr(q_audio, source_audio(video["source"], video["span_s"])) > 0.99
            else:
                if same_source:
                    assert shared_seconds(video["span_s"], query["span_s"]) < 0
                spans = [(video["source"], video["span_s"])]
                for step in video["chain"]:
                    spans += [(step["other_source"], step["other_span_s"])] if "other_source" in step else []
                    spans += [(p, s) for p, s in step.get("other_sources", [])]
                    spans += [(p, s) for p, s in step.get("background", [])]
                for path, span in spans:
                    # no material of this query's source audio (the looping track's repeat included)
                    assert max_normalised_xcorr(q_audio, source_audio(path, span)) < 0.5, (video_id, path, span)


def max_normalised_xcorr(a, b):
    """Best correlation of ``a`` with any equally long stretch of ``b`` (or vice versa), at any lag."""
    if len(a) > len(b):
        a, b = b, a
    a = a[: 5 * SR].astype(np.float64)  # the first 5 s of the shorter piece
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)[: len(b) - len(a) + 1]
    running = np.concatenate([[0.0], np.cumsum(b.astype(np.float64) ** 2)])
    energy = running[len(a):] - running[: len(b) - len(a) + 1]
    return float(np.max(corr / np.sqrt(np.maximum(energy * np.sum(a**2), 1e-12))))


@pytest.mark.slow
def test_hard_mode_groups_embed_the_seed_and_change_time_only_in_hard_speed(sources, tmp_path):
    out = tmp_path / "hard"
    summary = benchmark.make_benchmark([sources], out, groups=3, seed=2, workers=1, mode="hard",
                                       cache_dir=tmp_path / "cache")
    groups, transforms, annotation = (load(out, n) for n in ["groups.json", "transforms.json", "annotation.json"])
    assert sorted(groups.values()) == ["hard", "hard", "hard-speed"] and summary["mode"] == "hard"
    time_steps = {"tempo", "speed", "pitch"}
    for query_id, kind in groups.items():
        query = transforms[query_id]
        names = lambda video: {step["name"] for step in video["chain"]}  # noqa: E731
        assert not names(query) & time_steps  # the query keeps its time scale
        assert 5 <= query["span_s"][1] - query["span_s"][0] <= 12
        for video_id in annotation[query_id]["DA"]:
            video = transforms[video_id]
            # every positive holds the whole seed, with context, from the same recording ...
            assert video["source"] == query["source"]
            assert video["span_s"][0] <= query["span_s"][0] and video["span_s"][1] >= query["span_s"][1]
            # ... time-changed exactly in the hard-speed groups, and hard-mode degradations only
            assert bool(names(video) & time_steps) == (kind == "hard-speed"), video["chain"]
            assert names(video) - time_steps <= {"codec", "noise", "band", "rerecord", "mix", "babble",
                                                 "embed_long", "container"}
            assert len(names(video) - time_steps - {"embed_long", "container"}) >= 2
    embedded = [v for v in transforms.values() if "embed_long" in {s["name"] for s in v["chain"]}]
    assert embedded and all(60 <= v["duration_s"] <= 181 for v in embedded)


def test_bench_takes_the_same_files_as_index_and_train(tmp_path):
    """One extension table and one resolver: `bench make` no longer skips formats `index` takes."""
    from ausil_search.media_sources import collect_media
    from ausil_search.scan import MEDIA_EXTENSIONS, walk_media

    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    for name in ["a.m4v", "b.mka", "c.aiff", "sub/d.wav", "sub/e.ac3", "notes.txt", "cover.jpg"]:
        (folder / name).write_bytes(b"\0" * 16)
    expected = sorted(str((folder / n).resolve()) for n in ["a.m4v", "b.mka", "c.aiff", "sub/d.wav", "sub/e.ac3"])
    assert benchmark.collect_sources([folder]) == expected
    assert sorted(str(p) for p in collect_media([folder])) == expected
    assert sorted(str(p.resolve()) for p in walk_media([folder], has_audio=lambda path: False)) == expected
    assert all(Path(p).suffix in MEDIA_EXTENSIONS for p in expected)
    listing = tmp_path / "list.txt"
    listing.write_text("media/a.m4v\nclip2 media/sub/d.wav\n")
    assert benchmark.collect_sources([listing]) == [expected[0], expected[3]]
