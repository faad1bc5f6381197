"""Our EDM schedule and steps are diffusers' EulerDiscreteScheduler built from the official SVD
scheduler_config.json: same sigmas, same timesteps (c_noise), same init noise scale, same Euler step
for a v-prediction model output, and `denoise` feeds the UNet what the reference pipeline feeds it."""
import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from model.edm import denoise, euler_step, karras_sigmas, precondition

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json, without the _ keys
OFFICIAL_SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
    interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
    set_alpha_to_one=False, sigma_max=700.0, sigma_min=0.002, skip_prk_steps=True, steps_offset=1,
    timestep_spacing="leading", timestep_type="continuous", trained_betas=None, use_karras_sigmas=True,
)


def official_scheduler(steps):
    scheduler = EulerDiscreteScheduler.from_config(OFFICIAL_SCHEDULER)
    scheduler.set_timesteps(steps)
    return scheduler


def max_rel_diff(label, ours, ref):
    ref = ref.double()
    diff = ((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
    print(f"\n[edm] {label}: max relative diff {diff:.2e}")
    return diff


@pytest.mark.parametrize("steps", [1, 2, 25, 50])
def test_sigmas_and_timesteps_match_official_scheduler(steps):
    scheduler = official_scheduler(steps)
    sigmas = karras_sigmas(steps)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-12) and sigmas[-1] == 0.0
    assert max_rel_diff(f"sigmas, {steps} steps", sigmas, scheduler.sigmas) <= 1e-6
    c_noise = precondition(sigmas[:-1])[3]
    assert max_rel_diff(f"c_noise, {steps} steps", c_noise, scheduler.timesteps) <= 1e-6
    assert math.isclose(math.sqrt(sigmas[0].item() ** 2 + 1), float(scheduler.init_noise_sigma), rel_tol=1e-6)


def test_sigmas_of_svd_facts():
    sigmas = karras_sigmas(25)
    assert sigmas[:3].tolist() == pytest.approx([700.0, 545.73, 421.57], abs=5e-3)
    assert sigmas[-4:].tolist() == pytest.approx([0.02480, 0.007882, 0.002, 0.0], rel=1e-3)


def test_precondition_values_at_sigma_one():
    c_skip, c_out, c_in, c_noise = precondition(1.0)
    assert (c_skip.item(), c_out.item(), c_in.item(), c_noise.item()) == pytest.approx((0.5, -0.5**0.5, 0.5**0.5, 0.0))


@pytest.mark.parametrize("sigma", [0.002, 0.7, 30.0, 700.0])
def test_denoise_recovers_x0_from_the_true_v(sigma):
    """For x = x0 + sigma n, a network that outputs v = (n - sigma x0) / sqrt(sigma^2 + 1) (Salimans & Ho's v in
    the variance-preserving view of the same point) makes D(x; sigma) = x0: the v-prediction parameterisation."""
    x0, n = torch.randn(2, 1, 3, 4, 4, dtype=torch.float64).unbind(0)
    x = x0 + sigma * n

    def unet(sample, timestep, ehs, ids, attn_maps=(), maps_only=False):
        return (n - sigma * x0) / (sigma**2 + 1) ** 0.5, {}

    D, _ = denoise(unet, x, sigma, torch.zeros_like(x), None, None)
    torch.testing.assert_close(D, x0, rtol=0, atol=1e-9 * (1 + sigma))


class RecordingUNet:
    """Stands in for the UNet: records its inputs and returns a fixed v prediction."""

    def __init__(self, v):
        self.v = v

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, attn_maps=(), maps_only=False):
        self.sample, self.timestep, self.attn_maps = sample, timestep, attn_maps
        return self.v, {"probe": torch.ones(1)}


@pytest.mark.parametrize("index", [0, 12, 24])
def test_denoise_and_euler_step_match_scheduler(index):
    steps = 25
    scheduler = official_scheduler(steps)
    g = torch.Generator().manual_seed(index)
    x = torch.randn(1, 3, 4, 5, 6, generator=g) * (1 + scheduler.sigmas[index])
    v = torch.randn(1, 3, 4, 5, 6, generator=g)
    latents = torch.randn(1, 3, 4, 5, 6, generator=g)
    t = scheduler.timesteps[index]

    # the reference: scale_model_input -> cat with the image latents -> UNet(t) -> step
    scaled = scheduler.scale_model_input(x, t)
    ref = scheduler.step(v, t, x)

    sigmas = karras_sigmas(steps)
    unet = RecordingUNet(v)
    D, maps = denoise(unet, x, sigmas[index], latents, torch.zeros(1, 1, 8), torch.zeros(1, 3), attn_maps=["probe"])
    assert unet.sample.shape == (1, 3, 8, 5, 6) and unet.attn_maps == ["probe"] and set(maps) == {"probe"}
    torch.testing.assert_close(unet.sample[:, :, :4], scaled, rtol=1e-6, atol=1e-6)
    assert torch.equal(unet.sample[:, :, 4:], latents)
    assert math.isclose(float(unet.timestep), float(t), rel_tol=1e-6, abs_tol=1e-7)
    torch.testing.assert_close(D, ref.pred_original_sample, rtol=1e-6, atol=1e-6)
    x_next = euler_step(x, D, sigmas[index], sigmas[index + 1])
    torch.testing.assert_close(x_next, ref.prev_sample, rtol=1e-5, atol=1e-5)
    print(f"\n[edm] Euler step {index}: max abs diff {(x_next - ref.prev_sample).abs().max().item():.2e}")


def test_denoise_per_sample_sigma_and_gradients():
    """A (B,) sigma preconditions each sample with its own level; gradients reach x and the image latents."""
    sigma = torch.tensor([0.3, 40.0], dtype=torch.float64)
    x = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    latents = torch.randn(2, 3, 4, 2, 2, requires_grad=True)

    def unet(sample, timestep, ehs, ids, attn_maps=(), maps_only=False):
        return sample[:, :, :4] * sample[:, :, 4:], {}

    D, _ = denoise(unet, x, sigma, latents, torch.zeros(2, 1, 8), torch.zeros(2, 3))
    for b in range(2):
        D_b, _ = denoise(unet, x[b:b + 1], sigma[b].item(), latents[b:b + 1], torch.zeros(1, 1, 8), torch.zeros(1, 3))
        torch.testing.assert_close(D[b:b + 1], D_b)
    D.sum().backward()
    assert x.grad.abs().sum() > 0 and latents.grad.abs().sum() > 0
