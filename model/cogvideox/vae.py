"""CogVideoX's causal 3D VAE: video (B,3,F,H,W) <-> latents (B,16,1+(F-1)/4,H/8,W/8).

Every 3x3x3 conv is causal in time: a frame sees only itself and the two frames before it. The video is
processed in chunks of frames (8 when encoding, 2 latent frames when decoding, the first chunk also
taking the odd frame 0); each causal conv hands its last two input frames (its `past`) to the same conv
in the next chunk, which pads with them instead of repeating its first frame. The first two levels also
halve time by averaging pairs of frames (encoder) or doubling them (decoder); in a chunk with an odd
number of frames, frame 0 is kept apart, which is how 49 frames become 13 latent frames and back.
GroupNorm statistics are taken over all frames of a chunk, so the chunking is part of the computation.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import JSONConfig
from ..layers import container, maybe_checkpoint


@dataclass
class CogVideoXVAEConfig(JSONConfig):
    """The vae/config.json of THUDM/CogVideoX-5b-I2V (diffusers' AutoencoderKLCogVideoX). The release's
    shift_factor, latents_mean and latents_std are null and unused, so they are not fields."""
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("CogVideoXDownBlock3D",) * 4
    up_block_types: tuple = ("CogVideoXUpBlock3D",) * 4
    block_out_channels: tuple = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4  # log2 of it = how many levels also compress time
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 0.7  # the pipeline multiplies latents by it (5B; the 2B release uses 1.15258426)
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False  # the pipeline divides by scaling_factor instead when true (1.5 releases)


class CausalConv3d(nn.Module):
    """A 3x3x3 conv over frames that sees only the present and the past.

    Time is padded in front with `past`, the previous chunk's last two input frames, or for the first chunk
    with two copies of frame 0; space is zero-padded by 1. Returns the output, same size as x, and the new
    past (None when `keep` is false: no chunk follows)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=(0, 1, 1))

    def forward(self, x, past=None, keep=True):
        if past is None:
            past = x[:, :, :1].expand(-1, -1, 2, -1, -1)
        x = torch.cat([past, x], dim=2)  # (B, C, 2+F, H, W)
        return self.conv(x), x[:, :, -2:].clone() if keep else None


class SpatialNorm3D(nn.Module):
    """GroupNorm of the features f, then a per-pixel scale and shift computed from the latents zq resized
    to f by nearest neighbour (the MoVQ decoder norm, Zheng et al. 2022). In a chunk with an odd number
    of frames (more than one), frame 0 of zq is resized onto frame 0 of f and the rest onto the rest."""

    def __init__(self, channels, zq_channels, groups):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_y = container(conv=nn.Conv3d(zq_channels, channels, 1))
        self.conv_b = container(conv=nn.Conv3d(zq_channels, channels, 1))

    def forward(self, f, zq):
        frames, size = f.shape[2], f.shape[-2:]
        if frames > 1 and frames % 2:
            zq = torch.cat([F.interpolate(zq[:, :, :1], size=(1, *size)),
                            F.interpolate(zq[:, :, 1:], size=(frames - 1, *size))], dim=2)
        else:
            zq = F.interpolate(zq, size=(frames, *size))
        return self.norm_layer(f) * self.conv_y.conv(zq) + self.conv_b.conv(zq)


