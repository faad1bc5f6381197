"""The device memory of a whole `attack.py` run for each model at its defaults, in bfloat16, as attack.py estimates it
before loading on a GPU (plumbing/memory.py: the run rehearsed on the meta device, no weights, no GPU): loading,
V_0, the calibration, the iterations, the video check. The release's networks are built from their configs' defaults
(no files are read; Wan's tokenizer is tiny-wan's, its prompts' length the release's 512 tokens all the same), and
each command goes through attack.py's own flags, pipeline and rehearsal. Then which mode attack.py picks on cards of
24, 40 and 80 GB (their free memory taken as the card's size less 1 GiB for the CUDA context), or that it refuses.

    python benchmarks/whole_run_memory.py                   # the Markdown table, a 12-megapixel photo (4000x3000)
    python benchmarks/whole_run_memory.py --photo 1024x576  # another photo size, WIDTHxHEIGHT
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipelines  # noqa: E402
from attack import protect, selected_terms  # noqa: E402
from model import VAE, CLIPImageEncoder, UNet  # noqa: E402
from model.clip import CLIPConfig  # noqa: E402
from model.cogvideox import CogVideoXTransformer, CogVideoXVAE  # noqa: E402
from model.t5 import T5Config, T5Encoder  # noqa: E402
from model.unet import UNetConfig  # noqa: E402
from model.vae import VAEConfig  # noqa: E402
from model.wan import UMT5Encoder, WanTransformer, WanVAE  # noqa: E402
from model.wan.vae import WanVAEConfig  # noqa: E402
from pipelines import cogvideox, controlnext, loader, wan  # noqa: E402
from plumbing.flags import attack_args  # noqa: E402
from plumbing.memory import MARGIN, GiB, fitting, rehearsal, rehearse  # noqa: E402
from weights import SVD, skeleton  # noqa: E402

CARDS = (24, 40, 80)  # GB, as the cards are sold (10^9 bytes)
CUDA_CONTEXT = GiB  # what the CUDA context and the libraries' kernels take of a card before the run


def on_meta(*networks):
    return [m.to(torch.bfloat16).eval().requires_grad_(False) for m in networks]


def svd_networks(num_frames):
    with skeleton():
        parts = VAE(VAEConfig()), UNet(UNetConfig(num_frames=num_frames)), CLIPImageEncoder(CLIPConfig())
    vae, unet, clip = on_meta(*parts)
    return SVD(vae=vae, unet=unet, image_encoder=clip, source="meta")


def release_loaders():
    """Each model's loader replaced by one that builds the release's networks on the meta device."""
    pipelines.load_model = lambda name, device, dtype, variant: svd_networks(14)
    controlnext.load_by_name = lambda name, variant, dtype, device: (svd_networks(25), *on_meta(
        controlnext.pose_encoder_on_meta(None, UNetConfig().block_out_channels[0])))

    def cogvideox_networks(name, dtype, device):
        with skeleton():
            parts = CogVideoXTransformer(), CogVideoXVAE(), T5Encoder(T5Config())
        return cogvideox.CogVideoX(*on_meta(*parts), "meta")
    cogvideox.load_by_name = cogvideox_networks

    def wan_networks(name, dtype, device):
        with skeleton():  # the VAE's 48 latent statistics are stand-ins: only shapes count
            parts = WanTransformer(), WanVAE(WanVAEConfig(latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)), \
                UMT5Encoder()
        return wan.Wan(*on_meta(*parts), "meta")
    wan.load_by_name = wan_networks
    wan.load_tokenizer = lambda source: wan.tiny_tokenizer()


def estimate(name, photo):
    """({False: bytes, True: bytes}, weights, frames, the model's input (H, W)) of `attack.py --model name` on a photo
    of photo = (H0, W0) pixels."""
    args = attack_args("", ["--image", "photo.png", "--model", name])
    args.dtype = "bfloat16"
    size = {}

    def pipeline_on(device):
        model = loader(args)(device)
        size["input"] = (args.height, args.width) if args.height else model.frame_size(photo)
        return model
    peaks, weights, frames = rehearse(pipeline_on, rehearsal(protect, args, selected_terms(), photo))
    return peaks, weights, args.frames or frames, size["input"]


def choice(peaks, card):
    """What attack.py picks on a card of `card` GB: its mode, or a refusal."""
    fits = fitting(peaks, card * 1e9 - CUDA_CONTEXT)
    return ("default" if not fits[0] else "`--low-memory`") if fits else "refused"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", default="4000x3000", help="the photo's WIDTHxHEIGHT (default: 12 megapixels)")
    p.add_argument("--models", default="svd,controlnext,cogvideox,wan", help="which models, comma-separated")
    args = p.parse_args(argv)
    width, height = map(int, args.photo.split("x"))
    release_loaders()
    names = {"svd": "stabilityai/stable-video-diffusion-img2vid", "controlnext": "controlnext",
             "cogvideox": "cogvideox", "wan": "wan"}
    print(f"# The whole attack.py run, each model's defaults, bfloat16, a {width}x{height} photo (GiB = 2^30 bytes; "
          "meta device)\n")
    print("| model | input | weights | whole run, default | whole run, `--low-memory` | "
          + " | ".join(f"{card} GB card" for card in CARDS) + " | seconds |\n|---|---|---:|---:|---:|"
          + "---|" * len(CARDS) + "---:|")
    for key in args.models.split(","):
        start = time.perf_counter()
        peaks, weights, frames, size = estimate(names[key], (height, width))
        print(f"| {key} | {size[1]}x{size[0]}x{frames} | {weights / GiB:.2f} | {peaks[False] / GiB:.2f} | "
              f"{peaks[True] / GiB:.2f} | " + " | ".join(choice(peaks, card) for card in CARDS)
              + f" | {time.perf_counter() - start:.0f} |", flush=True)
    print(f"\nA card's room: its size less {CUDA_CONTEXT / GiB:.0f} GiB for the CUDA context, times 1 - MARGIN "
          f"({MARGIN:.0%}) for what the estimate leaves out (kernels' workspaces, the allocator's fragmentation). "
          "'seconds': the two rehearsals (default and --low-memory) on this CPU.")


if __name__ == "__main__":
    main()
