"""Our T5Tokenizer (pipelines/tokenizer.py, standard library only) is sentencepiece on the same model file. A tiny Unigram model
is trained here the way T5's was (nmt_nfkc normalisation; <pad> 0, </s> 1, <unk> 2, no <s>): our ids are
sentencepiece's EncodeAsIds for tricky strings and random text, our normalisation is sentencepiece's for every Unicode
code point, byte fallback included; ids() is transformers' T5Tokenizer with padding="max_length" and truncation, as the
CogVideoX pipeline calls it; a broken file is a one-line ValueError."""
import random
import struct
import time

import pytest
import sentencepiece as spm
from transformers import T5Tokenizer as ReferenceT5Tokenizer

from pipelines.cogvideox import prompt_ids, prompt_tokens
from pipelines.tokenizer import T5Tokenizer
from weights import WeightsError

CORPUS = """The quick brown fox jumps over the lazy dog. A cat walks slowly across the room, then sits.
Café, naïve, résumé, déjà vu, über, façade, piñata, Zürich, São Paulo, Ærø.
Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 42, 3.14, 2024-05-01, $100, 50% off!
Punctuation: (parentheses), [brackets], {braces}, "quotes", 'apostrophes', semi; colon: dash - ellipsis...
A video of a person dancing in the rain, cinematic lighting, 4k, slow motion.
Under a grey sky, fishermen pull their nets from the cold harbour while gulls circle and cry.
Children laugh in the garden; their mother reads quietly beside a window full of flowers.
An old train crosses the bridge at midnight, its yellow windows reflecting on the river below.
She opened the letter carefully, smiled, and placed it inside a wooden box with other memories.
The camera pans left to reveal a mountain range at sunset; birds fly overhead."""
STRINGS = ["", " ", "   ", "\t\n", "hello world", "  leading spaces", "trailing spaces   ", "multiple   inner  spaces",
           "tabs\tand\nnewlines\r\n\n here", "Café naïve ÉLAN résumé", "e\u0301 (e + combining acute)",
           "ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ　１２３！", "ﬁ ligature, ½, x², ㎏, Ⅸ, ℌ", "\u00a0no-break\u2003em\u3000ideographic",
           "zero\u200bwidth\u200d joiner", "\x00\x01 control \x7f chars", "unknown: 漢字 ☃ 🙂 ω", "☃☃☃ unknown run",
           "x" * 60, "ellipsis... and more.... dots", "A cat. " * 60, CORPUS * 3]
# transformers >= 5 (the `tokenizers` library) differs from sentencepiece on these, as pipelines/tokenizer.py's docstring says
SENTENCEPIECE_ONLY = ["next\x85line\u2028separator", "</s> <pad> <extra_id_0> as text", "\uff21\u0301, e\u0301\u0301"]
ALPHABET = "abcdeftz ABZ  \t\n.,;!?-'\"0123456789éüñÆ\u0301ｆＡ１　\u00a0\u200b漢☃🙂"


def train(directory, name, **options):
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(CORPUS.splitlines() * 20), model_prefix=str(directory / name), model_type="unigram",
        normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        num_threads=1, minloglevel=2, **{"vocab_size": 200, **options})
    return directory / f"{name}.model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("t5_tokenizer")
    train(directory, "spiece")  # the name transformers looks for
    return directory


@pytest.fixture(scope="module")
def pair(model_dir):
    path = model_dir / "spiece.model"
    return T5Tokenizer.from_file(path), spm.SentencePieceProcessor(str(path))


def random_texts(n, seed=0):
    rng, words = random.Random(seed), CORPUS.split()
    salads = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(n)]
    return salads + ["".join(rng.choices(ALPHABET, k=rng.randint(0, 40))) for _ in range(n)]


def test_model_has_t5_ids(pair):
    ours, sp = pair
    assert sp.GetPieceSize() == 200 and (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)


def test_encode_matches_sentencepiece(pair):
    ours, sp = pair
    for text in STRINGS + SENTENCEPIECE_ONLY + random_texts(500):
        assert ours.encode(text) == sp.EncodeAsIds(text), (text, sp.EncodeAsPieces(text))
    assert ours.encode("☃☃☃ unknown run").count(2) == 1  # a run of unknown characters is one <unk>


def test_normalisation_matches_sentencepiece_on_every_code_point(pair):
    ours, sp = pair
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)  # surrogates are not UTF-8
    for i in range(0, len(text), 4096):
        assert ours.normalize(text[i:i + 4096]) == sp.Normalize(text[i:i + 4096]), f"code points from {i:#x}"


