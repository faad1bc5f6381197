"""The T5 tokenizer of CogVideoX's text encoder and of Wan's umT5 (the same format), from scratch with the standard
library: SentencePiece's Unigram model read straight from the release's `tokenizer/spiece.model` (Kudo & Richardson
2018, "SentencePiece: A simple and language independent subword tokenizer and detokenizer for Neural Text
Processing"; Kudo 2018, "Subword Regularization", for the unigram language model).

    tok = T5Tokenizer.from_file("tokenizer/spiece.model")
    tok.encode("A cat, walking.")     # the pieces' ids, as sentencepiece's EncodeAsIds gives them
    tok.ids("A cat, walking.")        # + </s>, padded with <pad> to 226: the pipeline's input_ids
    T5Tokenizer(model_proto(pieces))  # a model written here (the tiny networks' character-level one)

Each step follows the sentencepiece 0.2.3 source, named below by file and function:
  1. read the ModelProto (protobuf wire format by hand; field numbers from src/sentencepiece_model.proto);
  2. normalise (src/normalizer.cc): the model's precompiled rules, looked up in their double-array trie (T5's are
     nmt_nfkc: NFKC, control characters dropped, every whitespace to ' '), then leading, trailing and repeated
     spaces dropped, the dummy prefix added ("▁hello" wherever the word stands) and spaces escaped as U+2581 "▁";
  3. Viterbi over the pieces' log-probabilities (src/unigram_model.cc EncodeOptimized), in its float32 sums and
     tie-breaking; an unknown character is <unk> (id 2 for T5), a run of them ONE <unk>
     (src/sentencepiece_processor.cc PopulateSentencePieceText), or its UTF-8 bytes where the model has byte_fallback;
  4. T5's post-processing, as transformers does it: at most length - 1 tokens, then </s>, then <pad> up to length.
Not reproduced: sentencepiece's rebasing of path scores past 1e5 (texts of thousands of tokens), which can only
change how such texts break float32 ties. transformers >= 5 tokenises with the `tokenizers` library, which departs
from sentencepiece in float64 sums and tie-breaking ("..." may become ".", ".." where sentencepiece gives "..", "."),
in normalising a combining mark after some letters ("Ａ\u0301" to "A", not "Á"), in splitting words at U+0085, and
in reading "</s>", "<extra_id_0>"... in the text as special tokens (plain text here, as in sentencepiece).
"""
import bisect
import struct

from plumbing.reading import read_bytes

TEXT_LENGTH = 226  # CogVideoX pads (and truncates) every prompt to this many tokens
# src/sentencepiece_model.proto field numbers
PIECES, TRAINER_SPEC, NORMALIZER_SPEC = 1, 2, 3                     # ModelProto
PIECE, SCORE, TYPE = 1, 2, 3                                        # ModelProto.SentencePiece
MODEL_TYPE, TREAT_WHITESPACE_AS_SUFFIX, BYTE_FALLBACK = 3, 24, 35   # TrainerSpec (ModelType UNIGRAM = 1)
CHARSMAP, ADD_DUMMY_PREFIX, REMOVE_EXTRA_WHITESPACES, ESCAPE_WHITESPACES = 2, 3, 4, 5  # NormalizerSpec
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type
UNK_PENALTY = 10.0  # unigram_model.cc kUnkPenalty: an unknown character scores min(normal piece scores) - 10
# Viterbi tries every piece length up to the longest at each character: a bound keeps it from growing with a
# hostile model's longest piece (sentencepiece trains pieces of at most 16 characters unless told otherwise)
MAX_PIECE_CHARS = 64


def read_varint(buf, pos):
    value = shift = 0
    while buf[pos] & 0x80:  # IndexError past the end: a truncated file
        value, shift, pos = value | (buf[pos] & 0x7F) << shift, shift + 7, pos + 1
        if shift > 63:  # a varint is at most 10 bytes; a longer one would grow a huge integer, step by step
            raise ValueError(f"a varint longer than 10 bytes at byte {pos}")
    return value | buf[pos] << shift, pos + 1


