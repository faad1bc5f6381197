"""Wan's flow-matching schedule and its samplers as pure functions; the network predicts the velocity v.

Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023): X_sigma = (1 - sigma) X_0 + sigma noise, the
network predicts v = noise - X_0, so X0_hat = X_sigma - sigma v. The release samples with UniPC (Zhao et al. 2023,
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"): the second-order
multistep predictor UniP-2 in its data-prediction, B(h) = e^h - 1 form, and after every step but the first the
corrector UniC that reuses the next network evaluation, first order on the first and last steps, as diffusers'
UniPCMultistepScheduler with flow sigmas runs it. A plain Euler sampler is given beside it.

Keyword names are the scheduler_config.json keys; defaults are the Wan2.2-TI2V-5B release's (flow_shift 5, and the
sigma grid of its own sampler, which differs from diffusers' in 27 of 50 timesteps).
"""
import numpy as np
import torch


GRIDS = ("release", "diffusers")  # where the N levels are spread before the shift (flow_sigmas)


def flow_sigmas(num_inference_steps, flow_shift=5.0, num_train_timesteps=1000, grid="release"):
    """(sigmas (N+1,) float32, ending at 0; timesteps (N,) int64 = sigma * T truncated): N levels spread evenly, each
    shifted to s sigma / (1 + (s - 1) sigma), in float64 as the references compute them. `grid` says over what:
    "release", the Wan release's FlowUniPCMultistepScheduler (wan/utils/fm_solvers_unipc.py): over [1 - 1/T, 0),
    1 - 1/T taken in float32 as its training table holds it; "diffusers", UniPCMultistepScheduler with flow sigmas:
    over [1, 1/T), the first moved 1e-6 below 1 (a log of its 1 - sigma follows)."""
    T = num_train_timesteps
    if grid == "release":
        sigmas = np.linspace(float(np.float32(1 - 1 / T)), 0, num_inference_steps + 1)[:-1]
    elif grid == "diffusers":
        sigmas = np.linspace(1, 1 / T, num_inference_steps + 1)[:-1]
    else:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    sigmas = flow_shift * sigmas / (1 + (flow_shift - 1) * sigmas)
    if abs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    timesteps = torch.from_numpy(sigmas * T).long()
    return torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32)), timesteps


def noised(x0, sigma, noise):
    """X_sigma = (1 - sigma) X_0 + sigma noise: the flow-matching forward process."""
    return (1 - sigma) * x0 + sigma * noise


def predicted_x0(x, v, sigma):
    """X0_hat = X_sigma - sigma v (v = noise - X_0)."""
    return x - sigma * v


def half_log_snr(sigma):
    """lambda = log(alpha / sigma) with alpha = 1 - sigma, in float64; +inf at sigma = 0."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.log(1 - sigma) - torch.log(sigma)


def unipc_coefficients(lambda_to, lambda_from):
    """(h, e^-h - 1 = B(h), b1, b2) of a step from lambda_from to lambda_to: b1, b2 the right-hand side of UniPC's
    order conditions (the phi functions of -h over B(h))."""
    h = lambda_to - lambda_from
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b1 = (h_phi_1 / hh - 1) / h_phi_1
    b2 = ((h_phi_1 / hh - 1) / hh - 0.5) * 2 / h_phi_1
    return h, h_phi_1, b1, b2


def unipc_update(x, m0, m1, sigma_from, sigma_to, sigma_back, rho, rho_last=None, m_new=None):
    """The common form of UniP and UniC from sigma_from to sigma_to (data prediction, B(h) = e^-h - 1):

        x_to = sigma_to / sigma_from x - alpha_to B(h) (m0 + rho D1 + rho_last (m_new - m0)),

    m0 the data estimate at sigma_from, D1 = (m1 - m0) / r with m1 the estimate at sigma_back (None on first-order
    updates) and r = (lambda_back - lambda_from) / h; rho_last and m_new only for the corrector."""
    lam_from, lam_to = half_log_snr(sigma_from), half_log_snr(sigma_to)
    h, B, _, _ = unipc_coefficients(lam_to, lam_from)
    out = float(sigma_to / sigma_from) * x - float((1 - sigma_to) * B) * m0
    res = 0
    if m1 is not None:
        r = (half_log_snr(sigma_back) - lam_from) / h
        res = float(rho) * (m1 - m0) / float(r)
    if m_new is not None:
        res = res + float(rho_last) * (m_new - m0)
    return out - float((1 - sigma_to) * B) * res


def corrector_weights(sigma_to, sigma_from, sigma_back):
    """(rho_D1, rho_last) of the second-order UniC: the solution of [[1, 1], [r, 1]] rho = [b1, b2]."""
    lam_from = half_log_snr(sigma_from)
    h, _, b1, b2 = unipc_coefficients(half_log_snr(sigma_to), lam_from)
    r = (half_log_snr(sigma_back) - lam_from) / h
    rho0 = (b1 - b2) / (1 - r)
    return rho0, b1 - rho0


def sample_unipc(denoise, x, sigmas, callback=None):
    """UniPC-2 with UniC (bh2, the release's scheduler): denoise(x, i) -> X0_hat at sigmas[i]; x the initial noise;
    sigmas (N+1,) from flow_sigmas. Returns the sample at sigmas[N] = 0.

    Per step i: m_i = denoise(x_i); for i > 0 the corrector replaces x_i by the UniC update from x_{i-1} that uses m_i
    (of the uncorrected x_i); then the predictor UniP goes from the corrected x_i to x_{i+1}, first order on the first
    and the last step, second order (extrapolating with m_{i-1}) in between. callback(i, x0) if given."""
    n = len(sigmas) - 1
    s = sigmas.double()
    m = []  # the data estimates of the last two steps, newest last
    x_prev = order_prev = None
    for i in range(n):
        x0 = denoise(x, i)
        if callback is not None:
            callback(i, x0)
        if i > 0:  # UniC: x_i again from x_{i-1}, now with m_i
            if order_prev == 1:
                x = unipc_update(x_prev, m[-1], None, s[i - 1], s[i], None, 0.0, 0.5, x0)
            else:
                rho0, rho1 = corrector_weights(s[i], s[i - 1], s[i - 2])
                x = unipc_update(x_prev, m[-1], m[-2], s[i - 1], s[i], s[i - 2], rho0, rho1, x0)
        m = (m + [x0])[-2:]
        order = 1 if i == 0 or i == n - 1 else 2
        x_prev, order_prev = x, order
        if order == 1:
            x = unipc_update(x, m[-1], None, s[i], s[i + 1], None, 0.0)
        else:
            x = unipc_update(x, m[-1], m[-2], s[i], s[i + 1], s[i - 1], 0.5)
    return x


def sample_euler(denoise, x, sigmas, callback=None):
    """Euler's method on the flow ODE dx/dsigma = v = (x - X0_hat) / sigma: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v.
    denoise(x, i) -> X0_hat at sigmas[i], as for sample_unipc."""
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, i)
        if callback is not None:
            callback(i, x0)
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x = x0 + sigma_next / sigma * (x - x0)  # = x + (sigma_next - sigma) (x - x0) / sigma
    return x
