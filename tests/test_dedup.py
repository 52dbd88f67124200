"""Duplicate groups, the match decision, `compare` and `query --min-score`, end to end on real media.

The model is the tests' seeded random model (`conftest.model_path`) with one change: its whitening
mean is set to the mean segment descriptor of three unrelated synthetic recordings. Raw random
features of any two sounds are nearly parallel (all scores within 0.001 of each other); with the
common part removed, re-encoded copies keep scoring near the maximum (0.25: neutral attention halves
each side) while unrelated recordings fall below 0.1. THRESHOLD sits between the two, fixed here,
not read from the code under test.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ausil_search.cli import cli
from ausil_search.dedup import ConstrainedUnion, DedupStore, average_linkage, find_duplicate_groups, parse_since
from ausil_search.engine import SearchEngine
from ausil_search.errors import InputError
from media import synth_music, write_audio_file, write_video_file

THRESHOLD = 0.15
SR = 22050
EXCERPT_START_STEPS, EXCERPT_STEPS = 3, 7


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def centred_model(model_path, tmp_path_factory):
    from ausil_search.extraction import Extractor
    from ausil_search.model import AuSiLModel

    model = AuSiLModel.load(model_path)
    folder = tmp_path_factory.mktemp("centring")
    extractor = Extractor(model, workers=0)
    descriptors = []
    for seed in range(3):
        write_audio_file(folder / f"{seed}.wav", synth_music(20.0, SR, seed=900 + seed), SR)
        descriptors.append(extractor.descriptors(folder / f"{seed}.wav").descriptors)
    rows = np.concatenate(descriptors)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with torch.no_grad():
        model.head.pca_mean.copy_(torch.from_numpy(rows.mean(0)))
    model.metadata["name"] = "test-centred"
    path = folder / "centred.safetensors"
    model.save(path)
    return path


def step_seconds() -> float:
    from ausil_search.spectrogram import FrontEnd

    frontend = FrontEnd()
    return frontend.step_frames * frontend.hop_length / frontend.sample_rate


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three groups (a recording with two re-encodes; one with one; a long one with an excerpt cut on
    the segment grid) and four unrelated distractors."""
    db = tmp_path_factory.mktemp("collection")
    music = {g: synth_music(10.0 + 2 * g, SR, seed=40 + g) for g in range(3)}
    write_audio_file(db / "g0-orig.wav", music[0], SR)
    write_audio_file(db / "g0-copy.mp3", music[0], SR, bitrate=64000)
    write_video_file(db / "g0-copy.mp4", music[0], SR)
    write_audio_file(db / "g1-orig.ogg", music[1], SR)
    write_audio_file(db / "g1-copy.mp3", music[1], SR, bitrate=64000)
    write_audio_file(db / "g2-long.flac", music[2], SR)
    start = round(EXCERPT_START_STEPS * step_seconds() * SR)  # the decoder resamples 22.05 kHz exactly 2x
    write_audio_file(db / "g2-excerpt.m4a", music[2][:, start:start + round(EXCERPT_STEPS * step_seconds() * SR)], SR)
    for j in range(4):
        write_audio_file(db / f"distractor{j}.flac", synth_music(9.0, SR, seed=80 + j), SR)
    groups = {frozenset({"g0-orig.wav", "g0-copy.mp3", "g0-copy.mp4"}), frozenset({"g1-orig.ogg", "g1-copy.mp3"}),
              frozenset({"g2-long.flac", "g2-excerpt.m4a"})}
    return db, music, groups


