"""model/wan/scheduler.py is diffusers' UniPCMultistepScheduler with the Wan release's settings (flow prediction, flow
sigmas, shift 5, UniPC-2 bh2 with the corrector, lower order on the last step): the same sigmas and timesteps exactly,
and the same trajectory to 1e-6 on a toy data predictor that depends on x non-linearly, for step counts that use
every branch (first-order first and last steps, second-order predictor and corrector in between)."""
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
    sigmas, timesteps = flow_sigmas(steps)
    assert torch.equal(sigmas, ref.sigmas) and torch.equal(timesteps, ref.timesteps)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_unipc_equals_reference(steps):
    ref = UniPCMultistepScheduler(**RELEASE)
    ref.set_timesteps(steps)
    x0 = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    expected = x0.clone()
    for i, t in enumerate(ref.timesteps):
        expected = ref.step(toy_velocity(expected, ref.sigmas[i]), t, expected).prev_sample
    sigmas, _ = flow_sigmas(steps)
    ours = sample_unipc(lambda x, i: predicted_x0(x, toy_velocity(x, sigmas[i]), sigmas[i]), x0.clone(), sigmas)
    diff = (ours - expected).abs().max().item()
    print(f"\n[parity] unipc {steps} steps: max abs diff {diff:.3e}")
    assert diff <= 1e-6


def test_euler_equals_reference():
    sigmas, _ = flow_sigmas(6)
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
