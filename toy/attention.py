"""How much the attacked block's temporal attention has to give: the distance between the maps of two
different photos, and how far the attack moved the maps of each photo, on the toy (or any SVD).

    python evaluate.py --image examples/ --out results/ --model toy          # makes the guarded photos
    python -m toy.attention --photos examples/ --results results/

For each photo, its maps and those of its guarded versions (`results/<photo>/<method>.png`) come from the
same noisy latents of the photo's own video (seed --seed, one the attack did not use) at the middle noise
level of the schedule, with the same draw of the pipeline's randomness, as the preview's Fig. 3 makes
them. "Another photo" pairs each photo with every other one, each on its own video's latents. The
distance is L_att's, the mean squared difference of the probabilities (losses.attention_distance), and
beside it the mean absolute difference.
"""
import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from judging.figures import temporal_maps
from losses import attention_distance
from pipelines.svd import SVDPipeline, load_model
from plumbing.photos import model_input, read_photo


def maps_of(model, rgb8s, video8, size, steps, seed):
    """{name: maps} for each photo of rgb8s on the noisy latents of `video8`'s video at the middle noise level."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        X_0 = model.encode_frames(model.video(video8, size=size, num_frames=model.num_frames, steps=steps,
                                              seed=seed))
    sigma = model.noise_levels(steps)[steps // 2]
    X_t = model.S(X_0, sigma, torch.randn(X_0.shape, generator=g))
    d = model.draw(g, size)
    photos = {name: ((model_input(rgb8, size)[None] + 1) / 2, (rgb8.float() / 255)[None])
              for name, rgb8 in rgb8s.items()}
    return temporal_maps(model, photos, X_t, sigma, d, size, model.default_attn_blocks())


def distances(A, B):
    """(L_att's mean squared distance, mean absolute difference) between two {block: maps}."""
    return attention_distance(A, B).item(), float(np.mean([(A[k] - B[k]).abs().mean().item() for k in A]))


def mean(rows):
    return "{:.2e} / {:.4f}".format(*np.mean(rows, 0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="folder of the source photos")
    p.add_argument("--results", required=True, help="evaluate.py's --out folder, with <photo>/<method>.png")
    p.add_argument("--methods", default="i2vguard,no-temporal,random-sign")
    p.add_argument("--model", default="toy")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--seed", type=int, default=1, help="seed of the videos and draws (not the attack's)")
    args = p.parse_args(argv)
    model = SVDPipeline(load_model(args.model, torch.device("cpu"), torch.float32))
    size = (model.networks.vae.config.sample_size,) * 2
    methods = args.methods.split(",")
    photos = sorted(q for q in Path(args.photos).iterdir() if q.suffix == ".png")
    sources = {q.stem: read_photo(q)[0] for q in photos}
    own = {stem: maps_of(model, {"source": rgb8}, rgb8, size, args.steps, args.seed)["source"]
           for stem, rgb8 in sources.items()}
    pairs = [distances(own[a], own[b]) for a, b in itertools.combinations(own, 2)]
    print(f"Blocks {', '.join(model.default_attn_blocks())}; distance: mean squared (L_att's) / mean absolute\n")
    print("| photo | " + " | ".join(f"{m} vs source" for m in methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    moved = {m: [] for m in methods}
    for stem, rgb8 in sources.items():
        guarded = {m: read_photo(Path(args.results) / stem / f"{m}.png")[0] for m in methods}
        maps = maps_of(model, {"source": rgb8} | guarded, rgb8, size, args.steps, args.seed)
        cells = []
        for m in methods:
            moved[m].append(distances(maps[m], maps["source"]))
            cells.append("{:.2e} / {:.4f}".format(*moved[m][-1]))
        print(f"| {stem} | " + " | ".join(cells) + " |")
    print("| mean | " + " | ".join(mean(moved[m]) for m in methods) + " |")
    print(f"\nTwo different photos, each on its own video ({len(pairs)} pairs): {mean(pairs)}")


if __name__ == "__main__":
    main()
