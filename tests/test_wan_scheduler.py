"""model/wan/scheduler.py is diffusers' UniPCMultistepScheduler with the Wan release's settings (flow prediction, flow
sigmas, shift 5, UniPC-2 bh2 with the corrector, lower order on the last step): the same sigmas and timesteps exactly,
and the same trajectory to 1e-6 on a toy data predictor that depends on x non-linearly, for step counts that use
every branch (first-order first and last steps, second-order predictor and corrector in between). The release's own
grid (its FlowUniPCMultistepScheduler, which cannot be imported here) equals its formula, transcribed below from
wan/utils/fm_solvers_unipc.py, and UniPC on it equals diffusers' UniPC given the same levels."""
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from model.wan.scheduler import flow_sigmas, noised, predicted_x0, sample_euler, sample_unipc

RELEASE = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
               solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")


def toy_velocity(x, sigma):
    """A smooth, non-linear stand-in for the network's v, so every multistep term matters."""
    return torch.tanh(1.5 * x) * (1 + sigma) + 0.3 * x.roll(1, dims=-1)


@pytest.mark.parametrize("steps", [1, 2, 3, 8, 50])
def test_sigmas_equal_reference(steps):
    ref = UniPCMultistepScheduler(**RELEASE)
    ref.set_timesteps(steps)
    sigmas, timesteps = flow_sigmas(steps, grid="diffusers")
    assert torch.equal(sigmas, ref.sigmas) and torch.equal(timesteps, ref.timesteps)


def release_grid(steps, shift=5.0, T=1000):
    """The Wan release's FlowUniPCMultistepScheduler(shift=1).set_timesteps(steps, shift=shift), as its source does it:
    a float32 table 1 - alphas, its first and last entries as the grid's ends, the shift, timesteps truncated."""
    alphas = np.linspace(1, 1 / T, T)[::-1].copy()
    table = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    sigma_max, sigma_min = table[0].item(), table[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * T).to(dtype=torch.int64)
    return torch.from_numpy(np.concatenate([sigmas, [0]]).astype(np.float32)), timesteps


@pytest.mark.parametrize("steps", [1, 2, 3, 8, 40, 50])
def test_release_grid_equals_its_formula(steps):
    sigmas, timesteps = flow_sigmas(steps)
    expected_sigmas, expected_timesteps = release_grid(steps)
    assert torch.equal(sigmas, expected_sigmas) and torch.equal(timesteps, expected_timesteps)
    if steps == 50:  # the two grids part: the 27 of 50 timesteps
        assert int((timesteps != flow_sigmas(50, grid="diffusers")[1]).sum()) == 27


@pytest.mark.parametrize("steps", [3, 8])
def test_unipc_on_the_release_grid_equals_reference(steps):
    ref = UniPCMultistepScheduler(**RELEASE)
    ref.set_timesteps(sigmas=np.linspace(float(np.float32(0.999)), 0, steps + 1)[:-1])  # diffusers shifts them
    sigmas, _ = flow_sigmas(steps)
    assert torch.allclose(ref.sigmas, sigmas, rtol=0, atol=1e-7)
    x0 = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3))
    expected = x0.clone()
    for i, t in enumerate(ref.timesteps):
        expected = ref.step(toy_velocity(expected, ref.sigmas[i]), t, expected).prev_sample
    ours = sample_unipc(lambda x, i: predicted_x0(x, toy_velocity(x, sigmas[i]), sigmas[i]), x0.clone(), sigmas)
    assert (ours - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_unipc_equals_reference(steps):
    ref = UniPCMultistepScheduler(**RELEASE)
    ref.set_timesteps(steps)
    x0 = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    expected = x0.clone()
    for i, t in enumerate(ref.timesteps):
        expected = ref.step(toy_velocity(expected, ref.sigmas[i]), t, expected).prev_sample
    sigmas, _ = flow_sigmas(steps, grid="diffusers")
    ours = sample_unipc(lambda x, i: predicted_x0(x, toy_velocity(x, sigmas[i]), sigmas[i]), x0.clone(), sigmas)
    diff = (ours - expected).abs().max().item()
    print(f"\n[parity] unipc {steps} steps: max abs diff {diff:.3e}")
    assert diff <= 1e-6


def test_euler_equals_reference():
    sigmas, _ = flow_sigmas(6, grid="diffusers")
    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)
    ref.set_timesteps(sigmas=sigmas[:-1].numpy())
    x0 = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(2))
    expected = x0.clone()
    for i, t in enumerate(ref.timesteps):
        expected = ref.step(toy_velocity(expected, ref.sigmas[i]), t, expected).prev_sample
    ours = sample_euler(lambda x, i: predicted_x0(x, toy_velocity(x, sigmas[i]), sigmas[i]), x0.clone(), sigmas)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_forward_process_and_prediction_invert():
    X_0, noise = torch.randn(4), torch.randn(4)
    X_t = noised(X_0, 0.3, noise)
    assert torch.allclose(predicted_x0(X_t, noise - X_0, 0.3), X_0, atol=1e-6)  # v = noise - X_0
