"""Reproduce the paper's Tables 1 and 2 over a folder of photos, with VBench's metrics.

For each photo: the video SVD makes from it (V_0), the guarded photo of each method, the video SVD
makes from each guarded photo with the same seed, then
  Table 1 (videos): VBench subject consistency (DINO ViT-B/16), aesthetic quality (LAION predictor),
          temporal flickering, a weight-free stand-in for motion smoothness, and how far each video
          moved from V_0 (per-frame PSNR and SSIM, DINO feature similarity);
  Table 2 (photos): PSNR and SSIM between the photo and its guarded version.
With --transforms, each photo is also transformed (JPEG, resizing, blur, noise) before its video is made:
the survival report (survival.py) and a second contact sheet, transformed.png.
Writes OUT/tables.md (mean ± std per method), OUT/results.csv and OUT/results.json (per photo), and per
photo OUT/<photo>/ with the guarded PNGs, metrics.json and contact.png. Photos already done with the same
settings are skipped; a photo that fails is reported and the others go on. Under torchrun or with
--shard each worker evaluates its share (shard.py) and writes its photos' folders; the tables are made
from those folders by torchrun's rank 0 once every worker is done, or, after --shard runs, by
--merge-only.

example: python evaluate.py --image photos/ --out results/
"""
import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

import metrics
from attack import list_photos, protect, quantise, selected_terms
from cli import (FAILURE, MAX_FRAMES, MAX_SAMPLE_STEPS, MAX_SEED, MAX_SIDE, Parser, check_writable, command,
                 default_dtype, default_low_memory, fail, integer, json_bytes, model_size, number, one_line,
                 parse_device, refuse_clashes, variant, weights_hint, write_files)
from model import DINO, AestheticPredictor, CLIPConfig, ViTConfig
from photos import encoded, model_input, png_bytes, read_photo, to_uint8
from sample import generate, load_model
from shard import join, parse_shard
from survival import survival_tables, survive
from svd import SVDPipeline
from transforms import EOT_KINDS, parse, name as transform_name
from weights import DEFAULT_MODEL, WeightsError, fetch, load_checked

# name: (protect's keyword arguments, the row's name in the tables)
METHODS = {
    "random": (None, "Random noise image"),  # Gaussian, matched to i2vguard's perturbation (see matched_noise)
    "random-sign": (dict(method="random-sign"), "Random ±eps noise image"),
    "i2vguard": (dict(method="i2vguard", terms=selected_terms()), "Our guarded image"),
    "no-spatial": (dict(method="i2vguard", terms=selected_terms(no_spatial=True)), "w.o. Spatial Attack"),
    "no-temporal": (dict(method="i2vguard", terms=selected_terms(no_temporal=True)), "w.o. Temporal Attack"),
    "no-diffusion": (dict(method="i2vguard", terms=selected_terms(no_diffusion=True)), "w.o. Diffusion Attack"),
    "photoguard": (dict(method="photoguard"), "PhotoGuard (encoder attack)"),
    "i2vguard-eot": (dict(method="i2vguard", terms=selected_terms(), eot=EOT_KINDS),
                     "Ours + EOT (JPEG, resize, blur, noise)"),
}
DEFAULT_METHODS = [m for m in METHODS if m != "i2vguard-eot"]
DINO_SOURCE = "facebook/dino-vitb16"
AESTHETIC_SOURCE = "shunk031/aesthetics-predictor-v1-vit-large-patch14"
# A video is static (left out of Table 1, as the paper leaves out static videos) when its frames differ
# by less than this many grey levels (of 255) on average: temporal flickering above 254/255.
STATIC_LEVELS = 1.0
# (key, column header, scale) of Table 1 and Table 2; the comparisons with V_0 are empty on its own row.
VIDEO_COLUMNS = [("subject_consistency", "Subject Consistency (%, ↑)", 100),
                 ("motion_smoothness_standin", "Motion Smoothness* (%, ↑)", 100),
                 ("aesthetic_quality", "Aesthetic Quality (%, ↑)", 100),
                 ("temporal_flickering", "Temporal Flickering (%, ↑)", 100),
                 ("video_psnr", "PSNR to V_0 (dB)", 1), ("video_ssim", "SSIM to V_0", 1),
                 ("dino_similarity", "DINO sim. to V_0 (%)", 100)]
