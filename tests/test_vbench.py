"""The VBench judges and formulas: our DINO ViT equals transformers' ViTModel and our aesthetic predictor
equals CLIPVisionModelWithProjection + the same head on identical random weights (1e-4); DINO's
position-embedding interpolation equals a direct bicubic re-derivation; each VBench formula gives
the known answer on synthetic frames."""
import math

import pytest
import torch
from oracles import TOL, max_abs_diff
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTModel
from transformers import ViTConfig as HFViTConfig

from judging import metrics
from model import AESTHETIC_CLIP, DINO, AestheticPredictor, CLIPConfig, ViTConfig
from model.vit import interpolate_position_embeddings
from weights import WeightsError, load_checked

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8,
                image_size=32, layer_norm_eps=1e-6)


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5 if p.dim() == 1 else 0.2)
    return module


def vit_pair(folder):
    """transformers' ViTModel with random weights, saved as on the hub (its legacy key names, which
    save_pretrained writes), and our DINO loaded from that file by the strict loader."""
    oracle = randomise(ViTModel(HFViTConfig(**TINY_VIT, hidden_act="gelu", qkv_bias=True))).eval()
    oracle.save_pretrained(folder)
    with torch.device("meta"):
        ours = DINO(ViTConfig(**TINY_VIT))
    return oracle, load_checked(ours, folder / "model.safetensors", ignored=("pooler.",))


def test_dino_matches_vitmodel_on_square_input(tmp_path):
    oracle, ours = vit_pair(tmp_path)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = oracle(pixel_values=pixels).last_hidden_state[:, 0]
        out = ours(pixels)
    assert max_abs_diff("dino cls", out, ref) <= TOL


def test_dino_default_is_vit_b16():
    with torch.device("meta"):
        ours = DINO()
    assert ours.embeddings.position_embeddings.shape == (1, 197, 768)
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 85.8  # ViT-B/16 without a head


def bicubic_matrix(n_in, n_out, scale, a=-0.75):
    """Resampling matrix (n_out, n_in) of PyTorch's bicubic with a given scale factor, written out:
    source x = (i + 0.5) / scale - 0.5, Keys' cubic kernel (a = -0.75), edge indices clamped."""
    def kernel(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) / scale - 0.5
        base = math.floor(x)
        for j in range(base - 1, base + 3):
            m[i, min(max(j, 0), n_in - 1)] += kernel(x - j)
    return m


@pytest.mark.parametrize("height, width", [(4, 7), (6, 3), (5, 5)])
def test_position_interpolation_is_dinos_bicubic(height, width):
    side, dim = 4, 5
    pos = torch.randn(1, 1 + side * side, dim, dtype=torch.float64)
    out = interpolate_position_embeddings(pos, height, width)
    grid = pos[0, 1:].reshape(side, side, dim)
    rows = bicubic_matrix(side, height, (height + 0.1) / side)
    cols = bicubic_matrix(side, width, (width + 0.1) / side)
    expected = torch.einsum("hi,ijd,wj->hwd", rows, grid, cols).reshape(-1, dim)
    assert torch.equal(out[0, 0], pos[0, 0])
    assert max_abs_diff("pos interpolation", out[0, 1:], expected) <= 1e-10


def test_dino_runs_on_non_square_frames(tmp_path):
    _, ours = vit_pair(tmp_path)
    with torch.no_grad():
        assert ours(torch.randn(2, 3, 32, 56)).shape == (2, 32)


def test_aesthetic_predictor_matches_clip_with_head():
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
               image_size=32, projection_dim=16, hidden_act="quick_gelu")
    oracle = randomise(CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))).eval()
    head = randomise(nn.Linear(16, 1))
    ours = AestheticPredictor(CLIPConfig(**cfg)).eval()
    state = {k: v for k, v in oracle.state_dict().items() if k != "vision_model.embeddings.position_ids"}
    ours.load_state_dict(state | {"predictor.weight": head.weight, "predictor.bias": head.bias}, strict=True)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        embeds = oracle(pixel_values=pixels).image_embeds
        ref = head(embeds / embeds.norm(dim=-1, keepdim=True))[:, 0]
        out = ours(pixels)
    assert max_abs_diff("aesthetic score", out, ref) <= TOL


