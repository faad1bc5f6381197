"""ControlNeXt-SVD-v2 (controlnext.md): the pose encoder equals an oracle assembled here from diffusers' blocks
(same state_dict, 1e-5) and has the release's 52 tensors / 3,526,400 parameters; the controlled UNet equals
diffusers' SVD UNet run block by block with the injection written out (1e-4), and a video with scale 0
equals the uncontrolled UNet."""
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from oracles import TINY_UNETS, TOL, max_abs_diff, randomize_, shapes, unet_inputs, unet_pair
from torch import nn

from model import PoseEncoder, PoseEncoderConfig, inject_control


class OraclePoseEncoder(nn.Module):
    """The architecture controlnext.md documents, assembled from diffusers' building blocks."""

    def __init__(self):
        super().__init__()
        self.time_proj = Timesteps(128, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(128, 256)
        self.embedding = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=0), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=0), nn.GroupNorm(2, 128), nn.ReLU())
        self.down_res = nn.ModuleList([ResnetBlock2D(in_channels=128, out_channels=128, temb_channels=256, groups=4),
                                       ResnetBlock2D(in_channels=128, out_channels=256, temb_channels=256, groups=8)])
        self.down_sample = nn.ModuleList([Downsample2D(c, use_conv=True, out_channels=c, padding=1, name="op")
                                          for c in (128, 256)])
        self.mid_convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.GroupNorm(8, 256),
                          nn.Conv2d(256, 256, 3, padding=1), nn.GroupNorm(8, 256)),
            nn.Conv2d(256, 320, 1)])

    def forward(self, pose, t):
        emb = self.time_embedding(self.time_proj(t))
        x = self.embedding(pose)
        for res, down in zip(self.down_res, self.down_sample):
            x = down(res(x, emb))
        return self.mid_convs[1](self.mid_convs[0](x) + x)


DOCUMENTED_MODULES = (
    ["time_embedding.linear_1", "time_embedding.linear_2"] + [f"embedding.{i}" for i in (0, 1, 3, 4, 6, 7)]
    + [f"down_res.{i}.{m}" for i in (0, 1) for m in ("norm1", "conv1", "time_emb_proj", "norm2", "conv2")]
    + ["down_res.1.conv_shortcut", "down_sample.0.conv", "down_sample.1.conv"]
    + ["mid_convs.0.0", "mid_convs.0.2", "mid_convs.0.3", "mid_convs.0.4", "mid_convs.1"])


def test_official_pose_encoder_keys_and_size():
    release = {"time_embed_dim": 256, "in_channels": [128, 128], "out_channels": [128, 256], "groups": [4, 8]}
    assert PoseEncoderConfig.from_json_dict(release) == PoseEncoderConfig()
    with torch.device("meta"):
        ours, oracle = PoseEncoder(), OraclePoseEncoder()
    sd = ours.state_dict()
    assert sorted(sd) == sorted(f"{m}.{p}" for m in DOCUMENTED_MODULES for p in ("weight", "bias"))
    assert len(sd) == 52
    assert sum(p.numel() for p in ours.parameters()) == 3_526_400
    assert shapes(sd) == shapes(oracle.state_dict())


@pytest.mark.parametrize("size, t", [((64, 64), torch.tensor([-1.2, 0.9])), ((70, 46), torch.tensor(0.4))])
def test_pose_encoder_matches_oracle(size, t):
    oracle = randomize_(OraclePoseEncoder(), seed=1).eval()
    ours = PoseEncoder().eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    pose = torch.rand(2, 3, *size)
    with torch.no_grad():
        ref = oracle(pose, t.reshape(-1).expand(2))
        out = ours(pose, t)
    h, w = (math.ceil((math.ceil(s / 2) - 4) / 4) for s in size)  # 576x1024 -> 71x127
    assert out.shape == (2, 320, h, w)
    assert max_abs_diff(f"pose encoder {size}", out, ref) <= 1e-5


def written_out_injection(sample, control, scale):
    """ControlNeXt's injection as the facts state it, for the oracle below (not model.inject_control)."""
    mean_s, std_s = torch.mean(sample, dim=(1, 2, 3), keepdim=True), torch.std(sample, dim=(1, 2, 3), keepdim=True)
    mean_c, std_c = torch.mean(control, dim=(1, 2, 3), keepdim=True), torch.std(control, dim=(1, 2, 3), keepdim=True)
    control = (control - mean_c) * (std_s / (std_c + 1e-5)) + mean_s
    control = F.adaptive_avg_pool2d(control, sample.shape[-2:])
    return sample + control * scale[:, None, None, None] * 0.2


