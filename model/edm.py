"""EDM sampling for SVD as pure functions (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", EDM). sigma_data = 1; SVD's network predicts v, hence the sign of c_out.

Nothing here turns gradients off: the attack differentiates through `denoise`.
"""
import torch


def karras_sigmas(n, sigma_min=0.002, sigma_max=700.0, rho=7.0):
    """EDM eq. 5: n noise levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then 0; float64 (n+1,)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def precondition(sigma):
    """EDM Table 1 preconditioning with sigma_data = 1 and a v-predicting F: (c_skip, c_out, c_in, c_noise), float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    c_skip = 1 / (sigma**2 + 1)
    c_out = -sigma / (sigma**2 + 1).sqrt()
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def denoise(unet, x, sigma, image_latents, image_embeds, added_time_ids, attn_maps=(), maps_only=False,
            control=None, control_scale=1.0):
    """EDM eq. 7, D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with SVD's conditioning latents
    concatenated to the scaled input; returns (D in float32 or wider, {block name: temporal attention probs}), or with
    maps_only (None, maps) from a UNet pass that stops after the last requested map.

    x, image_latents (B,F,4,h,w); sigma a number, 0-d or (B,) tensor; image_embeds (B,1,D); added_time_ids (B,3).
    control, control_scale: ControlNeXt's pose features and their weight, passed on to the UNet (model.unet).
    """
    c_skip, c_out, c_in, c_noise = precondition(sigma)
    c_skip, c_out, c_in = (c.to(x).reshape(-1, *(1,) * (x.ndim - 1)) for c in (c_skip, c_out, c_in))
    unet_input = torch.cat([c_in * x, image_latents], dim=2)  # (B, F, 8, h, w)
    extra = {} if control is None else dict(control=control, control_scale=control_scale)  # none: the call as before
    F_x, maps = unet(unet_input, c_noise, image_embeds, added_time_ids, attn_maps, maps_only, **extra)
    if maps_only:
        return None, maps
    # the output combination in float32 (or wider) whatever the network's dtype, as the reference scheduler does it
    wide = torch.promote_types(x.dtype, torch.float32)
    return c_skip.to(wide) * x.to(wide) + c_out.to(wide) * F_x.to(wide), maps


def euler_step(x, denoised, sigma, sigma_next):
    """One Euler step of the probability-flow ODE dx/dsigma = (x - D)/sigma (EDM Algorithm 1, no Heun correction)."""
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)
