"""The Wan2.2 VAE (AutoencoderKLWan of TI2V-5B, with its residual shortcuts): video (B,3,F,H,W) <-> latents
(B,48,1+(F-1)/4,H/16,W/16).

The video is first folded 2x2 into 12 channels (patchify); the encoder then halves space three times and time twice,
the decoder the reverse. Every 3x3x3 conv is causal in time: it is padded in front with `past`, the last two input
frames of the previous chunk, or two zero frames at the start. The encoder takes frame 0 alone, then 4 frames at a
time; the decoder one latent frame at a time; each causal module hands its past to the same module in the next chunk.
The time-halving convs (stride 2) see the last frame of the previous chunk; frame 0 is never mixed with later frames
by them, so 1 + 4k frames become 1 + k latent frames and back. The norms are per position (RMS over the channels) and
the mid-block attention is per frame, so the chunks change nothing but the memory, except for the shortcuts: AvgDown3D
(pairs of frames and 2x2 pixels averaged into channel groups) pads a chunk of odd length in front with a zero frame,
and DupUp3D (the reverse, channels repeated into frames and pixels) drops that frame again on the first chunk.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..cogvideox.vae import threaded
from ..config import JSONConfig
from ..layers import container


@dataclass
class WanVAEConfig(JSONConfig):
    """vae/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers; field names are its keys. latents_mean and latents_std
    (48 values each, the per-channel statistics the pipeline normalises the latents with) come from the file."""
    base_dim: int = 160
    decoder_base_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple = (False, True, True)  # (sic) the config's key; which levels also halve time
    in_channels: int = 12  # 3 colours x 2 x 2 patch
    out_channels: int = 12
    patch_size: int = 2
    scale_factor_spatial: int = 16
    scale_factor_temporal: int = 4
    latents_mean: tuple | None = None
    latents_std: tuple | None = None

    @classmethod
    def from_json_dict(cls, d):
        """As JSONConfig.from_json_dict, with the lists of booleans and of signed numbers checked here; a Wan2.1
        layout (no residual shortcuts, attention in the levels) is a ValueError."""
        if d.get("is_residual") is not True or d.get("attn_scales", []) != [] or d.get("dropout", 0.0) != 0.0:
            raise ValueError("only the Wan2.2 layout is supported (is_residual true, attn_scales [], dropout 0)")
        special = {}
        for key, kind, n in (("temperal_downsample", bool, 3), ("latents_mean", float, None),
                             ("latents_std", float, None)):
            value = d.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, kind) or kind is float and type(v) is int
                                                      for v in value) or n is not None and len(value) != n:
                raise ValueError(f"{key} = {value!r}: expected a list of {'booleans' if kind is bool else 'numbers'}")
            special[key] = tuple(value)
        cfg = super().from_json_dict({k: v for k, v in d.items() if k not in special and k not in (
            "temperal_downsample", "latents_mean", "latents_std")})
        for key, value in special.items():
            setattr(cfg, key, value)
        for key in ("latents_mean", "latents_std"):
            value = getattr(cfg, key)
            if value is not None and len(value) != cfg.z_dim:
                raise ValueError(f"{key} has {len(value)} values for z_dim {cfg.z_dim}")
        return cfg


class CausalConv3d(nn.Conv3d):
    """A conv over frames that sees only the present and the past: time padded in front with `past` (the previous
    chunk's last two input frames; two zero frames at the start), space zero-padded. Returns the output and the new
    past (None when `keep` is false: no chunk follows)."""

    def __init__(self, in_channels, out_channels, kernel=(3, 3, 3)):
        super().__init__(in_channels, out_channels, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))

    def forward(self, x, past=None, keep=True):
        if past is None:
            past = x.new_zeros(*x.shape[:2], 2, *x.shape[3:])
        x = torch.cat([past, x], dim=2)  # (B, C, 2+F, H, W)
        return super().forward(x), x[:, :, -2:].clone() if keep else None


class RMSNorm(nn.Module):
    """Each position's channel vector scaled to unit length (in float32 for half precision), times sqrt(channels)
    and a learned gain `gamma`."""

    def __init__(self, channels, image=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1) if image else torch.ones(channels, 1, 1, 1))

    def forward(self, x):
        unit = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1).to(x.dtype)
        return unit * self.gamma.shape[0] ** 0.5 * self.gamma


class ResBlock(nn.Module):
    """(RMS norm, SiLU, causal conv) twice plus a shortcut (a 1x1x1 conv when the width changes)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, past=None, keep=True):
        """x (B,C,F,H,W) -> (B,C',F,H,W) and the pasts of conv1 and conv2."""
        past1, past2 = past or (None, None)
        h, past1 = self.conv1(F.silu(self.norm1(x)), past1, keep)
        h, past2 = self.conv2(F.silu(self.norm2(h)), past2, keep)
        return self.conv_shortcut(x) + h, (past1, past2)


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame, with a residual."""

    def __init__(self, channels):
        super().__init__()
        self.norm = RMSNorm(channels, image=True)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, _, f, h, w = x.shape
        qkv = self.to_qkv(self.norm(rearrange(x, "b c f h w -> (b f) c h w")))
        q, k, v = rearrange(qkv, "n c h w -> n 1 (h w) c").contiguous().chunk(3, dim=-1)  # (B*F, 1, H*W, C) each
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "(b f) 1 (h w) c -> (b f) c h w", b=b, h=h)
        return x + rearrange(self.proj(out), "(b f) c h w -> b c f h w", b=b)


def mid_block(channels):
    """ResBlock, frame attention, ResBlock (the checkpoint's `resnets` and `attentions`)."""
    return container(resnets=nn.ModuleList([ResBlock(channels, channels), ResBlock(channels, channels)]),
                     attentions=nn.ModuleList([FrameAttention(channels)]))


def run_mid_block(block, step, x, keep):
    x = step(block.resnets[0], x, keep)
    return step(block.resnets[1], block.attentions[0](x), keep)


def per_frame(conv2d, x):
    """A 2D module applied to every frame of x (B,C,F,H,W)."""
    frames = x.shape[2]
    return rearrange(conv2d(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=frames)


class Downsample(nn.Module):
    """Pad right and bottom by one and apply a stride-2 3x3 conv to every frame; with `time`, then halve the frames
    with a stride-2 conv over each frame, the one before and the one after, the first chunk's frames left alone.
    Its past is the last frame of the previous chunk."""

    def __init__(self, channels, time):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))
        if time:
            self.time_conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x, past=None, keep=True):
        x = per_frame(self.resample, x)  # (B, C, F, H/2, W/2)
        if not hasattr(self, "time_conv"):
            return x, None
        last = x[:, :, -1:].clone() if keep else None
        if past is None:  # the first chunk, frame 0: not halved
            return x, last
        return self.time_conv(torch.cat([past, x], dim=2)), last  # (B, C, F/2, H/2, W/2)


