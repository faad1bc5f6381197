"""evaluate.py's outputs: Table 1 and Table 2 in Markdown, results.csv and results.json, and the contact
sheets of each photo's videos; and the line attack.py prints for each photo it protects."""
import csv
import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from judging.judges import STATIC_LEVELS
from judging.survival import survival_tables
from plumbing.cli import json_bytes, write_files
from plumbing.photos import encoded

# (key, column header, scale) of Table 1 and Table 2; the comparisons with V_0 are empty on its own row.
VIDEO_COLUMNS = [("subject_consistency", "Subject Consistency (%, ↑)", 100),
                 ("motion_smoothness_standin", "Motion Smoothness* (%, ↑)", 100),
                 ("aesthetic_quality", "Aesthetic Quality (%, ↑)", 100),
                 ("temporal_flickering", "Temporal Flickering (%, ↑)", 100),
                 ("video_psnr", "PSNR to V_0 (dB)", 1), ("video_ssim", "SSIM to V_0", 1),
                 ("dino_similarity", "DINO sim. to V_0 (%)", 100)]
PHOTO_COLUMNS = [("psnr", "PSNR (↑)", 1), ("ssim", "SSIM (↑)", 1), ("ciede2000", "CIEDE2000 (↓)", 1),
                 ("ciede2000_p95", "CIEDE2000 p95 (↓)", 1), ("display_psnr", "PSNR on a 1920-px screen (↑)", 1)]
SHEET_HEIGHT, SHEET_FRAMES, DIFF_GAIN = 128, 8, 10


def protected_line(photo, out, report):
    """attack.py's line for a protected photo: how far the guarded photo is from it (on a screen too, where the
    photo is larger than one) and, after the video check, how far their videos are, and random noise's."""
    video = (f"; its video {report['video_psnr_db']:.2f} dB from the photo's (SSIM {report['video_ssim']:.4f}), "
             f"random noise of the same L_inf {report['noise_video_psnr_db']:.2f} dB (seed {report['video_seed']}; "
             "lower is further)") if "video_seed" in report else ""
    shown = (f" (on a screen, {report['display_size'][1]}x{report['display_size'][0]}: PSNR "
             f"{report['display_psnr_db']:.2f} dB, {report['display_ciede2000_mean']:.2f})"
             if report["display_size"] != report["photo_size"] else "")
    return (f"{photo} -> {out}: PSNR {report['psnr_db']:.2f} dB, SSIM {report['ssim']:.4f}, colour difference "
            f"{report['ciede2000_mean']:.2f} (CIEDE2000){shown}, L_inf {report['linf_8bit_levels']}/255, "
            f"{report['wall_time_s']:.1f} s{video}")


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


def mean_std(values, scale):
    values = np.asarray(values, dtype=np.float64) * scale
    if len(values) == 0:
        return "–"
    return f"{values.mean():.2f} ± {values.std():.2f}" if abs(values.mean()) >= 1 else \
        f"{values.mean():.4f} ± {values.std():.4f}"


def table(rows, columns):
    """rows: (row name, [metric dicts]) -> Markdown with mean ± std of each column over the dicts; a column
    no dict has (a judge that was not loaded) is left out."""
    columns = [c for c in columns if any(c[0] in d for _, dicts in rows for d in dicts)]
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


def tables(records, methods, names, note=""):
    """The Markdown tables over `records` (one per photo), rows in the order of `methods`, each named by
    `names` (method -> row name)."""
    order = ["original"] + list(methods)
    names = {"original": "Original Image"} | names
    videos = {m: [v for r in records for v in r["videos"][m]] for m in order}  # one per photo and video seed
    moving = [(names[m], [v for v in videos[m] if not v["static"]]) for m in order]
    static = [(names[m], [v for v in videos[m] if v["static"]]) for m in order]
    parts = [note] * bool(note) + [
        f"Table 1. Videos SVD made from each photo, {len(records)} photos x {len(records[0]['video_seeds'])} "
        "video seeds (none of them the attack's), mean ± std over both; static videos "
        f"(mean frame change < {STATIC_LEVELS:g}/255) left out. *Motion smoothness is a weight-free stand-in "
        "(neighbour-mean interpolation), not VBench's AMT-S; image quality (MUSIQ) is not computed.\n",
        table(moving, VIDEO_COLUMNS),
        *(["\nStatic videos, left out above (the paper leaves them out too):\n", table(static, VIDEO_COLUMNS)]
          if any(rows for _, rows in static) else []),
        "\nTable 2. Each photo against its guarded version (8-bit PNG).\n",
        table([(names[m], [r["videos"][m][0] for r in records]) for m in order[1:]], PHOTO_COLUMNS)]
    if "transformed" in records[0]:
        parts.append("\n" + survival_tables(records, order[1:], names, mean_std))
    return "\n".join(parts) + "\n"


def write_results(out, records, methods, names, note=""):
    text = tables(records, methods, names, note)
    keys = ["mean_frame_change", "static"] + [k for k, _, _ in VIDEO_COLUMNS + PHOTO_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "method", "video_seed"] + keys)
    for r in records:
        for m, per_seed in r["videos"].items():
            for seed, v in zip(r["video_seeds"], per_seed):
                writer.writerow([r["photo"], m, seed] + [v.get(k, "") for k in keys])
    write_files({out / "tables.md": text.encode(), out / "results.json": json_bytes(records),
                 out / "results.csv": buffer.getvalue().encode()})
    return text
