"""benchmarks/degradation_curve.py on generated recordings: a clean copy is found, every row is measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from media import synth_music, write_audio_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import degradation_curve  # noqa: E402


@pytest.mark.slow
def test_clean_copies_find_their_source_and_short_files_are_skipped(tmp_path):
    rate = 44_100
    paths = []
    for seed, seconds in ((11, 20.0), (12, 5.0), (13, 20.0), (14, 20.0)):
        path = tmp_path / f"r{seed}.ogg"
        write_audio_file(path, synth_music(seconds, rate, seed), rate)
        paths.append(path)
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(f"{p}\n" for p in paths))
    out = tmp_path / "curve.json"
    assert degradation_curve.main([str(sources), "--recordings", "3", "--seconds", "6", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result["recordings"]) == ["r11.ogg", "r13.ogg", "r14.ogg"]  # the 5-s file is too short
    rows = {row["condition"]: row for row in result["rows"]}
    assert list(rows) == [label for label, _ in degradation_curve.CONDITIONS]
    clean = rows["clean"]
    # A copy identical to its source must beat the same recording's other excerpt and the other recordings.
    assert clean["copies"] == 3 and clean["full_top1"] == 1.0 and clean["mac_top1"] == 1.0
    assert clean["full_margin"] > 0 and clean["mac_margin"] > 0
    assert rows["mix +0 dB"]["full_margin"] < clean["full_margin"]
