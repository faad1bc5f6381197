"""What happens to a photo online before an adversary animates it: JPEG recompression, resizing, cropping, blur,
noise, and the purifications of one who wants the protection gone (a denoiser, a round trip through the
adversary's own VAE), one at a time or several in a row. Each transformation exists twice:

  real(spec, rgb8, generator, vae)        the transformation itself on an 8-bit photo (3,H,W) -> 8-bit photo:
                                          JPEG and resizing by Pillow, as a website would apply them;
  differentiable(spec, I, generator, vae) the same forward values on I (1,3,H,W) in [0,1], exactly, with a
                                          gradient: the forward pass is real() on the rounded photo, the
                                          backward pass that of a smooth approximation (straight-through).

The JPEG approximation follows libjpeg's steps (JFIF YCbCr, 4:2:0 chroma averaging, 8x8 DCT, the quality-
scaled standard tables, decoding's triangle upsampling) with rounding passed straight through, as in
Reich et al. (WACV 2024). The attack's expectation over transformations (EOT, MetaCloak) draws one of
them per iteration with `draw_eot`.

A link is (kind, value): "jpeg75" JPEG at quality 75; "resize0.5" down to half size and back up; "down0.5"
down to half size only; "long1080" down so that the long side is 1080 pixels, as social networks do (a photo
already that small is left as it is); "crop0.8" the centre crop keeping 0.8 of each side; "blur1" Gaussian
blur, sigma 1 pixel; "noise0.02" Gaussian noise, sigma 0.02 in [0,1] units; "denoise0.1" a bilateral filter of
range sigma 0.1 (judging/purifiers.py); "vae" ("vae", None) a round trip through the adversary's own VAE at
the model's resolution and back to the photo's size, which needs that VAE: the `vae` argument, a
purifiers.VAERoundTrip. A spec is a link or a chain, a tuple of links written with "+" ("noise0.05+vae") and
applied left to right, noise drawn in that order from the one generator. A crop changes the framing: the
survival report compares videos of photos cropped alike, and V_0 with the cropped source's video on the
region they share (judging/survival.py).
"""
import io
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from judging.purifiers import bilateral
from plumbing.photos import model_input

KINDS = ("jpeg", "resize", "down", "long", "crop", "blur", "noise", "denoise", "vae")
MIN_FACTOR = 0.1
MIN_LONG_SIDE, MAX_LONG_SIDE = 8, 65536
# The --transforms preset "purify": recompression, a social network's resize, noise (alone, then upscaled as
# Noisy Upscaling does, or purified by the VAE), the VAE round trip (VAE-Trans), a crop and a blur.
PURIFY = ("jpeg75", "jpeg50", "long1080+jpeg85", "noise0.05", "noise0.1+resize0.5", "vae", "noise0.05+vae",
          "crop0.8", "blur1")
# The ranges EOT draws from (uniformly); "resize" covers both down-and-up and down-only. EOT_KINDS: its default set.
EOT_KINDS = ("jpeg", "resize", "blur", "noise")
EOT_RANGES = {"jpeg": (50, 95), "resize": (0.5, 1.0), "blur": (0.5, 1.5), "noise": (0.005, 0.03),
              "crop": (0.7, 1.0), "long": (512, 2048), "denoise": (0.02, 0.1)}

# The JPEG standard's example quantisation tables (ITU T.81 Annex K), row-major: luminance, chrominance.
LUMA_TABLE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA_TABLE = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + \
               [47, 66] + [99] * 6 + [99] * 32


# ---------------------------------------------------------------- specs: parsing and naming
LIMITS = {"jpeg": "a whole quality from 1 to 100", "resize": f"a factor in [{MIN_FACTOR:g}, 1]",
          "down": f"a factor in [{MIN_FACTOR:g}, 1]", "crop": f"a fraction in [{MIN_FACTOR:g}, 1]",
          "long": f"a whole number of pixels from {MIN_LONG_SIDE} to {MAX_LONG_SIDE}",
          "blur": "a sigma in (0, 10] pixels", "noise": "a sigma in (0, 0.5]", "denoise": "a sigma in (0, 1]"}


def parse(text):
    """"jpeg75" -> ("jpeg", 75.0); "vae" -> ("vae", None); "noise0.05+vae" -> (("noise", 0.05), ("vae", None)), a
    chain; a one-line ValueError that says what is allowed otherwise."""
    parsed = chain(text, parse_link)
    return parsed[0] if len(parsed) == 1 else parsed


def chain(text, parse_one):
    """"a+b" -> (parse_one("a"), parse_one("b")); the ValueError of a chain's link says which link it is."""
    parts = text.strip().split("+")
    if len(parts) == 1:
        return (parse_one(parts[0]),)
    parsed = []
    for k, part in enumerate(parts):
        try:
            parsed.append(parse_one(part))
        except ValueError as e:
            raise ValueError(f"{text.strip()}: link {k + 1} of the chain: {e}") from None
    return tuple(parsed)