@pytest.fixture(scope="module")
def built_index(collection, centred_model, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("dedup-index") / "idx"
    result = run("index", collection[0], "--index", index_dir, "--model", centred_model, "--workers", "0")
    assert result.exit_code == 0, result.output
    return index_dir


@pytest.fixture
def index_copy(built_index, tmp_path):
    """A private copy of the index (dedup writes its scores into the index)."""
    target = tmp_path / "idx"
    shutil.copytree(built_index, target)
    return target


def dedup_json(index_dir, *extra) -> dict:
    result = run("dedup", "--index", index_dir, "--min-score", THRESHOLD, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def name_groups(payload: dict) -> list[frozenset]:
    return [frozenset(Path(m["path"]).name for m in g["members"]) for g in payload["groups"]]


def test_three_known_groups_and_nothing_else(collection, index_copy):
    _, _, expected = collection
    payload = dedup_json(index_copy)
    groups = name_groups(payload)
    assert set(groups) == expected and len(groups) == 3
    assert len(groups[0]) == 3  # the biggest group first
    assert [g["number"] for g in payload["groups"]] == [1, 2, 3]
    assert payload["threshold"] == THRESHOLD and payload["stats"]["videos"] == 11
    for group in payload["groups"]:
        assert all(link["score"] >= THRESHOLD for link in group["links"])
        assert len(group["links"]) == len(group["members"]) - 1  # the pairs that joined it
    # the excerpt's audio is found where it was cut from the long recording
    members = {Path(m["path"]).name: m for g in payload["groups"] for m in g["members"]}
    excerpt_start = EXCERPT_START_STEPS * step_seconds()
    (long_start, long_end), = members["g2-long.flac"]["spans"]
    assert abs(long_start - excerpt_start) <= 1.5 and abs(long_end - (excerpt_start + EXCERPT_STEPS * step_seconds())) <= 2.5
    assert members["g2-excerpt.m4a"]["spans"][0][0] <= 1.0
    assert members["g0-orig.wav"]["size"] == (collection[0] / "g0-orig.wav").stat().st_size

    rows = run("dedup", "--index", index_copy, "--min-score", THRESHOLD, "--csv").stdout.splitlines()
    assert rows[0].startswith("group,") and len(rows) == 1 + sum(len(g) for g in groups)
    text = run("dedup", "--index", index_copy, "--min-score", THRESHOLD).stdout
    assert text.startswith("3 groups among 11 videos") and "0 pairs scored now" in text


class ReportParser(HTMLParser):
    """Groups, members and spans from the data-* attributes of the report page; audio sources."""

    def __init__(self):
        super().__init__()
        self.groups: list[dict] = []
        self.audio: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "section" and "group" in classes:
            self.groups.append({"number": int(attrs["data-group"]), "members": []})
        elif tag == "li" and "member" in classes:
            self.groups[-1]["members"].append({"path": attrs["data-path"], "duration_s": float(attrs["data-duration"]),
                                               "spans": []})
        elif tag == "div" and "span" in classes:
            self.groups[-1]["members"][-1]["spans"].append([float(attrs["data-start"]), float(attrs["data-end"])])
        elif tag == "audio":
            self.audio.append(attrs["src"])


def test_html_report_shows_the_json_groups(index_copy, tmp_path):
    page = tmp_path / "report.html"
    payload = dedup_json(index_copy, "--html", page)
    parser = ReportParser()
    parser.feed(page.read_text(encoding="utf-8"))
    expected = [{"number": g["number"], "members": [{k: m[k] for k in ("path", "duration_s", "spans")}
                                                    for m in g["members"]]} for g in payload["groups"]]
    assert parser.groups == expected
    members = [m for g in payload["groups"] for m in g["members"]]
    assert parser.audio == [f"{Path(m['path']).as_uri()}#t={m['spans'][0][0]}" for m in members]
    assert "<script" not in page.read_text() and "http" not in page.read_text()  # self-contained


def test_not_duplicate_splits_a_group_and_survives_rerun_and_reindex(collection, index_copy, tmp_path):
    db = collection[0]
    payload = dedup_json(index_copy, "--not-duplicate", db / "g0-copy.mp3", db / "g0-copy.mp4")
    groups = name_groups(payload)
    assert not any({"g0-copy.mp3", "g0-copy.mp4"} <= g for g in groups)
    g0 = [g for g in groups if "g0-orig.wav" in g]
    assert len(g0) == 1 and len(g0[0]) == 2 and payload["stats"]["kept_apart"] >= 1
    assert len(groups) == 3

    assert name_groups(dedup_json(index_copy)) == groups  # remembered by the index

    # re-indexed under a fresh id (same content): still kept apart
    assert run("remove", db / "g0-copy.mp4", "--index", index_copy).exit_code == 0
    assert run("index", db, "--index", index_copy, "--workers", "0").exit_code == 0
    assert name_groups(dedup_json(index_copy)) == groups

    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"not_duplicates": [[str(db / "g1-orig.ogg"), str(db / "g1-copy.mp3")]]}))
    after = name_groups(dedup_json(index_copy, "--not-duplicates", decisions))
    assert set(after) == set(groups) - {frozenset({"g1-orig.ogg", "g1-copy.mp3"})}


