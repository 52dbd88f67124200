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
def test_clean_copies_find_their_source_and_short_files_are_skipped(tmp_path, capsys):
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

    # --compare: a run against itself moves nothing; against a copy whose MAC misses every hard row it
    # reports minus A's hard-row top-1, with an interval around it, and refuses other recordings.
    worse = json.loads(out.read_text())
    hard = [row for row in worse["rows"] if degradation_curve.is_hard_row(row["condition"])]
    assert {row["condition"] for row in hard} >= {"mix +0 dB", "noise 0 dB", "noise 10 dB", "telephone + mix −4 dB"}
    assert not {"noise 20 dB", "clean", "opus 12 kbps"} & {row["condition"] for row in hard}
    expected = -sum(sum(row["mac_hits"]) for row in hard) / (len(hard) * 3) or 0.0
    for row in hard:
        row["mac_hits"] = [0, 0, 0]
    worse_path = tmp_path / "worse.json"
    worse_path.write_text(json.dumps(worse))
    capsys.readouterr()
    assert degradation_curve.main(["--compare", str(out), str(out)]) == 0
    assert degradation_curve.main(["--compare", str(out), str(worse_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("[")[0].strip() for line in lines if line.strip().startswith("mac:")] == ["mac: +0.000", f"mac: {expected:+.3f}"]
    # --only: the rows whose label holds one of the words, in CONDITIONS' order; no such row is an error.
    only = tmp_path / "only.json"
    assert degradation_curve.main([str(sources), "--recordings", "3", "--seconds", "6", "--only", "pass,clean",
                                   "--out", str(only)]) == 0
    assert [row["condition"] for row in json.loads(only.read_text())["rows"]] == [
        "clean", "high-pass 250 Hz", "high-pass 500 Hz", "high-pass 800 Hz", "low-pass 6000 Hz", "low-pass 3000 Hz"]
    with pytest.raises(SystemExit, match="no row"):
        degradation_curve.main([str(sources), "--recordings", "3", "--seconds", "6", "--only", "flanger"])
    worse["recordings"] = worse["recordings"][::-1]
    worse_path.write_text(json.dumps(worse))
    with pytest.raises(SystemExit, match="other recordings"):
        degradation_curve.main(["--compare", str(out), str(worse_path)])
