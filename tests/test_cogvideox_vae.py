"""Our CogVideoX VAE is diffusers' AutoencoderKLCogVideoX: on randomised tiny configs the posterior
(mean, logvar) and the decoded frames match the oracle to 1e-4 for one image and for a clip that the
oracle encodes in three chunks (9 + 8 + 8 frames) and decodes in three (3 + 2 + 2 latent frames) with its
conv caches; checkpointing changes no gradient; the official size has the oracle's state dict."""
import json

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from model.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig, frame_chunks
from oracles import TOL, max_abs_diff, normalized, randomize_, shapes

OFFICIAL = dict(  # THUDM/CogVideoX-5b-I2V vae/config.json, with its null fields
    in_channels=3, out_channels=3, down_block_types=["CogVideoXDownBlock3D"] * 4,
    up_block_types=["CogVideoXUpBlock3D"] * 4, block_out_channels=[128, 256, 256, 512], latent_channels=16,
    layers_per_block=3, act_fn="silu", norm_eps=1e-6, norm_num_groups=32, temporal_compression_ratio=4,
    sample_height=480, sample_width=720, scaling_factor=0.7, shift_factor=None, latents_mean=None,
    latents_std=None, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
    invert_scale_latents=False,
)
TINY = {  # 4 levels as released (2 compress time), widths that change, so shortcut convs exist
    "lpb1": dict(OFFICIAL, block_out_channels=[8, 16, 16, 24], latent_channels=4, layers_per_block=1,
                 norm_num_groups=4, sample_height=16, sample_width=16),
    "lpb2": dict(OFFICIAL, block_out_channels=[8, 8, 16, 16], latent_channels=4, layers_per_block=2,
                 norm_num_groups=2, sample_height=16, sample_width=24),
}


def pair(cfg, seed=0):
    torch.manual_seed(seed)
    oracle = randomize_(AutoencoderKLCogVideoX(**cfg), seed).eval()
    ours = CogVideoXVAE(CogVideoXVAEConfig.from_json_dict(json.loads(json.dumps(cfg))))
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours.eval()


@pytest.mark.parametrize("name, batch, frames, height, width", [
    ("lpb1", 2, 1, 16, 16),  # one image: the I2V case
    ("lpb1", 1, 25, 16, 16),  # three encoder chunks 9 + 8 + 8 -> 3 + 2 + 2 latent frames
    ("lpb2", 1, 17, 16, 24),  # two chunks 9 + 8
])
def test_encode_decode_match_oracle(name, batch, frames, height, width):
    oracle, ours = pair(TINY[name])
    x = torch.rand(batch, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        dist = oracle.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        z = torch.randn_like(mean)
        ref = oracle.decode(z).sample
        out = ours.decode(z)
    label = f"cogvideox vae {name} B{batch} F{frames} {height}x{width}"
    assert mean.shape[2] == (frames - 1) // 4 + 1
    assert max_abs_diff(f"{label} mean", mean, dist.mean) <= TOL
    assert max_abs_diff(f"{label} logvar", logvar, dist.logvar) <= TOL
    assert out.shape == x.shape
    assert max_abs_diff(f"{label} decode", out, ref) <= TOL


def test_chunks_are_the_references():
    assert frame_chunks(49, 8) == [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41), (41, 49)]
    assert frame_chunks(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert frame_chunks(1, 8) == [(0, 9)]  # slicing keeps the single frame


def test_checkpointing_keeps_gradients():
    _, ours = pair(TINY["lpb1"])
    x = (torch.rand(1, 3, 17, 16, 16) * 2 - 1).requires_grad_()
    grads = []
    for checkpointing in (False, True):
        ours.checkpointing = checkpointing
        mean, logvar = ours.encode(x)
        grads.append(torch.autograd.grad((mean * logvar).sum(), x)[0])
    assert max_abs_diff("cogvideox vae encoder checkpointing grad", grads[1], grads[0]) <= TOL


def test_default_config_is_official():
    assert normalized(CogVideoXVAEConfig()) == {k: v for k, v in OFFICIAL.items() if v is not None}


def test_official_state_dict_matches_oracle():
    with torch.device("meta"):
        oracle = AutoencoderKLCogVideoX(**OFFICIAL)
        ours = CogVideoXVAE(CogVideoXVAEConfig())
    ours_shapes, ref_shapes = shapes(ours.state_dict()), shapes(oracle.state_dict())
    assert sorted(set(ours_shapes) - set(ref_shapes)) == []  # unexpected keys
    assert sorted(set(ref_shapes) - set(ours_shapes)) == []  # missing keys
    assert {k: s for k, s in ours_shapes.items() if s != ref_shapes[k]} == {}
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in oracle.parameters()) == 215_583_907