class ResBlock3D(nn.Module):
    """(norm, SiLU, causal conv) twice plus a shortcut (a 1x1x1 conv when the width changes). The decoder's
    norms are SpatialNorm3D conditioned on the latent chunk zq; the encoder's are plain GroupNorm."""

    def __init__(self, in_channels, out_channels, groups, eps, zq_channels=None):
        super().__init__()
        if zq_channels is None:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        else:
            self.norm1 = SpatialNorm3D(in_channels, zq_channels, groups)
            self.norm2 = SpatialNorm3D(out_channels, zq_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def norm(self, layer, x, zq):
        return layer(x) if zq is None else layer(x, zq)

    def forward(self, x, past=None, keep=True, zq=None):
        """x (B,C,F,H,W) -> (B,C',F,H,W) and the pasts of conv1 and conv2."""
        past1, past2 = past or (None, None)
        h, past1 = self.conv1(F.silu(self.norm(self.norm1, x, zq)), past1, keep)
        h, past2 = self.conv2(F.silu(self.norm(self.norm2, h, zq)), past2, keep)
        return self.conv_shortcut(x) + h, (past1, past2)


def per_frame(conv2d, x):
    """A 2D conv applied to every frame of x (B,C,F,H,W)."""
    frames = x.shape[2]
    x = conv2d(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


class Downsample3D(nn.Module):
    """Optionally average pairs of frames (an odd frame 0 stays alone), then pad right and bottom by one
    and apply a stride-2 3x3 conv to every frame."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        self.compress_time = compress_time

    def forward(self, x):
        if self.compress_time and x.shape[2] > 1:
            odd = x.shape[2] % 2
            x = torch.cat([x[:, :, :odd], F.avg_pool3d(x[:, :, odd:], (2, 1, 1))], dim=2)  # (B, C, odd+F//2, H, W)
        return per_frame(self.conv, F.pad(x, (0, 1, 0, 1)))  # (B, C, F', H/2, W/2)


class Upsample3D(nn.Module):
    """Nearest-neighbour upsampling of space by 2 and, optionally, of time by 2 (an odd frame 0 and a lone
    frame are not doubled), then a 3x3 conv on every frame."""

    def __init__(self, channels, compress_time):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.compress_time = compress_time

    def forward(self, x):
        frames = x.shape[2]
        if not self.compress_time or frames == 1:
            x = F.interpolate(x, scale_factor=(1, 2, 2))
        elif frames % 2:
            x = torch.cat([F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2)),
                           F.interpolate(x[:, :, 1:], scale_factor=2)], dim=2)  # (B, C, 2F-1, 2H, 2W)
        else:
            x = F.interpolate(x, scale_factor=2)  # (B, C, 2F, 2H, 2W)
        return per_frame(self.conv, x)


def threaded(past, new, checkpointing=False):
    """A step function that runs a causal module on the next `past` entry (None for a first chunk) and
    appends its new past to `new`, so a network's pasts form one list in call order."""
    past = iter(past or ())

    def step(module, x, keep, *args):
        x, p = maybe_checkpoint(checkpointing, module, x, next(past, None), keep, *args)
        new.append(p)
        return x
    return step


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, groups, eps = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps
        time_levels = int(math.log2(cfg.temporal_compression_ratio))  # levels that also halve time
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0])
        self.down_blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            c_in = ch[max(i - 1, 0)]
            resnets = [ResBlock3D(c_in if j == 0 else c, c, groups, eps) for j in range(cfg.layers_per_block)]
            down = [Downsample3D(c, compress_time=i < time_levels)] if i < len(ch) - 1 else []
            self.down_blocks.append(container(resnets=nn.ModuleList(resnets), downsamplers=nn.ModuleList(down)))
        self.mid_block = container(resnets=nn.ModuleList([ResBlock3D(ch[-1], ch[-1], groups, eps) for _ in range(2)]))
        self.norm_out = nn.GroupNorm(groups, ch[-1], eps=1e-6)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x, past=None, keep=True, checkpointing=False):
        """x (B,3,F,H,W) -> (B,2*C_z,f,H/8,W/8) and the pasts of every causal conv and res block."""
        new = []
        step = threaded(past, new, checkpointing)
        x = step(self.conv_in, x, keep)
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = step(resnet, x, keep)
            for down in block.downsamplers:
                x = down(x)
        for resnet in self.mid_block.resnets:
            x = step(resnet, x, keep)
        x = step(self.conv_out, F.silu(self.norm_out(x)), keep)
        return x, new


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, groups, eps = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups, cfg.norm_eps
        z = cfg.latent_channels
        time_levels = int(math.log2(cfg.temporal_compression_ratio))  # levels that also halve time
        self.conv_in = CausalConv3d(z, ch[0])
        self.mid_block = container(resnets=nn.ModuleList([ResBlock3D(ch[0], ch[0], groups, eps, z) for _ in range(2)]))
        self.up_blocks = nn.ModuleList()
        for i, c in enumerate(ch):
            c_in = ch[max(i - 1, 0)]
            resnets = [ResBlock3D(c_in if j == 0 else c, c, groups, eps, z) for j in range(cfg.layers_per_block + 1)]
            up = [Upsample3D(c, compress_time=i < time_levels)] if i < len(ch) - 1 else []
            self.up_blocks.append(container(resnets=nn.ModuleList(resnets), upsamplers=nn.ModuleList(up)))
        self.norm_out = SpatialNorm3D(ch[-1], z, groups)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels)

    def forward(self, z, past=None, keep=True):
        """z (B,C_z,f,h,w) -> (B,3,F,8h,8w) and the pasts of every causal conv and res block."""
        new = []
        step = threaded(past, new)
        x = step(self.conv_in, z, keep)
        for resnet in self.mid_block.resnets:
            x = step(resnet, x, keep, z)
        for block in self.up_blocks:
            for resnet in block.resnets:
                x = step(resnet, x, keep, z)
            for up in block.upsamplers:
                x = up(x)
        x = step(self.conv_out, F.silu(self.norm_out(x, z)), keep)
        return x, new


