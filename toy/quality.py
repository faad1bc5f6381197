"""How good the toy SVD is: its videos against the truth on held-out generated clips, and on the held-out
photos in examples/.

    python -m toy.quality                       # prints Markdown tables; about 2 minutes on 2 quiet CPU cores
    python -m toy.quality --gif toy/samples.gif # also a GIF of the toy's videos of four example photos

Held-out clips come from toy/data.py with seeds the training never drew (its generator starts at
seed 0 and draws in order; these use seeds from 10**6). A sampled video guesses one of many possible
motions, so its PSNR to the true clip is compared with two references: "repeat the first frame" (no
motion at all) and the same networks untrained (random weights, the trained VAE's scaling factor).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model import VAE, CLIPImageEncoder, UNet
from pipelines.svd import generate
from plumbing.cli import choose_threads, integer
from plumbing.files import list_photos
from plumbing.photos import model_input, read_photo, to_images, video_bytes
from toy.data import ClipMaker, load_photos, motion_bucket
from weights import SVD, TOY_MODEL, load_svd

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# What a toy must reach to carry the efficacy figures (on the example photos at 64x64).
TARGETS = {"autoencoder_psnr": 26, "frame0_psnr": 24, "frame0_lowest": 21, "neighbour_psnr": 30,
           "mean_frame_change_levels": 2}


def psnr(a, b):
    """PSNR in dB between tensors in [-1,1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / max((a - b).pow(2).mean().item(), 1e-12))


def untrained_like(svd, seed=0):
    """The same networks with random weights (the scaling factor kept, so latents have the same scale)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VAE(svd.vae.config)
        return SVD(vae=vae.eval(), unet=UNet(svd.unet.config).eval(),
                   image_encoder=CLIPImageEncoder(svd.image_encoder.config).eval(), source="untrained")


def clip_scores(models, clips, steps):
    """Per model, mean PSNR of frame 0 and of frames 1.. to the true clips; and the repeat-first-frame baseline."""
    rows = {name: {"frame0": [], "later": []} for name in models} | {"repeat first frame": {"frame0": [], "later": []}}
    for k, (frames, first, motion) in enumerate(tqdm(clips, desc="held-out clips (toy and untrained)", unit="clip")):
        videos = {name: generate(svd, frames[0], clip_image=first, steps=steps, seed=k,
                                 motion_bucket_id=int(motion_bucket(torch.tensor(motion))))
                  for name, svd in models.items()}
        videos["repeat first frame"] = frames[:1].expand_as(frames)
        for name, video in videos.items():
            rows[name]["frame0"].append(psnr(video[0], frames[0]))
            rows[name]["later"].append(np.mean([psnr(v, f) for v, f in zip(video[1:], frames[1:])]))
    return {name: {key: float(np.mean(v)) for key, v in row.items()} for name, row in rows.items()}


def autoencoder_scores(vae, paths, size):
    """Per example photo: PSNR of the autoencoder's reconstruction (posterior mean, decoded as a 1-frame video)."""
    scores = {}
    for path in paths:
        image = model_input(read_photo(path)[0], size)
        recon = vae.decode(vae.encode(image[None])[0], 1)[0]
        scores[path.name] = psnr(recon, image)
    return scores


def photo_scores(svd, paths, steps, size):
    """Per example photo: PSNR of frame 0 to the photo, PSNR between neighbouring frames, mean frame change."""
    scores, videos = {}, {}
    for k, path in enumerate(tqdm(paths, desc="held-out photos", unit="photo")):
        rgb8, _, _ = read_photo(path)
        image = model_input(rgb8, size)
        video = generate(svd, image, steps=steps, seed=k, clip_image=rgb8.float() / 127.5 - 1)
        change = ((video[1:] - video[:-1]).abs().mean() * 127.5).item()  # grey levels of 255
        scores[path.name] = {"frame0_psnr": psnr(video[0], image),
                             "neighbour_psnr": float(np.mean([psnr(a, b) for a, b in zip(video[1:], video[:-1])])),
                             "mean_frame_change_levels": change}
        videos[path.name] = video
    return scores, videos