def read_message(buf):
    """Protobuf wire format -> {field number: [values]}: varints as ints, every other field as its bytes
    (https://protobuf.dev/programming-guides/encoding/)."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            value, pos = read_varint(buf, pos)
        elif wire_type in (1, 2, 5):  # 64-bit, length-delimited, 32-bit
            size, pos = read_varint(buf, pos) if wire_type == 2 else ({1: 8, 5: 4}[wire_type], pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire_type} at byte {pos}")
        if pos > len(buf):
            raise ValueError("truncated")
        fields.setdefault(number, []).append(value)
    return fields


def varint(value):
    out = bytearray()
    while value > 0x7F:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return bytes(out + bytes([value]))


def field(number, value):
    """One protobuf field: an int as a varint, a float as 32 bits, bytes length-delimited."""
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    if isinstance(value, float):
        return varint(number << 3 | 5) + struct.pack("<f", value)
    return varint(number << 3) + varint(value)


def model_proto(pieces):
    """The bytes of a SentencePiece Unigram ModelProto with these (piece, score, type) and no normalisation rules
    (spaces still escaped, the dummy prefix added): read_message's inverse, for models written in code."""
    proto = b"".join(field(PIECES, field(PIECE, piece.encode()) + field(SCORE, float(score)) + field(TYPE, kind))
                     for piece, score, kind in pieces)
    return proto + field(TRAINER_SPEC, field(MODEL_TYPE, 1)) + field(NORMALIZER_SPEC, field(ADD_DUMMY_PREFIX, 1))


def last(fields, number, default):
    """A singular field's value: the last one on the wire wins, as in every protobuf parser."""
    return fields.get(number, [default])[-1]