def test_byte_fallback_matches_sentencepiece(tmp_path):
    path = train(tmp_path, "bytes", vocab_size=400, byte_fallback=True)
    ours, sp = T5Tokenizer.from_file(path), spm.SentencePieceProcessor(str(path))
    assert len(ours.byte_ids) == 256
    for text in STRINGS + random_texts(100):
        assert ours.encode(text) == sp.EncodeAsIds(text), (text, sp.EncodeAsPieces(text))


@pytest.mark.parametrize("length", [226, 8, 1])
def test_ids_pad_and_truncate_as_transformers(model_dir, pair, length):
    ours, sp = pair
    reference = ReferenceT5Tokenizer.from_pretrained(model_dir)  # converted from spiece.model, offline
    for text in STRINGS:
        ids = ours.ids(text, length)
        assert ids == reference(text, padding="max_length", max_length=length, truncation=True).input_ids, text
    for text in STRINGS + SENTENCEPIECE_ONLY:  # the rule itself: length - 1 tokens at most, </s>, <pad> to length
        kept = sp.EncodeAsIds(text)[:length - 1]
        assert ours.ids(text, length) == kept + [1] + [0] * (length - 1 - len(kept))
    assert ours.ids(CORPUS, length)[-1] == 1  # truncated: </s> is kept
    assert ours.ids("", length) == prompt_ids("", length)[0].tolist() == [1] + [0] * (length - 1)


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated", "json", "user_defined"])
def test_broken_file_is_a_one_line_value_error(model_dir, tmp_path, content):
    good = (model_dir / "spiece.model").read_bytes()
    path = tmp_path / "spiece.model"
    if content == "user_defined":  # a valid model, but with pieces T5 never has
        path = train(tmp_path, "user", user_defined_symbols=["<sep>"])
    else:
        path.write_bytes({"garbage": b"this is not a model", "empty": b"", "truncated": good[:len(good) // 2],
                          "json": b'{"model_max_length": 226}'}[content])
    with pytest.raises(ValueError) as err:
        T5Tokenizer.from_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def varint(n):
    out = b""
    while n > 0x7F:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def field(number, payload):
    """A protobuf field: an int as a varint, bytes length-delimited, a float as 32 bits."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    if isinstance(payload, float):
        return varint(number << 3 | 5) + struct.pack("<f", payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def hand_made(pieces, charsmap=None):
    """A spiece.model written by hand: (piece, type) pairs, and a precompiled_charsmap if given."""
    proto = b"".join(field(1, field(1, p.encode()) + field(2, -1.0) + field(3, kind)) for p, kind in pieces)
    return proto + (field(3, field(2, charsmap)) if charsmap else b"")


SPECIAL = [("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("a", 1), ("\u2581", 1)]


@pytest.mark.parametrize("content", ["long varint", "wrong wire type", "long piece"])
def test_hostile_files_are_refused_fast(tmp_path, content):
    """A varint of a million bytes (which would grow an integer step by step: quadratic), a number where a
    piece's text goes, a piece too long for the Viterbi search to stay cheap."""
    path = tmp_path / "spiece.model"
    path.write_bytes({"long varint": b"\x08" + b"\xff" * 1_000_000 + b"\x01",
                      "wrong wire type": field(1, field(1, 5)),
                      "long piece": hand_made(SPECIAL + [("\u2581" + "a" * 100, 1)])}[content])
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        T5Tokenizer.from_file(path)
    assert time.perf_counter() - start < 1 and "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_broken_tokenizer_is_the_model_s_fault_not_the_prompt_s(tmp_path):
    """A normalisation trie that points outside itself breaks only when a prompt is tokenised: a WeightsError
    naming the file (status 1), not a --prompt error."""
    assert T5Tokenizer(hand_made(SPECIAL)).ids("a", 4) == [4, 3, 1, 0]  # the hand-made model works
    (tmp_path / "tokenizer").mkdir()
    trie = struct.pack("<II", 4, 5 << 10)  # one unit, whose children would start at 5: outside
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(hand_made(SPECIAL, trie + b"x\0"))
    with pytest.raises(WeightsError, match="spiece.model: broken precompiled_charsmap"):
        prompt_tokens(str(tmp_path), "a cat", 226)


def test_cogvideox_prompts_use_the_release_tokenizer_file(model_dir, pair, tmp_path):
    """prompt_tokens reads tokenizer/spiece.model of the model's folder; the empty prompt needs none."""
    ours, reference = pair
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(next(model_dir.glob("*.model")).read_bytes())
    ids = prompt_tokens(str(tmp_path), "a cat, walking", 226)[0].tolist()
    tokens = reference.EncodeAsIds("a cat, walking")
    assert ids == tokens + [1] + [0] * (225 - len(tokens))
    assert prompt_tokens(str(tmp_path / "elsewhere"), "", 226)[0].tolist() == [1] + [0] * 225