PHOTO_COLUMNS = [("psnr", "PSNR (↑)", 1), ("ssim", "SSIM (↑)", 1)]
SHEET_HEIGHT, SHEET_FRAMES, DIFF_GAIN = 128, 8, 10


# ---------------------------------------------------------------- the judges: DINO and the aesthetic predictor
@dataclass
class Judges:
    dino: DINO
    aesthetic: AestheticPredictor


def load_judges(dino_source, aesthetic_source, device):
    """DINO ViT-B/16 and the LAION aesthetic predictor (ViT-L/14) from hub repos or local folders."""
    with torch.device("meta"):
        dino, aesthetic = DINO(), AestheticPredictor()
    dino = load_checked(dino, fetch(dino_source, "model.safetensors"), ignored=("pooler.",))
    aesthetic = load_checked(aesthetic, fetch(aesthetic_source, "model.safetensors"))
    return Judges(dino.to(device), aesthetic.to(device))


def tiny_judges(seed=0, device="cpu"):
    """Small seeded RANDOM stand-ins for the two judges, for tests: their scores mean nothing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = DINO(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
        nn.init.normal_(dino.embeddings.cls_token, std=0.02)
        nn.init.normal_(dino.embeddings.position_embeddings, std=0.02)
        aesthetic = AestheticPredictor(CLIPConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, patch_size=32, projection_dim=16,
                                                  hidden_act="quick_gelu"))
    return Judges(dino.eval().to(device), aesthetic.eval().to(device))


# ---------------------------------------------------------------- one photo
def make_video(svd, rgb8, args):
    """The video SVD makes from a photo with the run's seed, as the adversary makes it (all frames decoded
    together unless --decode-chunk says otherwise): uint8 frames (F,3,H,W)."""
    frames = generate(svd, model_input(rgb8, (args.height, args.width)), num_frames=args.frames,
                      steps=args.sample_steps, seed=args.seed, clip_image=rgb8.float() / 127.5 - 1,
                      low_memory=args.low_memory, decode_chunk_size=args.decode_chunk or args.frames)
    return torch.from_numpy(to_uint8(frames)).permute(0, 3, 1, 2)  # (F, 3, H, W)


def matched_noise(rgb8, guarded8, seed):
    """The paper's random baseline: the photo plus Gaussian noise with the mean and standard deviation
    (over all pixels and channels) of a guarded photo's perturbation, rounded and clipped to 8 bits."""
    d = guarded8.double() - rgb8.double()
    noise = torch.randn(d.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (rgb8.double() + d.mean() + d.std(correction=0) * noise).round().clamp(0, 255).to(torch.uint8)


def video_metrics(judges, frames8):
    """The VBench scores of one video, and its DINO features (F, D) for the comparisons; without judges
    (None) only the scores that need none, and no features."""
    change = (frames8[1:].double() - frames8[:-1].double()).abs().mean().item()
    scores = {"motion_smoothness_standin": metrics.motion_smoothness_standin(frames8),
              "temporal_flickering": metrics.temporal_flickering(frames8),
              "mean_frame_change": change, "static": change < STATIC_LEVELS}
    if judges is None:
        return scores, None
    device = next(judges.dino.parameters()).device
    with torch.no_grad():
        features = judges.dino(metrics.dino_pixels(frames8).to(device)).cpu()
        aesthetic = judges.aesthetic(metrics.clip_pixels(frames8).to(device)).cpu()
    return scores | {"subject_consistency": metrics.subject_consistency(features),
                     "aesthetic_quality": metrics.aesthetic_quality(aesthetic)}, features


def comparison_metrics(frames8, clean8, features, clean_features):
    """How far a video moved from V_0, frame by frame: mean PSNR, mean SSIM, and with judges the mean DINO
    cosine similarity."""
    scores = metrics.video_distance(frames8, clean8)
    if features is not None:
        scores["dino_similarity"] = metrics.feature_similarity(features, clean_features)
    return scores


def evaluate_photo(svd, judges, photo, folder, methods, args):
    """All methods on one photo: returns its record and its files {path: bytes}, the guarded PNGs and the
    contact sheets. A progress bar counts its stages: V_0, each method's attack and video, then with
    --transforms the videos of the transformed photos."""
    rgb8, alpha, icc = read_photo(photo)
    device = next(svd.unet.parameters()).device
    files, guarded = {}, {}
    transforms = args.transforms or []
    total = 1 + 2 * len(methods) + len(transforms) * (1 + len(methods))
    with tqdm(total=total, desc=f"{photo.name}: V_0", unit="stage") as stages:
        clean8 = make_video(svd, rgb8, args)
        stages.update()
        clean, clean_features = video_metrics(judges, clean8)
        record, rows = {"photo": photo.name, "videos": {"original": clean}}, [("original", rgb8, None, clean8)]
        for name in sorted(methods, key=lambda m: m == "random"):  # random copies i2vguard's perturbation
            stages.set_description(f"{photo.name}: {name} attack")
            if name == "random":
                guarded8 = matched_noise(rgb8, guarded["i2vguard"], args.seed)
            else:
                I_adv, _ = protect(SVDPipeline(svd), (rgb8.float() / 255).to(device), **METHODS[name][0], eps=args.eps,
                                   steps=args.steps, num_frames=args.frames, size=(args.height, args.width),
                                   sample_steps=args.sample_steps, seed=args.seed, progress=True)
                guarded8 = guarded[name] = quantise(rgb8, I_adv, args.eps, None)
            stages.update()
            stages.set_description(f"{photo.name}: {name} video")
            files[folder / f"{name}.png"] = png_bytes(guarded8, alpha, icc)
            frames8 = make_video(svd, guarded8, args)
            stages.update()
            scores, features = video_metrics(judges, frames8)
            a, b = rgb8.double() / 255, guarded8.double() / 255
            record["videos"][name] = scores | comparison_metrics(frames8, clean8, features, clean_features) | {
                "psnr": metrics.psnr(a, b), "ssim": metrics.ssim(a, b)}
            rows.append((name, guarded8, (guarded8.int() - rgb8.int()).abs(), frames8))
        if transforms:
            stages.set_description(f"{photo.name}: transformed photos' videos")

            def video(rgb8):
                stages.update()
                return make_video(svd, rgb8, args)

            record["transformed"], sheet = survive(rows, transforms, video, args.seed)
            files[folder / "transformed.png"] = contact_sheet(sheet)
    files[folder / "contact.png"] = contact_sheet(rows)
    return record, files


# ---------------------------------------------------------------- contact sheet
def tile(image8, height):
    """(3,H,W) uint8 -> a PIL image `height` pixels high."""
    im = Image.fromarray(image8.permute(1, 2, 0).numpy())
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)


