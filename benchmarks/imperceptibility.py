"""What protection costs the owner against what it buys: each way of spending the L_inf budget (the paper's
flat RGB budget, lightness only, the perceptual budget, the fidelity term, and their combinations) at several
budgets, on held-out photos at their own size, judged on videos made with seeds the attack never used.

    python benchmarks/imperceptibility.py --model toy --out curve.json            # every candidate, ~40 min
    python benchmarks/imperceptibility.py --model toy --candidates paper,lightness --out a.json
    python benchmarks/imperceptibility.py --merge a.json b.json --figure curve.png  # the table and the figure
    python benchmarks/imperceptibility.py --model toy --look faces.jpg             # the faces at 2x, ~3 min

Per candidate and budget, mean ± std over photos x video seeds: what the owner sees (the guarded PNG's PSNR
and CIEDE2000 to the photo, at its own size and as a screen shows it: judging/visibility.py) and what
the adversary gets (the video's PSNR to the clean photo's video V_0, lower = better protected, and its gap
to the video of ±eps random-sign noise of the same budget, higher = better protected). The figure plots the
gap against the photo's PSNR and against its CIEDE2000, and the video's PSNR to V_0 against the CIEDE2000, one
line per candidate through its budgets (docs/imperceptibility.md).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import protect  # noqa: E402
from judging.metrics import video_distance  # noqa: E402
from judging.visibility import owner_view  # noqa: E402
from pipelines import load_pipeline  # noqa: E402
from plumbing.cli import model_size  # noqa: E402
from plumbing.files import quantise  # noqa: E402
from plumbing.flags import DEFAULT_BUDGET, PAPER_BUDGET  # noqa: E402
from plumbing.photos import read_photo, to_uint8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [ROOT / "examples/full-size/grace_hopper.jpg", ROOT / "examples/full-size/chelsea.jpg",
          ROOT / "examples/astronaut.png"]
CANDIDATES = {name: PAPER_BUDGET | changes for name, changes in {  # name -> protect()'s settings
    "paper": {},
    "lightness": {"chroma": 0.0},
    "perceptual": {"budget": "perceptual"},
    "fidelity": {"fidelity": 1.0},
    "perceptual+lightness": {"budget": "perceptual", "chroma": 0.0},
    "perceptual+lightness+fidelity0.5": {"budget": "perceptual", "chroma": 0.0, "fidelity": 0.5},
    "perceptual+lightness+fidelity1": {"budget": "perceptual", "chroma": 0.0, "fidelity": 1.0},
}.items()}
COLUMNS = [("psnr_db", "photo PSNR (dB)"), ("ciede2000_mean", "CIEDE2000 mean"), ("ciede2000_p95", "CIEDE2000 p95"),
           ("display_psnr_db", "display PSNR (dB)"), ("video_psnr_db", "video PSNR to V_0 (dB)"),
           ("gap_db", "gap to random-sign (dB)")]


def video8(model, rgb8, size, frames, steps, seed):
    V = model.video(rgb8, size=size, num_frames=frames, steps=steps, seed=seed)
    return torch.from_numpy(to_uint8(V.cpu())).permute(0, 3, 1, 2)  # (F, 3, H, W)


def measure(args):
    """One row per photo, budget, candidate and video seed."""
    model = load_pipeline(args.model, torch.device("cpu"), torch.float32)
    size, frames = model_size(None, None, args.model), model.num_frames
    seeds = [int(s) for s in args.video_seeds.split(",")]
    rows = []
    for path in args.photos:
        rgb8 = read_photo(path)[0]
        clean = {seed: video8(model, rgb8, size, frames, args.sample_steps, seed) for seed in seeds}

        def video_psnrs(guarded8):
            return {seed: video_distance(video8(model, guarded8, size, frames, args.sample_steps, seed),
                                         clean[seed])["video_psnr"] for seed in seeds}

        for levels in map(int, args.eps_levels.split(",")):
            eps = levels / 255
            I_noise, _ = protect(model, rgb8.float() / 255, method="random-sign", eps=eps, size=size)
            noise = video_psnrs(quantise(rgb8, I_noise, eps, None))
            for name in args.candidates.split(","):
                I_adv, _ = protect(model, rgb8.float() / 255, eps=eps, steps=args.steps, size=size, num_frames=frames,
                                   sample_steps=args.sample_steps, seed=0, **CANDIDATES[name])
                guarded8 = quantise(rgb8, I_adv, eps, None)
                seen = owner_view(rgb8, guarded8)
                for seed, v in video_psnrs(guarded8).items():
                    rows.append({"photo": Path(path).name, "eps_levels": levels, "candidate": name, "video_seed": seed,
                                 **seen, "video_psnr_db": v, "gap_db": noise[seed] - v})
                print(f"{Path(path).name} {levels}/255 {name}: PSNR {seen['psnr_db']:.2f} dB, CIEDE2000 "
                      f"{seen['ciede2000_mean']:.2f}, gap {rows[-1]['gap_db']:.2f} dB", file=sys.stderr)
    return rows


def summary(rows):
    """(candidate, eps levels) -> {column: (mean, std)} over photos and seeds, in the order met."""
    groups = {}
    for r in rows:
        groups.setdefault((r["candidate"], r["eps_levels"]), []).append(r)
    return {key: {k: (np.mean([r[k] for r in g]), np.std([r[k] for r in g])) for k, _ in COLUMNS}
            for key, g in groups.items()}


def table(stats):
    lines = ["| candidate | eps | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for (name, levels), s in sorted(stats.items(), key=lambda kv: (list(CANDIDATES).index(kv[0][0]), kv[0][1])):
        lines.append(f"| {name} | {levels}/255 | " + " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k, _ in COLUMNS)
                     + " |")
    return "\n".join(lines)


PANELS = [  # (x, y, x label, y label, y's sign: -1 puts lower values up)
    ("psnr_db", "gap_db", "photo PSNR (dB, right = less visible)", "gap to random-sign (dB, up = protected)", 1),
    ("ciede2000_mean", "gap_db", "mean CIEDE2000 (left = less visible)", "gap to random-sign (dB, up = protected)", 1),
    ("ciede2000_mean", "video_psnr_db", "mean CIEDE2000 (left = less visible)",
     "video PSNR to V_0 (dB, up = lower = protected)", -1)]


def figure(stats, path, width=480, height=400, margin=56):
    """Three panels, a line per candidate through its budgets: the gap against the photo's PSNR and against its
    CIEDE2000, and the video's own PSNR to V_0 against the CIEDE2000."""
    colours = [(0, 0, 0), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (214, 39, 40),
               (140, 86, 75)]
    sheet = Image.new("RGB", (len(PANELS) * width, height + 20 * len(CANDIDATES)), "white")
    d = ImageDraw.Draw(sheet)
    for panel, (x_key, y_key, x_label, y_label, sign) in enumerate(PANELS):
        xs, ys = [s[x_key][0] for s in stats.values()], [sign * s[y_key][0] for s in stats.values()]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        left = panel * width

        def xy(x, y):
            return (left + margin + (width - 2 * margin) * (x - x0) / (x1 - x0 or 1),
                    height - margin - (height - 2 * margin) * (y - y0) / (y1 - y0 or 1))

        d.rectangle([left + margin, margin, left + width - margin, height - margin], outline="black")
        for x in np.linspace(x0, x1, 5):
            d.text((xy(x, y0)[0] - 10, height - margin + 4), f"{x:.1f}", fill="black")
        for y in np.linspace(y0, y1, 5):
            d.text((left + 8, xy(x0, y)[1] - 6), f"{sign * y:.1f}", fill="black")
        d.text((left + margin, height - margin + 20), x_label, fill="black")
        d.text((left + margin, margin - 20), y_label, fill="black")
        for name, colour in zip(CANDIDATES, colours):
            points = [(levels, *xy(s[x_key][0], sign * s[y_key][0]))
                      for (n, levels), s in sorted(stats.items()) if n == name]
            if points:
                d.line([(px, py) for _, px, py in points], fill=colour, width=2)
                for levels, px, py in points:
                    d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
                    d.text((px + 4, py - 12), str(levels), fill=colour)
    for i, (name, colour) in enumerate(zip(CANDIDATES, colours)):
        d.text((margin, height + 20 * i), f"{name} (each point labelled with its eps in levels)", fill=colour)
    sheet.save(path)


