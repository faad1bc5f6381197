"""judging/transforms.py: each differentiable transformation gives exactly the real one's output in its forward pass
(JPEG: Pillow's encoder and decoder, at odd sizes and with its 4:2:0 chroma subsampling), a finite, non-zero
gradient, and where its approximation is smooth a gradient equal to finite differences; the JPEG
approximation is close to Pillow's codec; specs parse or are refused in one line; EOT draws every kind."""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from judging import transforms
from judging.purifiers import VAERoundTrip
from judging.transforms import differentiable, draw_eot, parse, parse_eot, real, smooth
from weights import tiny_svd

SIZES = [(32, 32), (37, 53), (17, 24)]  # whole MCUs, odd sizes, less than one MCU high


@pytest.fixture(scope="module")
def photo():
    """An 8-bit photo with smooth regions, edges and texture, 37x53."""
    g = torch.Generator().manual_seed(0)
    smooth_field = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(37, 53), mode="bicubic")
    texture = 0.15 * torch.rand(1, 3, 37, 53, generator=g)
    return transforms.to_8bit((smooth_field + texture).clamp(0, 1)[0])


def pillow_jpeg(rgb8, quality, **options):
    buffer = io.BytesIO()
    Image.fromarray(rgb8.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality, **options)
    with Image.open(buffer) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("quality", [95, 75, 50])
def test_jpeg_forward_is_pillows_codec_exactly(photo, size, quality):
    rgb8 = photo[:, :size[0], :size[1]].contiguous()
    I = (rgb8.double() / 255)[None].requires_grad_()
    out = differentiable(("jpeg", quality), I)
    expected = pillow_jpeg(rgb8, quality, subsampling="4:2:0")
    assert torch.equal(out.detach()[0], expected.double() / 255)
    # the approximation that gives the gradient is close to the codec: its squared error to the codec's
    # output is at most a sixth of the codec's own (measured here: 8x to 97x smaller, 35.6-46.9 dB; the
    # rest is coefficients that libjpeg's integer DCT rounds the other way)
    approx = smooth(("jpeg", quality), I).detach()[0]
    codec_error = (expected.double() / 255 - rgb8.double() / 255).pow(2).mean()
    approx_error = (expected.double() / 255 - approx).pow(2).mean()
    assert approx_error < codec_error / 6


def test_pillow_default_is_420_subsampling(photo):
    """What real() calls (Pillow's defaults) is the 4:2:0 codec the approximation follows."""
    assert torch.equal(real(("jpeg", 75), photo), pillow_jpeg(photo, 75, subsampling="4:2:0"))
    assert not torch.equal(real(("jpeg", 75), photo), pillow_jpeg(photo, 75, subsampling="4:4:4"))


@pytest.mark.parametrize("spec", ["jpeg50", "resize0.5", "down0.6", "blur1.2", "noise0.02"])
def test_forward_is_the_real_transformation_and_gradient_is_finite(photo, spec):
    spec = parse(spec)
    I = (photo.double() / 255)[None].requires_grad_()
    out = differentiable(spec, I, torch.Generator().manual_seed(5))
    assert torch.equal(out.detach()[0], real(spec, photo, torch.Generator().manual_seed(5)).double() / 255)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad, = torch.autograd.grad((out * weights).sum(), I)
    assert grad.isfinite().all() and grad.abs().sum() > 0


