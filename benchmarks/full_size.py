"""Protection against a photo's size: the same photos at several sizes, protected with the perturbation's
steps at the photo's pixels (the paper's Algorithm 1, --perturb-at photo) and on the model's grid
(--perturb-at model, the default), judged on videos made with seeds the attack did not use.

    python benchmarks/full_size.py --model toy --photos examples/astronaut.png examples/chelsea.png \
        --sizes 64,128,256,512,1024 --video-seeds 1,2 [--paper]

Each photo is resized (Lanczos) to each side length; a photo smaller than that is upsampled, which gives it
no detail finer than its own, but what is measured is what the pipeline's downscale does to the
perturbation. Per size and mode: the video's PSNR to the clean photo's video (lower = better protected),
and the perturbation that reaches the model: the L_inf (in 8-bit levels) and L2 of model_input(I_adv) -
model_input(I_src), both resized as the pipeline resizes them. Prints a Markdown table of means over
photos and seeds, and the wall time of each protection.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import protect  # noqa: E402
from judging.metrics import video_distance  # noqa: E402
from pipelines import load_pipeline  # noqa: E402
from plumbing.cli import model_size  # noqa: E402
from plumbing.files import quantise  # noqa: E402
from plumbing.flags import PAPER_BUDGET  # noqa: E402
from plumbing.photos import model_input, read_photo, to_uint8  # noqa: E402


def at_size(rgb8, side):
    """(3,H,W) uint8 -> (3,side,side) uint8, Lanczos."""
    im = Image.fromarray(rgb8.permute(1, 2, 0).numpy()).resize((side, side), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def video8(model, rgb8, size, frames, steps, seed):
    V = model.video(rgb8, size=size, num_frames=frames, steps=steps, seed=seed)
    return torch.from_numpy(to_uint8(V.cpu())).permute(0, 3, 1, 2)  # (F, 3, H, W)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", nargs="+", required=True)
    p.add_argument("--model", default="toy")
    p.add_argument("--sizes", default="64,128,256,512,1024")
    p.add_argument("--modes", default="photo,model", help="perturb_at values to compare")
    p.add_argument("--video-seeds", default="1,2", help="seeds of the judged videos (the attack uses 0)")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--paper", action="store_true", help="the paper's flat RGB budget instead of protect()'s default")
    args = p.parse_args()
    budget = PAPER_BUDGET if args.paper else {}
    model = load_pipeline(args.model, torch.device("cpu"), torch.float32)
    size = model_size(None, None, args.model)
    frames, seeds = model.num_frames, [int(s) for s in args.video_seeds.split(",")]
    rows = {}
    for path in args.photos:
        source8 = read_photo(path)[0]
        for side in map(int, args.sizes.split(",")):
            rgb8 = at_size(source8, side)
            clean = {seed: video8(model, rgb8, size, frames, args.sample_steps, seed) for seed in seeds}
            for mode in args.modes.split(","):
                start = time.perf_counter()
                I_adv, _ = protect(model, rgb8.float() / 255, eps=args.eps, steps=args.steps, size=size,
                                   num_frames=frames, sample_steps=args.sample_steps, seed=0, perturb_at=mode,
                                   **budget)
                seconds = time.perf_counter() - start
                guarded8 = quantise(rgb8, I_adv, args.eps, None)
                seen = model_input(guarded8, size) - model_input(rgb8, size)  # in [-1, 1] units: x 127.5 = levels
                psnrs = [video_distance(video8(model, guarded8, size, frames, args.sample_steps, seed),
                                        clean[seed])["video_psnr"] for seed in seeds]
                rows.setdefault((side, mode), []).append(
                    (np.mean(psnrs), seen.abs().max().item() * 127.5, (seen / 2).norm().item(), seconds))
                print(f"{Path(path).name} {side}px {mode}: video {np.mean(psnrs):.2f} dB, "
                      f"{seconds:.1f} s", file=sys.stderr)
    print(f"| photo side | steps at | video PSNR to clean (dB, lower = better) | L_inf at the model's input "
          f"(levels) | L2 at the model's input | s per protection |\n|---|---|---|---|---|---|")
    for (side, mode), values in rows.items():
        v = np.array(values)
        print(f"| {side} | {mode} | {v[:, 0].mean():.2f} ± {v[:, 0].std():.2f} | {v[:, 1].mean():.1f} "
              f"| {v[:, 2].mean():.3f} | {v[:, 3].mean():.1f} |")


if __name__ == "__main__":
    main()