def flags():
    """The command's flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24, help="held-out generated clips")
    p.add_argument("--sample-steps", "--steps", dest="steps", type=int, default=25,
                   help="denoising steps of every video (--steps: a deprecated alias; in the commands --steps is "
                        "attack iterations)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--gif", help="also write a GIF of the toy's videos of four example photos")
    p.add_argument("--weights", default=str(TOY_MODEL),
                   help="the trained toy's folder (default: the shipped toy/weights)")
    p.add_argument("--threads", type=integer(1, 1024), help="CPU threads (default: OMP_NUM_THREADS, else one per "
                   "core not busy with other work, as the commands choose)")
    return p


def main(argv=None):
    args = flags().parse_args(argv)
    print(f"toy.quality: {choose_threads(args.threads)} thread(s); {args.clips} clips and the example photos, "
          f"{args.steps} sampling steps each", file=sys.stderr)

    toy = load_svd(args.weights, variant="fp16")
    size = toy.vae.config.sample_size
    maker = ClipMaker(load_photos(), size, toy.unet.config.num_frames)
    clips = [(f[0], first[0], m.item()) for f, first, m in
             (maker.make(1, torch.Generator().manual_seed(10**6 + k)) for k in range(args.clips))]
    with torch.no_grad():
        clip_table = clip_scores({"toy": toy, "untrained": untrained_like(toy)}, clips, args.steps)
        photos = list_photos([EXAMPLES])  # the held-out photos, not what the commands wrote beside them
        photo_table, videos = photo_scores(toy, photos, args.steps, (size, size))
        for name, score in autoencoder_scores(toy.vae, photos, (size, size)).items():
            photo_table[name]["autoencoder_psnr"] = score

    print(f"Held-out generated clips ({args.clips}), mean PSNR to the true clip (dB):\n")
    print("| video | frame 0 | frames 1.. |\n|---|---|---|")
    for name, row in clip_table.items():
        print(f"| {name} | {row['frame0']:.2f} | {row['later']:.2f} |")
    print(f"\nHeld-out photos (examples/), {size}x{size}:\n")
    print("| photo | autoencoder (dB) | frame 0 to the photo (dB) | neighbouring frames (dB) "
          "| mean frame change (levels of 255) |")
    print("|---|---|---|---|---|")
    keys = ("autoencoder_psnr", "frame0_psnr", "neighbour_psnr", "mean_frame_change_levels")
    for name, row in photo_table.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    means = {k: float(np.mean([row[k] for row in photo_table.values()])) for k in keys}
    lowest = {k: min(row[k] for row in photo_table.values()) for k in keys}
    print("| mean (lowest) | " + " | ".join(f"{means[k]:.2f} ({lowest[k]:.2f})" for k in keys) + " |")
    print(f"\nTargets: autoencoder >= {TARGETS['autoencoder_psnr']} dB mean; frame 0 >= {TARGETS['frame0_psnr']} dB "
          f"mean, none below {TARGETS['frame0_lowest']}; neighbouring frames >= {TARGETS['neighbour_psnr']} dB; "
          f"mean frame change >= {TARGETS['mean_frame_change_levels']} levels.")
    met = {"autoencoder": means["autoencoder_psnr"] >= TARGETS["autoencoder_psnr"],
           "frame 0": means["frame0_psnr"] >= TARGETS["frame0_psnr"]
           and lowest["frame0_psnr"] >= TARGETS["frame0_lowest"],
           "neighbouring frames": means["neighbour_psnr"] >= TARGETS["neighbour_psnr"],
           "motion": means["mean_frame_change_levels"] >= TARGETS["mean_frame_change_levels"]}
    print("Met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"clips": clip_table, "photos": photo_table, "mean": means,
                                               "lowest": lowest}, indent=1))
    if args.gif:
        picks = [videos[name] for name in list(videos)[:4]]
        row = torch.cat(picks, dim=-1)  # (F, 3, H, 4W)
        Path(args.gif).write_bytes(video_bytes(to_images(row), 7))


if __name__ == "__main__":
    main()
