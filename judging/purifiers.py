"""Two purifiers an adversary may run on a guarded photo before animating it, as differentiable torch functions on
photos in floating point: a round trip through the adversary's own VAE (the VAE-Trans purifier, which every
adversary already has) and a classical denoiser, the bilateral filter. judging/transforms.py makes the `vae` and
`denoise` transformations of them (8-bit in, 8-bit out, and a differentiable twin with the same forward pass).
"""
import torch
import torch.nn.functional as F

from model.vae import VAE

# The bilateral filter's window: 5x5 pixels, the spatial weights a Gaussian of sigma 1 pixel.
BILATERAL_RADIUS, BILATERAL_SIGMA_SPACE = 2, 1.0


def bilateral(x, sigma_range, radius=BILATERAL_RADIUS, sigma_space=BILATERAL_SIGMA_SPACE):
    """The bilateral filter (Tomasi and Manduchi, ICCV 1998): (N,C,H,W) -> same, each pixel the mean of its
    (2 radius + 1)^2 neighbours weighted by exp(-|offset|^2 / (2 sigma_space^2) - |colour difference|^2 /
    (2 sigma_range^2)), the colour difference over all channels; edges replicated. Differences well below
    sigma_range are averaged away, edges well above it are kept."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    total, weights = torch.zeros_like(x), torch.zeros_like(x[:, :1])
    for dy in range(-radius, radius + 1):  # one neighbour offset at a time: memory of a few photos, not 25
        for dx in range(-radius, radius + 1):
            neighbour = padded[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            colour = (neighbour - x).pow(2).sum(1, keepdim=True)  # (N, 1, H, W)
            weight = torch.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2) - colour / (2 * sigma_range**2))
            total, weights = total + weight * neighbour, weights + weight
    return total / weights  # the centre's weight is 1: never a division by zero


class VAERoundTrip:
    """The `vae` transformation's model: the adversary's own VAE (model/vae.py, SVD's, which ControlNeXt-SVD
    shares) and the resolution its pipeline runs at, size = (height, width). Calling it takes photos (N,3,H,W)
    in [-1,1] at that size through the encoder's posterior mean and the decoder (each photo a one-frame clip):
    the photo as the VAE can represent it, in float32 on the photo's device, unclamped."""

    def __init__(self, vae, size):
        if not isinstance(vae, VAE):
            raise ValueError(f"the vae transformation runs SVD's VAE (SVD, ControlNeXt), not a {type(vae).__name__}")
        self.vae, self.size = vae, tuple(size)

    def __call__(self, x):
        param = next(self.vae.parameters())
        mean, _ = self.vae.encode(x.to(param.device, param.dtype))  # (N, 4, H/8, W/8)
        decoded = self.vae.decode(mean, num_frames=1).float()  # the posterior mean is what decode takes: unscaled
        if not decoded.isfinite().all():
            raise ValueError("the VAE round trip gave NaN or infinite values (a float16 VAE overflows: use bfloat16 "
                             "or float32)")
        return decoded.to(x.device)
