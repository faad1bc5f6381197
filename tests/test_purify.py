"""The transformations of a purifying adversary and chains of edits (judging/transforms.py, judging/purifiers.py):
each one's differentiable forward pass is its real() exactly, with a finite gradient that reaches the photo;
crop, long and the bilateral denoiser match oracles written here (Pillow, a per-pixel loop); the vae round trip
runs on the tiny model's VAE; chains apply left to right, parse, and refuse a bad link in one line; EOT draws
the new kinds and chains; the survival report compares V_0 with a cropped photo's video on their common region."""
import numpy as np
import pytest
import torch
from PIL import Image

from judging import transforms
from judging.metrics import video_distance
from judging.purifiers import VAERoundTrip, bilateral
from judging.survival import survive
from judging.transforms import (PURIFY, differentiable, draw_eot, name, parse, parse_eot, parse_list, real,
                                smooth)
from plumbing.photos import model_input
from weights import tiny_svd

MODEL_SIZE = (64, 64)


@pytest.fixture(scope="module")
def photo():
    """An 8-bit photo with smooth regions, edges and texture, 37x53 (not the model's size)."""
    g = torch.Generator().manual_seed(0)
    field = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(37, 53), mode="bicubic")
    return transforms.to_8bit((field + 0.15 * torch.rand(1, 3, 37, 53, generator=g)).clamp(0, 1)[0])


@pytest.fixture(scope="module")
def vae():
    return VAERoundTrip(tiny_svd(0).vae, MODEL_SIZE)


def pil(rgb8):
    return Image.fromarray(rgb8.permute(1, 2, 0).numpy())


def tensor(im):
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


@pytest.mark.parametrize("text", ["crop0.8", "crop0.55", "long40", "long100", "denoise0.1", "vae", "noise0.05+vae",
                                  "long30+jpeg85", "noise0.1+resize0.5", "crop0.5+down0.6+blur1",
                                  "denoise0.05+crop0.9+vae"])
def test_forward_is_real_and_gradient_reaches_the_photo(photo, vae, text):
    spec = parse(text)
    I = (photo.double() / 255)[None].requires_grad_()
    out = differentiable(spec, I, torch.Generator().manual_seed(5), vae)
    assert torch.equal(out.detach()[0], real(spec, photo, torch.Generator().manual_seed(5), vae).double() / 255)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad, = torch.autograd.grad((out * weights).sum(), I)
    assert grad.isfinite().all() and grad.abs().sum() > 0


def test_crop_and_long_are_pillows(photo):
    # crop0.8 of 37x53: 30x42 (rounded), centred: (37 - 30) // 2 = 3 rows and (53 - 42) // 2 = 5 columns cut above
    assert torch.equal(real(("crop", 0.8), photo), tensor(pil(photo).crop((5, 3, 5 + 42, 3 + 30))))
    # long40: the long side 53 -> 40, the short one 37 * 40 / 53 = 27.9 -> 28, Pillow's bicubic; a smaller photo stays
    assert torch.equal(real(("long", 40.0), photo), tensor(pil(photo).resize((40, 28), Image.Resampling.BICUBIC)))
    assert torch.equal(real(("long", 53.0), photo), photo)


def test_bilateral_is_the_filter_by_its_definition():
    x = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma_range, radius, sigma_space = 0.2, 2, 1.0
    a = x[0].numpy()
    expected = np.zeros_like(a)
    for i in range(6):
        for j in range(7):
            total, weights = 0, 0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    n = a[:, min(max(i + dy, 0), 5), min(max(j + dx, 0), 6)]  # edges replicated
                    w = np.exp(-(dy**2 + dx**2) / (2 * sigma_space**2)
                               - ((n - a[:, i, j]) ** 2).sum() / (2 * sigma_range**2))
                    total, weights = total + w * n, weights + w
            expected[:, i, j] = total / weights
    torch.testing.assert_close(bilateral(x, sigma_range)[0], torch.from_numpy(expected), rtol=0, atol=1e-12)


def test_denoise_removes_small_differences_and_keeps_edges():
    g = torch.Generator().manual_seed(3)
    edge = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    edge[..., 8:] = 0.8
    noisy = edge + 0.01 * torch.randn(edge.shape, generator=g, dtype=torch.float64)
    out = bilateral(noisy, 0.1)
    assert (out - edge).abs().mean() < (noisy - edge).abs().mean() / 2  # the noise is averaged away
    assert (out[..., 7] - out[..., 8]).abs().min() > 0.75  # the edge, ten sigmas high, stays sharp


@pytest.mark.parametrize("text", ["crop0.7", "long8", "denoise0.2"])
def test_gradient_equals_finite_differences(text):
    I = torch.rand(1, 3, 7, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: smooth(parse(text), x), (I.requires_grad_(),))