def contact_sheet(rows):
    """The bytes of a PNG with one row per video: the photo (source or guarded), its difference from the
    source x DIFF_GAIN, and evenly spaced frames of the video SVD made from it, each labelled."""
    strips = []
    for name, photo8, diff, frames8 in rows:
        picks = np.unique(np.linspace(0, len(frames8) - 1, min(SHEET_FRAMES, len(frames8))).round().astype(int))
        labels = [name, "source" if diff is None else f"|diff| x{DIFF_GAIN}"] + [f"frame {i}" for i in picks]
        blank = torch.zeros_like(photo8)
        images = [photo8, blank if diff is None else (diff * DIFF_GAIN).clamp(0, 255).to(torch.uint8)]
        strips.append([(tile(x, SHEET_HEIGHT), label) for x, label in zip(images + list(frames8[picks]), labels)])
    width = max(sum(im.width for im, _ in strip) for strip in strips)
    sheet = Image.new("RGB", (width, SHEET_HEIGHT * len(strips)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, strip in enumerate(strips):
        x = 0
        for im, label in strip:
            sheet.paste(im, (x, r * SHEET_HEIGHT))
            draw.text((x + 3, r * SHEET_HEIGHT + 2), label, fill="yellow", stroke_width=1, stroke_fill="black")
            x += im.width
    return encoded(sheet, "PNG")


# ---------------------------------------------------------------- tables
def mean_std(values, scale):
    values = np.asarray(values, dtype=np.float64) * scale
    if len(values) == 0:
        return "–"
    return f"{values.mean():.2f} ± {values.std():.2f}" if abs(values.mean()) >= 1 else \
        f"{values.mean():.4f} ± {values.std():.4f}"


def table(rows, columns):
    """rows: (row name, [metric dicts]) -> Markdown with mean ± std of each column over the dicts."""
    lines = ["| Source | n | " + " | ".join(h for _, h, _ in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, dicts in rows:
        cells = [mean_std([d[k] for d in dicts if k in d], s) if any(k in d for d in dicts) else "–"
                 for k, _, s in columns]
        lines.append(f"| {name} | {len(dicts)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_note(model):
    """The line that heads the tables of a run on the tiny or the toy model."""
    if model == "tiny":
        return "**UNTRAINED tiny models: these numbers mean nothing.**\n"
    if model == "toy":
        return ("**Toy model** (`--model toy`: a 64x64, 8-frame SVD trained on a CPU, toy/; scored without the "
                "downloaded judges).\n")
    return ""


def tables(records, methods, note=""):
    order = ["original"] + [m for m in METHODS if m in methods]
    names = {"original": "Original Image"} | {m: METHODS[m][1] for m in METHODS}
    moving = [(names[m], [r["videos"][m] for r in records if not r["videos"][m]["static"]]) for m in order]
    static = [(names[m], [r["videos"][m] for r in records if r["videos"][m]["static"]]) for m in order]
    parts = [note] * bool(note) + [
        f"Table 1. Videos SVD made from each photo (same seed), {len(records)} photos; static videos "
        f"(mean frame change < {STATIC_LEVELS:g}/255) left out. *Motion smoothness is a weight-free stand-in "
        "(neighbour-mean interpolation), not VBench's AMT-S; image quality (MUSIQ) is not computed.\n",
        table(moving, VIDEO_COLUMNS),
        "\nStatic videos, left out above (the paper leaves them out too):\n", table(static, VIDEO_COLUMNS),
        "\nTable 2. Each photo against its guarded version (8-bit PNG).\n",
        table([(names[m], [r["videos"][m] for r in records]) for m in order[1:]], PHOTO_COLUMNS)]
    if "transformed" in records[0]:
        parts.append("\n" + survival_tables(records, order[1:], names, mean_std))
    return "\n".join(parts) + "\n"


def write_results(out, records, methods, note=""):
    text = tables(records, methods, note)
    keys = ["mean_frame_change", "static"] + [k for k, _, _ in VIDEO_COLUMNS + PHOTO_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "method"] + keys)
    for r in records:
        for m, v in r["videos"].items():
            writer.writerow([r["photo"], m] + [v.get(k, "") for k in keys])
    write_files({out / "tables.md": text.encode(), out / "results.json": json_bytes(records),
                 out / "results.csv": buffer.getvalue().encode()})
    return text


# ---------------------------------------------------------------- command line
RUN_FILES = ("tables.md", "results.csv", "results.json")
# What a photo's results depend on: a rerun with other values must not reuse them.
SETTINGS = ("model", "variant", "dtype", "eps", "steps", "seed", "frames", "sample_steps", "height", "width",
            "decode_chunk", "no_judges", "dino", "aesthetic")


def read_record(done):
    """A photo's record from its metrics.json, or None when there is none or it cannot be read."""
    try:
        record = json.loads(done.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("videos"), dict) else None


def previous_record(done, settings):
    """The record an earlier run left in `done` (a photo's metrics.json), or None when there is none or it
    cannot be read (it is made again). One made with other settings is refused: reusing it would mix
    settings in the tables, and replacing it would lose it."""
    if not done.exists():
        return None
    record = read_record(done)
    if record is None:
        print(f"{done}: unreadable; this photo is evaluated again", file=sys.stderr)
        return None
    old = record.get("settings")
    if old != settings:
        changes = "no settings recorded" if not isinstance(old, dict) else ", ".join(
            f"{k} {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v)
        fail(f"{done} was made with other settings ({changes}); give another --out, or delete {done.parent} to redo it")
    return record


def merge(out, folders, methods, settings):
    """Write the tables over the photos of `folders` (in out) done with these settings and methods, and
    say how many of them are done; returns that number."""
    records = [read_record(folder / "metrics.json") for folder in folders]
    records = [r for r in records
               if r is not None and r.get("settings") == settings and set(methods) <= set(r["videos"])]
    if records:
        print(write_results(out, records, methods, model_note(settings["model"])), end="")
    if len(folders) > 1:
        print(f"{len(records)} of {len(folders)} photos evaluated", file=sys.stderr)
    return len(records)


def merge_only(out, photos):
    """--merge-only: the tables over the photo folders in `out` (those of `photos` when given), made with
    the settings of the first one done and the methods every one has; exit 1 if some are not done."""
    folders = [out / photo.stem for photo in photos] if photos else sorted(
        folder for folder in out.iterdir() if (folder / "metrics.json").is_file())
    records = {folder: read_record(folder / "metrics.json") for folder in folders}
    done = {folder: record for folder, record in records.items() if record is not None}
    if not done:
        fail(f"no photo in {out} is done yet")
    first = next(iter(done))
    settings = done[first].get("settings")
    other = [str(folder) for folder, record in done.items() if record.get("settings") != settings]
    if other:
        fail(f"{', '.join(other)}: made with other settings than {first}; merge each run's --out on its own")
    methods = [m for m in METHODS if all(m in record["videos"] for record in done.values())]
    if merge(out, folders, methods, settings) < len(folders):
        sys.exit(FAILURE)


def transform_list(text):
    try:
        specs = [parse(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not specs:
        raise argparse.ArgumentTypeError("no transformation given")
    return list(dict.fromkeys(specs))


@command
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--image", "--photos", dest="image", nargs="+",
                   help="photo files and/or folders of photos (required, except with --merge-only)")
    p.add_argument("--out", required=True,
                   help="output folder (created when the first photo is done; photos already done there are skipped)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--transforms", type=transform_list, metavar="LIST",
                   help="also make each photo's videos after these transformations and report how much "
                        "protection survives, e.g. jpeg95,jpeg75,jpeg50,resize0.5,down0.5,blur1,noise0.02 "
                        "(jpeg<quality>, resize<factor> down and back up, down<factor>, blur<sigma px>, "
                        "noise<sigma>)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="SVD: hub repo id, local folder, 'toy' (a small SVD "
                   "trained on a CPU, scored without judges) or 'tiny' (untrained random networks, with random "
                   "judges too: the numbers mean nothing, for tests)")
    p.add_argument("--no-judges", action="store_true", help="score without DINO and the aesthetic predictor (no "
                   "download): PSNR and SSIM to V_0, flickering and the motion stand-in only")
    p.add_argument("--variant", type=variant, default="fp16", help="SVD weight files: fp16 for *.fp16.safetensors "
                   "(as the official repos ship), none for *.safetensors")
    p.add_argument("--dino", default=DINO_SOURCE, help="hub repo or local folder with DINO ViT-B/16 model.safetensors")
    p.add_argument("--aesthetic", default=AESTHETIC_SOURCE,
                   help="hub repo or local folder with the LAION aesthetic predictor v1 (ViT-L/14) model.safetensors")
    p.add_argument("--steps", type=integer(1), default=50, help="attack iterations")
    p.add_argument("--eps", type=number, default="8/255", help="L_inf budget in [0,1] pixel units")
    p.add_argument("--frames", type=integer(3, MAX_FRAMES),
                   help="video frames, at least 3 (default: the model's num_frames)")
    p.add_argument("--sample-steps", type=integer(1, MAX_SAMPLE_STEPS), default=25,
                   help="denoising steps of every video")
    p.add_argument("--height", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: 576; 64 for toy, 128 for tiny)")
    p.add_argument("--width", type=integer(8, MAX_SIDE),
                   help="model resolution, a multiple of 8 (default: 1024; 64 for toy, 128 for tiny)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="seed of the attacks and of every video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="SVD dtype (default: bfloat16 on CUDA, float32 elsewhere); the judges run in float32")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="recompute activations in the backward pass (default: on for GPUs under 40 GiB)")
    p.add_argument("--decode-chunk", type=integer(1, MAX_FRAMES),
                   help="frames decoded at a time (default: all at once, as the reference pipeline; the "
                        "temporal decoder mixes frames, so chunks change the video)")
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="evaluate only the K-th of N shares of the photos (a Slurm array task), without making "
                        "the tables (see --merge-only); under torchrun each worker takes its part of that share")
    p.add_argument("--merge-only", action="store_true",
                   help="evaluate nothing: make the tables from the photo folders in --out (those of --image "
                        "when given), after --shard runs")
    args = p.parse_args(argv)
    if args.merge_only:
        out = Path(args.out)
        if not out.is_dir():
            fail(f"no such folder: {out}")
        check_writable(out)
        return merge_only(out, list_photos(args.image or []))
    if not args.image:
        fail("the following arguments are required: --image/--photos (see -h)")

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        fail(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "random" in args.methods and "i2vguard" not in args.methods:
        fail("--methods: random copies the mean and std of i2vguard's perturbation; add i2vguard")
    if not 1 / 255 <= args.eps <= 1:
        fail(f"--eps must be between 1/255 and 1, got {args.eps:g}")
    args.height, args.width = model_size(args.height, args.width, args.model)
    photos = list_photos(args.image)
    missing = [str(q) for q in photos if not q.is_file()]
    if missing or not photos:
        fail(f"no such photo: {', '.join(missing)}" if missing else "no photos found")
    out = Path(args.out)
    check_writable(out, may_create=True)
    planned = [("the tables", out / name) for name in RUN_FILES]
    for photo in photos:
        folder = out / photo.stem
        planned += [(photo, folder)] + [(photo, folder / name) for name in
                                        [f"{m}.png" for m in args.methods] + ["metrics.json", "contact.png"]
                                        + ["transformed.png"] * bool(args.transforms)]
    refuse_clashes(planned, photos)
    worker, device = join(args.shard, parse_device(args.device))
    args.dtype = args.dtype or default_dtype(device)
    try:
        svd = load_model(args.model, device, getattr(torch, args.dtype), args.variant)
        args.no_judges = args.no_judges or args.model == "toy"  # the toy's 64x64 videos are scored without them
        if args.no_judges:
            judges = None
        else:
            judges = (tiny_judges(device=device) if args.model == "tiny"
                      else load_judges(args.dino, args.aesthetic, device))
    except WeightsError as e:
        fail(f"{e}{weights_hint(args.model)}", FAILURE)
    args.frames = args.frames or svd.unet.config.num_frames
    if args.frames < 3:
        fail(f"the model makes {args.frames} frames; the metrics need at least 3 (--frames)")
    args.low_memory = default_low_memory(device) if args.low_memory is None else args.low_memory
    svd.unet.checkpointing = svd.vae.checkpointing = args.low_memory
    settings = {key: getattr(args, key) for key in SETTINGS}
    if args.transforms:  # recorded only when given, so that runs made before --transforms still resume
        settings["transforms"] = [transform_name(spec) for spec in args.transforms]
    previous = {photo: previous_record(out / photo.stem / "metrics.json", settings) for photo in photos}

    failures = []
    mine = [photo for photo in photos if worker.takes(photo)]
    with tqdm(mine, desc=worker.label, unit="photo", disable=len(photos) < 2) as bar:
        for photo in bar:
            record = previous[photo]
            if record is not None and set(args.methods) <= set(record["videos"]):
                bar.write(f"{photo}: done already, skipped", file=sys.stderr)
                continue
            folder = out / photo.stem
            start = time.perf_counter()
            try:
                record, files = evaluate_photo(svd, judges, photo, folder, args.methods, args)
                record |= {"settings": settings, "wall_time_s": time.perf_counter() - start}
                write_files(files | {folder / "metrics.json": json_bytes(record)})
            except (ValueError, OSError, RuntimeError, MemoryError) as e:
                failures.append(photo)
                bar.write(f"evaluate.py: error: {photo}: {one_line(e)}", file=sys.stderr)
                continue
            bar.write(f"{photo}: {record['wall_time_s']:.1f} s", file=sys.stderr)
    worker.wait_for_all()
    if args.shard:
        print(f"{worker.label} done; once every shard is, make the tables with: evaluate.py --merge-only "
              f"--image {' '.join(args.image)} --out {out}", file=sys.stderr)
    elif worker.rank == 0:
        merge(out, [out / photo.stem for photo in photos], args.methods, json.loads(json_bytes(settings)))
    worker.finish()
    if failures:
        sys.exit(FAILURE)


if __name__ == "__main__":
    main()
