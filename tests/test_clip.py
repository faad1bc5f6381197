"""Our CLIPImageEncoder is transformers' CLIPVisionModelWithProjection: same state_dict at the
official ViT-H/14 size (no position_ids buffer), and image_embeds match the oracle to 1e-4 on
randomised tiny configs with exact GELU (as SVD uses) and quick-GELU."""
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from model import CLIPConfig, CLIPImageEncoder
from oracles import OFFICIAL_CLIP, TINY_CLIPS, TOL, clip_pair, max_abs_diff, normalized, shapes


@pytest.mark.parametrize("name, batch", [("gelu", 2), ("quick_gelu", 3)])
def test_image_embeds_match_oracle(name, batch):
    cfg = TINY_CLIPS[name]
    oracle, ours = clip_pair(cfg)
    pixels = torch.randn(batch, 3, cfg["image_size"], cfg["image_size"])
    with torch.no_grad():
        ref = oracle(pixel_values=pixels).image_embeds
        out = ours(pixels)
    assert max_abs_diff(f"clip image_embeds {name} N{batch}", out, ref) <= TOL


def test_default_config_is_official():
    assert normalized(CLIPConfig()) == OFFICIAL_CLIP


def test_official_state_dict_matches_oracle():
    with torch.device("meta"):
        oracle = CLIPVisionModelWithProjection(CLIPVisionConfig(**OFFICIAL_CLIP))
        ours = CLIPImageEncoder(CLIPConfig())
    ours_shapes, ref_shapes = shapes(ours.state_dict()), shapes(oracle.state_dict())
    assert "vision_model.embeddings.position_ids" not in ref_shapes
    assert sorted(set(ours_shapes) - set(ref_shapes)) == []  # unexpected keys
    assert sorted(set(ref_shapes) - set(ours_shapes)) == []  # missing keys
    assert {k: s for k, s in ours_shapes.items() if s != ref_shapes[k]} == {}
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 632.1