def test_vae_round_trip_on_the_tiny_model(photo, vae):
    """Pillow's Lanczos to the model's size, the posterior mean, the decoder, 8 bits, Pillow's bicubic back."""
    with torch.no_grad():
        mean, _ = vae.vae.encode(model_input(photo, MODEL_SIZE)[None])
        decoded = vae.vae.decode(mean, num_frames=1)[0]
    small = ((decoded.double() + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    expected = tensor(pil(small).resize((53, 37), Image.Resampling.BICUBIC))
    assert torch.equal(real(("vae", None), photo, vae=vae), expected)
    at_model_size = photo[:, :32, :32].repeat(1, 2, 2)  # 64x64: no resizing on either side
    assert real(("vae", None), at_model_size, vae=vae).shape == at_model_size.shape
    with pytest.raises(ValueError, match="needs the adversary's VAE"):
        real(("vae", None), photo)


def test_chains_apply_left_to_right(photo):
    for text in ("crop0.5+long20", "long20+crop0.5", "noise0.1+resize0.5"):
        spec = parse(text)
        step_by_step = photo
        g = torch.Generator().manual_seed(7)
        for link in transforms.links(spec):
            step_by_step = real(link, step_by_step, g)
        assert torch.equal(real(spec, photo, torch.Generator().manual_seed(7)), step_by_step)
    assert real(parse("crop0.5+long20"), photo).shape != real(parse("long20+crop0.5"), photo).shape


@pytest.mark.parametrize("text,expected", [("noise0.05+vae", (("noise", 0.05), ("vae", None))),
                                           ("long1080+jpeg85", (("long", 1080.0), ("jpeg", 85.0))),
                                           ("vae", ("vae", None)), ("crop.8", ("crop", 0.8)),
                                           ("denoise0.1", ("denoise", 0.1))])
def test_chains_parse(text, expected):
    assert parse(text) == expected
    assert parse(name(expected)) == expected


@pytest.mark.parametrize("text,link", [("noise0.1+", 2), ("noise0.1++vae", 2), ("jpeg75+sharpen2", 2),
                                       ("vae0.5+jpeg75", 1), ("crop0.8+long7", 2), ("crop1.5+vae", 1)])
def test_bad_links_are_refused_in_one_line(text, link):
    with pytest.raises(ValueError) as e:
        parse(text)
    assert f"link {link} of the chain" in str(e.value) and "\n" not in str(e.value)


def test_purify_preset():
    specs = parse_list("purify,jpeg75,blur2")
    assert [name(s) for s in specs] == list(PURIFY) + ["blur2"]  # each once, in order
    assert name(specs[2]) == "long1080+jpeg85" and specs[2] == (("long", 1080.0), ("jpeg", 85.0))


def test_eot_takes_new_kinds_and_chains():
    items = parse_eot("noise+vae, crop,long,denoise,jpeg75+blur,crop")
    assert items == ("noise+vae", "crop", "long", "denoise", "jpeg75+blur")
    assert parse_eot("purify") == PURIFY and transforms.needs_vae(items) and not transforms.needs_vae(("jpeg",))
    g = torch.Generator().manual_seed(0)
    draws = [draw_eot(items, g) for _ in range(300)]
    assert {None if d is None else name(d).rstrip("0123456789.") for d in draws} >= {None, "crop", "long", "denoise"}
    for d in filter(None, draws):
        for kind, value in transforms.links(d):
            if kind == "vae":
                assert value is None
            elif kind == "jpeg":
                assert value == 75  # given, not drawn
            else:
                low, high = transforms.EOT_RANGES[kind]
                assert low <= value <= high
    assert any(isinstance(d[0], tuple) and d[0][0] == "noise" and d[1] == ("vae", None) for d in draws if d)
    with pytest.raises(ValueError):
        parse_eot("noise+vae0")


def test_survival_compares_v0_on_the_common_region():
    """With a 'model' whose video is the photo itself stretched to 32x32, the cropped source's video is V_0's
    centre enlarged: on the common region they nearly agree, frame against whole frame they do not."""
    g = torch.Generator().manual_seed(1)
    src8 = transforms.to_8bit(torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(40, 40),
                                                              mode="bicubic").clamp(0, 1)[0])

    def make_video(rgb8):
        return tensor(pil(rgb8).resize((32, 32), Image.Resampling.BICUBIC))[None].repeat(3, 1, 1, 1)

    clean8 = make_video(src8)
    results, _ = survive([("original", src8, None, clean8)], [("crop", 0.5)], make_video, 0)
    reference = make_video(real(("crop", 0.5), src8))
    region = tensor(pil(clean8[0]).crop((8, 8, 24, 24)).resize((32, 32), Image.Resampling.BICUBIC))
    region = region[None].repeat(3, 1, 1, 1)  # the centre half of each side of V_0, enlarged to the frame
    assert results["crop0.5"]["original"] == video_distance(reference, region)
    assert results["crop0.5"]["original"]["video_psnr"] > video_distance(reference, clean8)["video_psnr"] + 10