def test_rerun_scores_only_pairs_with_new_videos_and_since(collection, index_copy, tmp_path, centred_model):
    db, music, _ = collection
    first = dedup_json(index_copy)["stats"]
    assert first["pairs_scored"] > 0 and first["pairs_scored"] + first["pairs_skipped"] == first["candidate_pairs"]
    assert dedup_json(index_copy)["stats"]["pairs_scored"] == 0
    with SearchEngine(index_copy, workers=0) as engine, DedupStore(index_copy, engine.model.sha256) as store:
        before = set(zip(*[a.tolist() for a in store.pairs()[:2]]))

    extra = tmp_path / "more"
    extra.mkdir()
    write_audio_file(extra / "g1-copy2.ogg", music[1], SR, bitrate=48000)
    marker = time.time()
    time.sleep(0.05)
    assert run("index", extra, "--index", index_copy, "--workers", "0").exit_code == 0
    payload = dedup_json(index_copy)
    assert frozenset({"g1-orig.ogg", "g1-copy.mp3", "g1-copy2.ogg"}) in name_groups(payload)
    with SearchEngine(index_copy, workers=0) as engine, DedupStore(index_copy, engine.model.sha256) as store:
        new_id = engine.store.id_for_path(str(extra / "g1-copy2.ogg"))
        pairs = store.pairs()
        after = set(zip(*[a.tolist() for a in pairs[:2]]))
        scored_now = {(q, d) for q, d, score in zip(*[a.tolist() for a in pairs]) if not np.isnan(score)} - before
    added = after - before
    assert payload["stats"]["pairs_scored"] == len(scored_now) > 0
    # every pair with the new video, and the first run's skipped pairs looked at again
    assert payload["stats"]["pairs_scored"] + payload["stats"]["pairs_skipped"] == len(added) + first["pairs_skipped"]
    assert all(new_id in pair for pair in added)  # only pairs with the new video were scored

    since = _dt.datetime.fromtimestamp(marker).isoformat()
    recent = dedup_json(index_copy, "--since", since)
    assert name_groups(recent) == [frozenset({"g1-orig.ogg", "g1-copy.mp3", "g1-copy2.ogg"})]
    assert recent["stats"]["focus_videos"] == 1 and recent["stats"]["pairs_scored"] == 0


def test_skipping_joined_pairs_gives_the_groups_of_scoring_every_pair_at_any_threshold(collection, built_index, tmp_path):
    skipping, every = tmp_path / "skipping", tmp_path / "every"
    shutil.copytree(built_index, skipping)
    shutil.copytree(built_index, every)
    # single linkage at -1: every scored pair joins: a spanning tree of the 11 videos is scored, the other 45 skipped
    first = dedup_json(skipping, "--min-score", -1, "--linkage", "single")
    assert (first["stats"]["pairs_scored"], first["stats"]["pairs_skipped"]) == (10, 45)
    assert name_groups(first) == [frozenset(p.name for p in collection[0].iterdir())]
    seen = []
    for threshold in (-1, THRESHOLD, 0.2, THRESHOLD, 0.05):
        # another threshold looks at the skipped pairs again: scores those whose videos are no longer joined
        fast = run("dedup", "--index", skipping, "--min-score", threshold, "--json", "--linkage", "single")
        full = run("dedup", "--index", every, "--min-score", threshold, "--json", "--all-pairs", "--linkage", "single")
        assert fast.exit_code == 0 and full.exit_code == 0, fast.output + full.output
        fast, full = json.loads(fast.stdout), json.loads(full.stdout)
        assert set(name_groups(fast)) == set(name_groups(full)) and full["stats"]["pairs_skipped"] == 0
        seen.append(set(name_groups(full)))
    assert seen[1] == seen[3] == collection[2]
    with SearchEngine(every, workers=0) as engine, DedupStore(every, engine.model.sha256) as store:
        assert np.isfinite(store.pairs()[2]).all() and len(store.pairs()[2]) == 55


