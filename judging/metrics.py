"""Image similarity between a source photo and its guarded version: PSNR and SSIM (Wang et al. 2004),
both on (C,H,W) tensors in [0,1], in float64; and the VBench video metrics (Huang et al. 2024) the
paper's Table 1 uses, with VBench's preprocessing, on uint8 frames (F,3,H,W).
"""
import math

import torch
import torch.nn.functional as F


def psnr(a, b, rows=256):
    """Peak signal-to-noise ratio in dB for data range 1 (inf for identical images); uint8 images are levels / 255,
    their squared differences summed exactly as integers, `rows` rows at a time."""
    if a.dtype == b.dtype == torch.uint8:
        squares = sum((a[..., r:r + rows, :].int() - b[..., r:r + rows, :].int()).pow(2).sum(dtype=torch.int64).item()
                      for r in range(0, a.shape[-2], rows))
        mse = squares / a.numel() / 255**2
    else:
        mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


BLOCK = 32  # the columns of one block of SSIM's blur


def gaussian_window(sigma=1.5, truncate=3.5):
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()


def window_matrix(g, n):
    """(n, n + len(g) - 1) float64: row j holds the window g at columns j ... j + len(g) - 1, so that window @ x is
    the 'valid' convolution of x's first axis with g."""
    M = torch.zeros(n, n + len(g) - 1, dtype=torch.float64)
    for j in range(n):
        M[j, j:j + len(g)] = g
    return M


def ssim(a, b, sigma=1.5, rows=32):
    """Mean structural similarity, data range 1: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    population covariances, averaged over the pixels whose window lies inside the image and over channels.
    Images must be at least 11 pixels on each side; uint8 images are levels / 255. Computed `rows` rows of windows
    at a time (each strip with the 10 rows its windows reach below), so a photo of many megapixels needs little
    memory; each blur is two products with a window matrix, by blocks of BLOCK columns (float64 matrix products:
    several times faster than 11 shifted sums per axis, the same numbers)."""
    g = gaussian_window(sigma)
    reach = len(g) - 1  # the rows and columns a window adds to its centre's: 10
    height, width = a.shape[-2] - reach, a.shape[-1] - reach  # of the 'valid' region
    down, across = window_matrix(g, min(rows, height)), window_matrix(g, min(BLOCK, width))
    blocks = -(-width // len(across))

    def blur(x):  # separable Gaussian, 'valid' region only: (Q, C, h + 10, W) -> (Q, C, h, W - 10)
        h = x.shape[-2] - reach
        x = down[:h, :h + reach] @ x  # (Q, C, h, W)
        x = F.pad(x, (0, blocks * len(across) + reach - x.shape[-1]))  # whole blocks of columns
        x = x.unfold(-1, across.shape[1], len(across)) @ across.T  # (Q, C, h, blocks, BLOCK)
        return x.flatten(-2)[..., :width]

    def level(x):  # (C, h, W) -> (C, h, W) float64 in [0, 1]
        return x.double() / 255 if x.dtype == torch.uint8 else x.double()

    total, count = 0.0, 0
    for top in range(0, height, rows):
        x, y = level(a[..., top:top + rows + reach, :]), level(b[..., top:top + rows + reach, :])
        mx, my, xx, yy, xy = blur(torch.stack([x, y, x * x, y * y, x * y]))  # each (C, h, W - 10)
        vx, vy, cxy = xx - mx**2, yy - my**2, xy - mx * my
        c1, c2 = 0.01**2, 0.03**2
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        total, count = total + s.sum().item(), count + s.numel()
    return total / count


def held_out_seeds(seed, count=3):
    """The seeds of the videos that judge a protection made with --seed `seed`: the next `count` seeds, which
    the attack never used (its own draws and V_0 come from `seed`, its calibration from a seed of its own)."""
    return [(seed + k) % 2**63 for k in range(1, count + 1)]


def video_distance(frames8, reference8):
    """How far a video (F,3,H,W) uint8 is from a reference video, frame by frame: mean PSNR and mean SSIM."""
    pairs = [(a.double() / 255, b.double() / 255) for a, b in zip(frames8, reference8)]
    return {"video_psnr": sum(psnr(a, b) for a, b in pairs) / len(pairs),
            "video_ssim": sum(ssim(a, b) for a, b in pairs) / len(pairs)}


# ---------------------------------------------------------------- VBench (vbench/*.py, utils.py)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def resize_frames(frames8, size, mode):
    """VBench's Resize, antialias off, on the frames as float32 values 0..255 (VBench reads the video into
    a float tensor before resizing): no rounding and no clamping, so bicubic overshoots stay."""
    return F.interpolate(frames8.float(), size=size, mode=mode, align_corners=False, antialias=False)


def shorter_side_size(height, width, n):
    """torchvision's Resize(n) output size: the shorter side becomes n, the longer one scales, truncated."""
    if height <= width:
        return n, int(n * width / height)
    return int(n * height / width), n


def normalise(frames, mean, std):
    """Float frames with values 0..255 -> (x / 255 - mean) / std per channel."""
    x = frames / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def dino_pixels(frames8, n=224):
    """VBench's dino_transform: bilinear resize of the shorter side to n, no crop, ImageNet normalisation."""
    size = shorter_side_size(*frames8.shape[-2:], n)
    return normalise(resize_frames(frames8, size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)


def clip_pixels(frames8, n=224):
    """VBench's clip_transform: bicubic resize of the shorter side to n, centre crop n x n, CLIP normalisation."""
    h, w = shorter_side_size(*frames8.shape[-2:], n)
    x = resize_frames(frames8, (h, w), "bicubic")
    top, left = int(round((h - n) / 2)), int(round((w - n) / 2))
    return normalise(x[..., top:top + n, left:left + n], CLIP_MEAN, CLIP_STD)


def subject_consistency(features):
    """VBench subject consistency from per-frame features (F,D): the mean over i >= 1 of
    (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2."""
    f = F.normalize(features.double(), dim=-1)
    previous = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return ((previous + first) / 2).mean().item()


def aesthetic_quality(scores):
    """VBench aesthetic quality: the LAION predictor's per-frame scores (F,) divided by 10, averaged."""
    return (scores.double() / 10).mean().item()


def temporal_flickering(frames8):
    """VBench temporal flickering: (255 - mean |f_i - f_{i+1}|) / 255 on uint8 frames (F,3,H,W)."""
    mae = (frames8[1:].double() - frames8[:-1].double()).abs().mean().item()
    return (255 - mae) / 255


def motion_smoothness_standin(frames8):
    """NOT VBench's motion smoothness (that needs the AMT-S interpolation network, released only as a
    pickle): a weight-free stand-in with the same score. Each odd frame that has two neighbours is
    predicted as their mean; score (255 - mean |prediction - frame|) / 255. Needs 3 frames or more."""
    x = frames8.double()
    odd = torch.arange(1, len(x) - 1, 2)
    predicted = (x[odd - 1] + x[odd + 1]) / 2
    return (255 - (predicted - x[odd]).abs().mean().item()) / 255


def feature_similarity(features, reference):
    """Mean over frames of cos(f_i, g_i): how close a video stays to a reference video, frame by frame."""
    return F.cosine_similarity(features.double(), reference.double(), dim=-1).mean().item()