def test_aesthetic_config_is_vit_l14():
    with torch.device("meta"):
        ours = AestheticPredictor(AESTHETIC_CLIP)
    assert ours.predictor.weight.shape == (1, 768)
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 304.0  # CLIP ViT-L/14 vision tower (303.2M) + projection + head


def test_load_checked_names_missing_keys(tmp_path):
    _, ours = vit_pair(tmp_path)
    state = ours.state_dict()
    save_file({k: v for k, v in state.items() if k != "layernorm.bias"}, tmp_path / "bad.safetensors")
    with torch.device("meta"), pytest.raises(WeightsError, match="missing keys: layernorm.bias"):
        load_checked(DINO(ViTConfig(**TINY_VIT)), tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- formulas on synthetic frames
def constant_frames(*levels, size=(3, 16, 16)):
    return torch.stack([torch.full(size, v, dtype=torch.uint8) for v in levels])


def test_identical_frames_score_one():
    frames = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).repeat(5, 1, 1, 1)
    assert metrics.temporal_flickering(frames) == 1
    assert metrics.motion_smoothness_standin(frames) == 1
    assert metrics.subject_consistency(torch.randn(1, 8).repeat(5, 1)) == pytest.approx(1, abs=1e-12)


def test_known_frame_differences():
    assert metrics.temporal_flickering(constant_frames(0, 10, 0, 10)) == (255 - 10) / 255
    assert metrics.temporal_flickering(constant_frames(0, 3, 9)) == (255 - 4.5) / 255
    assert metrics.motion_smoothness_standin(constant_frames(0, 10, 20, 30, 40)) == 1  # linear motion
    assert metrics.motion_smoothness_standin(constant_frames(0, 10, 0, 10, 0)) == (255 - 10) / 255


def test_subject_consistency_is_vbench_loop():
    features = torch.randn(6, 8)
    cos = torch.nn.functional.cosine_similarity
    terms = [(max(0.0, cos(features[i - 1:i], features[i:i + 1]).item())
              + max(0.0, cos(features[:1], features[i:i + 1]).item())) / 2 for i in range(1, 6)]
    assert metrics.subject_consistency(features) == pytest.approx(sum(terms) / 5, abs=1e-6)
    assert metrics.subject_consistency(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0  # negative cosines count 0


def test_aesthetic_quality_divides_by_ten():
    assert metrics.aesthetic_quality(torch.tensor([5.0, 6.0, 7.0])) == pytest.approx(0.6)


def test_feature_similarity():
    f = torch.randn(4, 8)
    assert metrics.feature_similarity(f, 3 * f) == pytest.approx(1)
    assert metrics.feature_similarity(f, -f) == pytest.approx(-1)


def test_vbench_preprocessing_sizes_and_values():
    frames = constant_frames(128, 128, size=(3, 64, 100))
    dino = metrics.dino_pixels(frames)
    assert dino.shape == (2, 3, 224, 350)  # shorter side 224, longer int(224 * 100 / 64)
    expected = (128 / 255 - torch.tensor(metrics.IMAGENET_MEAN)) / torch.tensor(metrics.IMAGENET_STD)
    assert torch.allclose(dino[0, :, 5, 7], expected)
    clip = metrics.clip_pixels(constant_frames(200, size=(3, 90, 60)))
    assert clip.shape == (1, 3, 224, 224)
    expected = (200 / 255 - torch.tensor(metrics.CLIP_MEAN)) / torch.tensor(metrics.CLIP_STD)
    assert torch.allclose(clip[0, :, 100, 100], expected)
    assert metrics.shorter_side_size(576, 1024, 224) == (224, 398)