def test_a_skipped_pair_is_scored_once_the_video_that_joined_it_is_removed(collection, index_copy):
    first = dedup_json(index_copy, "--linkage", "single")
    assert first["stats"]["pairs_skipped"] == 1  # the three-file group is joined by two of its three pairs
    assert set(name_groups(first)) == collection[2]
    with SearchEngine(index_copy, workers=0) as engine, DedupStore(index_copy, engine.model.sha256) as store:
        queries, databases, scores = store.pairs()
        (skipped,) = np.flatnonzero(np.isnan(scores))
        pair = {engine.store.get(int(queries[skipped])).path, engine.store.get(int(databases[skipped])).path}
    (g0,) = [g for g in first["groups"] if len(g["members"]) == 3]
    (third,) = {m["path"] for m in g0["members"]} - pair
    assert run("remove", third, "--index", index_copy).exit_code == 0
    after = dedup_json(index_copy, "--linkage", "single")
    assert (after["stats"]["pairs_scored"], after["stats"]["pairs_skipped"]) == (1, 0)
    pair_names = frozenset(Path(p).name for p in pair)
    assert set(name_groups(after)) == {g for g in collection[2] if len(g) == 2} | {pair_names}


def test_interrupted_run_keeps_its_scores_and_a_rerun_completes_it(index_copy, monkeypatch):
    from ausil_search.head import AuSiLHead

    import ausil_search.dedup as dedup_module

    monkeypatch.setattr(dedup_module, "COMMIT_PAIRS", 1)
    real, calls = AuSiLHead.score_many, []

    def flaky(self, q, candidates, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, q, candidates, *args, **kwargs)

    with SearchEngine(index_copy, workers=0) as engine:
        monkeypatch.setattr(AuSiLHead, "score_many", flaky)
        with pytest.raises(KeyboardInterrupt):
            find_duplicate_groups(engine, THRESHOLD)
        monkeypatch.setattr(AuSiLHead, "score_many", real)
        with DedupStore(index_copy, engine.model.sha256) as store:
            kept = int(np.isfinite(store.pairs()[2]).sum())
            assert kept > 0 and not store.done_ids()
        result = find_duplicate_groups(engine, THRESHOLD)
    assert result.stats.pairs_scored + result.stats.pairs_skipped == result.stats.candidate_pairs - kept
    assert len(result.groups) == 3


