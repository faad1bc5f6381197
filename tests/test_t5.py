"""Our T5Encoder is transformers' T5EncoderModel: the same state_dict at the official T5 v1.1 XXL size, and the same
last hidden state (float32, 1e-5) on randomised tiny configs, with and without a padding mask, at lengths beyond
max_distance so the log-spaced buckets and the shared far bucket are all used."""
import pytest
import torch
from transformers import T5Config as ReferenceT5Config
from transformers import T5EncoderModel

from model.t5 import TIED_KEYS, T5Config, T5Encoder, relative_position_bucket
from oracles import max_abs_diff, normalized, randomize_, shapes

TOL = 1e-5
OFFICIAL_T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
TINY_T5S = {  # (config, sequence length)
    "official-buckets": (dict(OFFICIAL_T5, vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4), 150),
    "small-buckets": (dict(OFFICIAL_T5, vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3, num_heads=4,
                           relative_attention_num_buckets=10, relative_attention_max_distance=12), 30),
}


def t5_pair(cfg, attn_implementation, seed=0):
    torch.manual_seed(seed)
    oracle = T5EncoderModel(ReferenceT5Config(**cfg, attn_implementation=attn_implementation))
    oracle = randomize_(oracle, seed).eval()
    ours = T5Encoder(T5Config(**cfg)).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(TINY_T5S))
def test_hidden_states_match_oracle(name, attn_implementation):
    cfg, length = TINY_T5S[name]
    oracle, ours = t5_pair(cfg, attn_implementation)
    ids = torch.randint(0, cfg["vocab_size"], (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length * 2 // 3:] = 0  # the second prompt is right-padded
    with torch.no_grad():
        for attention_mask in (None, mask):
            ref = oracle(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            out = ours(ids, attention_mask)
            label = f"t5 {name} {attn_implementation} L{length} mask={attention_mask is not None}"
            assert max_abs_diff(label, out, ref) <= TOL


def test_buckets_match_oracle_and_cover_the_table():
    from transformers.models.t5.modeling_t5 import T5Attention

    offsets = torch.arange(-300, 301)
    for buckets, distance in [(32, 128), (10, 12), (8, 20)]:
        ours = relative_position_bucket(offsets, buckets, distance)
        assert torch.equal(ours, T5Attention._relative_position_bucket(offsets, True, buckets, distance))
        # every bucket is used but num_buckets // 2: positive offsets start at 1, which shares no bucket with 0
        assert sorted(ours.unique().tolist()) == [b for b in range(buckets) if b != buckets // 2]


def test_bfloat16_matches_oracle():
    cfg, length = TINY_T5S["official-buckets"]
    oracle, ours = t5_pair(cfg, "sdpa")
    oracle, ours = oracle.to(torch.bfloat16), ours.to(torch.bfloat16)
    ids = torch.randint(0, cfg["vocab_size"], (2, length))
    with torch.no_grad():
        ref, out = oracle(input_ids=ids).last_hidden_state, ours(ids)
    assert out.dtype == ref.dtype == torch.bfloat16
    # the same operations in the same order (gelu_new written out, norms in float32): bit-equal on CPU
    assert max_abs_diff("t5 bf16", out, ref) == 0


def test_default_config_is_official():
    assert normalized(T5Config()) == OFFICIAL_T5
    # the config.json keys the encoder does not use (decoder size, dropout, ids) are dropped
    release = dict(OFFICIAL_T5, num_decoder_layers=24, dropout_rate=0.1, dense_act_fn="gelu_new", is_gated_act=True,
                   tie_word_embeddings=False, architectures=["T5EncoderModel"], pad_token_id=0, eos_token_id=1)
    assert T5Config.from_json_dict(release) == T5Config()


def test_official_state_dict_matches_oracle():
    with torch.device("meta"):
        oracle = T5EncoderModel(ReferenceT5Config(**OFFICIAL_T5))
        ours = T5Encoder(T5Config())
    ours_shapes, ref_shapes = shapes(ours.state_dict()), shapes(oracle.state_dict())
    assert sorted(set(ours_shapes) - set(ref_shapes)) == []  # unexpected keys
    assert sorted(set(ref_shapes) - set(ours_shapes)) == []  # missing keys
    assert {k: s for k, s in ours_shapes.items() if s != ref_shapes[k]} == {}
    assert len(ours_shapes) == 220
    assert [k for k in ours_shapes if "relative_attention_bias" in k] == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    # the embedding is one tensor under two keys: parameters() counts it once, state_dict() twice
    for model in (ours, oracle):
        assert model.shared.weight is model.encoder.embed_tokens.weight
        assert sum(p.numel() for p in model.parameters()) == 4_762_310_656
        assert sum(t.numel() for t in model.state_dict().values()) == 4_762_310_656 + 32128 * 4096


def test_a_file_with_the_embedding_once_loads_strictly_and_stays_tied():
    cfg, _ = TINY_T5S["small-buckets"]
    oracle, _ = t5_pair(cfg, "sdpa")
    state = {k: v.clone() for k, v in oracle.state_dict().items() if k not in TIED_KEYS}  # as save_pretrained writes
    with torch.device("meta"):
        ours = T5Encoder(T5Config(**cfg))
    ours.load_state_dict(state | {k: state[v] for k, v in TIED_KEYS.items()}, strict=True, assign=True)
    assert ours.shared.weight is ours.encoder.embed_tokens.weight
    assert torch.equal(ours.shared.weight, oracle.shared.weight)
