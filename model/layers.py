"""Building blocks shared by the SVD UNet and VAE: sinusoidal embeddings, residual blocks over space
and time, multi-head attention, resampling. Attribute names follow the official checkpoint keys."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


def sinusoidal_embedding(t, dim):
    """Sinusoidal features of t (N,) -> (N, dim), cosines first, frequencies 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1), (0, dim % 2))


def maybe_checkpoint(enabled, module, *args):
    """module(*args), or with `enabled` (and gradients on) the same through activation checkpointing:
    its activations are recomputed during the backward pass instead of being kept."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def container(**children):
    """A module that only groups its children under checkpoint key names (`resnets`, `upsamplers`, ...)."""
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


class TimestepEmbedding(nn.Module):
    """Two-layer MLP that turns sinusoidal features into an embedding."""

    def __init__(self, in_dim, dim, out_dim=None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, out_dim or dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResBlock(nn.Module):
    """Per-frame 2D residual block (GroupNorm, SiLU, 3x3 conv), optionally shifted by the time embedding."""

    def __init__(self, in_channels, out_channels, temb_dim=None, eps=1e-6, groups=32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_dim is not None:
            self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.conv_shortcut(x) + h


class TemporalResBlock(nn.Module):
    """Residual block across frames: Conv3d with kernel (3,1,1) mixes each pixel with its neighbour frames."""

    def __init__(self, channels, temb_dim=None, eps=1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        if temb_dim is not None:
            self.time_emb_proj = nn.Linear(temb_dim, channels)
        self.norm2 = nn.GroupNorm(32, channels, eps=eps)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x, temb=None):
        # x: (B, C, F, H, W); temb: (B, F, T)
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + rearrange(self.time_emb_proj(F.silu(temb)), "b f c -> b c f 1 1")
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class Mixer(nn.Module):
    """Learned blend of a spatial and a temporal branch, alpha = sigmoid(mix_factor).

    out = alpha*spatial + (1-alpha)*temporal, or with the weights switched (the VAE decoder's
    convention) out = (1-alpha)*spatial + alpha*temporal. SVD always runs on video, so the image-only
    case of the original blend (alpha = 1) never arises and is not implemented.
    """

    def __init__(self, mix_factor, switched=False):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([float(mix_factor)]))
        self.switched = switched

    def forward(self, spatial, temporal):
        alpha = torch.sigmoid(self.mix_factor).to(spatial.dtype)
        if self.switched:
            alpha = 1 - alpha
        return alpha * spatial + (1 - alpha) * temporal


class SpatioTemporalResBlock(nn.Module):
    """A per-frame ResBlock followed by a TemporalResBlock, the two outputs blended by a Mixer."""

    def __init__(self, in_channels, out_channels, temb_dim=None, eps=1e-6, temporal_eps=None, mix_factor=0.5,
                 switched=False):
        super().__init__()
        self.spatial_res_block = ResBlock(in_channels, out_channels, temb_dim, eps)
        self.temporal_res_block = TemporalResBlock(out_channels, temb_dim, temporal_eps or eps)
        self.time_mixer = Mixer(mix_factor, switched)

    def forward(self, x, temb, num_frames):
        # x: (B*F, C, H, W); temb: (B*F, T) or None
        x = self.spatial_res_block(x, temb)
        x = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        if temb is not None:
            temb = rearrange(temb, "(b f) t -> b f t", f=num_frames)
        x = self.time_mixer(x, self.temporal_res_block(x, temb))
        return rearrange(x, "b c f h w -> (b f) c h w")


class Attention(nn.Module):
    """Multi-head attention of `x` (N, L, dim) over itself or over `context` (N, L', context_dim).

    Uses scaled_dot_product_attention; with return_probs=True it also returns the attention
    probabilities softmax(QK^T/sqrt(d)) (N, heads, L, L'), computed explicitly in float32 or wider.
    """

    def __init__(self, dim, heads, head_dim, context_dim=None, bias=False):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x, context=None, return_probs=False):
        context = x if context is None else context
        if context.shape[1] == 1 and not return_probs:
            # One key (SVD's cross-attention to its single CLIP token): its softmax weight is exactly 1,
            # so every query receives its value; queries and keys need not be computed.
            return self.to_out[0](self.to_v(context)).expand(-1, x.shape[1], -1), None
        q, k, v = (rearrange(p(s), "n l (h d) -> n h l d", h=self.heads)
                   for p, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        probs = None
        if return_probs:
            acc = torch.promote_types(q.dtype, torch.float32)  # the probabilities in float32 at least
            probs = (q.to(acc) @ k.to(acc).transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
            out = probs.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](rearrange(out, "n h l d -> n l (h d)")), probs


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion; `net.1` is an empty slot (dropout) in the checkpoint layout."""

    def __init__(self, dim, dim_out=None, mult=4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim_out or dim))

    def forward(self, x):
        return self.net(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; the VAE encoder pads right and bottom only instead of all sides."""

    def __init__(self, channels, pad_right_bottom=False):
        super().__init__()
        self.pad_right_bottom = pad_right_bottom
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if pad_right_bottom else 1)

    def forward(self, x):
        if self.pad_right_bottom:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling (x2, or to `size`) followed by a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        x = F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest")
        return self.conv(x)
