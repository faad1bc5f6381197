"""The temporal attention map of CogVideoX (model/cogvideox/frame_attention.py): the chunked map equals the same
quantity from an explicitly materialised softmax(QK^T / sqrt(d)) in float64, values and gradients; through the
transformer it equals the map of the q, k that diffusers' own attention processor hands to SDPA; no tensor of
N x N per head is ever created and nothing of that size is kept for the backward pass; maps_only stops early."""
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from model.cogvideox.frame_attention import chunk_frame_attention, frame_attention_map
from model.cogvideox.transformer import CogVideoXTransformer, CogVideoXTransformerConfig
from test_cogvideox_transformer import TINY, pipeline_rope, randomize_

TOL = 1e-6


def materialised_map(q, k, text_len, frames, per_position=True):
    """The definition, written out: the full probabilities (B, heads, N, N) in float64, then per video query the
    sum over each frame's keys, as (B*P, heads, F, F) per position or, averaged over the positions, (B, heads,
    F, F); also the share the same queries give to the text, (B*P, heads, F) or (B, heads, F)."""
    probs = (q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    video = probs[:, :, text_len:]  # (B, heads, F*P, N)
    per_frame = video[..., text_len:].unflatten(-1, (frames, -1)).sum(-1).unflatten(2, (frames, -1))  # (B,h,F,P,F)
    text_share = video[..., :text_len].sum(-1).unflatten(2, (frames, -1))  # (B, heads, F, P)
    if not per_position:
        return per_frame.mean(3), text_share.mean(3)
    return per_frame.permute(0, 3, 1, 2, 4).flatten(0, 1), text_share.permute(0, 3, 1, 2).flatten(0, 1)


# ---------------------------------------------------------------- (a) chunked = materialised, values and gradients
@pytest.mark.parametrize("per_position", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 7, 8, 24, 1000])  # video queries 24: 8, 24 divide it, 5, 7 do not
def test_chunked_equals_materialised(chunk, per_position):
    b, heads, text_len, frames, per_frame, d = 2, 3, 5, 4, 6, 8
    n = text_len + frames * per_frame
    q = (2 * torch.randn(b, heads, n, d, dtype=torch.float64)).requires_grad_()
    k = (2 * torch.randn(b, heads, n, d, dtype=torch.float64)).requires_grad_()
    shape = (b * per_frame if per_position else b, heads, frames, frames)
    W = torch.randn(shape, dtype=torch.float64)  # a random linear functional of the map

    A = frame_attention_map(q, k, text_len, frames, chunk=chunk, per_position=per_position)
    grads = torch.autograd.grad((W * A).sum(), (q, k))
    A_ref, text_share = materialised_map(q, k, text_len, frames, per_position)
    grads_ref = torch.autograd.grad((W * A_ref).sum(), (q, k))

    assert A.shape == shape and A.dtype == torch.float64
    diffs = [(A - A_ref).abs().max().item()] + [(g - r).abs().max().item() for g, r in zip(grads, grads_ref)]
    print(f"\n[parity] chunk {chunk}: map {diffs[0]:.1e}, dq {diffs[1]:.1e}, dk {diffs[2]:.1e}")
    assert max(diffs) <= TOL
    assert torch.allclose(A.sum(-1), 1 - text_share, atol=TOL, rtol=0)
    if per_position:  # the averaged map is the per-position maps' mean
        torch.testing.assert_close(A.unflatten(0, (b, per_frame)).mean(1),
                                   frame_attention_map(q, k, text_len, frames, chunk, per_position=False))


def test_float32_logits_for_low_precision_inputs():
    q, k = torch.randn(2, 1, 2, 29, 8).bfloat16().unbind(0)
    A = frame_attention_map(q, k, 5, 4, chunk=7)
    assert A.dtype == torch.float32
    assert (A.double() - materialised_map(q, k, 5, 4)[0]).abs().max() <= 1e-6


# ---------------------------------------------------------------- (b) through the transformer
class FrameProbe(CogVideoXAttnProcessor2_0):
    """diffusers' CogVideoX attention unchanged, recording the q and k it passes to scaled_dot_product_attention
    (after its own q/k LayerNorm and RoPE). The signature is spelled out: diffusers drops keyword arguments that
    a processor's __call__ does not name."""

    def __init__(self):
        super().__init__()
        self.qk = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        sdpa = F.scaled_dot_product_attention

        def recording(q, k, v, **sdpa_kwargs):
            self.qk = (q.detach().clone(), k.detach().clone())
            return sdpa(q, k, v, **sdpa_kwargs)

        F.scaled_dot_product_attention = recording
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            F.scaled_dot_product_attention = sdpa


def tiny_pair(layers, seed=0):
    cfg = dict(TINY["i2v"], num_layers=layers)
    torch.manual_seed(seed)
    oracle = randomize_(CogVideoXTransformer3DModel(**cfg), seed).double().eval()
    ours = CogVideoXTransformer(CogVideoXTransformerConfig.from_json_dict(cfg)).double().eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours, cfg


