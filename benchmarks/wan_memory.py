"""Memory of I2VGuard against Wan2.2-TI2V-5B at the release's 704x1280x121 in bfloat16 (or another size), measured on
the meta device (no weights, no GPU, seconds on a CPU): one attack iteration (attack.Objective with all terms, then
the backward pass to the photo), with and without checkpointing, and the sampling the attack starts with (V_0 =
P(I_src)).

The official-size networks are built on the meta device, where every op computes only shapes, and run through the
real pieces (wan.WanPipeline: E, G with the maps of blocks 14 and 15, the source pass without gradients). The two
measurements are benchmarks/cogvideox_memory.py's (its SavedBytes and LiveBytes, reused): `saved`, the bytes autograd
and the checkpoints keep for the backward pass, per part; `live`, the peak of the activation bytes alive at once. The
estimated peak is the weights plus the live peak; the allocator's fragmentation and kernel workspaces come on top.

As there, the self-attention runs as aten._scaled_dot_product_flash_attention (what a GPU takes for bfloat16 with
head dim 128), not the math path the meta device would take (24 x 5,070^2 x 4 B = 2.3 GB of probabilities per block).

    python benchmarks/wan_memory.py                                   # the Markdown tables at 704x1280x121
    python benchmarks/wan_memory.py --height 480 --width 832 --frames 49
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model.wan.transformer as transformer_module  # noqa: E402
from attack import TERMS, Objective  # noqa: E402
import cogvideox_memory  # noqa: E402
from cogvideox_memory import GiB, PARTS, LiveBytes, SavedBytes, nbytes, storage_key  # noqa: E402
from losses import total_loss  # noqa: E402
from model.wan import UMT5Encoder, WanTransformer, WanVAE, WanVAEConfig  # noqa: E402
from pipelines.wan import FRAMES, Wan, WanPipeline, tiny_tokenizer  # noqa: E402
from pipelines.wan_photo import AREA  # noqa: E402

MODES = {"none": (False, False), "blocks": (True, False), "VAE": (False, True), "blocks + VAE": (True, True)}


def flash_attention(self, q, k, v):
    """Attention.attend as a GPU runs it in bfloat16: flash attention (see the module docstring)."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]


class WanSavedBytes(SavedBytes):
    """SavedBytes with Wan's parts: the VAE encoder's modules and the transformer's blocks."""

    def __init__(self, networks, excluded):
        blocks = networks.transformer.blocks
        networks.transformer.transformer_blocks = blocks  # the name SavedBytes looks for
        try:
            super().__init__(networks, excluded)
        finally:
            del networks.transformer.transformer_blocks


def patched(saved):
    """cogvideox_memory.patched for Wan's transformer, whose self-attention attends in Attention.attend."""
    return cogvideox_memory.patched(saved, transformer_module, ("Attention", "attend"), flash_attention)


def meta_networks(dtype):
    """The official-size networks on meta; the VAE's 48 latent statistics are stand-ins (only shapes count)."""
    with torch.device("meta"):
        vae = WanVAE(WanVAEConfig(latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48))
        networks = Wan(WanTransformer(), vae, UMT5Encoder(), "meta")
    for m in (networks.transformer, networks.vae, networks.text_encoder):
        m.to(dtype).eval().requires_grad_(False)
    return networks


def weights(networks):
    """Bytes of the weights per network, and the storages they own."""
    t, vae = networks.transformer, networks.vae
    sizes = {"transformer": nbytes(t.parameters()), "VAE encoder": nbytes(vae.encoder.parameters()),
             "VAE decoder": nbytes(vae.decoder.parameters())}
    if networks.text_encoder is not None:
        sizes["umT5 encoder"] = nbytes(networks.text_encoder.parameters())
    keys = {storage_key(p) for m in (t, vae) for p in [*m.parameters(), *m.buffers()]}
    return sizes, keys


def iteration(pipeline, excluded, size, frames, transformer_ckpt, vae_ckpt):
    """One attack iteration on meta, all terms: -> (saved bytes per part, live bytes before the backward pass, live
    peak of the forward pass, of the backward pass, of the setup (encoding V_0 and the black frame))."""
    pipeline.networks.transformer.checkpointing, pipeline.networks.vae.checkpointing = transformer_ckpt, vae_ckpt
    saved = WanSavedBytes(pipeline.networks, excluded)
    live = LiveBytes(excluded)
    I_src = torch.rand(3, *size, device="meta")
    V_0 = torch.empty(frames, 3, *size, device="meta")  # the source's video, (F, 3, H, W) in [-1, 1]
    with patched(saved), live:
        objective = Objective(pipeline, I_src[None], TERMS, num_frames=frames, size=size, tau1=0.5, tau2=0.5,
                              attn_blocks=pipeline.default_attn_blocks(), sample_steps=50, seed=0, V_0=V_0)
        setup = live.peak
        live.reset_peak()
        I_adv = I_src[None].clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            values = objective(I_adv, objective.draw(torch.Generator().manual_seed(0), 25))
        L = total_loss(values, dict.fromkeys(TERMS, 1.0))
        kept, forward = live.now, live.peak
        saved.on = False
        live.reset_peak()
        grad, = torch.autograd.grad(L, I_adv)
        backward = live.peak
    del grad
    return saved.bytes, kept, forward, backward, setup