def f32(x):
    """x rounded to float32, the type of sentencepiece's scores and path sums."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


class T5Tokenizer:
    """SentencePiece Unigram encoding of a spiece.model, with T5's </s> and padding (see the module docstring)."""

    @classmethod
    def from_file(cls, path):
        try:
            return cls(read_bytes(path, "tokenizer"))
        except (ValueError, IndexError, struct.error, UnicodeDecodeError, AttributeError, TypeError) as err:
            # AttributeError, TypeError: a field of another wire type than its own (a number for a piece, say)
            raise ValueError(f"{path} is not a SentencePiece Unigram model: {err}") from None

    def __init__(self, model_proto: bytes):
        proto = read_message(model_proto)
        trainer, spec = (read_message(last(proto, n, b"")) for n in (TRAINER_SPEC, NORMALIZER_SPEC))
        if last(trainer, MODEL_TYPE, 1) != 1 or last(trainer, TREAT_WHITESPACE_AS_SUFFIX, 0):
            raise ValueError("not a Unigram model with the whitespace as prefix")
        # pieces: normal piece -> (id, score); ids_of: any piece -> its id; byte_ids: byte -> id of its "<0xXX>"
        self.pieces, self.ids_of, self.byte_ids, self.unk_id = {}, {}, {}, None
        for i, raw in enumerate(proto.get(PIECES, [])):
            fields = read_message(raw)
            piece, kind = last(fields, PIECE, b"").decode(), last(fields, TYPE, NORMAL)
            score = struct.unpack("<f", last(fields, SCORE, bytes(4)))[0]
            self.ids_of[piece] = i
            if kind == USER_DEFINED:  # verbatim symbols, with a bonus in Viterbi: T5 has none
                raise ValueError("user-defined pieces are not supported")
            if kind == NORMAL:  # the only pieces Viterbi matches (model_interface.cc InitializePieces; UNUSED: never)
                self.pieces[piece] = (i, score)
            self.unk_id = i if kind == UNKNOWN else self.unk_id
            if kind == BYTE:
                self.byte_ids[int(piece[3:5], 16)] = i
        if not self.pieces or self.unk_id is None or "</s>" not in self.ids_of or "<pad>" not in self.ids_of:
            raise ValueError("it lacks normal pieces or one of <unk>, </s>, <pad>")
        self.eos_id, self.pad_id = self.ids_of["</s>"], self.ids_of["<pad>"]
        self.max_length = max(map(len, self.pieces))  # in characters
        if self.max_length > MAX_PIECE_CHARS:
            raise ValueError(f"a piece of {self.max_length} characters (at most {MAX_PIECE_CHARS} are read)")
        self.unk_score = f32(min(score for _, score in self.pieces.values()) - UNK_PENALTY)
        self.byte_fallback, self.add_dummy_prefix = last(trainer, BYTE_FALLBACK, 0), last(spec, ADD_DUMMY_PREFIX, 1)
        self.remove_extra_whitespaces = last(spec, REMOVE_EXTRA_WHITESPACES, 1)
        self.space = "\u2581".encode() if last(spec, ESCAPE_WHITESPACES, 1) else b" "
        # normalizer.cc DecodePrecompiledCharsMap: <trie size: uint32><darts-clone double-array trie: uint32 units>
        # <replacements: NUL-terminated UTF-8 strings, which the trie's leaves point into>, little-endian
        charsmap, self.trie, self.replacements = last(spec, CHARSMAP, b""), (), b""
        if charsmap:
            size = struct.unpack("<I", charsmap[:4])[0]
            if size % 4 or 4 + size >= len(charsmap):
                raise ValueError("broken precompiled_charsmap")
            self.trie, self.replacements = struct.unpack(f"<{size // 4}I", charsmap[4:4 + size]), charsmap[4 + size:]
        # where each replacement string ends: found by bisection, not by a scan that a table without NULs makes long
        self.string_ends = [i for i, byte in enumerate(self.replacements) if byte == 0]

    def longest_rule(self, data, pos):
        """(bytes matched, replacement offset) of the longest rule matching a prefix of data[pos:], (0, 0) if none:
        darts-clone's commonPrefixSearch. A unit holds a label (bits 0-7; bit 31 marks value units), has-leaf (bit 8)
        and the offset to its children (bits 10-31, shifted left by 8 more when bit 9 is set)."""
        def offset(unit):
            return (unit >> 10) << ((unit & 1 << 9) >> 6)
        found, node = (0, 0), offset(self.trie[0])
        for i in range(pos, len(data)):
            node ^= data[i]
            unit = self.trie[node]
            if unit & 0x800000FF != data[i]:
                break
            node ^= offset(unit)
            if unit >> 8 & 1:
                found = (i + 1 - pos, self.trie[node] & 0x7FFFFFFF)
        return found

    def normalize_prefix(self, data, pos):
        """normalizer.cc NormalizePrefix: (normalised bytes, input bytes used) at data[pos:]: the longest rule's
        replacement, else one UTF-8 character unchanged."""
        try:
            length, value = self.longest_rule(data, pos) if self.trie else (0, 0)
        except IndexError:  # a unit pointing outside the trie
            raise ValueError("broken precompiled_charsmap: the rules' trie points outside itself") from None
        if length:
            ends = bisect.bisect_left(self.string_ends, value)
            if ends == len(self.string_ends):
                raise ValueError("broken precompiled_charsmap: a replacement without its NUL")
            return self.replacements[value:self.string_ends[ends]], length
        length = 1 if data[pos] < 0xC0 else 2 if data[pos] < 0xE0 else 3 if data[pos] < 0xF0 else 4
        return data[pos:pos + length], length

    def normalize(self, text):
        """normalizer.cc Normalize: the rules; then, as the spec says, leading, trailing and repeated spaces dropped,
        the dummy prefix added and spaces escaped."""
        data, pos, out = text.encode(), 0, bytearray()
        strip = self.remove_extra_whitespaces
        while strip and pos < len(data) and (prefix := self.normalize_prefix(data, pos))[0] == b" ":
            pos += prefix[1]
        if pos == len(data):
            return ""
        out += self.space if self.add_dummy_prefix else b""
        prev_space = strip
        while pos < len(data):
            chunk, used = self.normalize_prefix(data, pos)
            pos, chunk = pos + used, chunk.lstrip(b" ") if prev_space else chunk
            if chunk:
                out += chunk.replace(b" ", self.space)
                prev_space = strip and chunk.endswith(b" ")
        while strip and out.endswith(self.space):
            del out[-len(self.space):]
        return out.decode()

    def encode(self, text):
        """The token ids of `text`, without </s>: sentencepiece's EncodeAsIds. Viterbi over the lattice of pieces
        (unigram_model.cc EncodeOptimized): best[end] = (score, start, id) of the best path over s[:end]."""
        s = self.normalize(text)
        best = [(0.0, 0, -1)] + [None] * len(s)
        for start in range(len(s)):
            ends = range(start + 1, min(len(s), start + self.max_length) + 1)
            matches = [(end, self.pieces[s[start:end]]) for end in ends if s[start:end] in self.pieces]
            if not matches or matches[0][0] != start + 1:  # no piece is this one character: it is unknown
                matches.append((start + 1, (self.unk_id, self.unk_score)))
            for end, (piece_id, score) in matches:
                score = f32(best[start][0] + score)  # float32 sums; of equal scores the first found stays
                if best[end] is None or score > best[end][0]:
                    best[end] = (score, start, piece_id)
        path, end = [], len(s)
        while end > 0:
            _, start, piece_id = best[end]
            path.append((s[start:end], piece_id))
            end = start
        ids = []
        for piece, piece_id in reversed(path):
            if piece_id == self.unk_id and self.byte_fallback:
                ids += [self.byte_ids.get(b, self.unk_id) for b in piece.encode()]
            elif not (piece_id == self.unk_id and ids and ids[-1] == self.unk_id):  # a run of unknowns: one <unk>
                ids.append(piece_id)
        return ids

    def ids(self, text, length=TEXT_LENGTH):
        """The pipeline's input_ids for `text` (transformers' T5 tokenizer with padding="max_length",
        max_length=length, truncation=True): its first length - 1 token ids, </s>, then <pad> up to `length`."""
        ids = self.encode(text)[:length - 1] + [self.eos_id]
        return ids + [self.pad_id] * (length - len(ids))
