"""The two judges VBench uses that we can load from safetensors: DINO ViT-B/16 (subject consistency) and
the LAION aesthetic predictor v1 (CLIP ViT-L/14 image embedding + a linear head).

Module names are the keys of the hub files facebook/dino-vitb16 (transformers' ViTModel layout) and
shunk031/aesthetics-predictor-v1-vit-large-patch14 (CLIPVisionModelWithProjection + `predictor`).
"""
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .clip import CLIPImageEncoder
from .config import CLIPConfig
from .layers import container


@dataclass
class ViTConfig:
    """Defaults are DINO ViT-B/16 (facebook/dino-vitb16). DINO's LayerNorm eps is 1e-6, whatever the hub
    config.json says (1e-12, transformers' default)."""
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-6


# The LAION aesthetic predictor's CLIP: OpenAI ViT-L/14, quick-GELU, 768-d projection.
AESTHETIC_CLIP = CLIPConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")


def interpolate_position_embeddings(pos, height, width):
    """DINO's interpolate_pos_encoding: the learned (1, 1+N, D) grid resized bicubically to height x width
    patches. DINO passes a scale factor of (patches + 0.1) / sqrt(N) (its fix for rounding) rather than
    the output size, so the sampling positions follow that scale exactly."""
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    if height == width == side:
        return pos
    grid = rearrange(pos[:, 1:], "1 (h w) d -> 1 d h w", h=side)
    grid = F.interpolate(grid, scale_factor=((height + 0.1) / side, (width + 0.1) / side), mode="bicubic")
    assert grid.shape[-2:] == (height, width)
    return torch.cat([pos[:, :1], rearrange(grid, "1 d h w -> 1 (h w) d")], dim=1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.attention = container(query=nn.Linear(dim, dim), key=nn.Linear(dim, dim), value=nn.Linear(dim, dim))
        self.output = container(dense=nn.Linear(dim, dim))

    def forward(self, x):
        a = self.attention
        q, k, v = (rearrange(p(x), "n l (h d) -> n h l d", h=self.heads) for p in (a.query, a.key, a.value))
        return self.output.dense(rearrange(F.scaled_dot_product_attention(q, k, v), "n h l d -> n l (h d)"))


class Layer(nn.Module):
    """Pre-norm transformer layer with exact GELU: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.intermediate = container(dense=nn.Linear(cfg.hidden_size, cfg.intermediate_size))
        self.output = container(dense=nn.Linear(cfg.intermediate_size, cfg.hidden_size))

    def forward(self, x):
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, (cfg.image_size // cfg.patch_size) ** 2 + 1,
                                                            cfg.hidden_size))
        self.patch_embeddings = container(projection=nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size,
                                                               stride=cfg.patch_size))

    def forward(self, pixel_values):
        patches = self.patch_embeddings.projection(pixel_values)  # (N, D, h, w)
        h, w = patches.shape[-2:]
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), rearrange(patches, "n d h w -> n (h w) d")], 1)
        return x + interpolate_position_embeddings(self.position_embeddings, h, w)  # (N, 1+h*w, D)


class DINO(nn.Module):
    """ImageNet-normalised images (N,3,H,W), any H and W -> the normalised class token (N, D), as DINO's
    forward returns it (its head is the identity)."""

    def __init__(self, cfg=ViTConfig()):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = container(layer=nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)]))
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values):
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x[:, 0])


class AestheticPredictor(CLIPImageEncoder):
    """LAION aesthetic predictor v1: CLIP-normalised (N,3,224,224) -> a score (N,), about 1 to 10, from a
    linear head on the L2-normalised CLIP image embedding."""

    def __init__(self, cfg=AESTHETIC_CLIP):
        super().__init__(cfg)
        self.predictor = nn.Linear(cfg.projection_dim, 1)

    def forward(self, pixel_values):
        return self.predictor(F.normalize(super().forward(pixel_values), dim=-1))[:, 0]
