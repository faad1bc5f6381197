"""PSNR and SSIM equal scikit-image's (Gaussian-weighted SSIM of Wang et al. 2004) on several images."""
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from judging.metrics import psnr, ssim


def image_pairs():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 57, generator=g)
    yield "noise", a, (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    smooth = torch.linspace(0, 1, 64).view(1, 1, -1).expand(3, 48, -1).clone()
    yield "gradient+8bit", smooth, (smooth * 255 + torch.randint(-8, 9, smooth.shape, generator=g)).clamp(0, 255) / 255
    yield "single channel", a[:1], a[:1].flip(-1)
    yield "dark vs bright", torch.zeros(3, 16, 16), torch.full((3, 16, 16), 0.9)


@pytest.mark.parametrize("name, a, b", list(image_pairs()), ids=lambda v: v if isinstance(v, str) else "")
def test_psnr_and_ssim_match_scikit_image(name, a, b):
    x, y = a.double().numpy(), b.double().numpy()
    ref_ssim = structural_similarity(x, y, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert abs(ssim(a, b) - ref_ssim) <= 1e-12 and abs(ssim(a, b, rows=5) - ref_ssim) <= 1e-12
    assert abs(psnr(a, b) - peak_signal_noise_ratio(x, y, data_range=1.0)) <= 1e-4


def test_identical_images():
    a = torch.rand(3, 20, 20)
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_and_psnr_of_8_bit_photos_by_strips():
    """On uint8 photos, by strips of rows (for photos of many megapixels): the numbers of the float photos at once."""
    g = torch.Generator().manual_seed(8)
    a8 = torch.randint(0, 256, (3, 45, 31), generator=g, dtype=torch.uint8)
    b8 = (a8.int() + torch.randint(-9, 10, a8.shape, generator=g)).clamp(0, 255).byte()
    a, b = a8.double() / 255, b8.double() / 255
    assert ssim(a8, b8, rows=7) == pytest.approx(ssim(a, b, rows=10**6), abs=1e-14)
    assert psnr(a8, b8, rows=7) == pytest.approx(psnr(a, b), abs=1e-9)
