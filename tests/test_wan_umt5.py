"""Our UMT5Encoder is transformers' UMT5EncoderModel: the same state_dict at the official umT5-XXL size (meta device),
and the same last hidden state (float32, 1e-5) on a randomised tiny config with a table per block, with and without
the padding mask Wan runs it with, at a length beyond max_distance so every bucket is used."""
import pytest
import torch
from transformers import UMT5Config as ReferenceUMT5Config
from transformers import UMT5EncoderModel

from model.wan.umt5 import UMT5Config, UMT5Encoder

TOL = 1e-5
OFFICIAL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                layer_norm_epsilon=1e-6)
TINY = dict(OFFICIAL, vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    oracle = UMT5EncoderModel(ReferenceUMT5Config(**TINY, attn_implementation="eager"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in oracle.parameters():
            p.add_(torch.randn(p.shape, generator=g) * max(0.5 * p.std().item(), 0.05))
    ours = UMT5Encoder(UMT5Config(**TINY)).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle.eval(), ours


def test_hidden_states_match_oracle(pair):
    oracle, ours = pair
    length = 150
    ids = torch.randint(0, TINY["vocab_size"], (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, 20:] = 0  # the second prompt is right-padded, as the pipeline pads to 512
    tables = [b.layer[0].SelfAttention.relative_attention_bias.weight for b in ours.encoder.block]
    assert not torch.equal(tables[0], tables[1])  # each block its own
    with torch.no_grad():
        for attention_mask in (None, mask):
            ref = oracle(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            out = ours(ids, attention_mask)
            diff = (out - ref).abs().max().item()
            print(f"\n[parity] umt5 mask={attention_mask is not None}: max abs diff {diff:.3e}")
            assert diff <= TOL


def test_official_state_dict_matches_oracle():
    with torch.device("meta"):
        ours = UMT5Encoder()
        oracle = UMT5EncoderModel(ReferenceUMT5Config(**OFFICIAL))
    ref = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == ref
    total = sum(p.numel() for p in ours.parameters())
    print(f"\n[size] umt5 encoder: {total:,} parameters")
    assert total == sum(p.numel() for p in oracle.parameters()) == 5_680_910_336