@pytest.mark.parametrize("spec", ["resize0.5", "down0.6", "blur1.2", "noise0.02", "jpeg75"])
def test_gradient_equals_finite_differences(spec, monkeypatch):
    """gradcheck of each smooth approximation in float64; for JPEG, of its linear chain (colour transform,
    chroma averaging, DCT, upsampling) with the rounding, passed straight through, taken as the identity."""
    spec = parse(spec)
    if spec[0] == "jpeg":
        monkeypatch.setattr(transforms, "round_straight_through", lambda x: x)
    I = torch.rand(1, 3, 11, 13, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.8 + 0.1
    noise = torch.randn(3, 11, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda x: smooth(spec, x, noise), (I.requires_grad_(),))


@pytest.mark.parametrize("spec, most, mean", [("blur1", 0.5, 0.5), ("blur0.6", 0.5, 0.5), ("crop0.8", 0, 0),
                                             ("denoise0.1", 0.5, 0.5), ("long40", 3, 0.5), ("long24", 3, 0.5)])
def test_approximation_is_the_real_transformation_before_rounding(photo, spec, most, mean):
    """The gradient comes from smooth(); where the real transformation is itself smooth before its rounding to
    8 bits (blur, crop, the bilateral denoiser) smooth() must be that transformation within the rounding's half
    level, so a wrong sigma or kernel fails (blur at twice its sigma: 14-20 levels off); the long-side resize,
    torch's bicubic for Pillow's, within 0.5 levels on average (measured 0.30; a bilinear kernel 1.2, bicubic
    without antialiasing 2.8-6.0) and 3 at most (measured 2.5)."""
    spec = parse(spec)
    I = (photo.double() / 255)[None]
    difference = (smooth(spec, I)[0] * 255 - real(spec, photo).double()).abs()
    assert difference.max() <= most + 1e-6 and difference.mean() <= mean + 1e-6


def test_vae_approximation_is_the_real_round_trip_at_the_models_size():
    """At the model's size no resize stands between the photo and the VAE: smooth() is the real round trip before
    its rounding, within half a level (a tiny random SVD VAE; off the model's size the two resizes differ)."""
    vae = VAERoundTrip(tiny_svd(0).vae, (32, 32))
    g = torch.Generator().manual_seed(4)
    photo = transforms.to_8bit(torch.rand(3, 32, 32, generator=g))
    approx = smooth(parse("vae"), (photo.float() / 255)[None], vae=vae)[0]
    assert (approx.double() * 255 - real(parse("vae"), photo, vae=vae).double()).abs().max() <= 0.5 + 1e-4


def test_resize_approximation_is_close_to_pillow(photo):
    I = (photo.double() / 255)[None]
    for spec in (("resize", 0.5), ("down", 0.5)):
        exact = real(spec, photo).double() / 255
        assert exact.shape == smooth(spec, I)[0].shape
        assert 10 * math.log10(1 / (exact - smooth(spec, I)[0]).pow(2).mean()) > 35


def test_blur_keeps_flat_images_and_takes_small_ones():
    flat = torch.full((1, 3, 9, 12), 0.3, dtype=torch.float64)
    torch.testing.assert_close(transforms.gaussian_blur(flat, 1.5), flat, rtol=0, atol=1e-12)
    x = torch.rand(1, 3, 5, 4, dtype=torch.float64)  # smaller than the kernel's radius
    assert transforms.gaussian_blur(x, 2.0).shape == x.shape


@pytest.mark.parametrize("text,expected", [("jpeg75", ("jpeg", 75.0)), ("resize0.5", ("resize", 0.5)),
                                           ("down.25", ("down", 0.25)), ("blur1", ("blur", 1.0)),
                                           ("noise0.02", ("noise", 0.02))])
def test_parse(text, expected):
    assert parse(text) == expected
    assert transforms.name(expected) == text.replace("down.25", "down0.25")


@pytest.mark.parametrize("text", ["jpeg", "jpeg0", "jpeg101", "jpeg7.5", "resize2", "down0.0001", "blur0", "noise1",
                                  "gif3", ""])
def test_parse_refuses_in_one_line(text):
    with pytest.raises(ValueError) as e:
        parse(text)
    assert "\n" not in str(e.value)


def test_eot_draws_every_kind_within_its_range():
    g = torch.Generator().manual_seed(0)
    draws = [draw_eot(parse_eot("jpeg,resize,blur,noise"), g) for _ in range(400)]
    kinds = {d[0] if d else None for d in draws}
    assert kinds == {None, "jpeg", "resize", "down", "blur", "noise"}
    for d in filter(None, draws):
        low, high = transforms.EOT_RANGES["resize" if d[0] == "down" else d[0]]
        assert low <= d[1] <= high
    with pytest.raises(ValueError):
        parse_eot("jpeg,sharpen")
