"""The SVD spatio-temporal UNet: a Stable Diffusion UNet whose res blocks and transformers each gain a
temporal twin that works across frames, blended in by a learned factor. The temporal self-attention
probabilities of any transformer are returned on request: they are the maps A the attack compares."""
import torch
from einops import rearrange, repeat
from torch import nn
from torch.nn import functional as F

from .config import UNetConfig
from .controlnext import inject_control
from .layers import (Attention, Downsample, FeedForward, Mixer, SpatioTemporalResBlock, TimestepEmbedding,
                     Upsample, container, maybe_checkpoint, sinusoidal_embedding)


class TransformerBlock(nn.Module):
    """Per-frame block: self-attention over pixels, cross-attention to the CLIP token, feed-forward."""

    def __init__(self, dim, heads, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))[0]
        x = x + self.attn2(self.norm2(x), context)[0]
        return x + self.ff(self.norm3(x))


class TemporalTransformerBlock(nn.Module):
    """Per-pixel block: feed-forward, self-attention ACROSS FRAMES, cross-attention to the CLIP token of
    the first frame, feed-forward. Returns the frame-to-frame attention probabilities when asked."""

    def __init__(self, dim, heads, context_dim):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context, return_probs=False):
        # x: (B*H*W, F, C); context: (B*H*W, 1, D)
        x = x + self.ff_in(self.norm_in(x))
        attn, probs = self.attn1(self.norm1(x), return_probs=return_probs)  # probs: (B*H*W, heads, F, F)
        x = x + attn
        x = x + self.attn2(self.norm2(x), context)[0]
        return x + self.ff(self.norm3(x)), probs


class SpatioTemporalTransformer(nn.Module):
    """Spatial transformer layers, each followed by a temporal one that sees the frame position, blended."""

    def __init__(self, channels, heads, context_dim, num_layers):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, context_dim) for _ in range(num_layers)])
        self.temporal_transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, context_dim) for _ in range(num_layers)])
        self.time_pos_embed = TimestepEmbedding(channels, 4 * channels, channels)
        self.time_mixer = Mixer(0.5)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context, num_frames, return_maps=False):
        """x (B*F, C, H, W), context (B*F, 1, D) -> (x', maps): maps (B*H*W, layers*heads, F, F) or None."""
        bf, c, h, w = x.shape
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))  # (B*F, H*W, C)
        frame_index = torch.arange(num_frames, device=x.device).repeat(bf // num_frames)
        frame_emb = self.time_pos_embed(sinusoidal_embedding(frame_index, c).to(x.dtype))[:, None]  # (B*F, 1, C)
        first_context = repeat(context[::num_frames], "b l d -> (b s) l d", s=h * w)  # (B*H*W, 1, D)
        maps = []
        for spatial, temporal in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            tokens = spatial(tokens, context)
            video = rearrange(tokens + frame_emb, "(b f) s c -> (b s) f c", f=num_frames)
            video, probs = temporal(video, first_context, return_maps)
            tokens = self.time_mixer(tokens, rearrange(video, "(b s) f c -> (b f) s c", s=h * w))
            maps.append(probs)
        out = rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=h)
        return x + out, torch.cat(maps, dim=1) if return_maps else None


def per_level(value, levels):
    """A config entry given once for all levels or once per level -> a tuple with one entry per level."""
    return (value,) * levels if isinstance(value, int) else tuple(value)


