"""Wan's frame follows the photo's shape as the release's does (wan/textimage2video.py, i2v): best_output_size equals
the release's function, transcribed below with its own checks, on many photo shapes; the photo is resized with its
aspect kept and centre-cropped exactly as the release's PIL code does; the differentiable crop the attack uses sees
the same part; and a perturbation on the model's grid covers the part the model sees and nothing else, for Wan and for
ControlNeXt's crop."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from attack import protect
from pipelines.controlnext import ControlNeXtPipeline, tiny_controlnext
from pipelines.poses import generic_poses
from pipelines.wan import WanPipeline, tiny_wan
from pipelines.wan_photo import AREA, best_output_size, release_crop, release_input

pytestmark = pytest.mark.filterwarnings("ignore:tiny_:UserWarning")


def release_best_output_size(w, h, dw, dh, expected_area):
    """wan/utils/utils.py best_output_size, as the release writes it."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    assert ow1 % dw == 0 and oh1 % dh == 0 and ow1 * oh1 <= expected_area
    ratio1 = ow1 / oh1
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    assert oh2 % dh == 0 and ow2 % dw == 0 and ow2 * oh2 <= expected_area
    ratio2 = ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def release_prepare(rgb8, ow, oh):
    """The release's i2v preprocessing of a PIL photo: resized to cover ow x oh with its aspect kept (Lanczos), the
    centre cropped, to [-1, 1]."""
    img = Image.fromarray(rgb8.permute(1, 2, 0).numpy())
    iw, ih = img.width, img.height
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - ow) // 2, (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1).sub(0.5).div(0.5)


def test_best_output_size_is_the_release_s():
    shapes = [(4032, 3024), (3024, 4032), (1920, 1080), (1080, 1920), (1000, 1000), (4000, 1000), (1000, 4000),
              (832, 480), (1280, 704), (5000, 3333)]
    rng = random.Random(0)
    shapes += [(rng.randint(64, 8000), rng.randint(64, 8000)) for _ in range(300)]
    for w, h in shapes:
        assert best_output_size(w, h, 32, 32, AREA) == release_best_output_size(w, h, 32, 32, AREA), (w, h)
    assert best_output_size(3024, 4032, 32, 32, AREA) == (800, 1088)  # a 3:4 phone portrait: a portrait video
    assert best_output_size(1920, 1080, 32, 32, AREA) == (1248, 704)  # 16:9: 1248 wide, closer to 16:9 than 1280


@pytest.mark.parametrize("photo", [(75, 50), (50, 75), (64, 64), (97, 131)])
def test_the_photo_is_prepared_as_the_release_does(photo):
    rgb8 = torch.randint(0, 256, (3, *photo), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    size = (32, 64) if photo[0] < photo[1] else (64, 32)
    assert torch.equal(release_input(rgb8, size), release_prepare(rgb8, size[1], size[0]))
    # the attack's differentiable crop sees the same part (bicubic standing in for Lanczos)
    smooth = torch.nn.functional.interpolate(rgb8[None].float() / 255, size=(4, 4), mode="bilinear")
    smooth = torch.nn.functional.interpolate(smooth, size=photo, mode="bilinear")
    smooth8 = (smooth[0] * 255).round().byte()
    assert (release_crop(smooth8[None].float() / 255, size)[0] - release_input(smooth8, size)).abs().mean() < 0.02


def perturbed(model, photo, size):
    """Where a random-start, zero-step protection of a flat grey photo of size `photo` changes it: (rows, columns)."""
    I_src = torch.full((3, *photo), 0.5)
    I_adv, _ = protect(model, I_src, steps=0, size=size, num_frames=5, sample_steps=1, terms=("img",))
    moved = (I_adv - I_src).abs().amax(0) > 0
    return moved.any(1).nonzero().flatten(), moved.any(0).nonzero().flatten()


@pytest.mark.parametrize("pipeline", ["wan", "controlnext"])
def test_the_grid_covers_what_the_model_sees(pipeline):
    """A 4:3 landscape photo for a square (Wan) or portrait (ControlNeXt) frame: the model sees a centre band; the
    perturbation lies on that band and nowhere else."""
    if pipeline == "wan":
        model, size = WanPipeline(tiny_wan(0), prompts=[""], negative_prompt=""), (64, 64)
    else:
        networks, pose_encoder = tiny_controlnext(0)
        model, size = ControlNeXtPipeline(networks, pose_encoder, [generic_poses(5, 64, 32)["wave"]]), (64, 32)
    photo = (96, 128)
    top, left, h, w = model.seen_box(photo, size)
    assert h == 96 and w < 128 and left > 0
    rows, columns = perturbed(model, photo, size)
    assert len(rows) == 96 and columns.min() == left and columns.max() == left + w - 1
