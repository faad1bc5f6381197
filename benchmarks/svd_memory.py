"""Memory of a protection against SVD img2vid at 576x1024x14 in bfloat16, phase by phase, measured on the meta
device (no weights, no GPU, seconds on a CPU): V_0's sampling and decoding, one attack iteration and one calibration
draw (each term's gradient with the graph kept), with and without --low-memory, through the real pieces
(pipelines/svd.SVDPipeline). The live bytes are benchmarks/cogvideox_memory.py's LiveBytes: every tensor storage
from its creation to its release; the estimate of a phase is the weights plus its live peak.

As there, attention runs as the GPU runs it for bfloat16 (aten._scaled_dot_product_flash_attention), not as the meta
device's math path, which would keep every attention matrix. The sampling runs 2 steps: each step frees what the
one before made, so the peak does not grow with their number.

    python benchmarks/svd_memory.py        # the Markdown table
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attack import TERMS, Objective  # noqa: E402
from cogvideox_memory import GiB, LiveBytes  # noqa: E402
from losses import total_loss  # noqa: E402
from model import VAE, CLIPImageEncoder, UNet  # noqa: E402
from model.clip import CLIPConfig  # noqa: E402
from model.unet import UNetConfig  # noqa: E402
from model.vae import VAEConfig  # noqa: E402
from pipelines.svd import SVDPipeline  # noqa: E402
from weights import SVD  # noqa: E402

SIZE, FRAMES = (576, 1024), 14


def flash(q, k, v, *args, **kwargs):
    """scaled_dot_product_attention as a GPU runs it in bfloat16 (see the module docstring)."""
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]


def meta_svd():
    """SVD img2vid's networks at the release's sizes (the configs' defaults) on the meta device, in bfloat16."""
    with torch.device("meta"):
        networks = SVD(vae=VAE(VAEConfig()), unet=UNet(UNetConfig()), image_encoder=CLIPImageEncoder(CLIPConfig()),
                       source="meta")
    for name in ("vae", "unet", "image_encoder"):
        setattr(networks, name, getattr(networks, name).to(torch.bfloat16).eval().requires_grad_(False))
    return networks


def phases(pipeline, low_memory):
    """{phase: live peak in bytes} of one protection's phases on the meta device."""
    pipeline.low_memory(low_memory)
    I_src = torch.rand(1, 3, *SIZE, device="meta")
    peaks, live = {}, LiveBytes()
    with live:
        V_0 = pipeline.P(I_src, size=SIZE, num_frames=FRAMES, steps=2, seed=0)  # (F, 3, H, W)
        peaks["V_0: sampling and decoding 14 frames"] = live.peak
        live.reset_peak()
        objective = Objective(pipeline, I_src, TERMS, num_frames=FRAMES, size=SIZE, tau1=0.5, tau2=0.5,
                              attn_blocks=pipeline.default_attn_blocks(), sample_steps=25, seed=0, V_0=V_0)
        I_adv = I_src.clone().requires_grad_()
        values = objective(I_adv, objective.draw(torch.Generator().manual_seed(0), 12))
        torch.autograd.grad(total_loss(values, dict.fromkeys(TERMS, 1.0)), I_adv)
        peaks["one attack iteration"] = live.peak
        live.reset_peak()
        values = objective(I_adv, objective.draw(torch.Generator().manual_seed(0), 12))
        for name in ("enc", "con", "att"):  # as attack.calibrate takes them: the graph kept between terms
            torch.autograd.grad(values[name], I_adv, retain_graph=True)
        peaks["one calibration draw"] = live.peak
    return peaks


def main():
    F.scaled_dot_product_attention = flash
    start = time.perf_counter()
    networks = meta_svd()
    weights = sum(p.numel() * p.element_size() for m in (networks.vae, networks.unet, networks.image_encoder)
                  for p in m.parameters())
    pipeline = SVDPipeline(networks)
    rows = {mode: phases(pipeline, mode) for mode in (False, True)}
    print(f"# SVD img2vid, {SIZE[0]}x{SIZE[1]}x{FRAMES}, bfloat16 (GiB = 2^30 bytes; meta device; weights "
          f"{weights / GiB:.2f} GiB)\n")
    print("| GiB: weights + live peak | default | `--low-memory` |\n|---|---:|---:|")
    for phase in rows[False]:
        print(f"| {phase} | {(weights + rows[False][phase]) / GiB:.2f} | {(weights + rows[True][phase]) / GiB:.2f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
