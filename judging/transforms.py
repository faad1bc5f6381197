"""What happens to a photo online before an adversary animates it: JPEG recompression, resizing, blur and
noise. Each transformation exists twice:

  real(spec, rgb8, generator)        the transformation itself on an 8-bit photo (3,H,W) -> 8-bit photo:
                                     JPEG and resizing by Pillow, as a website would apply them;
  differentiable(spec, I, generator) the same forward values on I (1,3,H,W) in [0,1], exactly, with a
                                     gradient: the forward pass is real() on the rounded photo, the
                                     backward pass that of a smooth approximation (straight-through).

The JPEG approximation follows libjpeg's steps (JFIF YCbCr, 4:2:0 chroma averaging, 8x8 DCT, the quality-
scaled standard tables, decoding's triangle upsampling) with rounding passed straight through, as in
Reich et al. (WACV 2024). The attack's expectation over transformations (EOT, MetaCloak) draws one of
them per iteration with `draw_eot`.

A spec is (kind, value): "jpeg75" JPEG at quality 75; "resize0.5" down to half size and back up;
"down0.5" down to half size only; "blur1" Gaussian blur, sigma 1 pixel; "noise0.02" Gaussian noise,
sigma 0.02 in [0,1] units.
"""
import io
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

KINDS = ("jpeg", "resize", "down", "blur", "noise")
MIN_FACTOR = 0.1
# The ranges EOT draws from (uniformly); "resize" covers both down-and-up and down-only.
EOT_KINDS = ("jpeg", "resize", "blur", "noise")
EOT_RANGES = {"jpeg": (50, 95), "resize": (0.5, 1.0), "blur": (0.5, 1.5), "noise": (0.005, 0.03)}

# The JPEG standard's example quantisation tables (ITU T.81 Annex K), row-major: luminance, chrominance.
LUMA_TABLE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA_TABLE = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + \
               [47, 66] + [99] * 6 + [99] * 32


def parse(text):
    """"jpeg75" -> ("jpeg", 75.0); a ValueError that says what is allowed otherwise."""
    match = re.fullmatch(r"(jpeg|resize|down|blur|noise)(\d+(?:\.\d*)?|\.\d+)", text.strip())
    if not match:
        raise ValueError(f"unknown transformation {text!r}: use jpeg<quality>, resize<factor>, down<factor>, "
                         "blur<sigma> or noise<sigma>, e.g. jpeg75,resize0.5,blur1,noise0.02")
    kind, value = match[1], float(match[2])
    # below MIN_FACTOR too little of a photo is left to judge (down0.0001 makes a 64x64 photo 1x1)
    ok = {"jpeg": 1 <= value <= 100 and value == int(value), "resize": MIN_FACTOR <= value <= 1,
          "down": MIN_FACTOR <= value <= 1,
          "blur": 0 < value <= 10, "noise": 0 < value <= 0.5}[kind]
    if not ok:
        limits = {"jpeg": "a whole quality from 1 to 100", "resize": f"a factor in [{MIN_FACTOR:g}, 1]",
                  "down": f"a factor in [{MIN_FACTOR:g}, 1]",
                  "blur": "a sigma in (0, 10] pixels", "noise": "a sigma in (0, 0.5]"}[kind]
        raise ValueError(f"{text}: {kind} takes {limits}")
    return kind, value


def name(spec):
    kind, value = spec
    return f"{kind}{value:g}"


# ---------------------------------------------------------------- the real transformations, on 8-bit photos
def real(spec, rgb8, generator=None):
    """(3,H,W) uint8 -> (3,H',W') uint8, the transformation as applied to an uploaded photo. Noise needs a
    generator; "down" changes the size."""
    kind, value = spec
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(rgb8.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(value))
        with Image.open(buffer) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    if kind in ("resize", "down"):
        h, w = rgb8.shape[-2:]
        small = pil_resize(rgb8, small_size(h, w, value))
        return small if kind == "down" else pil_resize(small, (h, w))
    if kind == "blur":
        return to_8bit(gaussian_blur(rgb8[None].double() / 255, value)[0])
    return to_8bit(rgb8.double() / 255 + value * draw_noise(rgb8.shape, generator))