def sampling(pipeline, excluded, size, frames):
    """Live peaks of one guided transformer forward (both halves, batch 2) and of the VAE decode, no gradients."""
    t, vae = pipeline.networks.transformer, pipeline.networks.vae
    f, h, w = (frames - 1) // 4 + 1, size[0] // 16, size[1] // 16
    saved = WanSavedBytes(pipeline.networks, excluded)
    with patched(saved), torch.no_grad():
        x = torch.empty(2, 48, f, h, w, device="meta", dtype=torch.bfloat16)
        text = torch.cat([pipeline.negative_embeds, pipeline.prompt_embeds[0]]).to(torch.bfloat16)
        live = LiveBytes(excluded)
        with live:
            t(x, torch.full((2, f * t.tokens_per_frame(h, w)), 499.0, device="meta"), text)
        step = live.peak
        live = LiveBytes(excluded)
        with live:
            vae.decode(torch.empty(1, 48, f, h, w, device="meta", dtype=torch.bfloat16))
    return step, live.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=704, help="model resolution (a multiple of 32)")
    p.add_argument("--width", type=int, default=AREA // 704, help="model resolution (a multiple of 32)")
    p.add_argument("--frames", type=int, default=FRAMES, help="video frames (4k + 1)")
    args = p.parse_args(argv)
    size, frames = (args.height, args.width), args.frames
    if size[0] % 32 or size[1] % 32 or (frames - 1) % 4:
        p.error("--height and --width must be multiples of 32 and --frames 4k + 1")

    networks = meta_networks(torch.bfloat16)
    sizes, _ = weights(networks)
    t5 = sizes.pop("umT5 encoder")
    # embeds the release's negative prompt and the attack's prompts on meta (any token ids will do: only shapes count
    # here), then drops umT5
    pipeline = WanPipeline(networks, tokenizer=tiny_tokenizer())
    _, excluded = weights(networks)
    excluded |= {storage_key(e) for e in (*pipeline.prompt_embeds, pipeline.negative_embeds)}
    resident = sum(sizes.values())
    tokens = (frames - 1) // 4 + 1, size[0] // 32 * (size[1] // 32)

    print(f"# Wan2.2-TI2V-5B, {size[0]}x{size[1]}x{frames} ({tokens[0]} latent frames x {tokens[1]} tokens = "
          f"{tokens[0] * tokens[1]:,} tokens), bfloat16 (GiB = 2^30 bytes; meta device)\n")
    print("## Weights\n")
    print("| network | GiB |\n|---|---:|")
    for name, b in sizes.items():
        print(f"| {name} | {b / GiB:.2f} |")
    print(f"| umT5-XXL encoder (only while embedding the prompt, then freed) | {t5 / GiB:.2f} |")
    print(f"| **resident during the attack** | **{resident / GiB:.2f}** |\n")

    rows = {mode: iteration(pipeline, excluded, size, frames, *flags) for mode, flags in MODES.items()}
    print("## One attack iteration (all terms; maps of " + ", ".join(pipeline.default_attn_blocks()) + ")\n")
    print("Checkpointing: none; per transformer block; the VAE encoder's (per level); both (low_memory(True), "
          "--low-memory).\n")
    print("| GiB | " + " | ".join(MODES) + " |\n|---|" + "---:|" * len(MODES))
    for part in PARTS:
        print(f"| saved: {part} | " + " | ".join(f"{rows[m][0][part] / GiB:.2f}" for m in MODES) + " |")
    print("| **saved, total** | " + " | ".join(f"**{sum(rows[m][0].values()) / GiB:.2f}**" for m in MODES) + " |")
    labels = ("live before the backward pass", "live peak, forward", "live peak, backward",
              "live peak, setup (encoding V_0)")
    for i, label in enumerate(labels, start=1):
        print(f"| {label} | " + " | ".join(f"{rows[m][i] / GiB:.2f}" for m in MODES) + " |")
    print("| **estimated peak: weights + live peak** | " + " | ".join(
        f"**{(resident + max(rows[m][2:])) / GiB:.2f}**" for m in MODES) + " |\n")
    n_layers = networks.transformer.config.num_layers
    print(f"Per transformer block without checkpointing: {rows['none'][0]['transformer blocks'] / n_layers / GiB:.3f} "
          f"GiB saved; with it, its inputs: {rows['blocks'][0]['transformer blocks'] / n_layers / GiB:.3f} GiB.\n")

    step, decode = sampling(pipeline, excluded, size, frames)
    print(f"## Sampling V_0 = P(I_src), once per prompt ({pipeline.motions}; no gradients; guidance 5: batch 2)\n")
    print("| GiB | |\n|---|---:|")
    print(f"| weights (umT5 freed) | {resident / GiB:.2f} |")
    print(f"| live peak, one transformer forward, batch 2 | {step / GiB:.2f} |")
    print(f"| live peak, VAE decode of {tokens[0]} latent frames | {decode / GiB:.2f} |")
    print(f"| **estimated peak: weights + the larger** | **{(resident + max(step, decode)) / GiB:.2f}** |")
    print(f"| loading: all weights at once before umT5 is freed | {(resident + t5) / GiB:.2f} |\n")
    low = resident + max(rows["blocks + VAE"][2:])
    print(f"The whole attack with low_memory(True) peaks at max(sampling V_0, an iteration) = "
          f"{max(low, resident + max(step, decode)) / GiB:.2f} GiB, plus the allocator's overhead.")


if __name__ == "__main__":
    main()