class Upsample(nn.Module):
    """With `time`, double the frames (a causal (3,1,1) conv makes two frames' channels per frame, frame 0's chunk
    excepted), then nearest-neighbour x2 in space and a 3x3 conv on every frame. The causal conv's past starts at
    zero on the chunk after the first."""

    def __init__(self, channels, out_channels, time):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                      nn.Conv2d(channels, out_channels, 3, padding=1))
        if time:
            self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1))

    def forward(self, x, past=None, keep=True, first=False):
        if hasattr(self, "time_conv") and not first:  # from the chunk after the first, which starts from zeros
            x, past = self.time_conv(x, past, keep)
            x = rearrange(x, "b (two c) f h w -> b c (f two) h w", two=2)  # (B, C, 2F, H, W)
        return per_frame(self.resample, x), past


class AvgDown3D(nn.Module):
    """The residual shortcut of a down level: frames (padded in front with zeros to a multiple of ft) and pixels
    folded by (ft, 2, 2) into channels, then averaged in consecutive groups down to out_channels."""

    def __init__(self, out_channels, ft, fs):
        super().__init__()
        self.out_channels, self.ft, self.fs = out_channels, ft, fs

    def forward(self, x):
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % self.ft, 0))
        x = rearrange(x, "b c (f p) (h q) (w r) -> b (c p q r) f h w", p=self.ft, q=self.fs, r=self.fs)
        return x.unflatten(1, (self.out_channels, -1)).mean(2)


class DupUp3D(nn.Module):
    """The residual shortcut of an up level: each channel repeated, then unfolded by (ft, 2, 2) into frames and
    pixels; on the first chunk the first ft - 1 frames are dropped (frame 0 is not doubled)."""

    def __init__(self, in_channels, out_channels, ft, fs):
        super().__init__()
        self.repeats = out_channels * ft * fs * fs // in_channels
        self.ft, self.fs = ft, fs

    def forward(self, x, first):
        x = repeat(x, "b c f h w -> b (c n) f h w", n=self.repeats)
        x = rearrange(x, "b (c p q r) f h w -> b c (f p) (h q) (w r)", p=self.ft, q=self.fs, r=self.fs)
        return x[:, :, self.ft - 1:] if first else x


class DownLevel(nn.Module):
    """ResBlocks, then optionally a Downsample; plus the AvgDown3D shortcut of the level's input."""

    def __init__(self, in_channels, out_channels, blocks, down, time):
        super().__init__()
        self.avg_shortcut = AvgDown3D(out_channels, 2 if time else 1, 2 if down else 1)
        self.resnets = nn.ModuleList([ResBlock(in_channels if j == 0 else out_channels, out_channels)
                                      for j in range(blocks)])
        self.downsampler = Downsample(out_channels, time) if down else None

    def forward(self, x, past=None, keep=True):
        new = []
        step = threaded(past, new)
        h = x
        for resnet in self.resnets:
            h = step(resnet, h, keep)
        if self.downsampler is not None:
            h = step(self.downsampler, h, keep)
        return h + self.avg_shortcut(x), new