class UNet(nn.Module):
    """UNetSpatioTemporalConditionModel of SVD. Predicts F_theta for a batch of videos (B,F,8,H,W)."""

    def __init__(self, cfg=UNetConfig()):
        super().__init__()
        self.config = cfg
        ch = cfg.block_out_channels
        n = len(ch)
        heads, context, layers, depth = (per_level(v, n) for v in (
            cfg.num_attention_heads, cfg.cross_attention_dim, cfg.layers_per_block, cfg.transformer_layers_per_block))
        known = {"CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
                 "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"}
        if set(cfg.down_block_types + cfg.up_block_types) - known or len(cfg.up_block_types) != n:
            raise ValueError(f"unsupported UNet block types {cfg.down_block_types} / {cfg.up_block_types}")
        temb = 4 * ch[0]

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)

        def transformers(block_type, i, count):
            return nn.ModuleList([SpatioTemporalTransformer(ch[i], heads[i], context[i], depth[i])
                                  for _ in range(count)] if block_type.startswith("CrossAttn") else [])

        # Down: res blocks keep GroupNorm eps 1e-6 where they have attention, 1e-5 where not.
        self.down_blocks = nn.ModuleList()
        for i, (c, block_type) in enumerate(zip(ch, cfg.down_block_types)):
            eps = 1e-6 if block_type.startswith("CrossAttn") else 1e-5
            resnets = [SpatioTemporalResBlock(ch[max(i - 1, 0)] if j == 0 else c, c, temb, eps)
                       for j in range(layers[i])]
            self.down_blocks.append(container(
                resnets=nn.ModuleList(resnets), attentions=transformers(block_type, i, layers[i]),
                downsamplers=nn.ModuleList([Downsample(c)] if i < n - 1 else [])))

        self.mid_block = container(
            resnets=nn.ModuleList([SpatioTemporalResBlock(ch[-1], ch[-1], temb, 1e-5) for _ in range(2)]),
            attentions=nn.ModuleList([SpatioTemporalTransformer(ch[-1], heads[-1], context[-1], depth[-1])]))

        # Up: level i mirrors down level n-1-i; its last res block takes the skip from the level below.
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(cfg.up_block_types):
            level = n - 1 - i
            c, c_prev, c_below = ch[level], ch[min(level + 1, n - 1)], ch[max(level - 1, 0)]
            count = layers[level] + 1
            resnets = [SpatioTemporalResBlock((c_prev if j == 0 else c) + (c_below if j == count - 1 else c),
                                              c, temb, 1e-6) for j in range(count)]
            self.up_blocks.append(container(
                resnets=nn.ModuleList(resnets), attentions=transformers(block_type, level, count),
                upsamplers=nn.ModuleList([Upsample(c)] if i < n - 1 else [])))

        self.conv_norm_out = nn.GroupNorm(32, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        self.attention_names = [name for name, m in self.named_modules() if isinstance(m, SpatioTemporalTransformer)]
        self.checkpointing = False  # memory mode: recompute block activations in the backward pass

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, attn_maps=(), maps_only=False,
                control=None, control_scale=1.0):
        """sample (B,F,8,H,W), timestep = c_noise (scalar or (B,)), encoder_hidden_states (B,1,D),
        added_time_ids (B,3) -> (out (B,F,4,H,W), {block name: temporal attention probs}).

        `control` (B*F, C, h, w), ControlNeXt's pose features (model.controlnext), is injected after the first
        down block with weight control_scale (a float, or (B,) per video: 0 for guidance's unconditional half).

        With maps_only the pass stops once every requested map is computed and returns (None, maps).
        With `self.checkpointing` set, each res block and transformer is activation-checkpointed.
        """
        unknown = set(attn_maps) - set(self.attention_names)
        if unknown:
            raise ValueError(f"no temporal attention named {sorted(unknown)}; choose from {self.attention_names}")
        b, f = sample.shape[:2]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = self.time_embedding(sinusoidal_embedding(t, self.config.block_out_channels[0]).to(sample.dtype))
        added = sinusoidal_embedding(added_time_ids.flatten(), self.config.addition_time_embed_dim).reshape(b, -1)
        emb = emb + self.add_embedding(added.to(emb.dtype))
        emb = emb.repeat_interleave(f, dim=0)  # (B*F, T)
        context = encoder_hidden_states.repeat_interleave(f, dim=0)  # (B*F, 1, D)
        maps = {}

        def res(resnet, x):
            return maybe_checkpoint(self.checkpointing, resnet, x, emb, f)

        def attend(name, transformer, x):
            x, probs = maybe_checkpoint(self.checkpointing, transformer, x, context, f, name in attn_maps)
            if probs is not None:
                maps[name] = probs
            return x

        def done():
            return maps_only and len(maps) == len(set(attn_maps))

        x = self.conv_in(rearrange(sample, "b f c h w -> (b f) c h w"))
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            for j, resnet in enumerate(block.resnets):
                x = res(resnet, x)
                if block.attentions:
                    x = attend(f"down_blocks.{i}.attentions.{j}", block.attentions[j], x)
                    if done():
                        return None, maps
                skips.append(x)
            for down in block.downsamplers:
                x = down(x)
                skips.append(x)
            if i == 0 and control is not None:  # after the skips were stored: they stay free of the control
                scale = torch.as_tensor(control_scale, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
                x = inject_control(x, control, scale.repeat_interleave(f))

        x = res(self.mid_block.resnets[0], x)
        x = attend("mid_block.attentions.0", self.mid_block.attentions[0], x)
        if done():
            return None, maps
        x = res(self.mid_block.resnets[1], x)

        for i, block in enumerate(self.up_blocks):
            for j, resnet in enumerate(block.resnets):
                x = res(resnet, torch.cat([x, skips.pop()], dim=1))
                if block.attentions:
                    x = attend(f"up_blocks.{i}.attentions.{j}", block.attentions[j], x)
                    if done():
                        return None, maps
            for up in block.upsamplers:
                x = up(x, size=skips[-1].shape[-2:])

        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b f c h w", b=b), maps
