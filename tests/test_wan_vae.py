"""Our WanVAE is diffusers' AutoencoderKLWan (the Wan2.2 layout, residual shortcuts, 2x2 patchify): the same state_dict
at the official TI2V-5B size (meta device), and in float32 on a randomised tiny config saved in the official layout
and loaded through our checked loader, the same posterior (frame 0 alone, then chunks of 4 with the causal caches)
and the same decoded frames (one latent frame at a time) to 1e-4, for a video and for a single frame (the photo)."""
import copy
import json

import pytest
import torch
from diffusers import AutoencoderKLWan

from model.wan.vae import WanVAE, WanVAEConfig
from weights import load_checked

TOL = 1e-4

# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json as wan.md describes it; the 48 latents_mean / latents_std values
# are not known offline, so stand-ins of the right length are used for the sizes check
OFFICIAL = dict(attn_scales=[], base_dim=160, decoder_base_dim=256, dim_mult=[1, 2, 4, 4], dropout=0.0, in_channels=12,
                is_residual=True, latents_mean=[0.0] * 48, latents_std=[1.0] * 48, num_res_blocks=2, out_channels=12,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                temperal_downsample=[False, True, True], z_dim=48)
TINY = dict(OFFICIAL, base_dim=8, decoder_base_dim=12, dim_mult=[1, 2, 2, 2], num_res_blocks=1, z_dim=4,
            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])


def randomize_(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = p.float().std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * max(0.5 * std, 0.05))
    return module


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    oracle = randomize_(AutoencoderKLWan(**TINY), 0).eval()
    root = tmp_path_factory.mktemp("wanvae")
    oracle.save_pretrained(root / "vae")
    cfg = json.loads((root / "vae" / "config.json").read_text())
    with torch.device("meta"):
        ours = WanVAE(WanVAEConfig.from_json_dict(cfg))
    return oracle, load_checked(ours, root / "vae" / "diffusion_pytorch_model.safetensors")


def max_abs_diff(label, ours, ref):
    assert ours.shape == ref.shape, f"{label}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item()
    print(f"\n[parity] {label}: max abs diff {diff:.3e} (max |ref| {ref.abs().max().item():.3g})")
    return diff


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_matches_oracle(pair, frames):
    oracle, ours = pair
    x = torch.rand(1, 3, frames, 32, 48) * 2 - 1
    with torch.no_grad():
        dist = oracle.encode(x).latent_dist
        mean, logvar = ours.encode(x)
    assert mean.shape == (1, 4, (frames - 1) // 4 + 1, 2, 3)
    assert max_abs_diff(f"wan vae encode mean, {frames} frames", mean, dist.mean) <= TOL
    assert max_abs_diff(f"wan vae encode logvar, {frames} frames", logvar, dist.logvar) <= TOL


@pytest.mark.parametrize("latent_frames", [1, 3])
def test_decode_matches_oracle(pair, latent_frames):
    oracle, ours = pair
    z = torch.randn(1, 4, latent_frames, 2, 3)
    with torch.no_grad():
        ref = oracle.decode(z).sample
        out = ours.decode(z)
    assert out.shape == (1, 3, 4 * (latent_frames - 1) + 1, 32, 48)
    assert max_abs_diff(f"wan vae decode, {latent_frames} latent frames", out, ref) <= TOL


def test_encoder_checkpointing_same_gradient(pair):
    _, ours = pair
    x = (torch.rand(1, 3, 1, 32, 32) * 2 - 1).requires_grad_(True)
    grads = []
    for checkpointing in (False, True):
        ours.checkpointing = checkpointing
        (grad,) = torch.autograd.grad(ours.encode(x)[0].square().sum(), x)
        grads.append(grad)
    ours.checkpointing = False
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    with pytest.raises(ValueError, match="4k"):
        ours.encode(torch.zeros(1, 3, 4, 32, 32))


def test_config():
    cfg = WanVAEConfig.from_json_dict(OFFICIAL)
    assert cfg == WanVAEConfig(latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)
    for bad in (dict(is_residual=False), dict(attn_scales=[0.5]), dict(latents_mean=[0.0] * 16),
                dict(temperal_downsample=[1, 0, 0])):
        with pytest.raises(ValueError):
            WanVAEConfig.from_json_dict(dict(OFFICIAL, **bad))


def test_official_size_state_dict_matches_oracle():
    with torch.device("meta"):
        ours = WanVAE(WanVAEConfig.from_json_dict(OFFICIAL))
        oracle = AutoencoderKLWan(**OFFICIAL)
    ref = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(ref) - set(got)) == [] and sorted(set(got) - set(ref)) == []
    assert got == ref
    total = sum(p.numel() for p in ours.parameters())
    encoder = sum(p.numel() for p in ours.encoder.parameters())
    print(f"\n[size] wan vae: {total:,} parameters, encoder {encoder:,}")
    assert total == sum(p.numel() for p in oracle.parameters()) == 704_688_668
    assert encoder == 149_627_776


def test_bfloat16_matches_oracle(pair):
    """In bfloat16 (the RMS norms normalise in float32, as the reference does for half precision): encode and decode
    bit-equal to the reference's."""
    oracle, ours = (copy.deepcopy(m).to(torch.bfloat16) for m in pair)
    x = (torch.rand(1, 3, 5, 32, 48) * 2 - 1).to(torch.bfloat16)
    z = torch.randn(1, 4, 2, 2, 3).to(torch.bfloat16)
    with torch.no_grad():
        mean, ref_mean = ours.encode(x)[0], oracle.encode(x).latent_dist.mean
        out, ref_out = ours.decode(z), oracle.decode(z).sample
    assert mean.dtype == out.dtype == torch.bfloat16
    diffs = [(a.float() - b.float()).abs().max().item() for a, b in ((mean, ref_mean), (out, ref_out))]
    print(f"\n[parity] wan vae bf16: encode {diffs[0]:.3e}, decode {diffs[1]:.3e}")
    assert diffs == [0, 0]
