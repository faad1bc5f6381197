"""Our WanTransformer is diffusers' WanTransformer3DModel: same state_dict at the official TI2V-5B size (meta device),
the same outputs to 1e-4 in float32 on a randomised tiny config saved in the official layout (sharded, with its
index json) and loaded through our checked loader, with one timestep per video or one per token (frame 0 at 0, as
the image-to-video pipeline gives it), and the same RoPE tables."""
import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from model.wan.transformer import WanTransformer, WanTransformerConfig, rotary_embedding
from weights import load_checked, shard_files

TOL = 1e-4

# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json as wan.md describes it
OFFICIAL = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, ffn_dim=14336,
                freq_dim=256, image_dim=None, in_channels=48, num_attention_heads=24, num_layers=30, out_channels=48,
                patch_size=[1, 2, 2], pos_embed_seq_len=None, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
                text_dim=4096)
TINY = dict(OFFICIAL, attention_head_dim=12, ffn_dim=40, freq_dim=8, in_channels=6, num_attention_heads=2,
            num_layers=2, out_channels=6, text_dim=16, rope_max_seq_len=32)


def randomize_(module, seed):
    """Seeded noise on every parameter, so no norm is an identity and no gate is small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = p.float().std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * max(0.5 * std, 0.05))
    return module


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(oracle, ours): ours loaded from the oracle's save_pretrained folder in shards, through shard_files."""
    torch.manual_seed(0)
    oracle = randomize_(WanTransformer3DModel(**TINY), 0).eval()
    root = tmp_path_factory.mktemp("wan")
    oracle.save_pretrained(root / "transformer", max_shard_size="20KB")
    files = shard_files(str(root), "transformer/diffusion_pytorch_model.safetensors.index.json")
    assert len(files) > 1
    cfg = json.loads((root / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        ours = WanTransformer(WanTransformerConfig.from_json_dict(cfg))
    return oracle, load_checked(ours, files)


def max_abs_diff(label, ours, ref):
    assert ours.shape == ref.shape, f"{label}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item()
    print(f"\n[parity] {label}: max abs diff {diff:.3e} (max |ref| {ref.abs().max().item():.3g})")
    return diff


@pytest.mark.parametrize("per_token", [False, True])
def test_matches_oracle(pair, per_token):
    oracle, ours = pair
    frames, height, width = 3, 4, 6
    x = torch.randn(2, TINY["in_channels"], frames, height, width)
    text = torch.randn(2, 7, TINY["text_dim"])
    t = torch.tensor([17.0, 803.0])
    if per_token:  # frame 0's tokens at 0, as WanImageToVideoPipeline with expand_timesteps gives them
        mask = torch.ones(frames, height // 2, width // 2)
        mask[0] = 0
        t = mask.flatten()[None] * t[:, None]  # (2, L)
    with torch.no_grad():
        ref = oracle(x, t, text).sample
        out, maps = ours(x, t, text)
    assert maps == {}
    assert max_abs_diff(f"wan transformer, per_token={per_token}", out, ref) <= TOL


def test_rope_equals_oracle(pair):
    oracle, _ = pair
    for frames, height, width in [(3, 4, 6), (1, 8, 2)]:
        cos, sin = oracle.rope(torch.zeros(1, 1, frames, height, width))
        ours = rotary_embedding(TINY["attention_head_dim"], frames, height // 2, width // 2)
        assert torch.equal(ours[0], cos[0, :, 0]) and torch.equal(ours[1], sin[0, :, 0])


def test_maps_and_checkpointing(pair):
    _, ours = pair
    x = torch.randn(1, TINY["in_channels"], 3, 4, 4, requires_grad=True)
    text = torch.randn(1, 5, TINY["text_dim"])
    results = []
    for checkpointing in (False, True):
        ours.checkpointing = checkpointing
        out, maps = ours(x, torch.tensor([500.0]), text, attn_maps=["blocks.1.attn1"])
        (grad,) = torch.autograd.grad(out.square().sum() + maps["blocks.1.attn1"].square().sum(), x)
        results.append((out, grad))
    ours.checkpointing = False
    assert maps["blocks.1.attn1"].shape == (4, 2, 3, 3)  # (B*P, heads, F, F): 2x2 tokens per frame
    assert torch.allclose(maps["blocks.1.attn1"].sum(-1), torch.ones(4, 2, 3))  # no text: rows sum to 1
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    _, only = ours(x, torch.tensor([500.0]), text, attn_maps=["blocks.0.attn1"], maps_only=True)
    assert list(only) == ["blocks.0.attn1"]
    with pytest.raises(ValueError):
        ours(x, torch.tensor([1.0]), text, attn_maps=["nonsense"])


def test_config():
    assert WanTransformerConfig.from_json_dict(OFFICIAL) == WanTransformerConfig()
    with pytest.raises(ValueError, match="image_dim"):  # a Wan2.1-I2V config, with its CLIP image branch
        WanTransformerConfig.from_json_dict(dict(OFFICIAL, image_dim=1280, added_kv_proj_dim=5120))


def test_official_size_state_dict_matches_oracle():
    with torch.device("meta"):
        ours = WanTransformer()
        oracle = WanTransformer3DModel(**OFFICIAL)
    ref = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(ref) - set(got)) == [] and sorted(set(got) - set(ref)) == []
    assert got == ref
    total = sum(p.numel() for p in ours.parameters())
    print(f"\n[size] wan transformer: {total:,} parameters, {sum(p.numel() for p in ours.blocks[0].parameters()):,}"
          " per block")
    assert total == sum(p.numel() for p in oracle.parameters()) == 4_999_787_712
    assert sum(p.numel() for p in ours.blocks[0].parameters()) == 163_656_704
