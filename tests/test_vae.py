"""Our VAE is diffusers' AutoencoderKLTemporalDecoder: same state_dict at the official size, and on
randomised tiny configs (1 and 2 res blocks per level, non-square and odd latents) the encoder's
mean/logvar and the temporal decoder's frames (several videos per batch, one-frame chunks) match the
oracle to 1e-4."""
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder

from model import VAE, VAEConfig
from oracles import OFFICIAL_VAE, TINY_VAES, TOL, max_abs_diff, normalized, shapes, vae_pair


@pytest.mark.parametrize("name, n, height, width", [
    ("2level-lpb1", 2, 16, 24),
    ("3level", 1, 24, 40),
])
def test_encode_matches_oracle(name, n, height, width):
    oracle, ours = vae_pair(TINY_VAES[name])
    x = torch.rand(n, 3, height, width) * 2 - 1
    with torch.no_grad():
        dist = oracle.encode(x).latent_dist
        mean, logvar = ours.encode(x)
    assert max_abs_diff(f"vae encode mean {name} N{n} {height}x{width}", mean, dist.mean) <= TOL
    assert max_abs_diff(f"vae encode logvar {name} N{n} {height}x{width}", logvar, dist.logvar) <= TOL


@pytest.mark.parametrize("name, n, num_frames, height, width", [
    ("2level-lpb1", 6, 3, 8, 12),  # two videos of 3 frames
    ("3level", 4, 4, 6, 10),
    ("2level-lpb1", 2, 1, 5, 7),  # one-frame chunks
])
def test_decode_matches_oracle(name, n, num_frames, height, width):
    oracle, ours = vae_pair(TINY_VAES[name])
    z = torch.randn(n, 4, height, width)
    with torch.no_grad():
        ref = oracle.decode(z, num_frames=num_frames).sample
        out = ours.decode(z, num_frames)
    assert max_abs_diff(f"vae decode {name} N{n} F{num_frames} {height}x{width}", out, ref) <= TOL


def test_default_config_is_official():
    assert normalized(VAEConfig()) == OFFICIAL_VAE


def test_official_state_dict_matches_oracle():
    with torch.device("meta"):
        oracle = AutoencoderKLTemporalDecoder(**OFFICIAL_VAE)
        ours = VAE(VAEConfig())
    ours_shapes, ref_shapes = shapes(ours.state_dict()), shapes(oracle.state_dict())
    assert sorted(set(ours_shapes) - set(ref_shapes)) == []  # unexpected keys
    assert sorted(set(ref_shapes) - set(ours_shapes)) == []  # missing keys
    assert {k: s for k, s in ours_shapes.items() if s != ref_shapes[k]} == {}
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 97.7
