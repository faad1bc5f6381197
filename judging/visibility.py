"""What the owner sees of a protection: how far the guarded photo is from the photo to the eye, at its own
size and at the size a screen shows it, and where a change would show least.

- CIEDE2000 (Sharma, Wu and Dalal 2005), the colour difference per pixel in CIELAB (sRGB, D65): about 1 is
  one just-noticeable difference, 2-3 is seen at a glance side by side.
- The display view: both photos shrunk to a long side of at most DISPLAY_SIDE pixels (Lanczos, 8 bits), as an
  image viewer or a web page shows a phone photo; a pattern finer than a screen pixel is averaged away there,
  a smooth one is not.
- The just-noticeable-difference profile of Chou and Li (1995), in grey levels per pixel: luminance
  adaptation (the eye misses more in dark and in bright regions than at mid-grey) and texture masking (it
  misses more where the photo is busy), the larger of the two. attack.py's perceptual budget spends the L_inf
  budget by it: little on smooth skin and sky, all of eps in texture and shadow.
LPIPS is not here: it needs a network's weights, which this project does not download.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from judging.metrics import psnr, ssim

DISPLAY_SIDE = 1920
# sRGB (linear) -> XYZ and the D65 white point, as CIE 15 and IEC 61966-2-1 give them
XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                             [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def lab(rgb):
    """sRGB (3,...) in [0,1] -> CIELAB (3,...), float64."""
    c = rgb.double()
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = torch.einsum("ij,j...->i...", XYZ_FROM_RGB, linear) / D65.view(3, *[1] * (c.dim() - 1))
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def ciede2000(lab1, lab2):
    """The CIEDE2000 colour difference (kL = kC = kH = 1) between CIELAB colours (3,...) -> (...)."""
    (L1, a1, b1), (L2, a2, b2) = lab1, lab2
    C_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    G = 0.5 * (1 - torch.sqrt(C_mean**7 / (C_mean**7 + 25.0**7)))
    a1, a2 = (1 + G) * a1, (1 + G) * a2  # a' : the a axis stretched for near-neutral colours
    C1, C2 = torch.hypot(a1, b1), torch.hypot(a2, b2)
    h1, h2 = torch.atan2(b1, a1) % (2 * math.pi), torch.atan2(b2, a2) % (2 * math.pi)
    chromatic = (C1 * C2) != 0
    dh = h2 - h1
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    dh = torch.where(chromatic, dh, torch.zeros_like(dh))
    dL, dC, dH = L2 - L1, C2 - C1, 2 * torch.sqrt(C1 * C2) * torch.sin(dh / 2)
    L_mean, C_mean = (L1 + L2) / 2, (C1 + C2) / 2
    h_sum, far = h1 + h2, (h1 - h2).abs() > math.pi
    h_mean = torch.where(far, torch.where(h_sum < 2 * math.pi, h_sum + 2 * math.pi, h_sum - 2 * math.pi), h_sum) / 2
    h_mean = torch.where(chromatic, h_mean, h_sum)
    T = (1 - 0.17 * torch.cos(h_mean - math.radians(30)) + 0.24 * torch.cos(2 * h_mean)
         + 0.32 * torch.cos(3 * h_mean + math.radians(6)) - 0.20 * torch.cos(4 * h_mean - math.radians(63)))
    d_theta = math.radians(30) * torch.exp(-((torch.rad2deg(h_mean) - 275) / 25) ** 2)
    R_C = 2 * torch.sqrt(C_mean**7 / (C_mean**7 + 25.0**7))
    S_L = 1 + 0.015 * (L_mean - 50) ** 2 / torch.sqrt(20 + (L_mean - 50) ** 2)
    S_C, S_H = 1 + 0.045 * C_mean, 1 + 0.015 * C_mean * T
    R_T = -torch.sin(2 * d_theta) * R_C
    return torch.sqrt((dL / S_L) ** 2 + (dC / S_C) ** 2 + (dH / S_H) ** 2 + R_T * (dC / S_C) * (dH / S_H))


def colour_difference(a8, b8, rows=64):
    """CIEDE2000 between two uint8 photos (3,H,W): (mean, 95th percentile) over the pixels, a band of rows at
    a time into one array of the differences, so that a large photo needs little more memory than that array."""
    per_pixel = torch.empty(a8.shape[-2:], dtype=torch.float64)  # (H, W)
    for r in range(0, a8.shape[1], rows):
        per_pixel[r:r + rows] = ciede2000(lab(a8[:, r:r + rows] / 255), lab(b8[:, r:r + rows] / 255))
    mean = per_pixel.mean().item()
    return mean, float(np.percentile(per_pixel.view(-1).numpy(), 95, overwrite_input=True))


def display_view(image8, side=DISPLAY_SIDE):
    """A uint8 photo (3,H,W) as a screen shows it: shrunk (Lanczos) to a long side of at most `side` pixels."""
    h, w = image8.shape[-2:]
    scale = side / max(h, w)
    if scale >= 1:
        return image8
    im = Image.fromarray(image8.permute(1, 2, 0).numpy()).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                                  Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def owner_view(src8, guarded8):
    """How far a guarded photo is from the photo (both uint8 (3,H,W)), at its own size and as a screen shows it; on
    the 8-bit levels and by strips of rows, so that a photo of many megapixels needs little memory."""
    mean, p95 = colour_difference(src8, guarded8)
    shown_a, shown_b = display_view(src8), display_view(guarded8)
    if shown_a is src8:  # no larger than a screen: shown as it is
        shown_psnr, (shown_mean, shown_p95) = psnr(src8, guarded8), (mean, p95)
    else:
        shown_psnr, (shown_mean, shown_p95) = psnr(shown_a, shown_b), colour_difference(shown_a, shown_b)
    return {"psnr_db": psnr(src8, guarded8), "ssim": ssim(src8, guarded8), "ciede2000_mean": mean, "ciede2000_p95": p95,
            "photo_size": list(src8.shape[-2:]), "display_size": list(shown_a.shape[-2:]),
            "display_psnr_db": shown_psnr, "display_ciede2000_mean": shown_mean, "display_ciede2000_p95": shown_p95}


# ---------------------------------------------------------------- where a change shows least
BACKGROUND = torch.tensor([[1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1]]) / 32
GRADIENTS = torch.tensor([  # the four directional operators of Chou and Li (1995), each / 16
    [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]]]) / 16


def jnd_levels(I, strip=256):
    """The just-noticeable difference of each pixel of a photo I (3,H,W) in [0,1], in grey levels (H,W):
    max(luminance adaptation, texture masking) on the luma (Chou and Li 1995). Computed `strip` rows at a time
    (each with the two rows around it that its 5x5 windows read), so that a photo of many megapixels needs a few
    of its own sizes of memory, not a dozen."""
    Y = (255 * (0.299 * I[0] + 0.587 * I[1] + 0.114 * I[2])).float()[None, None]  # (1, 1, H, W)
    Y = F.pad(Y, (2, 2, 2, 2), mode="replicate")  # (1, 1, H + 4, W + 4)
    return torch.cat([strip_levels(Y[..., top:top + strip + 4, :]) for top in range(0, I.shape[-2], strip)])


def strip_levels(Y):
    """jnd_levels of the rows of a padded luma strip Y (1,1,h+4,W+4): (h,W)."""
    bg = F.conv2d(Y, BACKGROUND.view(1, 1, 5, 5).float())[0, 0]  # mean background luminance
    mg = F.conv2d(Y, GRADIENTS[:, None].float()).abs().amax(1)[0]  # the largest weighted gradient
    dark = 17 * (1 - torch.sqrt(bg.clamp(min=0) / 127)) + 3
    luminance = torch.where(bg <= 127, dark, 3 / 128 * (bg - 127) + 3)
    texture = mg * (0.0001 * bg + 0.115) + (0.5 - 0.01 * bg)
    return torch.maximum(luminance, texture)


FULL_SHARE_LEVELS = 8  # a pixel whose JND is this many grey levels or more may spend all of eps


def perceptual_budget(I):
    """The share of the L_inf budget each pixel of a photo I (3,H,W) may spend, (1,1,H,W) in (0,1]:
    min(1, JND / 8 levels). At the paper's eps of 8/255 each pixel moves at most one just-noticeable difference;
    at another eps the shares stay, so eps scales the change everywhere (smooth mid-grey gets 3/8 of it)."""
    return (jnd_levels(I) / FULL_SHARE_LEVELS).clamp(max=1)[None, None]
