"""ControlNeXt-SVD-v2 (Peng et al., "ControlNeXt", arXiv 2408.06070): pose-conditioned SVD.

A small pose encoder turns each pose frame into a feature map; the UNet adds it, cross-normalised to its
own statistics, to its features after the first down block (`UNet.forward(..., control=...)`). The rest of
the release is a fine-tuned SVD UNet with the official layout. Attribute names are the keys of the
released controlnet weights (Kijai/ControlNeXt-SVD-V2-Comfy, controlnext-svd_v2-controlnet-fp16.safetensors).
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import JSONConfig
from .layers import Downsample, ResBlock, TimestepEmbedding, sinusoidal_embedding


@dataclass
class PoseEncoderConfig(JSONConfig):
    """Defaults are the release. The first four fields are the official constructor's arguments: stage i is
    a res block in_channels[i] -> out_channels[i] with GroupNorm(groups[i]), then a stride-2 conv."""
    time_embed_dim: int = 256
    in_channels: tuple = (128, 128)
    out_channels: tuple = (128, 256)
    groups: tuple = (4, 8)
    unet_channels: int = 320  # the UNet's block_out_channels[0]; hard-coded in the release, not a config key


class PoseEncoder(nn.Module):
    """ControlNeXt-SVD-v2's controlnet: a stride-2 conv stem (its two 3x3 convs unpadded, as in the released
    inference code), two res-block + stride-2 stages shifted by the noise level, a residual pair of convs and
    a 1x1 projection to the UNet's width. At 576x1024 the output is 71x127."""

    def __init__(self, cfg=PoseEncoderConfig()):
        super().__init__()
        self.config = cfg
        self.time_embedding = TimestepEmbedding(128, cfg.time_embed_dim)
        self.embedding = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.GroupNorm(2, 64), nn.ReLU(),
            nn.Conv2d(64, 128, 3), nn.GroupNorm(2, 128), nn.ReLU())
        self.down_res = nn.ModuleList([ResBlock(c_in, c_out, cfg.time_embed_dim, groups=g)
                                       for c_in, c_out, g in zip(cfg.in_channels, cfg.out_channels, cfg.groups)])
        self.down_sample = nn.ModuleList([Downsample(c) for c in cfg.out_channels])
        c = cfg.out_channels[-1]
        self.mid_convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.GroupNorm(8, c),
                          nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c)),
            nn.Conv2d(c, cfg.unet_channels, 1)])

    def forward(self, pose, timestep):
        """pose (N, 3, H, W) in [0, 1] (N = B*F frames), timestep = the UNet's c_noise (scalar or (N,))
        -> control (N, unet_channels, H', W') with H' = ceil((ceil(H/2) - 4) / 4), likewise W'."""
        t = torch.as_tensor(timestep, device=pose.device).reshape(-1).expand(pose.shape[0])
        emb = self.time_embedding(sinusoidal_embedding(t, 128).to(pose.dtype))
        x = self.embedding(pose)
        for res, down in zip(self.down_res, self.down_sample):
            x = down(res(x, emb))
        x = x + self.mid_convs[0](x)
        return self.mid_convs[1](x)


def inject_control(sample, control, scale=1.0):
    """ControlNeXt's cross normalisation: `control` (N, C, h', w') is given the mean and std of `sample`
    (N, C, h, w) per row over (C, h, w), average-pooled to h x w, and added with weight 0.2 * scale.
    `scale` is a float or one value per row (N,), e.g. 0 for the unconditional half of guidance."""
    dims = (1, 2, 3)
    mean_s, std_s = sample.mean(dims, keepdim=True), sample.std(dims, keepdim=True)
    mean_c, std_c = control.mean(dims, keepdim=True), control.std(dims, keepdim=True)
    control = (control - mean_c) * (std_s / (std_c + 1e-5)) + mean_s
    control = F.adaptive_avg_pool2d(control, sample.shape[-2:])
    scale = torch.as_tensor(scale, dtype=sample.dtype, device=sample.device).reshape(-1, 1, 1, 1)
    return sample + control * scale * 0.2