FACES = {"grace_hopper.jpg": (250, 160), "chelsea.jpg": (230, 120), "astronaut.png": (250, 110)}  # (x, y) centres


def look(args, path, side=160, zoom=2):
    """The photos' faces at 2x (nearest neighbour): the source, the paper's guarded photo and the default's, at
    8/255, side by side, a row per photo: what the owner pays, to be looked at."""
    model = load_pipeline(args.model, torch.device("cpu"), torch.float32)
    size, rows = model_size(None, None, args.model), []
    for photo in args.photos:
        rgb8 = read_photo(photo)[0]
        guarded = [quantise(rgb8, protect(model, rgb8.float() / 255, size=size, steps=args.steps,
                                          sample_steps=args.sample_steps, **settings)[0], 8 / 255, None)
                   for settings in (PAPER_BUDGET, DEFAULT_BUDGET)]
        x, y = FACES.get(Path(photo).name, (rgb8.shape[2] // 2, rgb8.shape[1] // 2))
        box = (x - side // 2, y - side // 2, x + side // 2, y + side // 2)
        rows.append([Image.fromarray(im.permute(1, 2, 0).numpy()).crop(box).resize((zoom * side,) * 2,
                                                                                  Image.Resampling.NEAREST)
                     for im in (rgb8, *guarded)])
    sheet = Image.new("RGB", (3 * zoom * side, len(rows) * zoom * side), "white")
    d = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * zoom * side, r * zoom * side))
    for c, label in enumerate(["source", "paper (--paper)", "default"]):
        d.text((c * zoom * side + 4, 4), label, fill="yellow", stroke_width=1, stroke_fill="black")
    sheet.save(path, quality=92)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", nargs="+", default=PHOTOS)
    p.add_argument("--model", default="toy")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--eps-levels", default="4,8,12,16", help="budgets, in 8-bit levels")
    p.add_argument("--video-seeds", default="1,2", help="seeds of the judged videos (the attack uses 0)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--merge", nargs="+", help="instead of measuring, read these JSON files of rows")
    p.add_argument("--figure", help="write the figure (PNG) here")
    p.add_argument("--look", metavar="JPG", help="instead, write the photos' faces at 2x: source, paper, default")
    args = p.parse_args()
    if args.look:
        return look(args, args.look)
    rows = [r for f in args.merge for r in json.loads(Path(f).read_text())] if args.merge else measure(args)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    stats = summary(rows)
    print(table(stats))
    if args.figure:
        figure(stats, args.figure)


if __name__ == "__main__":
    main()
