"""Time and memory of one I2VGuard attack iteration and one sampling step: ours against a straightforward
diffusers-based implementation of the same computation, on identical random weights.

One iteration, as attack.py runs it (Algorithm 1): VAE-encode and CLIP-embed I_adv, the UNet forward
with the temporal attention maps of down_blocks.2, the source pass for A_src (no gradient), the loss
and the gradient with respect to I_adv. The diffusers-based twin uses diffusers' UNet and VAE and
transformers' CLIP, records the hooked blocks' attention probabilities with an attention processor
(SDPA everywhere else), computes the constant source quantities once, and in memory mode switches on
diffusers' own gradient checkpointing. Both load the same weights from one directory in the official
layout. Each measurement runs in a fresh process, ours and theirs alternating, so peak memory is
each one's own: CUDA max allocated, or the peak resident set size on CPU.

    python benchmarks/bench_attack.py --size mid                                   # CPU
    python benchmarks/bench_attack.py --size official --device cuda --dtype bfloat16
"""
import argparse
import ctypes
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCKS = ("down_blocks.2.attentions.0", "down_blocks.2.attentions.1")
SIZES = {  # network configs (official values where not given), model resolution, frames
    "mid": dict(unet=dict(block_out_channels=[64, 128, 256, 256], num_attention_heads=[1, 2, 4, 4],
                          cross_attention_dim=256, num_frames=4),
                vae=dict(block_out_channels=[32, 64, 128, 128]),
                clip=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4,
                          projection_dim=256),
                size=(64, 64), frames=4),
    "official": dict(unet={}, vae={}, clip={}, size=(576, 1024), frames=14),
}


# ---------------------------------------------------------------- the weights both sides load
def write_weights(size, folder):
    """Random networks in the official layout (float32 files, no variant), written by the reference classes."""
    from dataclasses import asdict

    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from model import CLIPConfig, UNetConfig, VAEConfig
    spec = SIZES[size]
    plain = lambda cfg: json.loads(json.dumps(asdict(cfg)))  # noqa: E731
    torch.manual_seed(0)
    UNetSpatioTemporalConditionModel(**plain(UNetConfig(**spec["unet"]))).save_pretrained(folder / "unet")
    AutoencoderKLTemporalDecoder(**plain(VAEConfig(**spec["vae"]))).save_pretrained(folder / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**plain(CLIPConfig(**spec["clip"])))).save_pretrained(
        folder / "image_encoder")


