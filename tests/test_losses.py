"""Each term of Eq. 1-4 (losses.py) against the paper's formula written out here in numpy, value and gradient:
the mean-squared norms, the hinge of Eq. 3 on both sides of tau1, the sign of Eq. 2, and Eq. 4 with a different
weight on every term, so that dropping, flipping or re-weighting any term fails a test of its own."""
import numpy as np
import pytest
import torch

from losses import attention_loss, contrastive_loss, encoder_loss, image_loss, total_loss

SHAPE = (1, 4, 3, 5, 6)  # (B, F, C, h, w)


def tensors(n, seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def sq(a, b):
    """||a - b||^2 as the paper's mean over elements, in numpy (float64; the terms reduce in float32, hence the
    comparisons to 1e-6 relative)."""
    return float(np.mean((np.asarray(a) - np.asarray(b)) ** 2))


def grad_of(loss, x):
    x = x.clone().requires_grad_()
    g, = torch.autograd.grad(loss(x), x)
    return g


@pytest.mark.parametrize("term", [encoder_loss, image_loss])
def test_squared_distance_terms(term):
    """Eq. 1, L_enc = ||E(I_adv) - E(I_tg)||^2, and the fidelity term: value and gradient 2 (a - b) / n."""
    a, b = tensors(2)
    assert term(a, b).item() == pytest.approx(sq(a, b), rel=1e-6)
    torch.testing.assert_close(grad_of(lambda x: term(x, b), a), 2 * (a - b) / a.numel())


@pytest.mark.parametrize("side", ["hinge active", "hinge inactive"])
def test_contrastive_loss_and_its_hinge(side):
    """Eq. 3, ||X0_adv - X_tg||^2 + max(0, tau1 - ||X0_adv - X_0||^2): the hinge pushes away from X_0 only while
    the distance is below tau1; beyond it only the pull to X_tg is left."""
    X0_adv, X_tg, X_0 = tensors(3, seed=1)
    distance = sq(X0_adv, X_0)  # about 2 for independent unit normals
    tau1 = distance + 0.5 if side == "hinge active" else distance - 0.5
    expected = sq(X0_adv, X_tg) + max(0.0, tau1 - distance)
    assert contrastive_loss(X0_adv, X_tg, X_0, tau1).item() == pytest.approx(expected, rel=1e-6)
    n = X0_adv.numel()
    expected_grad = 2 * (X0_adv - X_tg) / n - (2 * (X0_adv - X_0) / n if side == "hinge active" else 0)
    torch.testing.assert_close(grad_of(lambda x: contrastive_loss(x, X_tg, X_0, tau1), X0_adv), expected_grad)


def test_attention_loss_pushes_the_maps_away():
    """Eq. 2, L_att = tau2 - ||A_adv - A_src||^2, the distance averaged over the attacked blocks: its value at a
    distance that is not zero, and a gradient that points towards A_src (descending it moves A_adv away)."""
    blocks = ["down.0", "down.1"]
    A_adv = dict(zip(blocks, tensors(2, seed=2, shape=(2, 3, 4, 4))))
    A_src = dict(zip(blocks, tensors(2, seed=3, shape=(2, 3, 4, 4))))
    tau2 = 0.5
    expected = tau2 - (sq(A_adv["down.0"], A_src["down.0"]) + sq(A_adv["down.1"], A_src["down.1"])) / 2
    assert attention_loss(A_adv, A_src, tau2).item() == pytest.approx(expected, rel=1e-6)
    x = A_adv["down.0"]
    g = grad_of(lambda a: attention_loss({"down.0": a, "down.1": A_adv["down.1"]}, A_src, tau2), x)
    torch.testing.assert_close(g, -2 * (x - A_src["down.0"]) / x.numel() / 2)


def test_total_loss_weighs_every_term_once():
    """Eq. 4 with a different weight on each term: each term counts once, with its own weight; an ablated
    term (absent) counts nothing."""
    values = {"img": torch.tensor(0.3), "enc": torch.tensor(1.7), "con": torch.tensor(2.9), "att": torch.tensor(-0.4)}
    weights = {"img": 2.0, "enc": 3.0, "con": 5.0, "att": 7.0}
    assert total_loss(values, weights).item() == pytest.approx(2 * 0.3 + 3 * 1.7 + 5 * 2.9 + 7 * -0.4, rel=1e-6)
    for name in values:
        rest = {k: v for k, v in values.items() if k != name}
        expected = sum(weights[k] * float(v) for k, v in rest.items())
        assert total_loss(rest, weights).item() == pytest.approx(expected, rel=1e-6)