class UpLevel(nn.Module):
    """ResBlocks, then optionally an Upsample; plus the DupUp3D shortcut of the level's input when it upsamples."""

    def __init__(self, in_channels, out_channels, blocks, up, time):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_channels, out_channels, 2 if time else 1, 2) if up else None
        self.resnets = nn.ModuleList([ResBlock(in_channels if j == 0 else out_channels, out_channels)
                                      for j in range(blocks)])
        self.upsampler = Upsample(out_channels, out_channels, time) if up else None

    def forward(self, x, past=None, keep=True, first=False):
        new = []
        step = threaded(past, new)
        h = x
        for resnet in self.resnets:
            h = step(resnet, h, keep)
        if self.upsampler is not None:
            h = step(self.upsampler, h, keep, first)
            h = h + self.avg_shortcut(x, first)
        return h, new


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        levels = len(cfg.dim_mult)
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0])
        self.down_blocks = nn.ModuleList([
            DownLevel(dims[i], dims[i + 1], cfg.num_res_blocks, down=i < levels - 1,
                      time=i < levels - 1 and cfg.temperal_downsample[i]) for i in range(levels)])
        self.mid_block = mid_block(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim)

    def forward(self, x, past=None, keep=True, checkpointing=False):
        """x (B,12,F,H/2,W/2) -> (B,2*z,f,H/16,W/16) and the pasts of every causal module."""
        new = []
        step = threaded(past, new, checkpointing)
        x = step(self.conv_in, x, keep)
        for level in self.down_blocks:
            x = step(level, x, keep)
        x = run_mid_block(self.mid_block, step, x, keep)
        return step(self.conv_out, F.silu(self.norm_out(x)), keep), new


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.decoder_base_dim * m for m in (mult[-1], *reversed(mult))]
        levels = len(mult)
        time = tuple(reversed(cfg.temperal_downsample))
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0])
        self.mid_block = mid_block(dims[0])
        self.up_blocks = nn.ModuleList([
            UpLevel(dims[i], dims[i + 1], cfg.num_res_blocks + 1, up=i < levels - 1,
                    time=i < levels - 1 and time[i]) for i in range(levels)])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels)

    def forward(self, z, past=None, keep=True, first=False):
        """z (B,z,f,h,w) -> (B,12,F,8h,8w) and the pasts of every causal module; `first`: the chunk of frame 0."""
        new = []
        step = threaded(past, new)
        x = step(self.conv_in, z, keep)
        x = run_mid_block(self.mid_block, step, x, keep)
        for level in self.up_blocks:
            x = step(level, x, keep, first)
        return step(self.conv_out, F.silu(self.norm_out(x)), keep), new


class WanVAE(nn.Module):
    """AutoencoderKLWan (Wan2.2): videos (B,3,F,H,W) in [-1,1] <-> latents (B,48,f,H/16,W/16), F = 4k + 1 frames
    giving f = k + 1 latent frames (1 for an image)."""

    def __init__(self, cfg=WanVAEConfig()):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.post_quant_conv = nn.Conv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        self.checkpointing = False  # memory mode: recompute encoder activations in the backward pass

    def encode(self, x):
        """x (B,3,F,H,W) in [-1,1], F = 4k + 1 -> (mean, logvar) of the latent Gaussian, each (B,z,f,H/16,W/16),
        logvar clamped to [-30, 20]. Frame 0 is encoded alone, then 4 frames at a time, the pasts threaded through."""
        frames, p = x.shape[2], self.config.patch_size
        if (frames - 1) % self.config.scale_factor_temporal:
            raise ValueError(f"the Wan VAE encodes 4k + 1 frames, got {frames}")
        x = rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=p, r=p)  # (B, 12, F, H/2, W/2)
        chunks = [(0, 1)] + [(i, i + 4) for i in range(1, frames, 4)]
        out, past = [], None
        for i, (start, end) in enumerate(chunks):
            h, past = self.encoder(x[:, :, start:end], past, i < len(chunks) - 1, self.checkpointing)
            out.append(h)
        mean, logvar = self.quant_conv(torch.cat(out, dim=2)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """z (B,z,f,h,w), un-normalised -> frames (B,3,4(f-1)+1,16h,16w) clamped to [-1,1], decoded one latent
        frame at a time with the pasts threaded through."""
        z = self.post_quant_conv(z)
        frames, p = z.shape[2], self.config.patch_size
        out, past = [], None
        for i in range(frames):
            h, past = self.decoder(z[:, :, i:i + 1], past, i < frames - 1, i == 0)
            out.append(h)
        x = rearrange(torch.cat(out, dim=2), "b (c r q) f h w -> b c f (h q) (w r)", q=p, r=p)
        return x.clamp(-1.0, 1.0)
