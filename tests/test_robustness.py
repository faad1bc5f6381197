"""Expectation over transformations in attack.py and the survival report of evaluate.py, on the tiny model:
--eot changes only what it should (off: the same draws, and the transformation never called; on: only the
photo the adversary receives is transformed, after all the other draws; chains and the model's own VAE round
trip included), and evaluate --transforms writes the survival tables and the second contact sheet, with a chain
through the VAE among its transformations (a crop's common region: tests/test_purify.py)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import attack
import evaluate
from attack import TERMS, Objective
from judging import report
from pipelines.svd import SVDPipeline
from weights import tiny_svd

SIZE, FRAMES, SAMPLE_STEPS = (64, 64), 3, 3


@pytest.fixture(scope="module")
def svd():
    return SVDPipeline(tiny_svd(0))


@pytest.fixture(scope="module")
def I_src():
    g = torch.Generator().manual_seed(4)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(48, 56), mode="bilinear")[0]


def objective(svd, I_src, eot):
    return Objective(svd, I_src[None], TERMS, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                     attn_blocks=svd.default_attn_blocks(), sample_steps=SAMPLE_STEPS, seed=0, eot=eot)


def test_eot_draws_after_everything_else(svd, I_src, monkeypatch):
    plain, eot = objective(svd, I_src, ()), objective(svd, I_src, ("jpeg", "blur"))
    for seed in range(3):
        a, b = plain.draw(torch.Generator().manual_seed(seed)), eot.draw(torch.Generator().manual_seed(seed))
        assert a[3] is None and b[3] is not None
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    # without EOT the transformation is never applied
    monkeypatch.setattr(attack, "differentiable", lambda *a: pytest.fail("transformed without --eot"))
    with torch.no_grad():
        plain(I_src[None], plain.draw(torch.Generator().manual_seed(1)))


def test_only_what_the_adversary_receives_is_transformed(svd, I_src, monkeypatch):
    obj = objective(svd, I_src, ("jpeg",))
    aug, sigma, noise, _ = obj.draw(torch.Generator().manual_seed(2))
    I_adv = (I_src[None] + 0.02).clamp(0, 1)
    with torch.no_grad():
        clean = obj(I_adv, (aug, sigma, noise, None))
        jpeg = obj(I_adv, (aug, sigma, noise, (("jpeg", 50.0), 0)))
        untransformed = obj(I_adv, (aug, sigma, noise, (None, 0)))  # EOT drew "no transformation"
    assert jpeg["img"] == clean["img"]  # the fidelity term sees the photo itself
    assert all(jpeg[t] != clean[t] for t in ("enc", "con", "att"))
    assert all(untransformed[t] == clean[t] for t in TERMS)
    seen = []
    monkeypatch.setattr(attack, "differentiable", lambda spec, I, g, vae: seen.append((spec, I.shape)) or I)
    with torch.no_grad():
        assert obj(I_adv, (aug, sigma, noise, (("blur", 1.0), 0))) == clean
    assert seen == [(("blur", 1.0), I_adv.shape)] * 2  # the guarded photo, then the source for A_src


def test_eot_counts_no_transformation_as_attack(svd, I_src):
    """With I_adv = I_src the attention distance is zero whatever T was drawn: A_src comes from T(I_src)."""
    obj = objective(svd, I_src, ("jpeg", "blur"))
    aug, sigma, noise, _ = obj.draw(torch.Generator().manual_seed(5))
    with torch.no_grad():
        for T in [(("jpeg", 50.0), 0), (("blur", 1.0), 0)]:
            assert obj(I_src[None], (aug, sigma, noise, T))["att"] == obj.tau2, T


def test_eot_gradient_reaches_the_photo(svd, I_src):
    obj = objective(svd, I_src, ("jpeg", "resize", "blur", "noise", "noise+vae"))
    assert obj.vae is not None and objective(svd, I_src, ("jpeg",)).vae is None  # the VAE only when it may be drawn
    g = torch.Generator().manual_seed(0)
    for T in [(("jpeg", 60.0), 0), (("down", 0.5), 0), (("resize", 0.7), 0), (("blur", 1.0), 0), (("noise", 0.02), 3),
              ((("noise", 0.05), ("vae", None)), 3), ((("crop", 0.8), ("denoise", 0.05)), 0)]:
        aug, sigma, noise, _ = obj.draw(g)
        I_adv = I_src[None].clone().requires_grad_()
        values = obj(I_adv, (aug, sigma, noise, T))
        grad, = torch.autograd.grad(values["enc"] + values["con"], I_adv)
        assert grad.isfinite().all() and grad.abs().sum() > 0, T


def test_attack_cli_records_eot_only_when_on(tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8)).save(photo)
    common = ["--image", str(photo), "--model", "tiny", "--height", "64", "--width", "64", "--frames", "3",
              "--sample-steps", "2", "--steps", "2"]
    attack.main(common + ["--out", str(tmp_path / "plain.png")])
    attack.main(common + ["--out", str(tmp_path / "eot.png"), "--eot", "noise,jpeg,jpeg"])
    plain = json.loads((tmp_path / "plain.json").read_text())["settings"]
    eot = json.loads((tmp_path / "eot.json").read_text())["settings"]
    assert "eot" not in plain and eot["eot"] == ["noise", "jpeg"]


def test_survival_report_end_to_end(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(photos / name)
    out = tmp_path / "out"
    evaluate.main(["--photos", str(photos), "--out", str(out), "--model", "tiny", "--no-judges", "--height", "64",
                   "--width", "64", "--frames", "3", "--steps", "2", "--sample-steps", "2",
                   "--methods", "i2vguard,random", "--transforms", "jpeg75,down0.5,noise0.02+vae"])
    tables = capsys.readouterr().out
    assert "Survival" in tables and "| jpeg75 | down0.5 | noise0.02+vae | worst case |" in tables
    for stem in "ab":
        record = json.loads((out / stem / "metrics.json").read_text())
        assert record["settings"]["transforms"] == ["jpeg75", "down0.5", "noise0.02+vae"]
        assert set(record["transformed"]) == {"jpeg75", "down0.5", "noise0.02+vae"}
        for scores in record["transformed"].values():
            assert set(scores) == {"original", "i2vguard", "random"}
        with Image.open(out / stem / "transformed.png") as sheet:  # per transformation: source, i2vguard
            assert sheet.height == 3 * 2 * report.SHEET_HEIGHT
    worst = [max(s["i2vguard"]["video_psnr"] for s in json.loads((out / stem / "metrics.json").read_text())
                 ["transformed"].values()) for stem in "ab"]
    assert "| Our guarded image | " in tables and report.mean_std(worst, 1) in tables.split("PSNR to V_0^T")[1]


def test_bad_transforms_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--photos", str(tmp_path), "--out", str(tmp_path / "o"), "--transforms", "jpeg75,sharpen2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown transformation 'sharpen2'" in err and len(err.splitlines()) == 1