def parse_link(text):
    valued = "|".join(kind for kind in KINDS if kind != "vae")  # every kind but vae takes a value
    match = re.fullmatch(rf"({valued})(\d+(?:\.\d*)?|\.\d+)|vae", text.strip())
    if not match:
        raise ValueError(f"unknown transformation {text.strip()!r}: use jpeg<quality>, resize<factor>, "
                         "down<factor>, long<pixels>, crop<fraction>, blur<sigma>, noise<sigma>, denoise<sigma> or "
                         "vae, or a chain of them with +, e.g. jpeg75,long1080+jpeg85,noise0.05+vae")
    if match[0] == "vae":
        return "vae", None
    kind, value = match[1], float(match[2])
    # below MIN_FACTOR too little of a photo is left to judge (down0.0001 makes a 64x64 photo 1x1)
    ok = {"jpeg": 1 <= value <= 100 and value == int(value), "resize": MIN_FACTOR <= value <= 1,
          "down": MIN_FACTOR <= value <= 1, "crop": MIN_FACTOR <= value <= 1,
          "long": MIN_LONG_SIDE <= value <= MAX_LONG_SIDE and value == int(value),
          "blur": 0 < value <= 10, "noise": 0 < value <= 0.5, "denoise": 0 < value <= 1}[kind]
    if not ok:
        raise ValueError(f"{text.strip()}: {kind} takes {LIMITS[kind]}")
    return kind, value


def parse_list(text):
    """"jpeg75,noise0.05+vae" -> [specs], each once, in order; "purify" stands for the PURIFY set."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    specs = [parse(t) for item in items for t in (PURIFY if item == "purify" else [item])]
    if not specs:
        raise ValueError("no transformation given")
    return list(dict.fromkeys(specs))


def links(spec):
    """A spec's links, in the order they are applied: (spec,) for a single link."""
    return spec if isinstance(spec[0], tuple) else (spec,)


def name(spec):
    """("jpeg", 75.0) -> "jpeg75"; a chain's links joined by "+"; a link whose value is None by its kind alone."""
    return "+".join(kind if value is None else f"{kind}{value:g}" for kind, value in links(spec))


def kept_fraction(spec):
    """The fraction of each side of the photo's framing a spec keeps: the product of its crops."""
    return math.prod(value for kind, value in links(spec) if kind == "crop")


# ---------------------------------------------------------------- the real transformations, on 8-bit photos
def real(spec, rgb8, generator=None, vae=None):
    """(3,H,W) uint8 -> (3,H',W') uint8, the transformation as applied to an uploaded photo, link after link.
    Noise needs a generator, "vae" the adversary's VAE (purifiers.VAERoundTrip); "down", "long" and "crop"
    change the size."""
    for link in links(spec):
        rgb8 = real_link(link, rgb8, generator, vae)
    return rgb8


def real_link(link, rgb8, generator, vae):
    kind, value = link
    h, w = rgb8.shape[-2:]
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(rgb8.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(value))
        with Image.open(buffer) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    if kind in ("resize", "down"):
        small = pil_resize(rgb8, small_size(h, w, value))
        return small if kind == "down" else pil_resize(small, (h, w))
    if kind == "long":
        size = long_size(h, w, value)
        return rgb8 if size == (h, w) else pil_resize(rgb8, size)
    if kind == "crop":
        top, left, ch, cw = crop_box(h, w, value)
        return rgb8[:, top:top + ch, left:left + cw].contiguous()
    if kind == "blur":
        return to_8bit(gaussian_blur(rgb8[None].double() / 255, value)[0])
    if kind == "denoise":
        return to_8bit(bilateral(rgb8[None].double() / 255, value)[0])
    if kind == "vae":
        vae = needs(vae)
        with torch.no_grad():  # Pillow's Lanczos to the model's size, as the pipeline resizes a photo file
            decoded = vae(model_input(rgb8, vae.size)[None])[0]  # (3, H_model, W_model) in [-1, 1]
        small = to_8bit((decoded.cpu().double() + 1) / 2)
        return small if small.shape[-2:] == (h, w) else pil_resize(small, (h, w))
    return to_8bit(rgb8.double() / 255 + value * draw_noise(rgb8.shape, generator))


def needs(vae):
    if vae is None:
        raise ValueError("the vae transformation needs the adversary's VAE")
    return vae