def frame_chunks(num_frames, size):
    """The reference's chunks (start, end) of `size` frames; the first also takes the num_frames % size
    extra frames (one for 49 frames; all of them when num_frames < size)."""
    extra = num_frames % size
    return [(0 if i == 0 else size * i + extra, size * (i + 1) + extra) for i in range(max(num_frames // size, 1))]


def chunked(net, x, size):
    """net(chunk, past, keep) -> (out, past) over the reference's frame chunks of x, outputs joined in time."""
    chunks = frame_chunks(x.shape[2], size)
    out, past = [], None
    for i, (start, end) in enumerate(chunks):
        h, past = net(x[:, :, start:end], past, i < len(chunks) - 1)
        out.append(h)
    return torch.cat(out, dim=2)


class CogVideoXVAE(nn.Module):
    """AutoencoderKLCogVideoX: videos (B,3,F,H,W) in [-1,1] <-> latents (B,16,f,H/8,W/8), where F = 1 or 8k+1
    gives f = 1 + (F-1)/4 (13 for 49 frames, 1 for an image)."""

    def __init__(self, cfg=CogVideoXVAEConfig()):
        super().__init__()
        unsupported = {"down_block_types": any(t != "CogVideoXDownBlock3D" for t in cfg.down_block_types),
                       "up_block_types": any(t != "CogVideoXUpBlock3D" for t in cfg.up_block_types),
                       "act_fn": cfg.act_fn != "silu", "use_quant_conv": cfg.use_quant_conv,
                       "use_post_quant_conv": cfg.use_post_quant_conv}
        for key, bad in unsupported.items():
            if bad:
                raise ValueError(f"unsupported CogVideoX VAE {key} = {getattr(cfg, key)}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.checkpointing = False  # memory mode: recompute encoder activations in the backward pass
        self.num_sample_frames_batch_size = 8  # frames per encoder chunk, as the reference
        self.num_latent_frames_batch_size = 2  # latent frames per decoder chunk, as the reference

    def encode(self, x):
        """x (B,3,F,H,W) in [-1,1] -> (mean, logvar) of the latent Gaussian, each (B,16,f,H/8,W/8), logvar
        clamped to [-30, 20]. The frames are encoded in chunks, each conv's past threaded through."""
        out = chunked(lambda h, past, keep: self.encoder(h, past, keep, self.checkpointing), x,
                      self.num_sample_frames_batch_size)
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """z (B,16,f,h,w), already divided by the scaling factor -> frames (B,3,F,8h,8w), about [-1,1],
        decoded in chunks of latent frames with each conv's past threaded through."""
        return chunked(self.decoder, z, self.num_latent_frames_batch_size)
