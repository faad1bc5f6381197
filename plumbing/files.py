"""A command's files: which photos a command was given, every input it reads (inputs_of), where the outputs go,
whether an earlier run made them already (with the same settings, inputs and model files), and the guarded photo
in 8 bits."""
import contextlib
import hashlib
import json
import math
import os
import resource
import time
from pathlib import Path

import torch

from plumbing.cli import BUILT_IN_MODELS, FAILURE, check_writable, fail, json_bytes, read_flag, refuse_clashes
from plumbing.photos import read_mask, read_photo
from plumbing.reading import read_json

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


def attack_inputs(args):
    """attack.py's photos, {photo: its guarded PNG}, and its mask: refused before any work are a missing photo,
    an unreadable mask, --body with several photos, and an output onto or into an input. Sets args.model_files,
    what identifies the model folder's weights (model_files), so that resume sees them replaced."""
    photos = existing_photos(args.image)
    mask = read_flag(f"--mask {args.mask}", read_mask, args.mask) if args.mask else None
    if args.body and (args.pose or len(photos) > 1):
        fail("--body: the keypoints of one photo, for a pose-conditioned model, without --pose")
    outs = output_paths(photos, args.image, args.out)
    refuse_clashes([(photo, path) for photo, out in zip(photos, outs) for path in files_written(out, args.preview)],
                   inputs_of(args, photos))
    args.model_files = model_files(args)
    return photos, dict(zip(photos, outs)), mask


def photo_size(photo):
    """(height, width) of a photo file; an unreadable one is refused in one line under --image (status 1, as when
    it is protected)."""
    return read_flag(f"--image {photo}", read_photo, photo, status=FAILURE)[0].shape[-2:]


def report_settings(args):
    """The settings attack.py's report records: every flag's value but where the photos come from and go to,
    which worker made them, how long it waited for the others and with how many threads, and the conditions,
    EOT, recalibration, the model folder's files (model_files) and the paper's budget when unused or chosen (so
    that reports made before they existed still resume)."""
    unused = [k for k in ("eot", "pose", "body", "recalibrate", "averaged_maps", "model_files")
              if not getattr(args, k, None)]
    unused += [k for k in ("prompt", "negative_prompt") if getattr(args, k, None) is None]  # Wan's "" is a prompt
    if args.budget == "flat" and args.chroma == 1:  # the paper's budget, the only one before it could be chosen
        unused += ["paper", "budget", "chroma"]
    ignored = ("image", "out", "shard", "join_timeout", "threads", *unused)
    return {k: v for k, v in vars(args).items() if k not in ignored}


def files_written(out, preview):
    """The files written for one photo: the guarded PNG, its report and, with --preview, three GIFs."""
    suffixes = [".json"] + [".before.gif", ".after.gif", ".preview.gif", ".attention.png"] * preview
    return [out] + [out.with_suffix(suffix) for suffix in suffixes]


def already_protected(out, settings, inputs_sha256):
    """Whether an earlier run protected this photo with these settings and these inputs: its guarded PNG is
    there, and its report, the last file written, records the same settings and the same inputs' digest."""
    try:
        report = read_json(out.with_suffix(".json"), "report")  # a FIFO there is not read: it would block
        return (out.is_file() and report["settings"] == json.loads(json_bytes(settings))
                and report.get("inputs_sha256") == inputs_sha256)
    except (OSError, ValueError, TypeError, KeyError):
        return False


def inputs_digest(args, photo):
    """The digest of what attack.py reads for one photo: the photo, --mask, --pose and --body."""
    return digest([photo, *filter(None, (args.mask, args.pose, args.body))])


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


# The flags that name a file or folder a command reads, and those that name a model (a hub id, a built-in name or
# a local folder), in every command that has them.
INPUT_FLAGS = ("mask", "pose", "body")
MODEL_FLAGS = ("model", "victim", "dino", "aesthetic")


def inputs_of(args, photos=None):
    """Every input a command reads, which no output may land on or in (cli.refuse_clashes): the photos (default:
    --image), the files of INPUT_FLAGS and the local model folders of MODEL_FLAGS it was given."""
    photos = [args.image] if photos is None else photos
    models = [model_folder(getattr(args, flag, None)) for flag in MODEL_FLAGS]
    return [*photos, *(getattr(args, flag, None) for flag in INPUT_FLAGS), *models]


def model_folder(model):
    """A model flag's value when it is a local folder (its files are inputs too), else None (a hub id, a
    built-in name, or not given)."""
    return model if model and model not in BUILT_IN_MODELS and is_a(Path.is_dir, model) else None


def model_files(args):
    """What identifies the local model folders of MODEL_FLAGS: {flag: a digest of the names, sizes and modification
    times of the files in its folder}, so that a result made with other weights under the same folder name is
    not taken for done (hashing gigabytes of weights would take minutes each run). Hub ids and built-in names are
    identified by the name alone, which the settings record: they are left out."""
    identities = {}
    for flag in MODEL_FLAGS:
        folder = model_folder(getattr(args, flag, None))
        if folder:
            h = hashlib.sha256()
            for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                status = file.stat()
                h.update(f"{file.relative_to(folder)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
            identities[flag] = h.hexdigest()[:16]
    return identities


def result_folder(out, photo):
    """evaluate.py's folder for a photo inside `out`: named by its stem, or by its whole name when the
    stem would point elsewhere ("", ".", ".."), so that no photo's results leave `out`."""
    return Path(out) / (photo.stem if photo.stem not in ("", ".", "..") else photo.name)


@contextlib.contextmanager
def measured(device):
    """The wall time and the peak memory (peak_memory) of a block, in the dict it gives, once the block is over."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    usage, start = {}, time.perf_counter()
    yield usage
    usage |= {"wall_time_s": time.perf_counter() - start, "peak_memory_bytes": peak_memory(device)}


def peak_memory(device):
    """Peak memory of this run: CUDA max allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
