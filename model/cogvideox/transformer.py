"""The CogVideoX transformer (CogVideoXTransformer3DModel of the 5B-I2V release): a DiT over one joint sequence
[text tokens | video patches]. Every block modulates a LayerNorm with the timestep (separate shift, scale and gate
for text and video: the "expert" adaptive LayerNorm), attends over the whole sequence at once (q, k LayerNorm per
head, 3D RoPE on the video tokens) and adds a gated feed-forward. There is no separate temporal attention: the
frame-to-frame attention of the temporal attack lives inside the one joint softmax of `joint_attention`, and
`forward(..., attn_maps=names)` returns it per block as frame_attention.py defines it."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..config import JSONConfig
from ..layers import TimestepEmbedding, maybe_checkpoint, sinusoidal_embedding
from .frame_attention import frame_attention_map

# config.json keys whose value this implementation is built for (the CogVideoX 1.0 layout); any other value,
# a CogVideoX 1.5 config with patch_size_t and ofs_embed_dim say, is refused instead of built wrongly.
FIXED = dict(flip_sin_to_cos=True, freq_shift=0, dropout=0.0, activation_fn="gelu-approximate",
             timestep_activation_fn="silu", norm_elementwise_affine=True, patch_bias=True, patch_size_t=None,
             ofs_embed_dim=None)


@dataclass
class CogVideoXTransformerConfig(JSONConfig):
    num_attention_heads: int = 48
    attention_head_dim: int = 64
    in_channels: int = 32  # 16 noisy latent channels + 16 image latent channels
    out_channels: int = 16
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    num_layers: int = 42
    attention_bias: bool = True
    sample_width: int = 90  # latent size the learned position table was made for
    sample_height: int = 60
    sample_frames: int = 49  # counted in video frames: 13 latent frames = (49 - 1) / 4 + 1
    patch_size: int = 2
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = True

    def __post_init__(self):
        if self.use_learned_positional_embeddings and not self.use_rotary_positional_embeddings:
            raise ValueError("a learned position table without rotary embeddings is no CogVideoX release")

    @classmethod
    def from_json_dict(cls, d):
        """As JSONConfig.from_json_dict; a key of FIXED with another value is a ValueError naming it."""
        for key, value in FIXED.items():
            if d.get(key, value) != value:
                raise ValueError(f"{key} = {d[key]!r}: only {value!r} is supported (the CogVideoX 1.0 layout)")
        return super().from_json_dict(d)


# ---------------------------------------------------------------- positions
def sincos_1d(dim, pos):
    """[sin | cos] features (M, dim) of positions pos (M,), frequencies 10000^(-i/(dim/2)), in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    angles = pos.double()[:, None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_table(dim, frames, height, width, spatial_scale, temporal_scale, device=None):
    """3D sin-cos position table (frames*height*width, dim) in (f, h, w) token order, float32. Channels:
    [time dim/4 | x 3dim/8 | y 3dim/8]; positions are the indices divided by the interpolation scales."""
    def grid(n, scale):
        return torch.arange(n, dtype=torch.float32, device=device) / scale

    spatial = dim // 4 * 3
    t = sincos_1d(dim // 4, grid(frames, temporal_scale))
    x = sincos_1d(spatial // 2, grid(width, spatial_scale))
    y = sincos_1d(spatial // 2, grid(height, spatial_scale))
    table = torch.cat([repeat(t, "f d -> f h w d", h=height, w=width),
                       repeat(x, "w d -> f h w d", f=frames, h=height),
                       repeat(y, "h d -> f h w d", f=frames, w=width)], dim=-1)
    return rearrange(table, "f h w d -> (f h w) d").float()


def crop_region(height, width, base_height, base_width):
    """(top, left, bottom, right) of a height x width grid resized into the base grid, aspect kept, centred."""
    if height / width > base_height / base_width:
        h, w = base_height, round(base_height / height * width)
    else:
        h, w = round(base_width / width * height), base_width
    top, left = round((base_height - h) / 2), round((base_width - w) / 2)
    return top, left, top + h, left + w


def rotary_embedding(head_dim, frames, height, width, base_height, base_width, theta=10000.0, device=None):
    """cos, sin (frames*height*width, head_dim) of the 3D rotary embedding, float32, in (f, h, w) token order.

    The head channels split [time hd/4 | y 3hd/8 | x 3hd/8] (16, 24, 24 for 64); each adjacent channel pair
    turns by position * theta^(-2i/d) of its axis. Time positions are 0..F-1; the spatial grid is spread over
    its crop region in the base (training) grid: 0..29 and 0..44 for the 30 x 45 patches of 480 x 720."""
    def spread(start, stop, n):  # n positions from start towards stop, as the official pipeline spaces them
        return torch.linspace(start, stop * (n - 1) / n, n, dtype=torch.float32, device=device)

    top, left, bottom, right = crop_region(height, width, base_height, base_width)
    axes = [(head_dim // 4, torch.arange(frames, dtype=torch.float32, device=device)),
            (head_dim // 8 * 3, spread(top, bottom, height)), (head_dim // 8 * 3, spread(left, right, width))]
    angles = []
    for dim, pos in axes:
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
        angles.append((pos[:, None] * freqs).repeat_interleave(2, dim=-1))  # (n, dim): each pair's angle twice
    t, y, x = angles
    angles = torch.cat([repeat(t, "f d -> f h w d", h=height, w=width),
                        repeat(y, "h d -> f h w d", f=frames, w=width),
                        repeat(x, "w d -> f h w d", f=frames, h=height)], dim=-1)
    angles = rearrange(angles, "f h w d -> (f h w) d")
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each adjacent channel pair (x0, x1) of x (B, heads, L, hd) by its angle, computed in float32."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-x1, x0], dim=-1).flatten(-2)  # (-x1, x0) per pair
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# ---------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    """Text projection, 2x2 patches of every latent frame, and the position table added to both."""

    def __init__(self, cfg, dim):
        super().__init__()
        self.config = cfg
        self.proj = nn.Conv2d(cfg.in_channels, dim, cfg.patch_size, stride=cfg.patch_size)
        self.text_proj = nn.Linear(cfg.text_embed_dim, dim)
        self.has_table = cfg.use_learned_positional_embeddings or not cfg.use_rotary_positional_embeddings
        if self.has_table:
            # learned (5B-I2V, in the checkpoint, initialised to sin-cos) or fixed sin-cos (2B, not saved)
            frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
            table = self.joint_table(frames, cfg.sample_height, cfg.sample_width)
            self.register_buffer("pos_embedding", table, persistent=cfg.use_learned_positional_embeddings)

    def joint_table(self, frames, height, width, device=None):
        """(1, max_text_seq_length + F*h*w, dim): zeros for the text, the sin-cos table for the video."""
        cfg, p = self.config, self.config.patch_size
        video = sincos_table(self.proj.out_channels, frames, height // p, width // p,
                             cfg.spatial_interpolation_scale, cfg.temporal_interpolation_scale, device)
        return F.pad(video, (0, 0, cfg.max_text_seq_length, 0))[None]

    def forward(self, text, video):
        b, f, _, h, w = video.shape
        patches = self.proj(rearrange(video, "b f c h w -> (b f) c h w"))  # (B*F, D, h/p, w/p)
        tokens = torch.cat([self.text_proj(text), rearrange(patches, "(b f) d h w -> b (f h w) d", b=b)], dim=1)
        if not self.has_table:
            return tokens
        cfg = self.config
        if cfg.use_learned_positional_embeddings and (h, w) != (cfg.sample_height, cfg.sample_width):
            raise ValueError(f"the learned position table is for {cfg.sample_height}x{cfg.sample_width} latents, "
                             f"got {h}x{w}")
        if (h, w, (f - 1) * cfg.temporal_compression_ratio + 1) == (cfg.sample_height, cfg.sample_width,
                                                                   cfg.sample_frames):
            table = self.pos_embedding
        else:  # another frame count: the sin-cos table of that size, even where the trained table is learned
            table = self.joint_table(f, h, w, tokens.device)
        return tokens + table.to(tokens.dtype)


class ExpertNorm(nn.Module):
    """LayerNorm modulated by the timestep embedding, with its own shift, scale and gate for video and text."""

    def __init__(self, temb_dim, dim, eps):
        super().__init__()
        self.linear = nn.Linear(temb_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, video, text, temb):
        shift, scale, gate, text_shift, text_scale, text_gate = self.linear(F.silu(temb))[:, None].chunk(6, dim=-1)
        video = self.norm(video) * (1 + scale) + shift
        text = self.norm(text) * (1 + text_scale) + text_shift
        return video, text, gate, text_gate


class AdaNorm(nn.Module):
    """The final adaptive LayerNorm: shift and scale from the timestep embedding."""

    def __init__(self, temb_dim, dim, eps):
        super().__init__()
        self.linear = nn.Linear(temb_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x, temb):
        shift, scale = self.linear(F.silu(temb))[:, None].chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class JointAttention(nn.Module):
    """Self-attention over [text | video] with a LayerNorm on each head's q and k and RoPE on the video part."""

    def __init__(self, dim, heads, head_dim, bias):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_k = nn.Linear(dim, heads * head_dim, bias=bias)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim)])

    def joint_attention(self, q, k, v):
        """softmax(q k^T / sqrt(d)) v, one softmax over all text and video tokens: (B, heads, L, hd) each."""
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x, text_len, rope=None, frames=None):
        """x (B, L, dim) -> (out (B, L, dim), A): A the temporal map (B*P, heads, F, F) of the video's `frames`
        latent frames (frame_attention.py) from the q, k of this attention, or None when frames is None."""
        q, k, v = (rearrange(proj(x), "b l (h d) -> b h l d", h=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))
        q, k = self.norm_q(q), self.norm_k(k)
        if rope is not None:
            q, k = (torch.cat([s[:, :, :text_len], apply_rotary(s[:, :, text_len:], *rope)], dim=2) for s in (q, k))
        out = self.joint_attention(q, k, v)
        A = None if frames is None else frame_attention_map(q, k, text_len, frames)
        return self.to_out[0](rearrange(out, "b h l d -> b l (h d)")), A


class GELUProj(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """GELU(tanh) feed-forward with 4x expansion; `net.1` is an empty slot (dropout) in the checkpoint layout."""

    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GELUProj(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Expert norm, joint attention, gated residual; expert norm, feed-forward (GELU-tanh, 4x), gated residual."""

    def __init__(self, dim, heads, head_dim, temb_dim, bias, eps):
        super().__init__()
        self.norm1 = ExpertNorm(temb_dim, dim, eps)
        self.attn1 = JointAttention(dim, heads, head_dim, bias)
        self.norm2 = ExpertNorm(temb_dim, dim, eps)
        self.ff = FeedForward(dim)

    def forward(self, video, text, temb, rope=None, frames=None):
        """-> (video, text, A): A the temporal attention map of attn1 for `frames` latent frames, or None."""
        n = text.shape[1]
        v, t, gate, text_gate = self.norm1(video, text, temb)
        out, A = self.attn1(torch.cat([t, v], dim=1), n, rope, frames)
        video, text = video + gate * out[:, n:], text + text_gate * out[:, :n]
        v, t, gate, text_gate = self.norm2(video, text, temb)
        out = self.ff(torch.cat([t, v], dim=1))
        return video + gate * out[:, n:], text + text_gate * out[:, :n], A


class CogVideoXTransformer(nn.Module):
    """CogVideoXTransformer3DModel: predicts v for noisy latents with the image latents on their channels."""

    def __init__(self, cfg=CogVideoXTransformerConfig()):
        super().__init__()
        self.config = cfg
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.patch_embed = PatchEmbed(cfg, dim)
        self.time_embedding = TimestepEmbedding(dim, cfg.time_embed_dim)
        self.transformer_blocks = nn.ModuleList([
            Block(dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.time_embed_dim, cfg.attention_bias,
                  cfg.norm_eps) for _ in range(cfg.num_layers)])
        self.norm_final = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.norm_out = AdaNorm(cfg.time_embed_dim, dim, cfg.norm_eps)
        self.proj_out = nn.Linear(dim, cfg.patch_size ** 2 * cfg.out_channels)
        self.attention_names = [f"transformer_blocks.{i}.attn1" for i in range(cfg.num_layers)]
        self.checkpointing = False  # memory mode: recompute each block's activations in the backward pass

    def rotary_embedding(self, frames, height, width, device=None):
        """cos, sin (F*h*w, head_dim) for F latent frames of height x width latents (the pipeline's RoPE)."""
        cfg, p = self.config, self.config.patch_size
        return rotary_embedding(cfg.attention_head_dim, frames, height // p, width // p,
                                cfg.sample_height // p, cfg.sample_width // p, device=device)

    def forward(self, hidden_states, encoder_hidden_states, timestep, image_rotary_emb=None, attn_maps=(),
                maps_only=False):
        """hidden_states (B,F,C,H,W) (noisy and image latents concatenated on C), encoder_hidden_states (B,226,4096),
        timestep (B,) or a scalar -> (sample (B,F,out_channels,H,W), maps).

        With use_rotary_positional_embeddings and image_rotary_emb None, the RoPE (cos, sin) is computed here
        from the sizes, as the pipeline would. `maps` is {name: A (B*P, heads, F, F)} for the blocks named in
        attn_maps ("transformer_blocks.{i}.attn1"), A the frame-to-frame share of the joint attention
        (frame_attention.py); with maps_only the pass stops after the last of them and returns (None, maps).
        With `self.checkpointing` set, each block is checkpointed."""
        unknown = set(attn_maps) - set(self.attention_names)
        if unknown:
            raise ValueError(f"no attention named {sorted(unknown)}; choose from {self.attention_names}")
        cfg, p = self.config, self.config.patch_size
        b, f, _, h, w = hidden_states.shape
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(b)
        t_features = sinusoidal_embedding(t, cfg.num_attention_heads * cfg.attention_head_dim)  # (B, D), cos first
        temb = self.time_embedding(t_features.to(hidden_states.dtype))  # (B, time_embed_dim)
        if image_rotary_emb is None and cfg.use_rotary_positional_embeddings:
            image_rotary_emb = self.rotary_embedding(f, h, w, hidden_states.device)

        tokens = self.patch_embed(encoder_hidden_states, hidden_states)  # (B, T + F*h*w, D)
        n = encoder_hidden_states.shape[1]
        text, video = tokens[:, :n], tokens[:, n:]
        maps = {}
        for name, block in zip(self.attention_names, self.transformer_blocks):
            frames = f if name in attn_maps else None
            video, text, A = maybe_checkpoint(self.checkpointing, block, video, text, temb, image_rotary_emb, frames)
            if A is not None:
                maps[name] = A
                if maps_only and len(maps) == len(set(attn_maps)):
                    return None, maps

        out = self.proj_out(self.norm_out(self.norm_final(video), temb))  # (B, F*h*w, out*p*p)
        return rearrange(out, "b (f h w) (c p q) -> b f c (h p) (w q)", f=f, h=h // p, p=p, q=p), maps
