"""A command's photo files: which photos a command was given, where their outputs go, whether an earlier
run made them already, and the guarded photo in 8 bits."""
import json
import math
import os
import resource
from pathlib import Path

import torch

from plumbing.cli import check_writable, fail, json_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def quantise(src8, I_adv, eps, mask):
    """The guarded photo in 8 bits: src8 moved by at most floor(255 eps) levels, and not at all outside the mask."""
    q = math.floor(eps * 255 + 1e-6)
    d = (I_adv.cpu() * 255 - src8.float()).round().clamp(-q, q)
    if mask is not None:
        d = d * mask
    return (src8.float() + d).clamp(0, 255).to(torch.uint8)


def list_photos(paths):
    """Photo files and folders of photos -> the photo files, each once (guarded outputs in folders left out)."""
    photos = []
    for p in map(Path, paths):
        if p.is_dir():
            photos += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and ".guarded" not in f.name)
        else:
            photos.append(p)
    unique = {}
    for p in photos:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def output_paths(photos, inputs, out):
    """Where each photo's guarded PNG goes: beside it by default; else --out names one PNG, or a folder when
    it is one, ends in a slash, or a folder or several photos were given."""
    if out is None:
        return [p.with_name(f"{p.stem}.guarded.png") for p in photos]
    if len(photos) > 1 or any(Path(i).is_dir() for i in inputs) or out.endswith(("/", os.sep)) or Path(out).is_dir():
        check_writable(out, may_create=True)
        return [Path(out) / f"{p.stem}.guarded.png" for p in photos]
    if Path(out).suffix.lower() != ".png":
        fail(f"--out must be a .png file, or a folder (end it with /), got {out}")
    check_writable(Path(out).parent)
    return [Path(out)]


def files_written(out, preview):
    """The files written for one photo: the guarded PNG, its report and, with --preview, three GIFs."""
    suffixes = [".json"] + [".before.gif", ".after.gif", ".preview.gif", ".attention.png"] * preview
    return [out] + [out.with_suffix(suffix) for suffix in suffixes]


def already_protected(out, settings):
    """Whether an earlier run protected this photo with these settings: its report, the last file written,
    is there and records them."""
    try:
        return json.loads(out.with_suffix(".json").read_text())["settings"] == json.loads(json_bytes(settings))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, TypeError, KeyError):
        return False


def peak_memory(device):
    """Peak memory of this run: CUDA max allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
