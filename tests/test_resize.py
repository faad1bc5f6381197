"""pipelines/resize.py: the resizes as matrix products give F.interpolate's numbers (and the CLIP blur's, in
test_sample.py), forward and backward, on photos larger and smaller than the model's input and of other shapes;
Wan's crop keeps exactly the rows and columns F.interpolate's resize would."""
import pytest
import torch
import torch.nn.functional as F

from pipelines.resize import bicubic_matrix, separable
from pipelines.svd import to_model_input
from pipelines.wan_photo import crop_box, release_crop


@pytest.mark.parametrize("photo, size", [((300, 400), (64, 64)), ((40, 30), (64, 48)), ((11, 900), (32, 96)),
                                         ((576, 1024), (320, 576))])
def test_bicubic_is_f_interpolate(photo, size):
    I = torch.rand(1, 3, *photo, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, *size, dtype=torch.float64)
    expected = F.interpolate(I, size=size, mode="bicubic", antialias=True, align_corners=False)
    ours = separable(I, bicubic_matrix(photo[0], size[0]), bicubic_matrix(photo[1], size[1]))
    assert (ours - expected).abs().max() < 1e-12
    g_expected, = torch.autograd.grad((expected * w).sum(), I)
    g_ours, = torch.autograd.grad((ours * w).sum(), I)
    assert (g_ours - g_expected).abs().max() < 1e-12
    assert (to_model_input(I.detach().float(), size) - (expected.float() * 2 - 1)).abs().max() < 1e-6


def test_wan_crop_keeps_the_resize_s_rows_and_columns():
    I = torch.rand(1, 3, 300, 200, dtype=torch.float64)
    size = (96, 128)
    height, width, top, left = crop_box(300, 200, size)
    full = F.interpolate(I, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    expected = full[..., top:top + size[0], left:left + size[1]] * 2 - 1
    assert (release_crop(I, size) - expected).abs().max() < 1e-12


def test_the_meta_device_takes_the_products():
    """The memory benchmarks run the pipelines on the meta device: a band is found on the CPU matrix, not on x's."""
    I = torch.rand(1, 3, 300, 200, device="meta", requires_grad=True)
    small = to_model_input(I, (64, 48))
    grad, = torch.autograd.grad(small.sum(), I)
    assert small.shape == (1, 3, 64, 48) and grad.shape == I.shape and grad.device.type == "meta"
