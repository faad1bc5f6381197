"""The umT5-XXL text encoder Wan conditions on (Chung et al. 2023, "UniMax: Fairer and More Effective Language
Sampling for Large-Scale Multilingual Pretraining"): T5 v1.1's encoder (model/t5.py) with two differences, a
vocabulary of 256,384 tokens and a relative position bias table of its own in every block, where T5 shares block 0's.

Token ids (B, L) and a mask -> hidden states (B, L, 4096). Wan runs it with the attention mask of the padded prompt.
"""
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..t5 import T5Config, T5Encoder, relative_position_bucket


@dataclass
class UMT5Config(T5Config):
    """The encoder's fields of text_encoder/config.json (google/umt5-xxl as Wan ships it)."""
    vocab_size: int = 256384


class UMT5Encoder(T5Encoder):
    """transformers' UMT5EncoderModel with the same state_dict keys (model/t5.py's TIED_KEYS for the embedding)."""

    def __init__(self, cfg=UMT5Config()):
        super().__init__(cfg)
        for block in self.encoder.block[1:]:  # block 0 has its table already
            block.layer[0].SelfAttention.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets,
                                                                                cfg.num_heads)

    def forward(self, input_ids, attention_mask=None):
        """input_ids (B, L) and optionally attention_mask (B, L), 1 = attend, 0 = padding -> (B, L, d_model)."""
        cfg = self.config
        x = self.encoder.embed_tokens(input_ids)
        position = torch.arange(input_ids.shape[1], device=input_ids.device)
        buckets = relative_position_bucket(position[None, :] - position[:, None],  # (L, L) key - query
                                           cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        for block in self.encoder.block:
            table = block.layer[0].SelfAttention.relative_attention_bias
            bias = rearrange(table(buckets), "q k h -> 1 h q k").to(x.dtype)  # this block's own bias
            if attention_mask is not None:  # padding keys get the most negative logit, as in the reference
                keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
                bias = bias.masked_fill(~keep, torch.finfo(x.dtype).min)
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
