"""Our CogVideoXTransformer is diffusers' CogVideoXTransformer3DModel: same state_dict at the official 5B-I2V size
(meta device), same outputs to 1e-4 in float32 on randomised tiny configs of the three layouts (learned table +
RoPE as 5B-I2V, RoPE only as 5B, sin-cos only as 2B), with the RoPE we compute ourselves equal to the one the
official pipeline passes in, and the sin-cos fallback when the frame count differs from the trained one."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import CogVideoXImageToVideoPipeline

from model.cogvideox.transformer import CogVideoXTransformer, CogVideoXTransformerConfig

TOL = 1e-4

# THUDM/CogVideoX-5b-I2V transformer/config.json as reconstructed in cogvideox.md
OFFICIAL = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, dropout=0.0, flip_sin_to_cos=True,
    freq_shift=0, in_channels=32, max_text_seq_length=226, norm_elementwise_affine=True, norm_eps=1e-5,
    num_attention_heads=48, num_layers=42, out_channels=16, patch_size=2, sample_frames=49, sample_height=60,
    sample_width=90, spatial_interpolation_scale=1.875, temporal_compression_ratio=4, temporal_interpolation_scale=1.0,
    text_embed_dim=4096, time_embed_dim=512, timestep_activation_fn="silu", use_learned_positional_embeddings=True,
    use_rotary_positional_embeddings=True,
)
_TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
             text_embed_dim=16, num_layers=2, sample_height=8, sample_width=12, sample_frames=9, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=8)
TINY = {
    "i2v": dict(_TINY, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "rope-only": dict(_TINY, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False),
    "sincos-only": dict(_TINY, attention_head_dim=8, in_channels=4, use_rotary_positional_embeddings=False,
                        use_learned_positional_embeddings=False),
}


def randomize_(module, seed):
    """Seeded noise on every parameter and on the learned position table, so nothing is zero or an identity."""
    g = torch.Generator().manual_seed(seed)
    tensors = list(module.parameters()) + [b for n, b in module.named_buffers() if n in module.state_dict()]
    with torch.no_grad():
        for p in tensors:
            std = p.float().std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * max(0.5 * std, 0.05))
    return module


def pair(name, seed=0):
    torch.manual_seed(seed)
    oracle = randomize_(CogVideoXTransformer3DModel(**TINY[name]), seed).eval()
    ours = CogVideoXTransformer(CogVideoXTransformerConfig.from_json_dict(TINY[name])).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


def pipeline_rope(oracle, frames, height, width):
    """The (cos, sin) the official image-to-video pipeline passes to the transformer, from its own method."""
    if not oracle.config.use_rotary_positional_embeddings:
        return None
    fake = SimpleNamespace(vae_scale_factor_spatial=8, transformer=oracle)
    return CogVideoXImageToVideoPipeline._prepare_rotary_positional_embeddings(
        fake, height * 8, width * 8, frames, torch.device("cpu"))


def max_abs_diff(label, ours, ref):
    assert ours.shape == ref.shape, f"{label}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours - ref).abs().max().item()
    print(f"\n[parity] {label}: max abs diff {diff:.3e} (max |ref| {ref.abs().max().item():.3g})")
    return diff


@pytest.mark.parametrize("name, frames, height, width", [
    ("i2v", 3, 8, 12),  # the trained frame count: the learned table
    ("i2v", 2, 8, 12),  # fewer frames: the sin-cos fallback table
    ("rope-only", 3, 8, 12),
    ("rope-only", 2, 8, 8),  # another size: RoPE positions from the crop region of the base grid
    ("sincos-only", 3, 8, 12),
    ("sincos-only", 4, 6, 10),  # another size: sin-cos table of that size
])
def test_matches_oracle(name, frames, height, width):
    oracle, ours = pair(name)
    cfg = TINY[name]
    x = torch.randn(2, frames, cfg["in_channels"], height, width)
    text = torch.randn(2, cfg["max_text_seq_length"], cfg["text_embed_dim"])
    t = torch.tensor([17.0, 803.0])
    rope = pipeline_rope(oracle, frames, height, width)
    with torch.no_grad():
        ref = oracle(x, text, t, image_rotary_emb=rope).sample
        out, maps = ours(x, text, t)  # our RoPE, computed inside
        out_given, _ = ours(x, text, t, image_rotary_emb=rope)
    assert maps == {}
    assert out.shape == (2, frames, cfg["out_channels"], height, width)
    assert max_abs_diff(f"{name} F{frames} {height}x{width}", out, ref) <= TOL
    assert max_abs_diff(f"{name} F{frames} {height}x{width}, pipeline RoPE", out_given, ref) <= TOL


def test_rope_equals_pipeline():
    ours = CogVideoXTransformer(CogVideoXTransformerConfig.from_json_dict(TINY["rope-only"]))
    oracle = CogVideoXTransformer3DModel(**TINY["rope-only"])
    for frames, height, width in [(3, 8, 12), (2, 8, 8), (5, 12, 8), (1, 6, 14)]:
        for a, b in zip(ours.rotary_embedding(frames, height, width), pipeline_rope(oracle, frames, height, width)):
            assert torch.equal(a, b), (frames, height, width)


def test_checkpointing_same_values_and_gradients():
    _, ours = pair("i2v")
    cfg = TINY["i2v"]
    x = torch.randn(1, 3, cfg["in_channels"], 8, 12, requires_grad=True)
    text = torch.randn(1, cfg["max_text_seq_length"], cfg["text_embed_dim"])
    results = []
    for checkpointing in (False, True):
        ours.checkpointing = checkpointing
        out, _ = ours(x, text, torch.tensor([500.0]))
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        results.append((out, grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_learned_table_refuses_other_sizes_and_unknown_maps():
    _, ours = pair("i2v")
    cfg = TINY["i2v"]
    text = torch.randn(1, cfg["max_text_seq_length"], cfg["text_embed_dim"])
    with pytest.raises(ValueError), torch.no_grad():
        ours(torch.randn(1, 3, cfg["in_channels"], 8, 8), text, torch.tensor([1.0]))
    x = torch.randn(1, 3, cfg["in_channels"], 8, 12)
    with pytest.raises(ValueError):
        ours(x, text, torch.tensor([1.0]), attn_maps=["nonsense"])


def test_config():
    assert CogVideoXTransformerConfig.from_json_dict(OFFICIAL) == CogVideoXTransformerConfig()
    with pytest.raises(ValueError, match="patch_size_t"):  # a CogVideoX 1.5 config
        CogVideoXTransformerConfig.from_json_dict(dict(OFFICIAL, patch_size_t=2, ofs_embed_dim=512))
    with pytest.raises(ValueError):
        CogVideoXTransformerConfig(use_rotary_positional_embeddings=False)


def test_official_size_state_dict_matches_oracle():
    with torch.device("meta"):
        ours = CogVideoXTransformer()
        oracle = CogVideoXTransformer3DModel(**OFFICIAL)
    ref = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(ref) - set(got)) == [] and sorted(set(got) - set(ref)) == []
    assert got == ref
    assert sum(p.numel() for p in ours.parameters()) == 5_570_479_680
    # the learned position table is a persistent buffer, not a parameter: in the checkpoint, not in parameters()
    assert "patch_embed.pos_embedding" not in dict(ours.named_parameters())
    assert got["patch_embed.pos_embedding"] == (1, 17776, 3072)
    assert sum(v.numel() for v in ours.state_dict().values()) == 5_625_087_552
    block = sum(p.numel() for p in ours.transformer_blocks[0].parameters())
    assert block == 132_197_632
