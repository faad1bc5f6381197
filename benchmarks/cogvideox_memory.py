"""Memory of I2VGuard against CogVideoX-5B-I2V at 480x720x49 in bfloat16, measured on the meta device (no weights,
no GPU, a few seconds on a CPU): one attack iteration (attack.Objective with all terms, then the backward pass to the
photo), with and without checkpointing, and the sampling the attack starts with (V_0 = P(I_src)).

The official-size networks are built on the meta device, where every op computes only shapes, and run through the
real pieces (cogvideox.CogVideoXPipeline: E, G with the maps of blocks 20 and 21, the source pass without gradients).
Two measurements:
  saved    the bytes of the tensors autograd keeps for the backward pass (torch.autograd.graph.saved_tensors_hooks),
           plus the inputs a checkpointed module keeps for its recomputation, each storage once, weights excluded,
           charged to the part that saved them: the VAE encoder, the transformer blocks, the frame-attention maps
           (frame_attention.frame_attention_map), the rest;
  live     every tensor storage from its creation to its release (a dispatch mode that sees every op, forward and
           backward, and a finalizer on every storage): the peak of the activation bytes alive at once.
The estimated peak is the weights plus the live peak; the CUDA caching allocator's fragmentation and the kernels'
workspaces come on top (typically a few GB).

Where meta execution differs from a GPU, the GPU's behaviour is put in: on the meta device scaled_dot_product_attention
takes the math path, which saves the full float32 probabilities (48 x 17,776^2 x 4 B = 61 GB per block); a GPU takes
flash attention for bfloat16 with head dim 64, which keeps q, k, v, the output and the log-sum-exp. So the joint
attention runs here as aten._scaled_dot_product_flash_attention, which has meta kernels for both passes.

    python benchmarks/cogvideox_memory.py            # the Markdown tables
"""
import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model.cogvideox.frame_attention as frame_attention  # noqa: E402
import model.cogvideox.transformer as transformer_module  # noqa: E402
import model.layers as layers  # noqa: E402
from attack import TERMS, Objective  # noqa: E402
from losses import total_loss  # noqa: E402
from model.cogvideox import CogVideoXTransformer, CogVideoXVAE  # noqa: E402
from model.t5 import T5Config, T5Encoder  # noqa: E402
from pipelines.cogvideox import CogVideoX, CogVideoXPipeline  # noqa: E402
from plumbing.memory import GiB, LiveBytes, storage_key  # noqa: E402

PARTS = ("VAE encoder", "transformer blocks", "frame-attention maps", "the rest")
MODES = {"none": (False, False), "blocks": (True, False), "VAE": (False, True), "blocks + VAE": (True, True)}


