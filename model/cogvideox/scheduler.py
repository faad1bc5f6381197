"""CogVideoX's noise schedule and its two samplers as pure functions; the network predicts v.

The schedule: scaled-linear betas over 1000 steps, SNR divided by snr_shift_scale (1 for the 5B models, 3 for the 2B),
rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
Algorithm 1), so x_999 is pure noise. Samplers: DDIM with eta = 0 (Song et al. 2021; the release's scheduler) and the
SDE-DPM-Solver++(2M) of CogVideoXDPMScheduler (Lu et al. 2022, "DPM-Solver++", Algorithm 2 in its SDE form; the
official demo's), which adds fresh noise at every step and is passed that noise, so a seed reproduces a video.

Keyword names are the scheduler_config.json keys; defaults are the CogVideoX-5b-I2V release's. abar_t is alpha-bar_t.
"""
import math

import torch


def alphas_cumprod(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, snr_shift_scale=1.0,
                   rescale_betas_zero_snr=True):
    """abar_t for t = 0 .. num_train_timesteps - 1, float64 (num_train_timesteps,)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, dim=0)
    abar = abar / (snr_shift_scale + (1 - snr_shift_scale) * abar)  # SNR_t / snr_shift_scale
    if rescale_betas_zero_snr:  # shift sqrt(abar) to end at 0, scale it to keep its start (Lin et al. Algorithm 1)
        root = abar.sqrt()
        first, last = root[0], root[-1]
        abar = ((root - last) * (first / (first - last))) ** 2
    return abar


def timesteps(num_inference_steps, timestep_spacing="trailing", num_train_timesteps=1000, steps_offset=0):
    """The sampled timesteps, descending, int64 (num_inference_steps,). "trailing" (the release's
    scheduler_config and the demo's DPM) starts at T - 1 (999, 979, ..., 19 for 50 steps); "leading" (the diffusers
    classes' default) ends at steps_offset (980, 960, ..., 0)."""
    if timestep_spacing == "trailing":
        ratio = num_train_timesteps / num_inference_steps
        return torch.arange(num_train_timesteps, 0, -ratio, dtype=torch.float64).round().long() - 1
    if timestep_spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        return torch.arange(num_inference_steps - 1, -1, -1) * ratio + steps_offset
    raise ValueError(f"unsupported timestep_spacing {timestep_spacing!r}; expected 'trailing' or 'leading'")


def prev_timestep(t, num_inference_steps, num_train_timesteps=1000):
    """The timestep a step from t lands on, as the reference computes it: t - T // N (the next entry of `timesteps`
    when N divides T; below 0 on the last step)."""
    return int(t) - num_train_timesteps // num_inference_steps


def abar_at(alphas_cumprod, t):
    """abar_t as a 0-d float64 tensor; 1 for t < 0, the clean end of the last step (set_alpha_to_one)."""
    return alphas_cumprod[int(t)] if t >= 0 else alphas_cumprod.new_tensor(1.0)


def predicted_x0(x_t, v, abar_t):
    """x0 from a v-prediction (Salimans & Ho 2022, eq. 9 rearranged): sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    return abar_t**0.5 * x_t - (1 - abar_t) ** 0.5 * v


def ddim_step(x_t, v, t, t_prev, alphas_cumprod):
    """One deterministic DDIM step (Song et al. 2021, eq. 12 with sigma = 0) from t to t_prev (< 0 on the last step):
    x_prev = a x_t + b x0 with a = sqrt((1 - abar_prev) / (1 - abar_t)), b = sqrt(abar_prev) - sqrt(abar_t) a."""
    abar_t, abar_prev = abar_at(alphas_cumprod, t), abar_at(alphas_cumprod, t_prev)
    x0 = predicted_x0(x_t, v, abar_t)
    a = ((1 - abar_prev) / (1 - abar_t)) ** 0.5
    b = abar_prev**0.5 - abar_t**0.5 * a
    return a * x_t + b * x0


def half_log_snr(abar):
    """lambda = log(alpha / sigma) = log sqrt(abar / (1 - abar)); -inf at the zero-SNR end, +inf at abar = 1."""
    return ((abar / (1 - abar)) ** 0.5).log()


def dpm_step(x_t, v, t, t_prev, alphas_cumprod, noise, x0_back=None, t_back=None):
    """One SDE-DPM-Solver++(2M) step from t to t_prev; returns (x_prev, x0) and x0 is the next call's x0_back.

    With h = lambda_prev - lambda_t and D the data estimate,
        x_prev = sigma_prev / sigma_t e^-h x_t + alpha_prev (1 - e^-2h) D + sigma_prev sqrt(1 - e^-2h) noise.
    D = x0 on the first step (no x0_back) and on the last (t_prev < 0, where x_prev = x0); otherwise the multistep
    extrapolation D = (1 + 1/2r) x0 - 1/2r x0_back with r = (lambda_t - lambda_back) / h, t_back the previous step's t.
    Noise: diffusers' CogVideoXDPMScheduler draws one unused noise before every second-order update, so to replay
    its generator draw twice on those steps and pass the second.
    """
    abar_t, abar_prev = abar_at(alphas_cumprod, t), abar_at(alphas_cumprod, t_prev)
    x0 = predicted_x0(x_t, v, abar_t)
    lambda_t = half_log_snr(abar_t)
    h = half_log_snr(abar_prev) - lambda_t
    c_x = ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * (-h).exp()
    c_d = (-2 * h).expm1() * abar_prev**0.5  # = -alpha_prev (1 - e^-2h)
    c_noise = (1 - abar_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
    if x0_back is None or t_prev < 0:
        d = x0
    else:
        r = (lambda_t - half_log_snr(abar_at(alphas_cumprod, t_back))) / h
        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_back
    return c_x * x_t - c_d * d + c_noise * noise, x0


def dynamic_guidance_scale(guidance_scale, t, num_inference_steps):
    """The pipelines' use_dynamic_cfg scale g_t = 1 + g (1 - cos(pi ((N - t) / N)^5)) / 2, exactly as diffusers
    computes it: N is the number of inference steps and t the raw timestep (19 .. 999), not a step index, so for
    N = 50 the cosine's argument is far outside [0, pi] and g_t jumps around in [1, 1 + g] from step to step."""
    progress = (num_inference_steps - float(t)) / num_inference_steps
    return 1 + guidance_scale * (1 - math.cos(math.pi * progress**5.0)) / 2
