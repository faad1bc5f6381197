"""evaluate.py end to end with --model tiny on three small photos: tables, CSV, JSON and contact sheets
are written, and a second run skips the photos already done."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

import evaluate
from judging import report
from toy.train import save_component
from weights import tiny_svd

ARGS = ["--model", "tiny", "--height", "64", "--width", "64", "--frames", "3", "--steps", "2",
        "--sample-steps", "2", "--methods", "no-temporal,random-sign"]  # not in the tables' order


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
    # 3 photos x 3 methods x 3 video seeds, by default the three after the attack's --seed 0
    assert len(rows) == 27 and {r["method"] for r in rows} == {"original", "random-sign", "no-temporal"}
    assert {r["video_seed"] for r in rows} == {"1", "2", "3"}
    record = json.loads((out / "results.json").read_text())[0]
    assert record["video_seeds"] == [1, 2, 3] and len(record["videos"]["random-sign"]) == 3
    assert 0 <= record["videos"]["random-sign"][0]["subject_consistency"] <= 1
    assert record["videos"]["random-sign"][0]["psnr"] > 30  # 8/255 of uniform-sign noise: about 30.2 dB
    assert "3 video seeds (none of them the attack's)" in printed.out
    # rows in the tables' order whatever --methods says; the contact sheets follow it
    assert printed.out.index("| Random ±eps noise image") < printed.out.index("| w.o. Temporal Attack")

    stamps = {stem: (out / stem / "metrics.json").stat().st_mtime_ns for stem in "abc"}
    evaluate.main(["--photos", str(photos), "--out", str(out)] + ARGS)
    assert capsys.readouterr().err.count("done already, skipped") == 3
    assert stamps == {stem: (out / stem / "metrics.json").stat().st_mtime_ns for stem in "abc"}


def test_a_column_no_video_has_is_left_out():
    """Without judges (--no-judges, the toy) their columns are dropped, not shown as dashes; a column only
    some rows have (the comparisons with V_0, empty on V_0's own row) stays."""
    columns = [("video_psnr", "PSNR to V_0", 1), ("dino_similarity", "DINO", 100), ("psnr", "PSNR", 1)]
    text = report.table([("V_0", [{"psnr": 40.0}]), ("guarded", [{"psnr": 35.0, "video_psnr": 20.0}])], columns)
    assert text.splitlines()[0] == "| Source | n | PSNR to V_0 | PSNR |"
    assert text.splitlines()[2:] == ["| V_0 | 1 | – | 40.00 ± 0.00 |", "| guarded | 1 | 20.00 ± 0.00 | 35.00 ± 0.00 |"]


@pytest.mark.parametrize("flags, message", [(["--methods", "nope"], "unknown nope"),
                                            (["--frames", "2"], "at least 3"),
                                            (["--seed", "4", "--video-seeds", "3,4"], "leave out the attack's"),
                                            (["--video-seeds", ","], "no seed given"),
                                            (["--model", "tiny-cogvideox"], "judges SVD models"),
                                            (["--victim", "tiny-controlnext"], "judges SVD models")])
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--photos", str(photos), "--out", str(tmp_path / "o"), "--model", "tiny"] + flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def write_tiny(folder, seed):
    """A tiny random SVD (another seed than --model tiny's) in the official layout, float16 files."""
    svd = tiny_svd(seed=seed)
    for name, network, class_name, stem in [("vae", svd.vae, "AutoencoderKLTemporalDecoder", "diffusion_pytorch_model"),
                                            ("unet", svd.unet, "UNetSpatioTemporalConditionModel",
                                             "diffusion_pytorch_model"),
                                            ("image_encoder", svd.image_encoder, "CLIPVisionModelWithProjection",
                                             "model")]:
        save_component(folder / name, network, class_name, stem)
    return folder


def test_victim_makes_every_video_and_the_attacks_never_see_it(photos, tmp_path, capsys):
    """Transfer: with --victim the guarded photos are the same bytes (the attacks ran against --model), but
    every video, V_0 included, comes from the other model."""
    victim = write_tiny(tmp_path / "victim", seed=1)
    args = ["--photos", str(photos / "a.png"), "--video-seeds", "7"] + ARGS
    evaluate.main(args + ["--out", str(tmp_path / "same")])
    evaluate.main(args + ["--out", str(tmp_path / "other"), "--victim", str(victim)])
    capsys.readouterr()
    same, other = (json.loads((tmp_path / run / "a" / "metrics.json").read_text()) for run in ("same", "other"))
    assert same["settings"]["victim"] == "tiny" and other["settings"]["victim"] == str(victim)
    for method in ("random-sign", "no-temporal"):
        assert (tmp_path / "same/a" / f"{method}.png").read_bytes() == (tmp_path / "other/a" / f"{method}.png").read_bytes()
    change = [record["videos"]["original"][0]["mean_frame_change"] for record in (same, other)]
    assert change[0] != change[1]


@pytest.mark.parametrize("record", [[], {"videos": {"original": 5}}, {"videos": {"original": [1]}, "photo": "a.png",
                                                                       "settings": {}, "video_seeds": [1]}])
def test_merge_only_passes_over_a_record_of_the_wrong_shape(tmp_path, capsys, record):
    (tmp_path / "o" / "a").mkdir(parents=True)
    (tmp_path / "o" / "a" / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--merge-only", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "no photo in" in err and len(err.splitlines()) == 1
