"""Our networks against the reference implementation in bfloat16 and float16 on a GPU (the device named by
GPU_CHECK_DEVICE, cuda by default; skipped without one; benchmarks/gpu_check.sh --dry-run runs it on the
CPU). On identical random weights, our output in low precision must be as close to the reference's
float32 output as the reference's own output in that precision: max abs error at most
2 x the reference's + 1e-3 x max |output|, for the UNet, the VAE encoder and decoder, and CLIP."""
import os

import pytest
import torch

from oracles import TINY_CLIPS, TINY_UNETS, TINY_VAES, clip_pair, unet_inputs, unet_pair, vae_pair

DEVICE = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")


def as_close_as_the_reference(label, ours, theirs, inputs, dtype):
    """ours(inputs), theirs(inputs) -> the networks' outputs; both in `dtype` against theirs in float32."""
    with torch.no_grad():
        exact = theirs(torch.float32, [x.to(DEVICE) for x in inputs]).float()
        low = [x.to(DEVICE, dtype) if x.is_floating_point() else x.to(DEVICE) for x in inputs]
        their_error = (theirs(dtype, low).float() - exact).abs().max().item()
        ours_error = (ours(dtype, low).float() - exact).abs().max().item()
    print(f"\n[{DEVICE.type} {dtype}] {label}: ours {ours_error:.3e}, reference {their_error:.3e} "
          f"(max |output| {exact.abs().max().item():.3g})")
    assert ours_error <= 2 * their_error + 1e-3 * exact.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_unet(dtype):
    cfg = TINY_UNETS["4level"]
    oracle, ours = unet_pair(cfg)
    sample, ehs, ids = unet_inputs(cfg, batch=2, frames=4, height=16, width=24)
    inputs = [sample, torch.tensor([1.6, -0.4]), ehs, ids]
    as_close_as_the_reference("unet", lambda dtype, x: ours.to(DEVICE, dtype)(*x)[0],
                              lambda dtype, x: oracle.to(DEVICE, dtype)(*x).sample, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_vae(dtype):
    oracle, ours = vae_pair(TINY_VAES["3level"])
    frames, latents = torch.rand(2, 3, 64, 96) * 2 - 1, torch.randn(4, 4, 16, 24)
    as_close_as_the_reference("vae encoder mean", lambda dtype, x: ours.to(DEVICE, dtype).encode(*x)[0],
                              lambda dtype, x: oracle.to(DEVICE, dtype).encode(*x).latent_dist.mean, [frames], dtype)
    as_close_as_the_reference("vae decoder", lambda dtype, x: ours.to(DEVICE, dtype).decode(*x, 4),
                              lambda dtype, x: oracle.to(DEVICE, dtype).decode(*x, num_frames=4).sample,
                              [latents], dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_clip(dtype):
    cfg = TINY_CLIPS["gelu"]
    oracle, ours = clip_pair(cfg)
    pixels = torch.randn(2, 3, cfg["image_size"], cfg["image_size"])
    as_close_as_the_reference("clip image embeds", lambda dtype, x: ours.to(DEVICE, dtype)(*x),
                              lambda dtype, x: oracle.to(DEVICE, dtype)(pixel_values=x[0]).image_embeds,
                              [pixels], dtype)
