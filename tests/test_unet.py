"""Our UNet is the diffusers UNetSpatioTemporalConditionModel: same state_dict (official sizes, 14 and
25 frames), same outputs to 1e-4 on randomised tiny configs (non-square and odd latents, batch 2, frame
counts other than the config's, int/tuple heads, 1 res block per level, 2 transformer layers, every
timestep form), and the temporal attention maps it returns are the oracle's softmax(QK^T/sqrt(d))."""
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from model import UNet, UNetConfig
from oracles import (OFFICIAL_UNET, TINY_UNETS, TOL, attach_probes, max_abs_diff, normalized, shapes,
                     token_grid, unet_inputs, unet_pair)


def make_timestep(kind, batch):
    return {"float": 0.7, "0d": torch.tensor(-1.3), "batch": torch.tensor([1.6, -0.4])[:batch]}[kind]


@pytest.mark.parametrize("name, batch, frames, height, width, t_kind", [
    ("4level", 2, 3, 8, 12, "float"),
    ("4level", 2, 3, 8, 12, "batch"),
    ("4level-intheads", 1, 5, 6, 10, "0d"),
    ("2level-tl2", 2, 4, 5, 7, "batch"),
])
def test_unet_matches_oracle(name, batch, frames, height, width, t_kind):
    cfg = TINY_UNETS[name]
    oracle, ours = unet_pair(cfg)
    sample, ehs, ids = unet_inputs(cfg, batch, frames, height, width)
    t = make_timestep(t_kind, batch)
    with torch.no_grad():
        ref = oracle(sample, t, ehs, ids).sample
        out, maps = ours(sample, t, ehs, ids)
    assert maps == {}
    assert max_abs_diff(f"unet {name} B{batch} F{frames} {height}x{width} t={t_kind}", out, ref) <= TOL


def expected_level(block_name, n_levels):
    """Resolution level (number of downsamplings) at which a transformer block runs."""
    kind, idx = block_name.split(".")[:2]
    if kind == "mid_block":
        return n_levels - 1
    return int(idx) if kind == "down_blocks" else n_levels - 1 - int(idx)


@pytest.mark.parametrize("name, batch, frames, height, width, blocks", [
    ("4level", 2, 3, 8, 12, ["down_blocks.2.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.2"]),
    ("2level-tl2", 2, 4, 5, 7, ["down_blocks.0.attentions.0", "up_blocks.1.attentions.1"]),
])
def test_temporal_attention_maps_match_oracle(name, batch, frames, height, width, blocks):
    cfg = TINY_UNETS[name]
    oracle, ours = unet_pair(cfg)
    probes = {block: attach_probes(oracle, block) for block in blocks}
    sample, ehs, ids = unet_inputs(cfg, batch, frames, height, width)
    with torch.no_grad():
        ref = oracle(sample, 0.3, ehs, ids).sample
        out, maps = ours(sample, 0.3, ehs, ids, attn_maps=blocks)
    assert max_abs_diff(f"unet {name} with maps", out, ref) <= TOL
    assert set(maps) == set(blocks)

    n_levels = len(cfg["block_out_channels"])
    heads = cfg["num_attention_heads"]
    layers = cfg["transformer_layers_per_block"]
    for block in blocks:
        level = expected_level(block, n_levels)
        h, w = token_grid(height, width, level)
        assert maps[block].shape == (batch * h * w, heads[level] * layers, frames, frames)
        ref_probs = torch.cat([p.probs for p in probes[block]], dim=1)  # layers along heads
        diff = max_abs_diff(f"temporal attention {name} {block}", maps[block], ref_probs)
        assert diff <= 1e-5


@pytest.mark.parametrize("block", ["down_blocks.3.attentions.0", "down_blocks.0.attentions.7",
                                   "up_blocks.0.attentions.0", "nonsense"])
def test_unknown_block_name_raises(block):
    cfg = TINY_UNETS["4level"]
    ours = UNet(UNetConfig.from_json_dict(cfg)).eval()
    sample, ehs, ids = unet_inputs(cfg, 1, 2, 4, 4)
    with pytest.raises(ValueError), torch.no_grad():
        ours(sample, 0.5, ehs, ids, attn_maps=[block])


def test_default_config_is_official():
    assert normalized(UNetConfig()) == OFFICIAL_UNET


@pytest.mark.parametrize("num_frames", [14, 25])
def test_official_state_dict_matches_oracle(num_frames):
    with torch.device("meta"):
        oracle = UNetSpatioTemporalConditionModel(**dict(OFFICIAL_UNET, num_frames=num_frames))
        ours = UNet(UNetConfig(num_frames=num_frames))
    assert ours.config.num_frames == num_frames
    ours_shapes, ref_shapes = shapes(ours.state_dict()), shapes(oracle.state_dict())
    assert sorted(set(ours_shapes) - set(ref_shapes)) == []  # unexpected keys
    assert sorted(set(ref_shapes) - set(ours_shapes)) == []  # missing keys
    assert {k: s for k, s in ours_shapes.items() if s != ref_shapes[k]} == {}
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 1524.6
