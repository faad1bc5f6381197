"""Photo and mask files: any still image Pillow reads becomes 8-bit RGB (plus its alpha channel), or a
one-line ValueError that says why not; and video frames become 8-bit images and file bytes (PNG, GIF, WebP).

A photo must be at least MIN_SIDE pixels a side and at most MAX_PIXELS pixels; both are checked from
the file's header, before the pixels are decoded. 16-bit images are scaled to 8 bits (the guarded photo
is an 8-bit PNG); floating-point images, 32-bit integer images with values beyond 16 bits, animations
and multi-page files are refused. A colour profile is kept only if it describes RGB: a gray or CMYK
photo's profile would misdescribe the RGB pixels written.
"""
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

MIN_SIDE = 11  # SSIM's 11x11 window (metrics.ssim) must fit inside the photo
MAX_PIXELS = 50_000_000  # above any camera's photos, below Pillow's decompression-bomb guard
ORIENTATION = 0x0112  # the EXIF tag
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def read_image(path):
    """An image file -> (PIL image in mode RGB or RGBA, its RGB colour profile or None), EXIF orientation applied."""
    if not Path(path).is_file():  # a FIFO would block the read forever; a folder cannot be read
        raise ValueError("not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_still's limit is lower
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(f"a photo must be at most {MAX_PIXELS / 1e6:g} megapixels") from None
    except OSError as e:
        raise ValueError(f"not a readable image ({e})") from None
    with im:
        check_still(im)
        try:
            im.load()
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"not a readable image ({e})") from None
        icc = im.info.get("icc_profile")
        return to_8bit(ImageOps.exif_transpose(im)), icc if icc and icc[16:20] == b"RGB " else None


def pixels(path):
    """(height, width) of a photo as read_image gives it, from its header alone; (MIN_SIDE, MIN_SIDE) for a file that
    is not a readable photo (read_image refuses it when its turn comes)."""
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            check_still(im)
            turned = im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn
            return (im.width, im.height) if turned else (im.height, im.width)
    except (OSError, ValueError, Image.DecompressionBombError):
        return MIN_SIDE, MIN_SIDE


def largest(paths):
    """(height, width) of the photo with the most pixels, from their headers (pixels)."""
    return max(map(pixels, paths), key=lambda size: size[0] * size[1])


def check_still(im):
    """What the header says: one frame, and a size within MIN_SIDE and MAX_PIXELS."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise ValueError(f"an animation or multi-page image ({frames} frames): save the frame to use as a PNG")
    w, h = im.size
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"{w}x{h} pixels: a photo must be at least {MIN_SIDE} pixels a side")
    if w * h > MAX_PIXELS:
        raise ValueError(f"{w}x{h} pixels: a photo must be at most {MAX_PIXELS / 1e6:g} megapixels")


def to_8bit(im):
    """A decoded image in any Pillow mode -> RGB or RGBA, 8 bits per channel (16-bit gray is scaled, not clipped)."""
    if im.mode == "F":
        raise ValueError("a floating-point image: save it with 8 or 16 bits per channel")
    if im.mode.startswith("I"):  # gray: I;16 (16-bit files), or I (how older Pillow opens them; also 32-bit files)
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError("a 32-bit integer image: save it with 8 or 16 bits per channel")
        im = Image.fromarray((values / 257).round().astype(np.uint8))  # 65535 -> 255
    mode = "RGBA" if im.mode in ALPHA_MODES or "transparency" in im.info else "RGB"
    try:
        return im.convert(mode)
    except ValueError as e:
        raise ValueError(f"a {im.mode} image that cannot be converted to RGB ({e})") from None


def read_photo(path):
    """A photo file -> (RGB uint8 (3,H,W), alpha uint8 (H,W) or None, RGB ICC profile or None)."""
    im, icc = read_image(path)
    alpha = np.asarray(im.getchannel("A")) if im.mode == "RGBA" else None
    rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)  # (3, H, W)
    return rgb, alpha, icc


def read_mask(path):
    """A mask image -> (H,W) float of 0/1; pixels brighter than mid-grey are protected."""
    im, _ = read_image(path)
    return torch.from_numpy(np.asarray(im.convert("L")) > 127).float()


def png_bytes(rgb8, alpha=None, icc=None):
    """(3,H,W) uint8 (+ alpha (H,W), + RGB colour profile) -> the bytes of a PNG file."""
    array = rgb8.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([array, alpha]) if alpha is not None else array).save(
        buffer, format="PNG", **({"icc_profile": icc} if icc else {}))
    return buffer.getvalue()


def model_input(rgb8, size=None):
    """(3,H0,W0) uint8 -> (3,H,W) in [-1,1], resized as load_image resizes a photo file."""
    return to_model_image(Image.fromarray(rgb8.permute(1, 2, 0).numpy()), size)


def to_model_image(im, size=None):
    """An RGB PIL image -> (3,H,W) float32 in [-1,1], resized with Lanczos to size=(height, width) if given."""
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)
    return x * 2 - 1


def to_uint8(frames):
    """(F,3,H,W) in [-1,1] -> (F,H,W,3) uint8, rounded as the reference's PIL output is. NaN or infinity (broken
    weights) is a ValueError, not a black video."""
    if not frames.isfinite().all():
        raise ValueError("the video holds NaN or infinite values: the model's weights or the settings are broken")
    return ((frames.float() / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_images(frames):
    """(F,3,H,W) in [-1,1] -> F PIL images."""
    return [Image.fromarray(a) for a in to_uint8(frames)]


def encoded(im, format, **options):
    """A PIL image -> the bytes of an image file in `format`."""
    buffer = io.BytesIO()
    im.save(buffer, format=format, **options)
    return buffer.getvalue()


def video_bytes(images, fps, format="GIF"):
    """PIL images -> the bytes of a looping animated GIF or WebP."""
    return encoded(images[0], format, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
