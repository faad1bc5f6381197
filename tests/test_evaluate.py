"""evaluate.py end to end with --model tiny on three small photos: tables, CSV, JSON and contact sheets
are written, and a second run skips the photos already done."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import evaluate
from judging import report

ARGS = ["--model", "tiny", "--height", "64", "--width", "64", "--frames", "3", "--steps", "2",
        "--sample-steps", "2", "--methods", "random-sign,no-temporal"]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (48, 64), "b.jpg": (64, 64), "c.png": (72, 56)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_folder_protocol_end_to_end_and_resume(photos, tmp_path, capsys):
    out = tmp_path / "out"
    evaluate.main(["--photos", str(photos), "--out", str(out)] + ARGS)
    printed = capsys.readouterr()
    assert "UNTRAINED" in printed.out and "Table 1" in printed.out and "Table 2" in printed.out
    assert (out / "tables.md").read_text() == printed.out
    for stem in "abc":
        assert {p.name for p in (out / stem).iterdir()} == {"random-sign.png", "no-temporal.png", "metrics.json", "contact.png"}
        with Image.open(out / stem / "contact.png") as sheet:
            assert sheet.height == 3 * report.SHEET_HEIGHT  # V_0 and one row per method
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 9 and {r["method"] for r in rows} == {"original", "random-sign", "no-temporal"}
    record = json.loads((out / "results.json").read_text())[0]
    assert 0 <= record["videos"]["random-sign"]["subject_consistency"] <= 1
    assert record["videos"]["random-sign"]["psnr"] > 30  # 8/255 of uniform-sign noise: about 30.2 dB

    stamps = {stem: (out / stem / "metrics.json").stat().st_mtime_ns for stem in "abc"}
    evaluate.main(["--photos", str(photos), "--out", str(out)] + ARGS)
    assert capsys.readouterr().err.count("done already, skipped") == 3
    assert stamps == {stem: (out / stem / "metrics.json").stat().st_mtime_ns for stem in "abc"}


@pytest.mark.parametrize("flags, message", [(["--methods", "nope"], "unknown nope"),
                                            (["--frames", "2"], "at least 3")])
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--photos", str(photos), "--out", str(tmp_path / "o"), "--model", "tiny"] + flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
