"""The T5 v1.1 XXL text encoder that CogVideoX conditions on (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer"; v1.1 = its gated-GELU feed-forward variant).

Token ids (B, L) -> hidden states (B, L, 4096). Pre-norm blocks with RMS norms and no biases anywhere; positions enter
only as a learned per-head bias on the attention logits, indexed by log-spaced buckets of the key-query offset and
shared by all blocks (block 0 owns the table). Dropout is omitted: this is an inference model. Run it in bfloat16 or
float32; the reference's float16 overflow clamps are not reproduced.
"""
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .config import JSONConfig
from .layers import container


@dataclass
class T5Config(JSONConfig):
    """The encoder's fields of text_encoder/config.json (google/t5-v1_1-xxl as CogVideoX ships it)."""
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6


# The checkpoint holds the token embedding once, as `shared.weight`; `encoder.embed_tokens` is the same module, so
# state_dict() names it twice. A file saved by transformers carries only the first key (the loader adds the second).
TIED_KEYS = {"encoder.embed_tokens.weight": "shared.weight"}


def relative_position_bucket(offset, num_buckets=32, max_distance=128):
    """T5's bidirectional buckets of key - query offsets: half the buckets per sign; in each half, offsets below a
    quarter of num_buckets get one bucket each, larger ones log-spaced buckets, the last for all >= max_distance."""
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return (offset > 0).long() * half + torch.where(distance < exact, distance, far)


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale by the root mean square (no mean subtraction, no bias), statistics in float32."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class SelfAttention(nn.Module):
    """Multi-head attention with no 1/sqrt(d) scaling (T5 folds it into the initialisation) and an additive bias."""

    def __init__(self, cfg, has_relative_attention_bias):
        super().__init__()
        self.heads = cfg.num_heads
        inner = cfg.num_heads * cfg.d_kv
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def forward(self, x, bias):
        q, k, v = (rearrange(p(x), "b l (h d) -> b h l d", h=self.heads) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(rearrange(out, "b h l d -> b l (h d)"))


def gelu_tanh(x):
    """GELU's tanh approximation (Hendrycks & Gimpel 2016), written out in the reference's order of operations so
    that bfloat16 rounds as it does there ("gelu_new"; F.gelu(approximate="tanh") computes it more exactly)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GatedGELU(nn.Module):
    """T5 v1.1 feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        h = gelu_tanh(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h.to(self.wo.weight.dtype))  # wo may be kept in float32 while the rest is half precision


class Block(nn.Module):
    """x + attn(norm(x)), then x + ff(norm(x)); `layer` is the checkpoint's list [attention, feed-forward]."""

    def __init__(self, cfg, has_relative_attention_bias):
        super().__init__()
        attention = container(SelfAttention=SelfAttention(cfg, has_relative_attention_bias),
                              layer_norm=RMSNorm(cfg.d_model, cfg.layer_norm_epsilon))
        feed_forward = container(DenseReluDense=GatedGELU(cfg), layer_norm=RMSNorm(cfg.d_model, cfg.layer_norm_epsilon))
        self.layer = nn.ModuleList([attention, feed_forward])

    def forward(self, x, bias):
        attention, feed_forward = self.layer
        x = x + attention.SelfAttention(attention.layer_norm(x), bias)
        return x + feed_forward.DenseReluDense(feed_forward.layer_norm(x))


class T5Encoder(nn.Module):
    """transformers' T5EncoderModel with the same state_dict keys (see TIED_KEYS for the embedding)."""

    def __init__(self, cfg=T5Config()):
        super().__init__()
        if cfg.feed_forward_proj != "gated-gelu":
            raise ValueError(f"unsupported T5 feed_forward_proj {cfg.feed_forward_proj!r}; only 'gated-gelu' (v1.1)")
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = container(embed_tokens=self.shared,
                                 block=nn.ModuleList([Block(cfg, i == 0) for i in range(cfg.num_layers)]),
                                 final_layer_norm=RMSNorm(cfg.d_model, cfg.layer_norm_epsilon))

    def position_bias(self, length, device):
        """The relative position bias of block 0's table, used by every block: (1, heads, L, L)."""
        position = torch.arange(length, device=device)
        cfg = self.config
        buckets = relative_position_bucket(position[None, :] - position[:, None],  # (L, L) key - query
                                           cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        return rearrange(table(buckets), "q k h -> 1 h q k")

    def forward(self, input_ids, attention_mask=None):
        """input_ids (B, L) and optionally attention_mask (B, L), 1 = attend, 0 = padding -> (B, L, d_model).
        CogVideoX runs it without a mask on prompts padded to 226 tokens."""
        x = self.encoder.embed_tokens(input_ids)
        bias = self.position_bias(input_ids.shape[1], input_ids.device).to(x.dtype)
        if attention_mask is not None:  # padding keys get the most negative logit, as in the reference
            keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
            bias = bias.masked_fill(~keep, torch.finfo(x.dtype).min)
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
