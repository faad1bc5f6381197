"""What the owner sees (judging/visibility.py) and the ways protect() spends the budget where it shows least:
CIEDE2000 and CIELAB equal to scikit-image's; the display view; the JND profile at the values Chou and Li's
formulas give; the perceptual budget and the lightness-only perturbation keep every pixel within their bounds
in the saved 8-bit photo; the paper's flat RGB attack is still one flag away."""
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

import attack
from attack import protect
from judging.visibility import (DISPLAY_SIDE, ciede2000, colour_difference, display_view, jnd_levels, lab,
                                owner_view, perceptual_budget)
from pipelines.svd import SVDPipeline
from plumbing.files import quantise
from plumbing.flags import DEFAULT_BUDGET, PAPER_BUDGET, attack_flags, resolve_budget
from weights import tiny_svd

SIZE = (32, 32)


def colours(seed=0, shape=(40, 50)):
    """Random sRGB colours, with rows of greys, of black and of identical pairs: the formula's special cases."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    b = (a + 0.08 * torch.randn(3, *shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    a[:, :4] = a[:1, :4]  # neutral greys (a* = b* = 0 up to rounding)
    b[:, :4] = (a[:1, :4] + 0.02 * torch.randn(1, 4, shape[1], generator=g, dtype=torch.float64)).clamp(0, 1)
    a[:, 4:6] = 0  # black against colours
    b[:, 6:8] = a[:, 6:8]  # identical
    return a, b


def test_lab_and_ciede2000_equal_scikit_image():
    a, b = colours()
    ref_a, ref_b = (rgb2lab(x.permute(1, 2, 0).numpy()) for x in (a, b))
    assert np.abs(lab(a).permute(1, 2, 0).numpy() - ref_a).max() < 1e-9
    ours = ciede2000(lab(a), lab(b)).numpy()
    reference = deltaE_ciede2000(ref_a, ref_b)
    assert np.abs(ours - reference).max() < 1e-9
    assert ours[6:8].max() == 0 and ours.mean() > 1  # identical pixels, and a real difference elsewhere


def test_colour_difference_in_bands_equals_the_whole():
    a, b = ((x * 255).round().to(torch.uint8) for x in colours(1, (37, 23)))
    whole = ciede2000(lab(a / 255), lab(b / 255)).flatten().numpy()
    assert colour_difference(a, b, rows=5) == pytest.approx((whole.mean(), np.percentile(whole, 95)), rel=1e-12)


def test_display_view_shrinks_only_what_a_screen_cannot_show():
    big = torch.randint(0, 256, (3, 12, 2400), dtype=torch.uint8)  # shown 10 pixels high: too low for SSIM
    small = torch.randint(0, 256, (3, 100, 200), dtype=torch.uint8)
    assert tuple(display_view(big).shape) == (3, 10, DISPLAY_SIDE)
    assert display_view(small) is small
    view = owner_view(big, big.clone())
    assert view["display_size"] == [10, DISPLAY_SIDE] and view["photo_size"] == [12, 2400]
    assert view["ciede2000_mean"] == 0 and view["ssim"] == 1


def test_the_report_and_summary_say_what_the_owner_sees(tmp_path, capsys):
    """A photo wider than a screen: the summary line gives its colour difference and, shown at 1920 pixels, its
    PSNR and colour difference; the report holds them all."""
    photo = tmp_path / "wide.png"
    rgb = np.random.default_rng(0).integers(0, 256, (16, 2000, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)
    args = ["--image", str(photo), "--model", "tiny", "--height", "64", "--width", "64", "--frames", "3",
            "--sample-steps", "2", "--steps", "1", "--no-video-check"]
    try:
        attack.main(args)
    except SystemExit as e:
        assert e.code == 0
    line = capsys.readouterr().out
    report = json.loads((tmp_path / "wide.guarded.json").read_text())
    assert report["display_size"] == [15, 1920] and report["photo_size"] == [16, 2000]
    assert 0 < report["ciede2000_mean"] <= report["ciede2000_p95"] and report["display_psnr_db"] > report["psnr_db"]
    assert f"colour difference {report['ciede2000_mean']:.2f} (CIEDE2000) (on a screen, 1920x15: PSNR" in line


@pytest.mark.parametrize("grey, expected", [(0, 20.0), (127, 3.0), (255, 6.0)])
def test_jnd_of_a_flat_photo_is_its_luminance_adaptation(grey, expected):
    """Chou and Li's luminance adaptation: 17 (1 - sqrt(bg / 127)) + 3 up to mid-grey, 3 / 128 (bg - 127) + 3 above;
    a flat photo has no texture to mask anything."""
    flat = torch.full((3, 16, 16), grey / 255)
    assert jnd_levels(flat) == pytest.approx(torch.full((16, 16), expected), abs=1e-3)


def test_texture_raises_the_jnd_and_the_budget_stays_within_eps():
    """A vertical edge from 100 to 160 grey levels: on it, the texture term mg (0.0001 bg + 0.115) + 0.5 - 0.01 bg
    lifts the JND above the luminance adaptation of the flat sides; each pixel's share of eps is min(1, JND / 8)."""
    photo = torch.full((3, 16, 16), 100 / 255)
    photo[:, :, 8:] = 160 / 255
    J = jnd_levels(photo)
    assert J[8, 8] > J[8, 0] + 1 and J[8, 8] > J[8, 15] + 1
    w = perceptual_budget(photo)
    assert w.shape == (1, 1, 16, 16) and 0 < w.min() and w.max() <= 1
    flat_100 = 17 * (1 - (100 / 127) ** 0.5) + 3  # grey 100, far from the edge: its luminance adaptation alone
    assert w[0, 0, 8, 0].item() == pytest.approx(flat_100 / 8, abs=1e-4)