# ---------------------------------------------------------------- memory
def proc_status(key):
    return int(re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_peak(device):
    """Start counting the peak now; returns the memory in use (the loaded networks and constants)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so RSS is what is in use
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak-RSS count (VmHWM)
    return proc_status("VmRSS")


def peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return proc_status("VmHWM")


def saved_for_backward(step, networks):
    """Bytes of the distinct tensors autograd keeps from step()'s forward for its backward, weights
    aside: the activation memory that checkpointing trades for recomputation, free of allocator noise."""
    weights = {p.untyped_storage().data_ptr() for m in networks for p in m.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = step()
    return sum(storages.values()), outputs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the diffusers-based implementation
class RecordingProcessor:
    """Attention written out, keeping softmax(QK^T/sqrt(d)) of this layer for the temporal loss."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        n = hidden_states.shape[0]
        q, k, v = (p(s).view(n, s.shape[1], attn.heads, -1).transpose(1, 2)
                   for p, s in ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        self.probs = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(-1)
        out = (self.probs.to(v.dtype) @ v).transpose(1, 2).reshape(n, -1, attn.heads * v.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class DiffusersObjective:
    """The loss terms of one attack iteration computed with the reference classes."""

    def __init__(self, unet, vae, clip, I_src, V_0, dtype):
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

        from pipelines.svd import CLIP_MEAN, CLIP_STD, added_time_ids
        self.unet, self.vae, self.clip, self.I_src, self.dtype = unet, vae, clip, I_src, dtype
        self.resize = _resize_with_antialiasing
        self.mean = torch.tensor(CLIP_MEAN, device=I_src.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=I_src.device).view(1, 3, 1, 1)
        self.probes = {}
        for name in BLOCKS:
            self.probes[name] = RecordingProcessor()
            unet.get_submodule(name).temporal_transformer_blocks[0].attn1.set_processor(self.probes[name])
        self.time_ids = added_time_ids(7, 127, 0.02).to(I_src.device, dtype)
        sf = vae.config.scaling_factor
        with torch.no_grad():
            self.x_src = self.encode(I_src * 2 - 1)  # clean: the sampling-step benchmark's conditioning
            self.c_src = self.embed(I_src * 2 - 1)
            self.X_0 = torch.cat([self.encode(v[None]) for v in V_0]).float()[None] * sf
            self.X_tg = (self.encode(-torch.ones_like(V_0[:1])).float() * sf)[None].expand_as(self.X_0)

    def encode(self, x):
        return self.vae.encode(x.to(self.dtype)).latent_dist.mean

    def embed(self, x):
        pixels = ((self.resize(x, (224, 224)) + 1) / 2 - self.mean) / self.std
        return self.clip(pixel_values=pixels.to(self.dtype)).image_embeds[:, None]

    def denoise(self, X_t, sigma, x, c):
        from model.edm import precondition
        c_skip, c_out, c_in, c_noise = (float(v) for v in precondition(sigma))
        latents = x.to(self.dtype)[:, None].expand(-1, X_t.shape[1], -1, -1, -1)
        F_x = self.unet(torch.cat([c_in * X_t, latents], dim=2), c_noise, c.to(self.dtype), self.time_ids).sample
        return c_skip * X_t + c_out * F_x

    def __call__(self, I_adv, draw):
        from losses import attention_loss, contrastive_loss, encoder_loss, image_loss
        aug, sigma, noise, _ = draw
        terms = {"img": image_loss(I_adv, self.I_src)}
        x_adv = self.encode(I_adv * 2 - 1 + 0.02 * aug.to(I_adv))
        with torch.no_grad():  # target and source through the same augmentation draw, as attack.py
            x_tg = self.encode(-torch.ones_like(I_adv) + 0.02 * aug.to(I_adv))
            x_src = self.encode(self.I_src * 2 - 1 + 0.02 * aug.to(I_adv))
        terms["enc"] = encoder_loss(x_adv, x_tg)
        X_t = (self.X_0 + sigma * noise.to(self.X_0)).to(self.dtype)
        X0_adv = self.denoise(X_t, sigma, x_adv, self.embed(I_adv * 2 - 1))
        A_adv = {name: probe.probs for name, probe in self.probes.items()}
        terms["con"] = contrastive_loss(X0_adv, self.X_tg, self.X_0, 0.5)
        with torch.no_grad():
            self.denoise(X_t, sigma, x_src, self.c_src)
        terms["att"] = attention_loss(A_adv, {name: probe.probs for name, probe in self.probes.items()}, 0.5)
        return terms


# ---------------------------------------------------------------- one process measures one side
def worker(args):
    from attack import TERMS, Objective
    from losses import total_loss
    from pipelines.svd import SVDPipeline, added_time_ids, image_latents, to_model_input
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    spec = SIZES[args.size]
    size, frames = spec["size"], spec["frames"]
    g = torch.Generator().manual_seed(0)
    I_src = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bicubic")
    I_src = I_src.clamp(0, 1).to(device)
    V_0 = (torch.rand(frames, 3, *size, generator=g) * 2 - 1).to(device)
    delta = ((torch.rand(I_src.shape, generator=g) * 2 - 1) * 8 / 255).to(device)
    if args.impl == "ours":
        from weights import load_svd
        svd = load_svd(args.weights, variant=None, dtype=dtype, device=device)
        svd.unet.checkpointing = svd.vae.checkpointing = args.mode == "memory"
        objective = Objective(SVDPipeline(svd), I_src, TERMS, num_frames=frames, size=size, tau1=0.5, tau2=0.5,
                              attn_blocks=BLOCKS, sample_steps=25, seed=0, V_0=V_0)
        with torch.no_grad():  # the sampling-step benchmark's conditioning latents, clean as theirs
            objective.x_src = image_latents(svd.vae, to_model_input(I_src, size), 0.0, 0.0)
            objective.time_ids = added_time_ids(7, 127, 0.02).to(device, dtype)  # the pipeline's defaults
        unet, denoise_guided = svd.unet, ours_sampling_step
        networks = (svd.unet, svd.vae, svd.image_encoder)
    else:
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionModelWithProjection
        kw = dict(torch_dtype=dtype)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(args.weights, subfolder="unet", **kw)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(args.weights, subfolder="vae", **kw)
        clip = CLIPVisionModelWithProjection.from_pretrained(Path(args.weights) / "image_encoder", dtype=dtype)
        for m in (unet, vae, clip):
            m.to(device).eval().requires_grad_(False)
        if args.mode == "memory":
            unet.enable_gradient_checkpointing()
            vae.enable_gradient_checkpointing()
        objective = DiffusersObjective(unet, vae, clip, I_src, V_0, dtype)
        denoise_guided = theirs_sampling_step
        networks = (unet, vae, clip)

    sigma_rng = torch.Generator().manual_seed(1)
    draws = [(torch.randn(1, 3, *size, generator=sigma_rng), 5.0, torch.randn(objective.X_0.shape, generator=sigma_rng), None)
             for _ in range(args.iters + 1)]
    times, first = [], None
    loaded = reset_peak(device)
    for i, draw in enumerate(draws):
        sync(device)
        start = time.perf_counter()
        I_adv = (I_src + delta).clamp(0, 1).requires_grad_()
        values = objective(I_adv, draw)
        L = total_loss(values, dict.fromkeys(TERMS, 1.0))
        grad, = torch.autograd.grad(L, I_adv)
        sync(device)
        if i == 0:
            first = {k: v.item() for k, v in values.items()} | {"grad_abs_mean": grad.abs().mean().item()}
        else:
            times.append(time.perf_counter() - start)
    iteration_peak = peak(device)

    def forward():
        I_adv = (I_src + delta).clamp(0, 1).requires_grad_()
        return I_adv, total_loss(objective(I_adv, draws[0]), dict.fromkeys(TERMS, 1.0))
    saved, (I_adv, L) = saved_for_backward(forward, networks)
    torch.autograd.grad(L, I_adv)

    step_times = []
    with torch.no_grad():
        x = torch.randn(objective.X_0.shape, generator=sigma_rng).to(device, dtype) * 700
        for i in range(args.iters + 1):
            sync(device)
            start = time.perf_counter()
            denoise_guided(unet, objective, x)
            sync(device)
            if i:
                step_times.append(time.perf_counter() - start)
    print(json.dumps(dict(iteration_s=times, peak_bytes=iteration_peak, above_loaded_bytes=iteration_peak - loaded,
                          saved_bytes=saved,
                          step_s=step_times, first=first)))


def guided_inputs(objective, x):
    latents = objective.x_src[:, None].expand(-1, x.shape[1], -1, -1, -1).to(x.dtype)
    embeds = objective.c_src.to(x.dtype)
    return (torch.cat([torch.zeros_like(latents), latents]), torch.cat([torch.zeros_like(embeds), embeds]),
            torch.cat([objective.time_ids] * 2))


def ours_sampling_step(unet, objective, x):
    """One Euler step with classifier-free guidance, as sample.py takes it."""
    from model.edm import denoise, euler_step
    latents, embeds, ids = guided_inputs(objective, x)
    D_uncond, D_cond = denoise(unet, torch.cat([x, x]), 700.0, latents, embeds, ids)[0].chunk(2)
    return euler_step(x, D_uncond + 2.0 * (D_cond - D_uncond), 700.0, 545.0)


def theirs_sampling_step(unet, objective, x):
    """The same step with the diffusers UNet, the pipeline's arithmetic written out."""
    from model.edm import precondition
    latents, embeds, ids = guided_inputs(objective, x)
    c_skip, c_out, c_in, c_noise = (float(v) for v in precondition(700.0))
    x2 = torch.cat([x, x])
    F_uncond, F_cond = unet(torch.cat([c_in * x2, latents], dim=2), c_noise, embeds, ids).sample.chunk(2)
    D = c_skip * x + c_out * (F_uncond + 2.0 * (F_cond - F_uncond))
    return x + (x - D) / 700.0 * (545.0 - 700.0)


# ---------------------------------------------------------------- driver
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="mid", help="architecture and resolution")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--modes", default="default,memory", help="comma-separated: default, memory")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per process (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="processes per side and mode, alternating")
    p.add_argument("--worker", dest="impl", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return worker(args)

    with tempfile.TemporaryDirectory() as folder:
        write_weights(args.size, Path(folder))
        results = {}
        for mode in args.modes.split(","):
            for _ in range(args.rounds):
                for impl in ("ours", "diffusers"):
                    cmd = [sys.executable, __file__, "--worker", impl, "--weights", folder, "--mode", mode,
                           "--size", args.size, "--device", args.device, "--dtype", args.dtype,
                           "--iters", str(args.iters)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    r = json.loads(out.strip().splitlines()[-1])
                    agg = results.setdefault((impl, mode), dict(iteration_s=[], step_s=[], peak_bytes=[],
                                                                above_loaded_bytes=[], saved_bytes=[],
                                                                first=r["first"]))
                    for key in ("iteration_s", "step_s"):
                        agg[key] += r[key]
                    for key in ("peak_bytes", "above_loaded_bytes", "saved_bytes"):
                        agg[key].append(r[key])

    memory = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"size {args.size}, device {args.device}, dtype {args.dtype}, {args.rounds} alternating processes "
          f"x {args.iters} timed iterations per side and mode")
    print(f"| implementation | mode | s / iteration (median) | {memory}, GiB | of it above the loaded "
          f"networks, GiB | kept for backward, GiB | s / sampling step (median) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for (impl, mode), r in results.items():
        summary[impl, mode] = (statistics.median(r["iteration_s"]), max(r["peak_bytes"]) / 2**30,
                               max(r["above_loaded_bytes"]) / 2**30, max(r["saved_bytes"]) / 2**30,
                               statistics.median(r["step_s"]))
        print(f"| {impl} | {mode} | " + " | ".join(f"{v:.3f}" for v in summary[impl, mode]) + " |")
    for mode in args.modes.split(","):
        (t_o, m_o, a_o, k_o, s_o), (t_d, m_d, a_d, k_d, s_d) = summary["ours", mode], summary["diffusers", mode]
        print(f"{mode}: ours/diffusers time {t_o / t_d:.2f}, peak memory {m_o / m_d:.2f}, "
              f"above loaded {a_o / a_d:.2f}, kept for backward {k_o / k_d:.2f}, sampling step {s_o / s_d:.2f}")
    if args.size == "official" and args.device.startswith("cuda"):
        for (impl, mode), (t, *_) in summary.items():  # ~80 TFLOP per iteration at 576x1024, 14 frames
            print(f"{impl} {mode}: {80 / t:.0f} TFLOP/s achieved, counting 80 TFLOP per iteration")
    if ("ours", "memory") in summary and ("ours", "default") in summary:
        print(f"ours memory mode / ours default: time {summary['ours', 'memory'][0] / summary['ours', 'default'][0]:.2f}")
    for (impl, mode), r in results.items():
        print(f"first iteration loss terms, {impl} {mode}: " + ", ".join(f"{k} {v:.6g}" for k, v in r["first"].items()))


if __name__ == "__main__":
    main()
