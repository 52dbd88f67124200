"""The progress protocol: what a real indexing run reports, and how the CLI shows it in a log and on a terminal."""

from __future__ import annotations

import io

import numpy as np

from ausil_search.cli.progress import ProgressDisplay
from ausil_search.search.engine import SearchEngine
from media import synth_music, write_audio_file, write_video_file

RATE = 44100


def test_indexing_reports_its_stages_in_order_and_counts_reach_their_totals(tmp_path, model_path):
    media = tmp_path / "media"
    media.mkdir()
    write_audio_file(media / "a.flac", synth_music(4.0, RATE, seed=1), RATE)
    write_video_file(media / "b.mp4", synth_music(3.0, RATE, seed=2), RATE)
    write_audio_file(media / "c.wav", synth_music(3.0, RATE, seed=3), RATE)
    (media / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    calls = []

    def record(stage, completed, total=None, *, item=None, skipped=None, metrics=None):
        calls.append((stage, completed, total, item, skipped))

    with SearchEngine(tmp_path / "index", model_path, writable=True, workers=0) as engine:
        report = engine.index_paths([media], progress=record)

    stages = [c[0] for c in calls]
    assert stages == sorted(stages, key=["scan", "index"].index), stages  # scan, then index, never back
    index_calls = [c for c in calls if c[0] == "index"]
    assert index_calls[0][1:3] == (0, 4)  # the stage starts at 0 of the files that need work
    assert [c[1] for c in index_calls] == list(range(5)) and all(c[2] == 4 for c in index_calls)
    assert {c[3].rsplit("/", 1)[-1] for c in index_calls[1:]} == {"a.flac", "b.mp4", "c.wav", "corrupt.mp4"}
    skipped = [c for c in index_calls if c[4]]
    assert len(skipped) == 1 and skipped[0][3].endswith("corrupt.mp4") and "corrupt.mp4" in skipped[0][4]
    assert report.added == 3 and set(report.skipped) == {skipped[0][3]}
    scan_counts = [c[1] for c in calls if c[0] == "scan"]
    assert scan_counts == sorted(scan_counts) and scan_counts[-1] == 4

    # A rerun only retries the file that failed.
    calls.clear()
    with SearchEngine(tmp_path / "index", model_path, writable=True, workers=0) as engine:
        engine.index_paths([media], progress=record)
    assert [c[:3] for c in calls if c[0] == "index"] == [("index", 0, 1), ("index", 1, 1)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_at_most_every_interval_and_where_a_long_stage_ends():
    clock, log = Clock(), io.StringIO()
    with ProgressDisplay(log, interval_s=10, tty=False, clock=clock) as display:
        display("scan", 0, None)
        display("scan", 1, None, item="/m/x.mp4", skipped="/m/x.mp4: not a media file")
        clock.now += 2
        display("scan", 2, None)  # a short stage: nothing but what was skipped
        display("train-backbone", 0, 100)
        for step in range(1, 101):
            clock.now += 3  # a step every 3 s: a line every 4th step (12 s)
            display("train-backbone", step, 100, metrics={"loss": 4.0 / step, "acc": step / 100})
    lines = log.getvalue().splitlines()
    assert lines[0] == "skipped: /m/x.mp4: not a media file"
    progress = lines[1:]
    assert all(line.startswith("progress: train-backbone ") for line in progress), lines
    assert progress[0] == "progress: train-backbone 4/100 steps (4%), loss 1, acc 0.04, 0:12.0 elapsed"
    # every 12 s, the last at step 100; closing adds nothing when the last line showed the final count
    assert len(progress) == 25 and progress[-1].startswith("progress: train-backbone 100/100 steps (100%), loss 0.04")


def test_a_logged_stage_that_ends_between_lines_gets_its_final_count():
    clock, log = Clock(), io.StringIO()
    display = ProgressDisplay(log, interval_s=10, tty=False, clock=clock)
    display("index", 0, 7)
    for done in range(1, 8):
        clock.now += 4
        display("index", done, 7, item=f"/m/{done}.mp4")
    display("dedup", 0, 10)  # the next stage ends the previous one
    display.close()
    assert log.getvalue().splitlines() == [
        "progress: index 3/7 files (43%), 0:12.0 elapsed",
        "progress: index 6/7 files (86%), 0:24.0 elapsed",
        "progress: index 7/7 files (100%), 0:28.0 elapsed",
    ]


def test_a_terminal_gets_one_bar_per_stage():
    screen = io.StringIO()
    with ProgressDisplay(screen, tty=True) as display:
        display("extract", 0, 3)
        for done in range(1, 4):
            display("extract", done, 3, item=f"v{done}", skipped="v2: no audio stream" if done == 2 else None)
        display("train", 5, 8)  # a resumed run starts part way
        display("train", 6, 8, metrics={"loss": 0.25})
    text = screen.getvalue()
    assert "extract" in text and "3/3" in text and "skipped: v2: no audio stream" in text
    assert "train" in text and "6/8" in text and "loss=0.25" in text
