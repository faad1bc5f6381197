"""Reproduce the paper's Tables 1 and 2 over a folder of photos, with VBench's metrics.

For each photo: the video SVD makes from it (V_0), the guarded photo of each method, the video SVD
makes from each guarded photo with the same seed, then
  Table 1 (videos): VBench subject consistency (DINO ViT-B/16), aesthetic quality (LAION predictor),
          temporal flickering, a weight-free stand-in for motion smoothness, and how far each video
          moved from V_0 (per-frame PSNR and SSIM, DINO feature similarity);
  Table 2 (photos): PSNR and SSIM between the photo and its guarded version.
Writes OUT/tables.md (mean ± std per method), OUT/results.csv and OUT/results.json (per photo), and per
photo OUT/<photo>/ with the guarded PNGs, metrics.json and contact.png. Photos already done are skipped.

example: python evaluate.py --photos photos/ --out results/
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

import metrics
from attack import fraction, list_photos, protect, quantise, read_photo, save_photo, selected_terms
from model import DINO, AestheticPredictor, CLIPConfig, ViTConfig
from sample import (default_low_memory, fail, generate, load_model, model_size, parse_device, to_model_image,
                    to_uint8, write_atomically)
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
}
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
    untrained: bool = False


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
    return Judges(dino.eval().to(device), aesthetic.eval().to(device), untrained=True)


# ---------------------------------------------------------------- one photo
def model_input(rgb8, size):
    """(3,H0,W0) uint8 -> (3,H,W) in [-1,1], resized as sample.load_image resizes a photo file."""
    return to_model_image(Image.fromarray(rgb8.permute(1, 2, 0).numpy()), size)


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
    """The VBench scores of one video, and its DINO features (F, D) for the comparisons."""
    device = next(judges.dino.parameters()).device
    with torch.no_grad():
        features = judges.dino(metrics.dino_pixels(frames8).to(device)).cpu()
        scores = judges.aesthetic(metrics.clip_pixels(frames8).to(device)).cpu()
    change = (frames8[1:].double() - frames8[:-1].double()).abs().mean().item()
    return {"subject_consistency": metrics.subject_consistency(features),
            "motion_smoothness_standin": metrics.motion_smoothness_standin(frames8),
            "aesthetic_quality": metrics.aesthetic_quality(scores),
            "temporal_flickering": metrics.temporal_flickering(frames8),
            "mean_frame_change": change, "static": change < STATIC_LEVELS}, features


def comparison_metrics(frames8, clean8, features, clean_features):
    """How far a video moved from V_0, frame by frame: mean PSNR, mean SSIM, mean DINO cosine similarity."""
    pairs = [(a.double() / 255, b.double() / 255) for a, b in zip(frames8, clean8)]
    return {"video_psnr": float(np.mean([metrics.psnr(a, b) for a, b in pairs])),
            "video_ssim": float(np.mean([metrics.ssim(a, b) for a, b in pairs])),
            "dino_similarity": metrics.feature_similarity(features, clean_features)}


def evaluate_photo(svd, judges, photo, folder, methods, args):
    """All methods on one photo: returns its record and writes the guarded PNGs and the contact sheet."""
    rgb8, alpha, icc = read_photo(photo)
    device = next(svd.unet.parameters()).device
    clean8 = make_video(svd, rgb8, args)
    clean, clean_features = video_metrics(judges, clean8)
    record, rows = {"photo": photo.name, "videos": {"original": clean}}, [("original", rgb8, None, clean8)]
    guarded = {}
    for name in sorted(methods, key=lambda m: m == "random"):  # random copies i2vguard's perturbation
        if name == "random":
            guarded8 = matched_noise(rgb8, guarded["i2vguard"], args.seed)
        else:
            I_adv, _ = protect(svd, (rgb8.float() / 255).to(device), **METHODS[name][0], eps=args.eps,
                               steps=args.steps, num_frames=args.frames, size=(args.height, args.width),
                               sample_steps=args.sample_steps, seed=args.seed)
            guarded8 = guarded[name] = quantise(rgb8, I_adv, args.eps, None)
        save_photo(folder / f"{name}.png", guarded8, alpha, icc)
        frames8 = make_video(svd, guarded8, args)
        scores, features = video_metrics(judges, frames8)
        a, b = rgb8.double() / 255, guarded8.double() / 255
        record["videos"][name] = scores | comparison_metrics(frames8, clean8, features, clean_features) | {
            "psnr": metrics.psnr(a, b), "ssim": metrics.ssim(a, b)}
        rows.append((name, guarded8, (guarded8.int() - rgb8.int()).abs(), frames8))
    write_contact_sheet(folder / "contact.png", rows)
    return record


# ---------------------------------------------------------------- contact sheet
def tile(image8, height):
    """(3,H,W) uint8 -> a PIL image `height` pixels high."""
    im = Image.fromarray(image8.permute(1, 2, 0).numpy())
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)


def write_contact_sheet(path, rows):
    """One row per video: the photo (source or guarded), its difference from the source x DIFF_GAIN,
    and evenly spaced frames of the video SVD made from it, each labelled."""
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
    write_atomically(path, lambda tmp: sheet.save(tmp, format="PNG"))


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


def tables(records, methods, untrained):
    order = ["original"] + [m for m in METHODS if m in methods]
    names = {"original": "Original Image"} | {m: METHODS[m][1] for m in METHODS}
    moving = [(names[m], [r["videos"][m] for r in records if not r["videos"][m]["static"]]) for m in order]
    static = [(names[m], [r["videos"][m] for r in records if r["videos"][m]["static"]]) for m in order]
    parts = ["**UNTRAINED tiny models: these numbers mean nothing.**\n"] * untrained + [
        f"Table 1. Videos SVD made from each photo (same seed), {len(records)} photos; static videos "
        f"(mean frame change < {STATIC_LEVELS:g}/255) left out. *Motion smoothness is a weight-free stand-in "
        "(neighbour-mean interpolation), not VBench's AMT-S; image quality (MUSIQ) is not computed.\n",
        table(moving, VIDEO_COLUMNS),
        "\nStatic videos, left out above (the paper leaves them out too):\n", table(static, VIDEO_COLUMNS),
        "\nTable 2. Each photo against its guarded version (8-bit PNG).\n",
        table([(names[m], [r["videos"][m] for r in records]) for m in order[1:]], PHOTO_COLUMNS)]
    return "\n".join(parts) + "\n"


def write_results(out, records, methods, untrained):
    text = tables(records, methods, untrained)
    write_atomically(out / "tables.md", lambda tmp: tmp.write_text(text))
    write_atomically(out / "results.json", lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    keys = ["mean_frame_change", "static"] + [k for k, _, _ in VIDEO_COLUMNS + PHOTO_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "method"] + keys)
    for r in records:
        for m, v in r["videos"].items():
            writer.writerow([r["photo"], m] + [v.get(k, "") for k in keys])
    write_atomically(out / "results.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    return text


# ---------------------------------------------------------------- command line
def main(argv=None):
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--photos", nargs="+", required=True, help="photo files and/or folders of photos")
    p.add_argument("--out", required=True, help="output folder (created; photos already done there are skipped)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--model", default=DEFAULT_MODEL, help="SVD: hub repo id, local folder, or 'tiny' (untrained "
                   "random networks, with random judges too: the numbers mean nothing, for tests)")
    p.add_argument("--dino", default=DINO_SOURCE, help="hub repo or local folder with DINO ViT-B/16 model.safetensors")
    p.add_argument("--aesthetic", default=AESTHETIC_SOURCE,
                   help="hub repo or local folder with the LAION aesthetic predictor v1 (ViT-L/14) model.safetensors")
    p.add_argument("--steps", type=int, default=50, help="attack iterations")
    p.add_argument("--eps", type=fraction, default=8 / 255, help="L_inf budget in [0,1] pixel units, e.g. 8/255")
    p.add_argument("--frames", type=int, help="video frames, at least 3 (default: the model's num_frames)")
    p.add_argument("--sample-steps", type=int, default=25, help="sampling steps of every video")
    p.add_argument("--height", type=int, help="model resolution, a multiple of 8 (default: 576; 128 for tiny)")
    p.add_argument("--width", type=int, help="model resolution, a multiple of 8 (default: 1024; 128 for tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks and of every video")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="SVD dtype (default: bfloat16 on CUDA, float32 elsewhere); the judges run in float32")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction,
                   help="recompute activations in the backward pass (default: on for GPUs under 40 GiB)")
    p.add_argument("--decode-chunk", type=int,
                   help="frames decoded at a time (default: all at once, as the reference pipeline; the "
                        "temporal decoder mixes frames, so chunks change the video)")
    args = p.parse_args(argv)

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        fail(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "random" in args.methods and "i2vguard" not in args.methods:
        fail("--methods: random copies the mean and std of i2vguard's perturbation; add i2vguard")
    if args.decode_chunk is not None and args.decode_chunk < 1:
        fail("--decode-chunk must be at least 1")
    if args.steps < 1 or args.sample_steps < 1 or (args.frames is not None and args.frames < 3):
        fail("--steps and --sample-steps must be positive and --frames at least 3")
    if not 1 / 255 <= args.eps <= 1:
        fail(f"--eps must be between 1/255 and 1, got {args.eps:g}")
    args.height, args.width = model_size(args.height, args.width, args.model)
    photos = list_photos(args.photos)
    missing = [str(q) for q in photos if not q.is_file()]
    if missing or not photos:
        fail(f"no such photo: {', '.join(missing)}" if missing else "no photos found")
    stems = [q.stem for q in photos]
    if len(set(stems)) < len(stems):
        fail("two photos share a name (their outputs would collide): " + ", ".join({s for s in stems if stems.count(s) > 1}))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {out} ({e})")
    device = parse_device(args.device)
    try:
        svd = load_model(args.model, device, getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32")))
        judges = tiny_judges(device=device) if args.model == "tiny" else load_judges(args.dino, args.aesthetic, device)
    except WeightsError as e:
        fail(str(e))
    args.frames = args.frames or svd.unet.config.num_frames
    if args.frames < 3:
        fail(f"the model makes {args.frames} frames; the metrics need at least 3 (--frames)")
    args.low_memory = default_low_memory(device) if args.low_memory is None else args.low_memory
    svd.unet.checkpointing = svd.vae.checkpointing = args.low_memory

    records = []
    for photo in photos:
        folder = out / photo.stem
        done = folder / "metrics.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if set(args.methods) <= set(record["videos"]):
                print(f"{photo}: done already, skipped", file=sys.stderr)
                records.append(record)
                continue
        folder.mkdir(exist_ok=True)
        start = time.perf_counter()
        try:
            record = evaluate_photo(svd, judges, photo, folder, args.methods, args)
        except (OSError, Image.DecompressionBombError) as e:
            fail(f"cannot read {photo} as an image ({e})")
        record["wall_time_s"] = time.perf_counter() - start
        write_atomically(done, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
        records.append(record)
        print(f"{photo}: {record['wall_time_s']:.1f} s", file=sys.stderr)
    print(write_results(out, records, args.methods, judges.untrained), end="")


if __name__ == "__main__":
    main()
