"""The Wan2.2-TI2V-5B transformer (WanTransformer3DModel of the release): a DiT over the video tokens alone.

Latents (B, 48, f, h, w) become (f, h/2, w/2) tokens of a (1, 2, 2) 3D patch. Every block modulates a LayerNorm
with the timestep (a learned per-block `scale_shift_table` added to the shared projection of the time embedding:
shift, scale and gate for attention and feed-forward), runs full 3D self-attention over all video tokens (RMSNorm on
q and k across all heads, 3D RoPE), cross-attends to the umT5 prompt tokens, and adds a gated GELU-tanh
feed-forward. The timestep may be one per video or one per token: the image-to-video pipeline gives frame 0's tokens
timestep 0 (its latent is the photo's, clean). The self-attention's frame-to-frame share, the temporal map of the
attack, is cogvideox/frame_attention.py's with no text tokens in the sequence.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..cogvideox.frame_attention import frame_attention_map
from ..cogvideox.transformer import GELUProj, apply_rotary
from ..config import JSONConfig
from ..layers import TimestepEmbedding, maybe_checkpoint, sinusoidal_embedding

# The parameters the reference keeps in float32 when the rest runs in half precision (its _keep_in_fp32_modules):
# the timestep's MLP, the modulation tables and the cross-attention's norm. load_wan reads them in float32.
FLOAT32_PARTS = ("condition_embedder.time_embedder.", "scale_shift_table", ".norm2.")

# config.json keys whose value this implementation is built for (the TI2V-5B layout: no CLIP image branch); any
# other value, a Wan2.1-I2V config with image_dim say, is refused instead of built wrongly.
FIXED = dict(qk_norm="rms_norm_across_heads", cross_attn_norm=True, image_dim=None, added_kv_proj_dim=None,
             pos_embed_seq_len=None)


@dataclass
class WanTransformerConfig(JSONConfig):
    """transformer/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers; field names are its keys."""
    patch_size: tuple = (1, 2, 2)  # (frames, rows, columns) per token
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    in_channels: int = 48
    out_channels: int = 48
    text_dim: int = 4096  # umT5-XXL's width
    freq_dim: int = 256  # sinusoidal features of the timestep
    ffn_dim: int = 14336
    num_layers: int = 30
    eps: float = 1e-6
    rope_max_seq_len: int = 1024  # positions per axis the rotary tables cover

    @classmethod
    def from_json_dict(cls, d):
        """As JSONConfig.from_json_dict; a key of FIXED with another value is a ValueError naming it."""
        for key, value in FIXED.items():
            if d.get(key, value) != value:
                raise ValueError(f"{key} = {d[key]!r}: only {value!r} is supported (the Wan2.2-TI2V-5B layout)")
        return super().from_json_dict(d)


def layer_norm(x, eps, norm=None):
    """LayerNorm computed in float32 (the affine of `norm` if given, none otherwise), returned in float32."""
    weight = bias = None
    if norm is not None:
        weight, bias = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps)


def rotary_embedding(head_dim, frames, height, width, theta=10000.0, device=None):
    """cos, sin (frames*height*width, head_dim) of Wan's 3D RoPE, float32, in (f, h, w) token order.

    The head channels split [time | rows | columns] with 2 * (hd // 6) channels for each spatial axis and the rest
    (44, 42, 42 for 128) for time; each adjacent channel pair turns by index * theta^(-2i/d) of its axis, the
    indices counted from 0 on every axis (computed in float64)."""
    spatial = 2 * (head_dim // 6)
    angles = []
    for dim, n in ((head_dim - 2 * spatial, frames), (spatial, height), (spatial, width)):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        pos = torch.arange(n, dtype=torch.float64, device=device)
        angles.append((pos[:, None] * freqs).repeat_interleave(2, dim=-1))  # (n, dim): each pair's angle twice
    t, y, x = angles
    angles = torch.cat([t[:, None, None].expand(-1, height, width, -1), y[None, :, None].expand(frames, -1, width, -1),
                        x[None, None].expand(frames, height, -1, -1)], dim=-1)
    angles = rearrange(angles, "f h w d -> (f h w) d")
    return angles.cos().float(), angles.sin().float()


class Attention(nn.Module):
    """Multi-head attention with RMSNorm on q and k across all heads; self-attention (with RoPE, and the temporal
    map on request) when context is None, cross-attention to the prompt tokens otherwise."""

    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # `to_out.1` is an empty slot (dropout)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def attend(self, q, k, v):
        """softmax(q k^T / sqrt(d)) v over (B, heads, L, hd) each."""
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x, context=None, rope=None, frames=None):
        """x (B, L, dim) -> (out (B, L, dim), A): A the temporal map (B*P, heads, F, F) of the `frames` latent
        frames (frame_attention.py, no text tokens) from this self-attention's q, k, or None when frames is None."""
        context = x if context is None else context
        q, k, v = self.norm_q(self.to_q(x)), self.norm_k(self.to_k(context)), self.to_v(context)
        q, k, v = (rearrange(s, "b l (h d) -> b h l d", h=self.heads) for s in (q, k, v))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = self.attend(q, k, v)
        A = None if frames is None else frame_attention_map(q, k, 0, frames)
        return self.to_out[0](rearrange(out, "b h l d -> b l (h d)").type_as(x)), A


class FeedForward(nn.Module):
    """GELU(tanh) feed-forward; `net.1` is an empty slot (dropout) in the checkpoint layout."""

    def __init__(self, dim, inner):
        super().__init__()
        self.net = nn.Sequential(GELUProj(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Modulated LayerNorm, self-attention, gated residual; LayerNorm, cross-attention, residual; modulated
    LayerNorm, feed-forward, gated residual. Norms and residual sums in float32."""

    def __init__(self, dim, heads, ffn_dim, eps):
        super().__init__()
        self.eps = eps
        self.attn1 = Attention(dim, heads, eps)
        self.attn2 = Attention(dim, heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)  # the cross-attention's norm, the only one with an affine
        self.ffn = FeedForward(dim, ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, text, e, rope, frames=None):
        """x (B, L, D), text (B, T, D), e (B, L or 1, 6, D) the time projection -> (x, A) as Attention's."""
        shift, scale, gate, ff_shift, ff_scale, ff_gate = (self.scale_shift_table[:, None] + e.float()).unbind(2)
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).type_as(x)
        out, A = self.attn1(h, rope=rope, frames=frames)
        x = (x.float() + out * gate).type_as(x)
        x = x + self.attn2(layer_norm(x, self.eps, self.norm2).type_as(x), text)[0]
        h = (layer_norm(x, self.eps) * (1 + ff_scale) + ff_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * ff_gate).type_as(x), A


class TextProjection(nn.Module):
    """The prompt embedding into the model width: linear, GELU(tanh), linear."""

    def __init__(self, in_dim, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class ConditionEmbedder(nn.Module):
    """The timestep's embedding and its six-fold projection for the blocks' modulation, and the text projection."""

    def __init__(self, cfg, dim):
        super().__init__()
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(cfg.text_dim, dim)

    def forward(self, t, text):
        """t (B, L) timesteps (L = 1 or one per token), text (B, T, text_dim) -> temb (B, L, D),
        e (B, L, 6, D), text (B, T, D)."""
        features = sinusoidal_embedding(t.flatten(), self.freq_dim).unflatten(0, t.shape)  # (B, L, freq_dim)
        temb = self.time_embedder(features.to(self.time_embedder.linear_1.weight.dtype)).type_as(text)
        e = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))
        return temb, e, self.text_embedder(text)


class WanTransformer(nn.Module):
    """WanTransformer3DModel: predicts the flow velocity v of noisy latents, conditioned on prompt tokens."""

    def __init__(self, cfg=WanTransformerConfig()):
        super().__init__()
        self.config = cfg
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, cfg.patch_size, stride=cfg.patch_size)
        self.condition_embedder = ConditionEmbedder(cfg, dim)
        self.blocks = nn.ModuleList([Block(dim, cfg.num_attention_heads, cfg.ffn_dim, cfg.eps)
                                     for _ in range(cfg.num_layers)])
        self.proj_out = nn.Linear(dim, cfg.out_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.attention_names = [f"blocks.{i}.attn1" for i in range(cfg.num_layers)]
        self.checkpointing = False  # memory mode: recompute each block's activations in the backward pass

    def tokens_per_frame(self, height, width):
        """Video tokens per latent frame of height x width latents."""
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    def forward(self, hidden_states, timestep, encoder_hidden_states, attn_maps=(), maps_only=False):
        """hidden_states (B, C, f, h, w) noisy latents, timestep (B,) or a scalar, or (B, L) one per video token in
        (f, h, w) order, encoder_hidden_states (B, T, text_dim) -> (v (B, out_channels, f, h, w), maps).

        `maps` is {name: A (B*P, heads, F, F)} for the blocks named in attn_maps ("blocks.{i}.attn1"), A the
        frame-to-frame share of the self-attention (frame_attention.py) over the F = f / patch frames; with
        maps_only the pass stops after the last of them and returns (None, maps). With `self.checkpointing` set,
        each block is checkpointed."""
        unknown = set(attn_maps) - set(self.attention_names)
        if unknown:
            raise ValueError(f"no attention named {sorted(unknown)}; choose from {self.attention_names}")
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        b, _, f, h, w = hidden_states.shape
        f, h, w = f // pt, h // ph, w // pw  # token grid
        rope = rotary_embedding(cfg.attention_head_dim, f, h, w, device=hidden_states.device)
        x = rearrange(self.patch_embedding(hidden_states), "b d f h w -> b (f h w) d")

        t = torch.as_tensor(timestep, device=hidden_states.device)
        t = t.reshape(b, -1) if t.ndim == 2 else t.reshape(-1).expand(b)[:, None]  # (B, L or 1)
        temb, e, text = self.condition_embedder(t, encoder_hidden_states)
        maps = {}
        for name, block in zip(self.attention_names, self.blocks):
            frames = f if name in attn_maps else None
            x, A = maybe_checkpoint(self.checkpointing, block, x, text, e, rope, frames)
            if A is not None:
                maps[name] = A
                if maps_only and len(maps) == len(set(attn_maps)):
                    return None, maps

        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None]).unbind(2)  # (B, L or 1, D) each
        x = (layer_norm(x, cfg.eps) * (1 + scale) + shift).type_as(x)
        out = self.proj_out(x)  # (B, L, pt*ph*pw*C)
        return rearrange(out, "b (f h w) (p q r c) -> b c (f p) (h q) (w r)", f=f, h=h, p=pt, q=ph, r=pw), maps
