"""Image similarity between a source photo and its guarded version: PSNR and SSIM (Wang et al. 2004).

Both take images as (C,H,W) tensors in [0,1] and compute in float64.
"""
import math

import torch
import torch.nn.functional as F


def psnr(a, b):
    """Peak signal-to-noise ratio in dB for data range 1 (inf for identical images)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def gaussian_window(sigma=1.5, truncate=3.5):
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()


def ssim(a, b, sigma=1.5):
    """Mean structural similarity, data range 1: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    population covariances, averaged over the pixels whose window lies inside the image and over channels.
    Images must be at least 11 pixels on each side."""
    g = gaussian_window(sigma)

    def blur(x):  # separable Gaussian, 'valid' region only: (C,1,H,W) -> (C,1,H-10,W-10)
        return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    x, y = a.double().unsqueeze(1), b.double().unsqueeze(1)  # (C, 1, H, W)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()