def oracle_controlled_unet(unet, sample, t, ehs, ids, control=None, scale=None):
    """diffusers' UNetSpatioTemporalConditionModel.forward block by block, the control added after down
    block 0 once its skips were kept. scale: one value per row (B*F,)."""
    b, f = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(torch.as_tensor(t).reshape(-1).expand(b)))
    emb = emb + unet.add_embedding(unet.add_time_proj(ids.flatten()).reshape(b, -1))
    emb, ehs = emb.repeat_interleave(f, dim=0), ehs.repeat_interleave(f, dim=0)
    blocks_kw = dict(temb=emb, image_only_indicator=torch.zeros(b, f))
    cross_kw = dict(blocks_kw, encoder_hidden_states=ehs)

    def kw(block):
        return cross_kw if hasattr(block, "attentions") else blocks_kw

    x = unet.conv_in(sample.flatten(0, 1))
    skips = (x,)
    for i, block in enumerate(unet.down_blocks):
        x, res = block(hidden_states=x, **kw(block))
        skips += res
        if i == 0 and control is not None:
            x = written_out_injection(x, control, scale)
    x = unet.mid_block(hidden_states=x, **cross_kw)
    for block in unet.up_blocks:
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        size = skips[-1].shape[2:] if skips else None  # odd sizes: upsample to the next skip's size
        x = block(hidden_states=x, res_hidden_states_tuple=res, upsample_size=size, **kw(block))
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(b, f, *x.shape[1:])


@pytest.mark.parametrize("name, frames, height, width, control_hw", [
    ("4level", 3, 8, 12, (7, 9)),    # control pooled from a non-multiple size, as 71x127 -> 36x64
    ("2level-tl2", 2, 6, 10, (3, 5)),  # control already at the sample's size after down block 0
])
def test_controlled_unet_matches_oracle(name, frames, height, width, control_hw):
    cfg = TINY_UNETS[name]
    oracle, ours = unet_pair(cfg)
    sample, ehs, ids = unet_inputs(cfg, 2, frames, height, width)
    control = 3 * torch.randn(2 * frames, cfg["block_out_channels"][0], *control_hw) + 1
    video_scale = torch.tensor([0.0, 1.5])  # video 0 plays guidance's unconditional half
    with torch.no_grad():
        plain_ref = oracle(sample, 0.3, ehs, ids).sample
        assert max_abs_diff(f"block-by-block oracle {name}", oracle_controlled_unet(oracle, sample, 0.3, ehs, ids),
                            plain_ref) <= 1e-6
        ref = oracle_controlled_unet(oracle, sample, 0.3, ehs, ids, control, video_scale.repeat_interleave(frames))
        out = ours(sample, 0.3, ehs, ids, control=control, control_scale=video_scale)[0]
        plain = ours(sample, 0.3, ehs, ids)[0]
        full = ours(sample, 0.3, ehs, ids, control=control)[0]
        full_ref = oracle_controlled_unet(oracle, sample, 0.3, ehs, ids, control, torch.ones(2 * frames))
    assert max_abs_diff(f"controlled unet {name}", out, ref) <= TOL
    assert max_abs_diff(f"controlled unet {name}, scale 1.0", full, full_ref) <= TOL
    assert max_abs_diff(f"unet {name}, video with scale 0 vs no control", out[0], plain[0]) <= 1e-6
    assert (out[1] - plain[1]).abs().max() > 100 * TOL  # the control does reach the output


def test_inject_control_takes_the_sample_statistics():
    sample = 0.5 * torch.randn(6, 8, 5, 7) - 2
    control = 4 * torch.randn(6, 8, 5, 7) + 3
    scale = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 0.5])
    out = inject_control(sample, control, scale)
    assert torch.equal(out[:3], sample[:3])
    injected = (out[3:] - sample[3:]) / (0.2 * scale[3:, None, None, None])
    for stat in (torch.mean, torch.std):
        diff = max_abs_diff(f"injected control {stat.__name__}", stat(injected, dim=(1, 2, 3)),
                            stat(sample[3:], dim=(1, 2, 3)))
        assert diff <= 1e-4
    assert torch.allclose(inject_control(sample, control, 1.0), inject_control(sample, control, torch.ones(6)))
    assert inject_control(sample[:, :, :3, :4], control, 1.0).shape == (6, 8, 3, 4)  # pooled to the sample
