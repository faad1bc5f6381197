"""A guarded photo made lazily (pipelines/guarded.py) is the photo made whole as every pipeline sees it: each tiny
model's E and image embedding of it, and their gradients with respect to the grid perturbation, equal those of the
photo made at its own size; its fidelity term equals the mean squared difference over the photo's pixels; and the
attack takes that path for a photo larger than the model, and only then."""
import pytest
import torch

from attack import protect
from pipelines import load_pipeline
from pipelines.guarded import GuardedPhoto

CASES = [("tiny", (64, 64), (200, 300)), ("tiny-controlnext", (64, 64), (300, 200)),
         ("tiny-cogvideox", (32, 32), (90, 120)), ("tiny-wan", (32, 32), (90, 150))]


def photo_and_share(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # within [0.1, 0.9], so that no pixel reaches black or white: the photo made whole is then not clamped
    return torch.rand(1, 3, *shape, generator=generator) * 0.8 + 0.1, torch.rand(1, 1, *shape, generator=generator)


@pytest.mark.parametrize("name, size, shape", CASES)
def test_each_pipeline_sees_the_photo_made_whole(name, size, shape):
    model = load_pipeline(name, "cpu", torch.float32, size=size)
    I_src, share = photo_and_share(shape)
    box = model.seen_box(shape, size)
    grid = (min(box[2], size[0]), min(box[3], size[1]))
    assert grid != tuple(box[2:])  # the lazy path: the grid is smaller than what the model sees
    guarded = GuardedPhoto(I_src, share, box, grid, "bilinear")
    delta = (torch.rand(1, 3, *grid, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 8 / 255
    d = model.draw(torch.Generator().manual_seed(2), size)
    for piece in ("E", "embed"):
        outputs, gradients = [], []
        for lazy in (True, False):
            delta_k = delta.clone().requires_grad_()
            I_adv = guarded.perturbed(delta_k)
            out = model.E(I_adv if lazy else I_adv.photo(), d, size) if piece == "E" else \
                model.embed(I_adv if lazy else I_adv.photo())
            if out is None:  # no image embedding (CogVideoX, Wan)
                break
            gradients.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                                 delta_k)[0])
            outputs.append(out.detach())
        if outputs:
            assert (outputs[0] - outputs[1]).abs().max() <= 1e-5 * outputs[1].abs().max(), (name, piece)
            assert (gradients[0] - gradients[1]).abs().max() <= 1e-5 * gradients[1].abs().max(), (name, piece)


def test_the_fidelity_term_is_the_mean_over_the_photo():
    I_src, share = photo_and_share((150, 220))
    guarded = GuardedPhoto(I_src, share, (10, 20, 120, 180), (40, 60), "bilinear")
    delta = ((torch.rand(1, 3, 40, 60) * 2 - 1) * 8 / 255).requires_grad_()
    lazy = guarded.perturbed(delta).squared_distance()
    whole = (guarded.perturbed(delta).photo() - I_src).pow(2).mean()
    g_lazy, = torch.autograd.grad(lazy, delta)
    g_whole, = torch.autograd.grad(whole, delta)
    assert lazy.item() == pytest.approx(whole.item(), rel=1e-5)
    assert (g_lazy - g_whole).abs().max() <= 1e-5 * g_whole.abs().max()


def test_the_attack_resizes_a_larger_photo_lazily(monkeypatch):
    """protect's steps take the lazy path for a photo larger than the model and the photo itself for one of the
    model's size; the guarded photo is the photo made whole either way."""
    model = load_pipeline("tiny", "cpu", torch.float32)
    made = []
    resized = GuardedPhoto.resized

    def counted(self, *matrices):  # which resizes the steps take of a perturbed photo made lazily
        made.append(self.delta is not None)
        return resized(self, *matrices)
    monkeypatch.setattr(GuardedPhoto, "resized", counted)
    for shape, lazy in (((96, 128), True), ((64, 64), False)):
        made.clear()
        I_src = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
        I_adv, log = protect(model, I_src, size=(64, 64), steps=2, sample_steps=2, num_frames=4)
        assert any(made) == lazy, shape
        assert I_adv.shape == I_src.shape and (I_adv - I_src).abs().max() <= 8 / 255 + 1e-6
        assert len(log["steps"]) == 2
