"""Our CogVideoX schedule and samplers are diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler: alphas_cumprod
and timesteps exactly, and full 50-step trajectories with a fake v-prediction (a fixed function of x and t) to 1e-6
relative, the DPM one with the scheduler's own generator replayed as explicit noise."""
import math

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from model.cogvideox.scheduler import (alphas_cumprod, ddim_step, dpm_step, dynamic_guidance_scale, prev_timestep,
                                       timesteps)

RTOL = 1e-6
RELEASE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
               num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
               set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing")
SHAPE = (1, 3, 4, 6, 5)  # (B, F, C, h, w)


def fake_v(x, t):
    """A stand-in for the transformer: a smooth, t-dependent function of x, with no fixed point at 0."""
    return torch.tanh(x) * (0.5 + t / 1000) + 0.1 * torch.sin(x + t / 100)


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("snr_shift_scale", [1.0, 3.0])
def test_alphas_cumprod_equal_reference(snr_shift_scale):
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        ref = cls(**RELEASE | dict(snr_shift_scale=snr_shift_scale)).alphas_cumprod
        ours = alphas_cumprod(snr_shift_scale=snr_shift_scale)
        assert ours.dtype == ref.dtype == torch.float64 and torch.equal(ours, ref)
    assert ours[-1] == 0  # zero terminal SNR: x_999 is pure noise
    no_rescale = alphas_cumprod(snr_shift_scale=snr_shift_scale, rescale_betas_zero_snr=False)
    assert torch.equal(no_rescale, CogVideoXDDIMScheduler(**RELEASE | dict(
        snr_shift_scale=snr_shift_scale, rescale_betas_zero_snr=False)).alphas_cumprod)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [50, 30, 7])
def test_timesteps_equal_reference(spacing, steps):
    for cls in (CogVideoXDDIMScheduler, CogVideoXDPMScheduler):
        scheduler = cls(**RELEASE | dict(timestep_spacing=spacing))
        scheduler.set_timesteps(steps)
        assert torch.equal(timesteps(steps, spacing), scheduler.timesteps)
    if steps == 50:
        assert timesteps(50, spacing)[[0, -1]].tolist() == ([999, 19] if spacing == "trailing" else [980, 0])


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_trajectory_equals_reference(spacing):
    scheduler = CogVideoXDDIMScheduler(**RELEASE | dict(timestep_spacing=spacing))
    scheduler.set_timesteps(50)
    abar = alphas_cumprod()
    x_ref = x = torch.randn(SHAPE)
    for t in scheduler.timesteps:
        x_ref = scheduler.step(fake_v(x_ref, t), t, x_ref, return_dict=False)[0]
        x = ddim_step(x, fake_v(x, t), t, prev_timestep(t, 50), abar)
        assert rel_err(x, x_ref) <= RTOL, f"t={int(t)}"
    assert x.dtype == torch.float32


def test_dpm_trajectory_equals_reference():
    """The official demo's sampler; its generator is replayed: one draw on first-order steps (the first and the
    last), two on second-order steps of which the second is used."""
    scheduler = CogVideoXDPMScheduler(**RELEASE)
    scheduler.set_timesteps(50)
    abar, ts = alphas_cumprod(), timesteps(50)
    x_ref = x = torch.randn(SHAPE)
    reference_rng, our_rng = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x0_ref = x0 = None
    for i, t in enumerate(scheduler.timesteps):
        t_back = ts[i - 1] if i > 0 else None
        x_ref, x0_ref = scheduler.step(fake_v(x_ref, t), x0_ref, t, t_back, x_ref, generator=reference_rng,
                                       return_dict=False)
        t_prev = prev_timestep(t, 50)
        second_order = x0 is not None and t_prev >= 0
        noise = [torch.randn(SHAPE, generator=our_rng) for _ in range(1 + second_order)][-1]
        x, x0 = dpm_step(x, fake_v(x, t), t, t_prev, abar, noise, x0_back=x0, t_back=t_back)
        assert rel_err(x, x_ref) <= RTOL and rel_err(x0, x0_ref) <= RTOL, f"t={int(t)}"
    assert torch.equal(x, x0)  # the last step lands on its own x0 (alpha_prev = 1, no noise)


def test_dynamic_guidance_scale_is_the_pipelines_expression():
    """diffusers' CogVideoXImageToVideoPipeline with use_dynamic_cfg (the demo's): N = num_inference_steps, raw t."""
    for t in timesteps(50):
        expected = 1 + 6 * ((1 - math.cos(math.pi * ((50 - t.item()) / 50) ** 5.0)) / 2)
        assert dynamic_guidance_scale(6, t, 50) == pytest.approx(expected, rel=1e-15)
        assert 1 <= dynamic_guidance_scale(6, t, 50) <= 7