def flash_attention(self, q, k, v):
    """JointAttention.joint_attention as a GPU runs it in bfloat16: flash attention (see the module docstring)."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]


# ---------------------------------------------------------------- measuring
class SavedBytes:
    """Bytes kept for the backward pass per part: saved tensors, and the inputs of checkpointed modules (which the
    checkpoint holds for the recomputation); every storage counted once, weights and buffers excluded."""

    def __init__(self, networks, excluded):
        self.bytes = dict.fromkeys(PARTS, 0)
        self.seen, self.excluded, self.stack, self.depth, self.on = set(), excluded, [], 0, True
        self.part_of, self.handles = {}, []
        for module in networks.vae.encoder.modules():
            self.part_of[module] = "VAE encoder"
        for module in networks.transformer.transformer_blocks:
            self.part_of[module] = "transformer blocks"
        for module in self.part_of:
            self.handles += [module.register_forward_pre_hook(self.enter), module.register_forward_hook(self.leave)]

    def enter(self, module, args):
        self.stack.append(self.part_of[module])

    def leave(self, module, args, out):
        self.stack.pop()

    def count(self, t, part=None):
        key = storage_key(t)
        if not self.on or key in self.seen or key in self.excluded:
            return
        self.seen.add(key)
        self.bytes[part or (self.stack[-1] if self.stack else "the rest")] += t.untyped_storage().nbytes()

    def pack(self, t):
        self.count(t)
        return t

    def checkpoint(self, real):
        """A stand-in for torch.utils.checkpoint.checkpoint that counts the inputs a top-level checkpoint keeps."""
        def wrapped(function, *args, **kwargs):
            if self.depth == 0:
                part = self.part_of.get(function, "frame-attention maps" if function is
                                        frame_attention.chunk_frame_attention else None)
                for a in args:
                    if isinstance(a, torch.Tensor):
                        self.count(a, part)
                    elif isinstance(a, (tuple, list)):  # the VAE's pasts, the RoPE (cos, sin)
                        for b in a:
                            if isinstance(b, torch.Tensor):
                                self.count(b, part)
            self.depth += 1
            try:
                return real(function, *args, **kwargs)
            finally:
                self.depth -= 1
        return wrapped

    @contextmanager
    def maps_part(self):
        self.stack.append("frame-attention maps")
        try:
            yield
        finally:
            self.stack.pop()


@contextmanager
def patched(saved, module=transformer_module, attention=("JointAttention", "joint_attention"), flash=None):
    """The GPU's attention, the checkpoints counted, the frame-attention maps charged to their own part:
    `module` is the transformer's module, `attention` its attention class and the method that attends,
    `flash` what replaces that method (flash_attention above by default)."""
    real_map = module.frame_attention_map
    cls, method = getattr(module, attention[0]), attention[1]

    def frame_attention_map(*args, **kwargs):
        with saved.maps_part():
            return real_map(*args, **kwargs)

    old = (getattr(cls, method), layers.checkpoint, frame_attention.checkpoint)
    setattr(cls, method, flash or flash_attention)
    layers.checkpoint = saved.checkpoint(layers.checkpoint)
    frame_attention.checkpoint = saved.checkpoint(frame_attention.checkpoint)
    module.frame_attention_map = frame_attention_map
    try:
        yield
    finally:
        setattr(cls, method, old[0])
        layers.checkpoint, frame_attention.checkpoint = old[1:]
        module.frame_attention_map = real_map
        for handle in saved.handles:
            handle.remove()


# ---------------------------------------------------------------- the model on meta
def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def meta_networks(dtype):
    with torch.device("meta"):
        networks = CogVideoX(CogVideoXTransformer(), CogVideoXVAE(), T5Encoder(T5Config()), "meta")
    for m in (networks.transformer, networks.vae, networks.text_encoder):
        m.to(dtype).eval().requires_grad_(False)
    return networks


def weights(networks):
    """Bytes of the weights (parameters and buffers) per network, and the storages they own."""
    t, vae = networks.transformer, networks.vae
    sizes = {"transformer": nbytes([*t.parameters(), *t.buffers()]),
             "VAE encoder": nbytes(vae.encoder.parameters()), "VAE decoder": nbytes(vae.decoder.parameters())}
    if networks.text_encoder is not None:
        sizes["T5 encoder"] = nbytes(networks.text_encoder.parameters())
    keys = {storage_key(p) for m in (t, vae) for p in [*m.parameters(), *m.buffers()]}
    return sizes, keys


def iteration(pipeline, excluded, size, frames, transformer_ckpt, vae_ckpt):
    """One attack iteration on meta, all terms: -> (saved bytes per part, live bytes before the backward pass, live
    peak of the forward pass, of the backward pass, of the setup (encoding V_0 and the black frames))."""
    pipeline.networks.transformer.checkpointing, pipeline.networks.vae.checkpointing = transformer_ckpt, vae_ckpt
    saved = SavedBytes(pipeline.networks, excluded)
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
            values = objective(I_adv, objective.draw(torch.Generator().manual_seed(0), 25))  # t = 499
        L = total_loss(values, dict.fromkeys(TERMS, 1.0))
        kept, forward = live.now, live.peak
        saved.on = False
        live.reset_peak()
        grad, = torch.autograd.grad(L, I_adv)
        backward = live.peak
    del grad
    return saved.bytes, kept, forward, backward, setup


def sampling(pipeline, excluded, size, frames):
    """Live peaks of one guided transformer forward (batch 2) and of the VAE decode, without gradients."""
    live = LiveBytes(excluded)
    t, vae = pipeline.networks.transformer, pipeline.networks.vae
    f, h, w = (frames - 1) // 4 + 1, size[0] // 8, size[1] // 8
    saved = SavedBytes(pipeline.networks, excluded)
    with patched(saved), torch.no_grad():
        x = torch.empty(2, f, 32, h, w, device="meta", dtype=torch.bfloat16)  # noisy + image latents, both halves
        text = torch.cat([pipeline.negative_embeds, pipeline.prompt_embeds]).to(torch.bfloat16)
        with live:
            t(x, text, torch.tensor(499, device="meta"))
        step = live.peak
        z = torch.empty(1, 16, f, h, w, device="meta", dtype=torch.bfloat16)
        live = LiveBytes(excluded)
        with live:
            vae.decode(z)
    return step, live.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=480, help="model resolution")
    p.add_argument("--width", type=int, default=720, help="model resolution")
    p.add_argument("--frames", type=int, default=49, help="video frames (4k + 1)")
    p.add_argument("--with-prompt", action="store_true",
                   help="attack with a prompt: G is then the guided prediction, two transformer passes")
    args = p.parse_args(argv)
    size, frames = (args.height, args.width), args.frames

    networks = meta_networks(torch.bfloat16)
    sizes, _ = weights(networks)
    t5 = sizes.pop("T5 encoder")
    # embeds the prompt on meta (any token ids will do: only shapes count here), then drops T5
    pipeline = CogVideoXPipeline(networks, token_ids=[5, 6, 7, 1] if args.with_prompt else None)
    _, excluded = weights(networks)
    excluded |= {storage_key(e) for e in (pipeline.prompt_embeds, pipeline.negative_embeds)}
    resident = sum(sizes.values())

    print(f"# CogVideoX-5B-I2V, {size[0]}x{size[1]}x{frames}, bfloat16 (GiB = 2^30 bytes; meta device)"
          + (", attacked with a prompt (G guided: two passes)" if args.with_prompt else "") + "\n")
    print("## Weights\n")
    print("| network | GiB |\n|---|---:|")
    for name, b in sizes.items():
        print(f"| {name} | {b / GiB:.2f} |")
    print(f"| T5 v1.1 XXL encoder (only while embedding the prompt, then freed) | {t5 / GiB:.2f} |")
    print(f"| **resident during the attack** | **{resident / GiB:.2f}** |\n")

    rows = {}
    for mode, (blocks, vae) in MODES.items():
        rows[mode] = iteration(pipeline, excluded, size, frames, blocks, vae)
    print("## One attack iteration (all terms; maps of " + ", ".join(pipeline.default_attn_blocks()) + ")\n")
    print("Checkpointing: none; per transformer block; the VAE encoder's (per res block); both (low_memory(True)).\n")
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
    print("## Sampling V_0 = P(I_src) (no gradients; guidance 6: batch 2)\n")
    print("| GiB | |\n|---|---:|")
    print(f"| weights (T5 freed) | {resident / GiB:.2f} |")
    print(f"| live peak, one transformer forward, batch 2 | {step / GiB:.2f} |")
    print(f"| live peak, VAE decode of {(frames - 1) // 4 + 1} latent frames | {decode / GiB:.2f} |")
    print(f"| **estimated peak: weights + the larger** | **{(resident + max(step, decode)) / GiB:.2f}** |")
    print(f"| loading: all weights at once before T5 is freed | {(resident + t5) / GiB:.2f} |\n")
    low = resident + max(rows["blocks + VAE"][2:])
    print(f"The whole attack with low_memory(True) peaks at max(sampling V_0, an iteration) = "
          f"{max(low, resident + max(step, decode)) / GiB:.2f} GiB, plus the allocator's overhead.")


if __name__ == "__main__":
    main()
