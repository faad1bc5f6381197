"""Time per attack iteration with and without EOT (--eot, default jpeg,resize,blur,noise): the same objective
(attack.Objective, every term on, the same V_0), one iteration being a draw, the loss terms and their
gradient with respect to the photo, as attack.protect runs it. Alternating runs in one process; the
ratio is what EOT costs.

    python benchmarks/bench_eot.py --image examples/64px/chelsea.png --model toy
    python benchmarks/bench_eot.py --image examples/64px/chelsea.png --model toy --eot purify
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import TERMS, Objective  # noqa: E402
from judging.transforms import EOT_KINDS, parse_eot  # noqa: E402
from losses import total_loss  # noqa: E402
from pipelines import load_pipeline  # noqa: E402
from plumbing.cli import model_size
from plumbing.photos import read_photo


def iterate(objective, I_src, steps, seed):
    """Seconds for `steps` iterations of the attack's inner loop."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        I_adv = (I_src + 4 / 255).clamp(0, 1).requires_grad_()
        torch.autograd.grad(total_loss(objective(I_adv, objective.draw(generator)), dict.fromkeys(TERMS, 1.0)), I_adv)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True)
    p.add_argument("--model", default="toy")
    p.add_argument("--steps", type=int, default=20, help="iterations per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating")
    p.add_argument("--eot", type=parse_eot, default=EOT_KINDS, help="the EOT items, as attack.py --eot takes them")
    args = p.parse_args()
    size = model_size(None, None, args.model)
    model = load_pipeline(args.model, torch.device("cpu"), torch.float32, size=size)
    I_src = (read_photo(args.image)[0].float() / 255)[None]
    settings = dict(num_frames=model.num_frames, size=size, tau1=0.5, tau2=0.5,
                    attn_blocks=model.default_attn_blocks(), sample_steps=25, seed=0)
    plain = Objective(model, I_src, TERMS, **settings)
    eot = Objective(model, I_src, TERMS, eot=args.eot, **settings)
    times = {"without EOT": [], "with EOT": []}
    for r in range(args.repeats):
        for name, objective in (("without EOT", plain), ("with EOT", eot)):
            times[name].append(iterate(objective, I_src, args.steps, r) / args.steps)
    for name, t in times.items():
        print(f"{name}: {min(t):.4f} s per iteration (best of {args.repeats} runs of {args.steps}; all: "
              + ", ".join(f"{x:.4f}" for x in t) + ")")
    print(f"EOT costs {min(times['with EOT']) / min(times['without EOT']):.3f}x the time per iteration")


if __name__ == "__main__":
    main()