def draw_noise(shape, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def small_size(h, w, factor):
    return max(1, round(h * factor)), max(1, round(w * factor))


def long_size(h, w, side):
    """The size with the long side `side` pixels, the aspect kept; (h, w) itself when the photo is that small."""
    if max(h, w) <= side:
        return h, w
    return small_size(h, w, side / max(h, w))


def crop_box(h, w, fraction):
    """(top, left, height, width) of the centre crop keeping `fraction` of each side."""
    ch, cw = small_size(h, w, fraction)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


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
def differentiable(spec, I, generator=None, vae=None):
    """I (1,3,H,W) in [0,1] -> the transformed photo (1,3,H',W') in [0,1], link after link: each link's forward
    pass exactly real() of its input rounded to 8 bits (a link's output is already on the 8-bit grid), its
    gradient that of smooth(link, ...). A guarded photo made lazily (pipelines/guarded.py) is made whole first."""
    I = I if torch.is_tensor(I) else I.photo()
    for link in links(spec):
        I = differentiable_link(link, I, generator, vae)
    return I


def differentiable_link(link, I, generator, vae):
    kind, value = link
    if I.device.type == "meta":  # a memory rehearsal (plumbing/memory.py): the exact pass, made from the photo's
        approx = smooth(link, I, torch.zeros(I.shape[1:], device="meta"), vae)  # data, takes its shape here
        return torch.empty_like(approx) + (approx - approx.detach())
    rgb8 = to_8bit(I[0].detach().cpu())
    if kind == "noise":  # one draw of the noise, for both passes
        noise = draw_noise(rgb8.shape, generator)
        exact, approx = to_8bit(rgb8.double() / 255 + value * noise), smooth(link, I, noise.to(I))
    else:
        exact, approx = real_link(link, rgb8, generator, vae), smooth(link, I, vae=vae)
    return exact.to(I)[None] / 255 + (approx - approx.detach())  # forward: exact, bit for bit; backward: d approx


def smooth(link, I, noise=None, vae=None):
    """The differentiable approximation of each link, (1,3,H,W) in [0,1] -> (1,3,H',W'); noise (3,H,W) for
    "noise", the adversary's VAE for "vae". Crops are exact; the denoiser is its own approximation."""
    kind, value = link
    h, w = I.shape[-2:]
    if kind == "jpeg":
        return jpeg_approximation(I, int(value))
    if kind in ("resize", "down"):
        small = F.interpolate(I, size=small_size(h, w, value), mode="bicubic", antialias=True, align_corners=False)
        return small if kind == "down" else F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    if kind == "long":
        return torch_resize(I, long_size(h, w, value))
    if kind == "crop":
        top, left, ch, cw = crop_box(h, w, value)
        return I[..., top:top + ch, left:left + cw]
    if kind == "blur":
        return gaussian_blur(I, value)
    if kind == "denoise":
        return bilateral(I, value)
    if kind == "vae":
        vae = needs(vae)
        decoded = vae(torch_resize(I, vae.size) * 2 - 1)  # (1, 3, H_model, W_model) in [-1, 1]
        return torch_resize(((decoded + 1) / 2).clamp(0, 1).to(I.dtype), (h, w))
    return I + value * noise


def torch_resize(I, size):
    """(N,C,H,W) -> (N,C,*size), bicubic, antialiased when shrinking: Pillow's filter, differentiably."""
    if tuple(size) == tuple(I.shape[-2:]):
        return I
    return F.interpolate(I, size=size, mode="bicubic", antialias=True, align_corners=False)


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
def draw_eot(items, generator):
    """One transformation for an attack iteration: the untransformed photo or one of the EOT items (parse_eot),
    equally likely, each link of it that names only its kind with a value drawn uniformly from EOT_RANGES;
    None for the untransformed photo."""
    pick = int(torch.randint(len(items) + 1, (), generator=generator))
    if pick == len(items):
        return None
    drawn = tuple(draw_link(kind, value, generator) for kind, value in eot_links(items[pick]))
    return drawn[0] if len(drawn) == 1 else drawn


def draw_link(kind, value, generator):
    """A link of an EOT item: as given when it has its value (or needs none), else its value drawn."""
    if value is not None or kind == "vae":
        return kind, value
    low, high = EOT_RANGES[kind]
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    if kind in ("jpeg", "long"):
        return kind, float(round(low + u * (high - low)))
    if kind == "resize" and torch.rand((), generator=generator) < 0.5:
        kind = "down"
    return kind, low + u * (high - low)


def eot_links(item):
    """"noise+vae" -> (("noise", None), ("vae", None)): an EOT item's links, None where a value is to be drawn
    (a kind of EOT_RANGES alone); a link with its value ("jpeg75") is kept as given."""
    return chain(item, eot_link)


def eot_link(text):
    return (text.strip(), None) if text.strip() in EOT_RANGES else parse_link(text)


def parse_eot(text):
    """"jpeg,resize,noise0.05+vae" -> the EOT items, each once and in a normal spelling ("jpeg", "resize",
    "noise0.05+vae"): kinds whose values are drawn (those of EOT_RANGES), transformations with their values,
    "vae", and chains of them; "purify" stands for the PURIFY set. A one-line ValueError otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    items = [t for item in items for t in (PURIFY if item == "purify" else [item])]
    if not items:
        raise ValueError(f"nothing given; choose from {','.join(EOT_RANGES)},vae, a transformation with its "
                         "value (jpeg75) or a chain (noise+vae)")
    try:
        return tuple(dict.fromkeys(name(eot_links(item)) for item in items))
    except ValueError as e:
        raise ValueError(f"{e}; EOT also takes a kind alone, its value drawn: {','.join(EOT_RANGES)}") from None


def needs_vae(items):
    """Whether EOT over these items may draw the vae transformation."""
    return any(kind == "vae" for item in items for kind, _ in eot_links(item))