def test_compare_copy_and_unrelated(collection, centred_model):
    db = collection[0]

    def compare(a, b):
        result = run("compare", a, b, "--model", centred_model, "--min-score", THRESHOLD, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    copy = compare(db / "g0-orig.wav", db / "g0-copy.mp3")
    assert copy["duplicate"] and copy["score"] >= THRESHOLD and copy["span_a"][1] - copy["span_a"][0] >= 8
    unrelated = compare(db / "g0-orig.wav", db / "distractor1.flac")
    assert not unrelated["duplicate"] and unrelated["score"] < THRESHOLD
    # the shorter file is always the query side: the order of the arguments does not matter
    forward, backward = compare(db / "g2-long.flac", db / "g2-excerpt.m4a"), compare(db / "g2-excerpt.m4a", db / "g2-long.flac")
    assert forward["duplicate"] and forward["score"] == backward["score"]
    text = run("compare", db / "g1-orig.ogg", db / "distractor2.flac", "--model", centred_model, "--min-score", THRESHOLD)
    assert text.exit_code == 0 and text.output.startswith("not duplicates: score")
    missing = run("compare", db / "nope.mp4", db / "g1-orig.ogg", "--model", centred_model)
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_query_min_score_says_no_match_for_an_unrelated_clip(collection, built_index, tmp_path):
    clip = tmp_path / "unrelated.mp3"
    write_audio_file(clip, synth_music(8.0, SR, seed=4242), SR)
    text = run("query", clip, "--index", built_index, "--min-score", THRESHOLD)
    assert text.exit_code == 0 and f"no match above {THRESHOLD:.2f}" in text.output
    answer = json.loads(run("query", clip, "--index", built_index, "--min-score", THRESHOLD, "--json").stdout)
    assert answer["matches"] == [] and answer["no_match"] and answer["message"] == f"no match above {THRESHOLD:.2f}"
    plain = json.loads(run("query", clip, "--index", built_index, "--json", "-k", "3").stdout)
    assert len(plain["matches"]) == 3 and "min_score" not in plain  # off by default: top-k stays top-k

    copy = tmp_path / "copy.ogg"
    write_audio_file(copy, collection[1][1], SR)
    found = json.loads(run("query", copy, "--index", built_index, "--min-score", THRESHOLD, "--json").stdout)
    assert {Path(m["path"]).name for m in found["matches"]} == {"g1-orig.ogg", "g1-copy.mp3"}
    assert not found["no_match"]


def test_min_score_outside_the_score_range_is_a_usage_error(tmp_path):
    for command in ("query", "dedup"):
        for bad in ("72", "-1.5", "nan"):
            result = run(command, *([tmp_path / "clip.mp3"] if command == "query" else []), "--index",
                         tmp_path / "idx", "--min-score", bad)
            assert result.exit_code == 2 and "outside [-1, 1]" in result.output, (command, bad, result.output)
    assert not (tmp_path / "idx").exists()


def test_parse_since():
    now = 1_800_000_000.0
    assert parse_since("12h", now) == now - 12 * 3600 and parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-11-30T10:00:00+00:00") == _dt.datetime(2026, 11, 30, 10, tzinfo=_dt.timezone.utc).timestamp()
    with pytest.raises(InputError):
        parse_since("last tuesday")


def test_constrained_union_keeps_decided_pairs_apart():
    union = ConstrainedUnion({1: {3}, 3: {1}})
    assert union.union(1, 2) and not union.union(2, 3) and union.union(3, 4) and union.union(5, 5) is False
    assert sorted(sorted(g) for g in union.groups()) == [[1, 2], [3, 4]]


def _upgma_by_definition(scores: dict[tuple[int, int], float], videos: int, floor: float) -> set[frozenset]:
    """Average linkage straight from its definition: repeatedly join the two groups with the highest mean
    score over all their pairs (an unscored pair counting 0) while that mean is >= floor and > 0."""
    groups = [frozenset({v}) for v in range(videos)]

    def mean(x, y):
        return sum(scores.get((min(a, b), max(a, b)), 0.0) for a in x for b in y) / (len(x) * len(y))

    while len(groups) > 1:
        best, x, y = max((mean(x, y), x, y) for i, x in enumerate(groups) for y in groups[i + 1:])
        if best < floor or best <= 0:
            break
        groups = [g for g in groups if g not in (x, y)] + [x | y]
    return {g for g in groups if len(g) > 1}


def test_average_linkage_gives_the_groups_of_its_definition_at_every_level():
    rng = np.random.default_rng(3)
    for trial in range(6):
        videos = 24
        truth = rng.integers(0, 7, videos)  # seven hidden groups; a sparse set of noisy scores
        scores = {}
        for a in range(videos):
            for b in range(a + 1, videos):
                if rng.random() < 0.45:
                    scores[a, b] = float(np.clip((0.7 if truth[a] == truth[b] else 0.05) + rng.normal(0, 0.25), -1, 1))
        merges, refused = average_linkage([(a, b, s) for (a, b), s in scores.items()], 0.05)
        assert refused == 0 and [m.level for m in merges] == sorted((m.level for m in merges), reverse=True)
        for merge in merges:  # each join goes through a real pair between the two groups, its strongest
            assert scores[min(merge.a, merge.b), max(merge.a, merge.b)] == merge.score >= merge.level
        for floor in (0.6, 0.4, 0.25, 0.1):
            union = ConstrainedUnion({})
            for merge in merges:
                if merge.level >= floor:
                    union.union(merge.a, merge.b)
            assert {frozenset(g) for g in union.groups()} == _upgma_by_definition(scores, videos, floor), (trial, floor)


def test_one_strong_pair_does_not_merge_two_groups_under_average_linkage():
    inside = [(a, b, 0.9) for group in ((1, 2, 3), (4, 5, 6)) for i, a in enumerate(group) for b in group[i + 1:]]
    bridge = [(3, 4, 0.8)]
    merges, _ = average_linkage(inside + bridge, 0.5)
    union = ConstrainedUnion({})
    for merge in merges:
        union.union(merge.a, merge.b)
    assert sorted(sorted(g) for g in union.groups()) == [[1, 2, 3], [4, 5, 6]]
    # a decision keeps 1 and 2 apart: each join that would put them together is refused
    merges, refused = average_linkage(inside + bridge, 0.5, apart={1: {2}, 2: {1}})
    union = ConstrainedUnion({})
    for merge in merges:
        union.union(merge.a, merge.b)
    assert refused >= 1 and not any({1, 2} <= g for g in union.groups()) and {4, 5, 6} in union.groups()


def test_a_medley_joins_two_recordings_only_under_single_linkage(collection, index_copy, tmp_path):
    """A file holding one recording and then another shares audio with both groups: single linkage
    chains the two groups through it, average linkage keeps them apart (the medley joins one)."""
    db, music, groups = collection
    extra = tmp_path / "medley"
    extra.mkdir()
    step = round(step_seconds() * SR)  # the second recording starts on the segment grid, as the first does
    first = np.pad(music[0], ((0, 0), (0, -music[0].shape[1] % step)))
    write_audio_file(extra / "medley.ogg", np.concatenate([first, music[1]], axis=1), SR)
    assert run("index", extra, "--index", index_copy, "--workers", "0").exit_code == 0
    g0, g1 = (next(g for g in groups if f"g{k}-orig" in " ".join(g)) for k in (0, 1))
    single = name_groups(dedup_json(index_copy, "--linkage", "single"))
    assert g0 | g1 | {"medley.ogg"} in single
    average = dedup_json(index_copy)
    assert average["linkage"] == "average"
    found = name_groups(average)
    assert not any(g0 & g and g1 & g for g in found)
    assert any("medley.ogg" in g and (g0 <= g or g1 <= g) for g in found)
    assert frozenset({"g2-long.flac", "g2-excerpt.m4a"}) in found


def test_a_deeper_recall_scores_the_pairs_a_shallow_run_did_not_reach(index_copy):
    with SearchEngine(index_copy, workers=0) as engine:
        shallow = find_duplicate_groups(engine, THRESHOLD, candidates=2).stats
        deeper = find_duplicate_groups(engine, THRESHOLD, candidates=10).stats
        again = find_duplicate_groups(engine, THRESHOLD, candidates=10).stats
    assert shallow.pairs_scored > 0 and deeper.pairs_scored > 0 and again.pairs_scored == 0
    assert deeper.pairs_stored == shallow.pairs_scored + deeper.pairs_scored


def test_threshold_comes_from_the_option_then_the_model_then_the_default(model_path):
    from ausil_search.decision import DEFAULT_GROUP_THRESHOLD, DEFAULT_MATCH_THRESHOLD, group_threshold_for, threshold_for
    from ausil_search.model import AuSiLModel

    model = AuSiLModel.load(model_path)
    assert threshold_for(model) == DEFAULT_MATCH_THRESHOLD and group_threshold_for(model) == DEFAULT_GROUP_THRESHOLD
    model.metadata["match_threshold"] = 0.71
    model.metadata["group_threshold"] = 0.33
    assert threshold_for(model) == 0.71 and threshold_for(model, 0.3) == 0.3
    assert group_threshold_for(model) == 0.33 and group_threshold_for(model, 0.2) == 0.2


def test_the_default_threshold_was_calibrated_with_the_bundled_model():
    """Swapping the bundled model without recalibrating DEFAULT_MATCH_THRESHOLD (decision.py says how) fails here."""
    from ausil_search.decision import (CALIBRATED_FOR, DEFAULT_GROUP_THRESHOLD, DEFAULT_MATCH_THRESHOLD,
                                       group_threshold_for, threshold_for)
    from ausil_search.model import BUNDLED_MODEL, AuSiLModel

    bundled = AuSiLModel.load(BUNDLED_MODEL)
    assert bundled.sha256.startswith(CALIBRATED_FOR), "recalibrate both thresholds for the new bundled model"
    assert threshold_for(bundled) == DEFAULT_MATCH_THRESHOLD  # no value of its own in the file
    assert group_threshold_for(bundled) == DEFAULT_GROUP_THRESHOLD


def test_a_sharded_index_gives_the_groups_of_one_index(collection, index_copy, tmp_path):
    """Videos in different shards are matched against each other: the groups (and the pairs that
    joined them) of a 3-shard copy equal those of the one index."""
    sharded = tmp_path / "sharded"
    result = run("reshard", index_copy, sharded, "--shards", 3)
    assert result.exit_code == 0, result.output
    with_shards, one = dedup_json(sharded, "--all-pairs"), dedup_json(index_copy, "--all-pairs")
    assert set(name_groups(with_shards)) == set(name_groups(one)) == collection[2]
    links = lambda payload: sorted((sorted([Path(link["a"]).name, Path(link["b"]).name]), round(link["score"], 4))  # noqa: E731
                                   for group in payload["groups"] for link in group["links"])
    assert links(with_shards) == links(one)
    assert with_shards["stats"]["videos"] == 11
    again = run("dedup", "--index", sharded, "--min-score", THRESHOLD, "--json")  # scores kept in the sharded index
    assert again.exit_code == 0 and json.loads(again.stdout)["stats"]["pairs_scored"] == 0