@pytest.fixture(scope="module")
def model():
    return SVDPipeline(tiny_svd(0))


def photo_with_texture():
    """Half smooth mid-grey (JND 3 levels), half noise (JND above 8): a photo where the budget must vary."""
    g = torch.Generator().manual_seed(5)
    I = torch.full((3, *SIZE), 0.5)
    I[:, :, SIZE[1] // 2:] = torch.rand(3, SIZE[0], SIZE[1] // 2, generator=g) * 0.6 + 0.2
    return (I * 255).round() / 255


def guarded(model, I, **settings):
    I_adv, _ = protect(model, I, eps=8 / 255, steps=2, size=SIZE, num_frames=4, sample_steps=4, **settings)
    src8 = (I * 255).round().to(torch.uint8)
    return src8, quantise(src8, I_adv, 8 / 255, None)


def test_perceptual_budget_keeps_each_pixel_within_its_jnd(model):
    I = photo_with_texture()
    src8, adv8 = guarded(model, I, budget="perceptual", chroma=1.0)
    moved = (adv8.int() - src8.int()).abs()
    allowed = (jnd_levels(I).clamp(max=8) + 0.5)[None]  # quantisation rounds to the nearest level
    assert (moved <= allowed).all() and moved.max() <= 8
    smooth, busy = moved[:, :, :SIZE[1] // 2 - 2], moved[:, :, SIZE[1] // 2 + 2:]
    assert smooth.max() <= 3 and busy.max() > 3  # little on the smooth half, more where the photo is busy


def test_lightness_only_moves_the_three_channels_together(model):
    I = photo_with_texture()
    src8, adv8 = guarded(model, I, chroma=0.0)
    d = adv8.int() - src8.int()
    assert d.abs().max() <= 8 and d.abs().max() > 0
    assert torch.equal(d[0], d[1]) and torch.equal(d[1], d[2])  # no pixel here is near 0 or 255 to clip


def test_paper_budget_moves_channels_apart_and_reaches_eps(model):
    """budget flat, chroma 1 is the paper's attack: every channel on its own, up to eps at every pixel."""
    I = photo_with_texture()
    src8, adv8 = guarded(model, I, **PAPER_BUDGET)
    d = adv8.int() - src8.int()
    assert d.abs().max() == 8 and not torch.equal(d[0], d[1])
    assert d[:, :, :SIZE[1] // 2].abs().max() == 8  # the smooth half too


def test_the_default_budget_and_the_paper_one_flag_away(capsys):
    """protect()'s defaults are the command's; --paper gives the paper's flat RGB attack and refuses a mixture."""
    defaults = inspect.signature(protect).parameters
    assert {name: defaults[name].default for name in DEFAULT_BUDGET} == DEFAULT_BUDGET
    parser = attack_flags("")
    chosen = resolve_budget(parser, parser.parse_args(["--image", "x.png"]))
    paper = resolve_budget(parser, parser.parse_args(["--image", "x.png", "--paper"]))
    assert {name: getattr(chosen, name) for name in DEFAULT_BUDGET} == DEFAULT_BUDGET
    assert {name: getattr(paper, name) for name in PAPER_BUDGET} == PAPER_BUDGET
    mixed = resolve_budget(parser, parser.parse_args(["--image", "x.png", "--chroma", "0.5"]))
    assert (mixed.budget, mixed.chroma, mixed.fidelity) == ("perceptual", 0.5, 0.0)
    with pytest.raises(SystemExit) as e:
        resolve_budget(parser, parser.parse_args(["--image", "x.png", "--paper", "--fidelity", "1"]))
    assert e.value.code == 2 and "--paper" in capsys.readouterr().err


def test_a_report_made_with_the_paper_budget_resumes_under_paper(tmp_path, capsys):
    """Reports made before the budget could be chosen hold no budget settings: --paper records none either, so
    they resume under it; the default budget protects the photo again."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photo)
    args = ["--image", str(photo), "--model", "tiny", "--height", "64", "--width", "64", "--frames", "3",
            "--sample-steps", "2", "--steps", "1", "--no-video-check"]

    def run(extra):
        try:
            attack.main(args + extra)
        except SystemExit as e:
            assert e.code == 0
        return capsys.readouterr().err

    run(["--paper"])
    settings = json.loads((tmp_path / "p.guarded.json").read_text())["settings"]
    assert not {"paper", "budget", "chroma"} & set(settings) and settings["fidelity"] == 0.0
    assert "done already" in run(["--paper"])
    assert "done already" not in run([])
    settings = json.loads((tmp_path / "p.guarded.json").read_text())["settings"]
    assert (settings["budget"], settings["chroma"], settings["paper"]) == ("perceptual", 0.0, False)


def test_jnd_in_strips_is_the_whole_photo_s():
    """Strips of rows (for photos of many megapixels) give exactly the levels of the whole photo at once."""
    I = torch.rand(3, 37, 23, generator=torch.Generator().manual_seed(4))
    assert torch.equal(jnd_levels(I, strip=5), jnd_levels(I, strip=1000))