def draw_noise(shape, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def small_size(h, w, factor):
    return max(1, round(h * factor)), max(1, round(w * factor))


def pil_resize(rgb8, size):
    """(3,H,W) uint8 -> (3,*size) uint8 with Pillow's bicubic filter (antialiased when shrinking)."""
    im = Image.fromarray(rgb8.permute(1, 2, 0).numpy()).resize(size[::-1], Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def to_8bit(x):
    """[0,1] floats -> uint8, rounded to the nearest level."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def gaussian_blur(x, sigma):
    """(N,C,H,W) -> same: a separable Gaussian of sigma pixels, radius ceil(3 sigma), mirrored edges."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    radius_y, radius_x = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)  # reflection needs room
    x = F.pad(x, (radius_x, radius_x, radius_y, radius_y), mode="reflect")
    x = F.conv2d(x, k[radius - radius_x:radius + radius_x + 1].view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k[radius - radius_y:radius + radius_y + 1].view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ---------------------------------------------------------------- differentiable versions
def differentiable(spec, I, generator=None):
    """I (1,3,H,W) in [0,1] -> the transformed photo (1,3,H',W') in [0,1]: exactly real() of I rounded to
    8 bits in the forward pass, the gradient of smooth(spec, I) in the backward pass."""
    kind, value = spec
    rgb8 = to_8bit(I[0].detach().cpu())
    if kind == "noise":  # one draw of the noise, for both passes
        noise = draw_noise(rgb8.shape, generator)
        exact, approx = to_8bit(rgb8.double() / 255 + value * noise), smooth(spec, I, noise.to(I))
    else:
        exact, approx = real(spec, rgb8), smooth(spec, I)
    return exact.to(I)[None] / 255 + (approx - approx.detach())  # forward: exact, bit for bit; backward: d approx


def smooth(spec, I, noise=None):
    """The differentiable approximation of each transformation, (1,3,H,W) in [0,1] -> (1,3,H',W'); noise
    (3,H,W) for "noise"."""
    kind, value = spec
    if kind == "jpeg":
        return jpeg_approximation(I, int(value))
    if kind in ("resize", "down"):
        h, w = I.shape[-2:]
        small = F.interpolate(I, size=small_size(h, w, value), mode="bicubic", antialias=True, align_corners=False)
        return small if kind == "down" else F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    if kind == "blur":
        return gaussian_blur(I, value)
    return I + value * noise


def round_straight_through(x):
    return x + (x.round() - x).detach()


def quality_table(table, quality):
    """libjpeg's jpeg_quality_scaling and baseline clamp of a standard table -> (8,8) divisors."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return torch.tensor([min(max((q * scale + 50) // 100, 1), 255) for q in table], dtype=torch.float64).view(8, 8)


def dct_matrix(dtype, device):
    """The orthonormal 8-point DCT-II matrix C (8,8): coefficients = C @ block @ C.T."""
    u, x = torch.arange(8, dtype=torch.float64)[:, None], torch.arange(8, dtype=torch.float64)[None]
    c = torch.cos((2 * x + 1) * u * math.pi / 16) * math.sqrt(2 / 8)
    c[0] = math.sqrt(1 / 8)
    return c.to(dtype=dtype, device=device)


def jpeg_approximation(I, quality):
    """A float JPEG encode-decode as libjpeg does it with Pillow's defaults (4:2:0), rounding straight-through."""
    h, w = I.shape[-2:]
    x = F.pad(I * 255, (0, -w % 16, 0, -h % 16), mode="replicate")  # whole 16x16 MCUs, edges repeated
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # (1, 2, H/2, W/2): 4:2:0
    y = quantise_blocks(y[:, None], quality_table(LUMA_TABLE, quality))
    chroma = quantise_blocks(chroma, quality_table(CHROMA_TABLE, quality))
    # decoding upsamples chroma with a triangle filter (3/4, 1/4), which is bilinear interpolation
    cb, cr = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
    y = y[:, 0]
    rgb = torch.stack([y + 1.402 * (cr - 128), y - 0.344136286 * (cb - 128) - 0.714136286 * (cr - 128),
                       y + 1.772 * (cb - 128)], 1)
    return rgb[..., :h, :w].clamp(0, 255) / 255


def quantise_blocks(x, table):
    """(1,C,H,W) samples 0..255, H and W multiples of 8 -> the same after DCT, quantisation and inverse DCT."""
    n, c, h, w = x.shape
    C, q = dct_matrix(x.dtype, x.device), table.to(x)
    blocks = (x - 128).view(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)  # (N, C, H/8, W/8, 8, 8)
    coefficients = C @ blocks @ C.T
    blocks = C.T @ (round_straight_through(coefficients / q) * q) @ C
    return blocks.transpose(3, 4).reshape(n, c, h, w) + 128


# ---------------------------------------------------------------- expectation over transformations
def draw_eot(kinds, generator):
    """One transformation for an attack iteration: the untransformed photo or one of `kinds`, equally
    likely, with its value drawn uniformly from EOT_RANGES; None for the untransformed photo."""
    pick = int(torch.randint(len(kinds) + 1, (), generator=generator))
    if pick == len(kinds):
        return None
    kind = kinds[pick]
    low, high = EOT_RANGES[kind]
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    if kind == "jpeg":
        return "jpeg", float(round(low + u * (high - low)))
    if kind == "resize" and torch.rand((), generator=generator) < 0.5:
        kind = "down"
    return kind, low + u * (high - low)


def parse_eot(text):
    """"jpeg,resize,blur,noise" -> the kinds, each once, in EOT_KINDS; a ValueError otherwise."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in EOT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown {', '.join(unknown) or 'nothing'}; choose from {','.join(EOT_KINDS)}")
    return tuple(dict.fromkeys(kinds))
