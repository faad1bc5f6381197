"""One attack iteration against a DiT at its official size on RANDOM weights of the official shapes (no
download): CogVideoX-5B-I2V at 480x720x49 or Wan2.2-TI2V-5B at 480x832x49, bfloat16; seconds per iteration
and peak memory, with and without --low-memory. The prompt is the empty one for CogVideoX; for Wan, one of the
attack's against the release's negative prompt (G guided: two passes), tokenised by the tiny networks' tokenizer.
Either is embedded by a one-layer text encoder of the release's width (its embedding has the real shape; its values
do not matter for time and memory). V_0 is random frames, so no 50-step sampling run is timed. --size tiny runs the
same on the tiny random networks, on a CPU.

    python benchmarks/dit_iteration.py --model cogvideox --device cuda      # about 11 GB of weights in bf16
    python benchmarks/dit_iteration.py --model wan --device cuda            # about 12 GB
    python benchmarks/dit_iteration.py --model wan --size tiny --device cpu --dtype float32
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import TERMS, Objective  # noqa: E402
from losses import total_loss  # noqa: E402
from model.cogvideox import CogVideoXTransformer, CogVideoXTransformerConfig, CogVideoXVAE, CogVideoXVAEConfig  # noqa: E402
from model.t5 import T5Config, T5Encoder  # noqa: E402
from model.wan import UMT5Config, UMT5Encoder, WanTransformer, WanVAE, WanVAEConfig  # noqa: E402
from pipelines.cogvideox import CogVideoX, CogVideoXPipeline, tiny_cogvideox  # noqa: E402
from pipelines.prompts import ATTACK_PROMPTS  # noqa: E402
from pipelines.wan import Wan, WanPipeline, tiny_tokenizer, tiny_wan  # noqa: E402


def random_official(model, dtype, device):
    """The release's transformer and VAE with random weights and a one-layer text encoder, built on the device
    (Wan's 48 latent statistics are stand-ins: only shapes count)."""
    with torch.device(device):
        if model == "cogvideox":
            nets = CogVideoXTransformer(CogVideoXTransformerConfig()), CogVideoXVAE(CogVideoXVAEConfig()), \
                T5Encoder(T5Config(num_layers=1))
        else:
            nets = WanTransformer(), WanVAE(WanVAEConfig(latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)), \
                UMT5Encoder(UMT5Config(num_layers=1))
    nets = (m.to(dtype).eval().requires_grad_(False) for m in nets)
    return (CogVideoX if model == "cogvideox" else Wan)(*nets, "random official-size weights")


def peak(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cogvideox", "wan"], default="cogvideox")
    p.add_argument("--size", choices=["official", "tiny"], default="official")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per mode (after one untimed)")
    p.add_argument("--modes", default="memory,default", help="comma-separated: memory (--low-memory), default")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.size == "tiny":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            networks = (tiny_cogvideox if args.model == "cogvideox" else tiny_wan)(0, dtype, device)
        size, frames = ((32, 32), networks.transformer.config.sample_frames) if args.model == "cogvideox" \
            else ((64, 64), 9)
    else:
        networks = random_official(args.model, dtype, device)
        size, frames = ((480, 720) if args.model == "cogvideox" else (480, 832)), 49
    if args.model == "cogvideox":
        model = CogVideoXPipeline(networks)
    else:  # one of the attack's prompts against the release's negative prompt: G guided, two passes, as by default
        model = WanPipeline(networks, prompts=ATTACK_PROMPTS[:1], tokenizer=tiny_tokenizer())
    g = torch.Generator().manual_seed(0)
    I_src = torch.rand(1, 3, *size, generator=g).to(device)
    V_0 = (torch.rand(frames, 3, *size, generator=g) * 2 - 1).to(device)
    print(f"{args.model}, {args.size} size {size[0]}x{size[1]}x{frames}, {args.dtype} on {device}")
    print("| mode | seconds per iteration | peak memory (GiB) |\n|---|---:|---:|")
    for mode in args.modes.split(","):
        model.low_memory(mode == "memory")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        objective = Objective(model, I_src, TERMS, num_frames=frames, size=size, tau1=0.5, tau2=0.5,
                              attn_blocks=model.default_attn_blocks(), sample_steps=50, seed=0, V_0=V_0)
        generator, times = torch.Generator().manual_seed(1), []
        for i in range(args.iters + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            I_adv = (I_src + 4 / 255).clamp(0, 1).requires_grad_()
            L = total_loss(objective(I_adv, objective.draw(generator)), dict.fromkeys(TERMS, 1.0))
            torch.autograd.grad(L, I_adv)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        print(f"| {mode} | {sum(times[1:]) / args.iters:.2f} | {peak(device):.2f} |")


if __name__ == "__main__":
    main()