def test_transformer_maps_equal_diffusers_attention():
    oracle, ours, cfg = tiny_pair(layers=2)
    frames, height, width, text_len = 3, 8, 12, cfg["max_text_seq_length"]
    x = torch.randn(2, frames, cfg["in_channels"], height, width, dtype=torch.float64)
    text = torch.randn(2, text_len, cfg["text_embed_dim"], dtype=torch.float64)
    t = torch.tensor([17.0, 803.0])
    probes = [FrameProbe() for _ in oracle.transformer_blocks]
    for block, probe in zip(oracle.transformer_blocks, probes):
        block.attn1.set_processor(probe)
    with torch.no_grad():
        ref = oracle(x, text, t, image_rotary_emb=pipeline_rope(oracle, frames, height, width)).sample
        out, maps = ours(x, text, t, attn_maps=ours.attention_names)
        plain, none = ours(x, text, t)
    assert torch.equal(out, plain) and none == {}  # asking for maps leaves the output bit-identical
    assert (out - ref).abs().max() <= 1e-10

    heads = cfg["num_attention_heads"]
    for name, probe in zip(ours.attention_names, probes):
        q, k = probe.qk
        assert q.shape == (2, heads, text_len + frames * (height // 2) * (width // 2), cfg["attention_head_dim"])
        A_ref, text_share = materialised_map(q, k, text_len, frames)
        A = maps[name]
        diff = (A - A_ref).abs().max().item()
        print(f"\n[parity] {name}: map vs diffusers' q, k materialised {diff:.1e}")
        assert A.shape == (2 * (height // 2) * (width // 2), heads, frames, frames) and diff <= TOL
        assert (frame_attention_map(q, k, text_len, frames, chunk=13) - A_ref).abs().max() <= 1e-12
        assert A.min() >= 0 and A.max() <= 1
        assert (A.sum(-1) - (1 - text_share)).abs().max() <= TOL
        assert text_share.min() > 0.01 and A.std() > 0.01  # a map with content, not uniform


# ---------------------------------------------------------------- (c) memory
class SizeTracker(TorchDispatchMode):
    """Largest number of elements per (batch, head) of any tensor an op creates, forward and backward."""

    def __init__(self, batch_heads):
        super().__init__()
        self.batch_heads, self.largest, self.ops = batch_heads, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() / self.batch_heads)
        self.ops += 1
        return out


def measure(fn, q, k):
    """(largest tensor created, elements saved for backward, ops seen in backward), per (batch, head).
    Saved elements are counted once per storage: the views of q and k that every chunk keeps share one."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with SizeTracker(q.shape[0] * q.shape[1]) as tracker:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            A = fn(q, k)
        forward_ops = tracker.ops
        A.square().sum().backward()
    return tracker.largest, sum(saved.values()) / (q.shape[0] * q.shape[1]), tracker.ops - forward_ops


def test_full_map_never_materialised():
    b, heads, text_len, frames, per_frame, d, chunk = 1, 2, 6, 4, 64, 8, 16
    n = text_len + frames * per_frame  # 262: N*N = 68,644 per head, chunk*N = 4,192
    q = torch.randn(b, heads, n, d, requires_grad=True)
    k = torch.randn(b, heads, n, d, requires_grad=True)

    largest, saved, backward_ops = measure(lambda q, k: frame_attention_map(q, k, text_len, frames, chunk), q, k)
    print(f"\n[memory] N*N {n * n}, chunk*N {chunk * n}: largest tensor {largest:.0f}, saved for backward "
          f"{saved:.0f} elements per (batch, head); {backward_ops} ops in backward")
    assert backward_ops > 0  # the tracker saw the backward pass (and so the chunks' recomputation)
    assert largest <= chunk * n  # never N x N, forward or backward: at most one chunk's logits
    # only q and k, and the map the loss keeps: the chunks' probabilities are recomputed, not stored
    assert saved <= 2 * n * d + frames * per_frame * frames

    # the tracker does catch a materialised softmax, and a loop of chunks that stores its probabilities
    largest, _, _ = measure(lambda q, k: materialised_map(q, k, text_len, frames)[0], q, k)
    assert largest >= n * n
    _, saved, _ = measure(lambda q, k: no_checkpoint_map(q, k, text_len, frames, chunk), q, k)
    assert saved >= n * n


def no_checkpoint_map(q, k, text_len, frames, chunk):
    """The chunked map without the checkpoints (a negative control for the saved-tensor accounting)."""
    qv = q[:, :, text_len:] * q.shape[-1] ** -0.5
    rows = [chunk_frame_attention(qv[:, :, i:i + chunk], k, text_len, frames) for i in range(0, qv.shape[2], chunk)]
    return torch.cat(rows, dim=2)


# ---------------------------------------------------------------- (d) maps_only
class Exploding(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("maps_only ran past the last requested block")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_maps_only_stops_early(checkpointing):
    _, ours, cfg = tiny_pair(layers=3)
    ours.checkpointing = checkpointing
    x = torch.randn(1, 3, cfg["in_channels"], 8, 12, dtype=torch.float64, requires_grad=True)
    text = torch.randn(1, cfg["max_text_seq_length"], cfg["text_embed_dim"], dtype=torch.float64)
    names = ["transformer_blocks.1.attn1", "transformer_blocks.0.attn1"]
    out, full = ours(x, text, torch.tensor([500.0]), attn_maps=names)
    (grad_full,) = torch.autograd.grad(sum(A.square().sum() for A in full.values()), x)
    ours.transformer_blocks[2] = Exploding()
    ours.norm_final = Exploding()
    none, early = ours(x, text, torch.tensor([500.0]), attn_maps=names, maps_only=True)
    (grad_early,) = torch.autograd.grad(sum(A.square().sum() for A in early.values()), x)
    assert out is not None and none is None and sorted(early) == sorted(names)
    assert all(torch.equal(early[name], full[name]) for name in names)
    assert torch.equal(grad_early, grad_full) and grad_full.abs().max() > 0
