"""A command's photo files: which photos a command was given, where their outputs go, whether an earlier
run made them already, and the guarded photo in 8 bits."""
import hashlib
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


def is_a(test, path):
    """path.is_file() or .is_dir(), False where the name cannot even be looked up (too long, say)."""
    try:
        return test(Path(path))
    except OSError:
        return False


def list_photos(paths):
    """Photo files and folders of photos -> the photo files, each once (guarded outputs in folders left out,
    and entries that are not files, such as a folder or a FIFO named *.png)."""
    photos = []
    for p in map(Path, paths):
        if is_a(Path.is_dir, p):
            photos += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and ".guarded" not in f.name
                             and is_a(Path.is_file, f))
        else:
            photos.append(p)
    unique = {}
    for p in photos:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def existing_photos(paths):
    """list_photos, refusing (status 2) photos that do not exist, or finding none."""
    photos = list_photos(paths)
    missing = [str(p) for p in photos if not is_a(Path.is_file, p)]
    if missing or not photos:
        fail(f"no such photo: {', '.join(missing)}" if missing else "no photos found")
    return photos


def output_paths(photos, inputs, out):
    """Where each photo's guarded PNG goes: beside it by default; else --out names one PNG, or a folder when
    it is one, ends in a slash, or a folder or several photos were given."""
    if out is None:
        return [p.with_name(f"{p.stem}.guarded.png") for p in photos]
    if len(photos) > 1 or any(is_a(Path.is_dir, i) for i in inputs) or out.endswith(("/", os.sep)) \
            or is_a(Path.is_dir, out):
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


def already_protected(out, settings, inputs_sha256):
    """Whether an earlier run protected this photo with these settings and these inputs: its guarded PNG is
    there, and its report, the last file written, records the same settings and the same inputs' digest."""
    if not out.with_suffix(".json").is_file():  # nor read a FIFO there, which would block
        return False
    try:
        report = json.loads(out.with_suffix(".json").read_text())
        return (out.is_file() and report["settings"] == json.loads(json_bytes(settings))
                and report.get("inputs_sha256") == inputs_sha256)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, TypeError, KeyError):
        return False


def digest(paths):
    """sha256 over what these input files hold (a folder: its regular files, sorted by name, each named), so
    that a result is reused only for the same inputs, not merely the same file names."""
    h = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
            if file.is_file():  # a FIFO or a missing file is not read here (it would block or fail)
                with file.open("rb") as stream:
                    for block in iter(lambda: stream.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def input_files(*paths):
    """Every file an output must not overwrite: the paths given, and for a folder (a model, a pose
    sequence) the files in it."""
    found = []
    for path in map(Path, filter(None, paths)):
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def model_folder(model):
    """A --model given as a local folder (its files are inputs too), else None (a hub id or a built-in name)."""
    return model if Path(model).is_dir() else None


def result_folder(out, photo):
    """evaluate.py's folder for a photo inside `out`: named by its stem, or by its whole name when the
    stem would point elsewhere ("", ".", ".."), so that no photo's results leave `out`."""
    return Path(out) / (photo.stem if photo.stem not in ("", ".", "..") else photo.name)


def peak_memory(device):
    """Peak memory of this run: CUDA max allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
