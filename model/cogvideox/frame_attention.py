"""The temporal attention map of a DiT block (the A_src, A_adv of the temporal attack, paper Eq. 2).

A DiT such as CogVideoX has no temporal attention of its own: one softmax runs over the whole joint sequence
[text | frame 0 | frame 1 | ... | frame F-1] (video tokens ordered (frame, row, col), so each latent frame's
tokens are contiguous). Its temporal attention map is therefore defined here, per head and per position p in
the frame (a token's row and column), as the share of attention that the video token at p of latent frame i
gives to the video tokens of latent frame j:

    A[p, h, i, j] = sum_{k in frame j} softmax_row(q_{i,p})[k],  softmax_row(q) = softmax_k(q.k / sqrt(d))

with the model's own softmax: the q and k that go to its attention (after the per-head q/k LayerNorm and the
RoPE of the video tokens), the same scale 1/sqrt(d) and the FULL row normaliser over all text and video keys.
It is F x F per head and position, as SVD's temporal attention is per latent pixel (13 x 13 at 49 frames,
1350 positions at 480x720); each row sums to 1 minus the share given to the text. The mean over the
positions, one F x F map per head, is kept as an option (per_position=False): it averages away where in
the frame the attention goes.

The attention probabilities themselves are N x N per head (48 x 17,776^2 = 1.5e10 per block at 480x720x49),
so they are never formed: the video queries go through in chunks; per chunk the logits against all N keys
(float32 or wider), their logsumexp, the exponentials of the video keys and a sum of keys per frame. Each
chunk is activation-checkpointed, so the backward pass recomputes it instead of keeping its probabilities:
memory is bounded by a few chunk x N x heads tensors, forward and backward, and gradients flow to q and k.

Memory at 480x720x49 (N = 226 + 13 x 1350 = 17,776 tokens, 48 heads, float32 logits), per batch element:
one chunk x N tensor is chunk x 17,776 x 48 x 4 B = 3.41 MB per query row, 437 MB at the default chunk of 128
(138 chunks per block). Measured (CPU profiler), a chunk peaks at ~3.1 such tensors in the forward pass
(logits, the shifted video logits, their exponentials), 1.4 GB, and ~5.5 while its backward pass recomputes
it, 2.4 GB; the full float32 probabilities of one block would be 48 x 17,776^2 x 4 B = 61 GB. Kept between
forward and backward: the float32 q of the video tokens and k, 2 x 218 MB, and the map, 1350 x 48 x 13 x 13
x 4 B = 44 MB per block.
"""
import torch
from torch.utils.checkpoint import checkpoint

CHUNK = 128  # video queries per chunk


def chunk_frame_attention(q, k, text_len, frames):
    """The share of attention each video query of q (B, heads, c, d), already scaled by 1/sqrt(d), gives to
    each latent frame's video keys: (B, heads, c, F)."""
    logits = q @ k.transpose(-1, -2)  # (B, heads, c, N)
    lse = logits.logsumexp(dim=-1, keepdim=True)  # the full row normaliser: text and video keys
    probs = (logits[..., text_len:] - lse).exp()  # (B, heads, c, F*P): video keys only
    return probs.unflatten(-1, (frames, -1)).sum(-1)  # (B, heads, c, F)


def frame_attention_map(q, k, text_len, frames, chunk=CHUNK, per_position=True):
    """The map of the module docstring from the q, k (B, heads, N, d) of one joint attention over [text_len text
    tokens | frames x P video tokens], in float32 (float64 for float64 inputs): per position, (B*P, heads, F, F),
    A[b*P + p, h, i, j] the share the query at position p of frame i gives to frame j, as a UNet's temporal
    attention gives one map per latent pixel; or with per_position=False their mean over the positions,
    (B, heads, F, F)."""
    n, d = q.shape[-2:]
    videos = n - text_len
    if videos <= 0 or videos % frames:
        raise ValueError(f"{n} tokens - {text_len} text tokens is no whole number of {frames} frames")
    acc = torch.promote_types(q.dtype, torch.float32)  # logits in float32 at least
    q = q[:, :, text_len:].to(acc) * d ** -0.5  # only the video queries enter the map
    k = k.to(acc)
    rows = []
    for first in range(0, videos, chunk):
        q_c = q[:, :, first:first + chunk]
        if torch.is_grad_enabled() and (q_c.requires_grad or k.requires_grad):
            rows.append(checkpoint(chunk_frame_attention, q_c, k, text_len, frames, use_reentrant=False))
        else:
            rows.append(chunk_frame_attention(q_c, k, text_len, frames))
    rows = torch.cat(rows, dim=2).unflatten(2, (frames, -1))  # (B, heads, F, P, F): query frame, position, key frame
    if not per_position:
        return rows.mean(3)
    return rows.permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B*P, heads, F, F)
