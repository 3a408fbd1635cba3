"""Tokenizer against docs/FORMAT.md's known encodings and run's decode/print rules."""

import struct

import pytest
from conftest import write_tokenizer

from llama2py.errors import TokenizerError
from llama2py.tokenizer import Tokenizer


def byte_vocab():
    """<unk>, <s>, </s>, then the 256 byte pieces: the start of every llama2.c vocabulary."""
    return [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)]


@pytest.mark.parametrize(
    "text,ids",
    [
        ("", [1]),
        ("I believe the meaning of life is", [1, 306, 4658, 278, 6593, 310, 2834, 338]),
    ],
)
def test_known_encodings(llama_tokenizer, text, ids):
    assert Tokenizer(llama_tokenizer, 32000).encode(text) == ids


@pytest.mark.parametrize("text", ["", "a", " ", "ab ab", "Once upon a time", "你好", "x" * 1000])
def test_min_tokens_is_a_lower_bound(tmp_path, text):
    """min_tokens (the O(1) refusal of prompts too long for the context) never exceeds the real
    count: the empty text is BOS alone (it said 2, refusing "" at a context of 1)."""
    pieces = byte_vocab() + [b" ", b"a", b"b", b"ab", b" ab", b"x" * 7]
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", pieces, [0.0] * 259 + [1.0, 1.0, 1.0, 2.0, 3.0, 4.0]), 265)
    assert tok.min_tokens(text) <= len(tok.encode(text, bos=True))
    assert tok.min_tokens("") == len(tok.encode("", bos=True)) == 1


def test_roundtrip_and_bos_eos(llama_tokenizer):
    tok = Tokenizer(llama_tokenizer, 32000)
    text = "Once upon a time, Lily met a dragon. Ünïcödé ✓ 你好\nnew line"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=False)[0] != 1


def test_byte_fallback_and_print_rule(tmp_path):
    pieces = byte_vocab() + [b" ", b"a", b"b", b"ab", b" ab"]
    scores = [0.0] * 259 + [1.0, 1.0, 1.0, 2.0, 3.0]
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", pieces, scores), len(pieces))
    sp, a, sab = 259, 260, 263
    # merges by score: " " + "a" has no piece; "a"+"b" -> "ab", then " "+"ab" -> " ab"
    assert tok.encode("ab") == [1, sab]
    # a code point missing from the vocabulary falls back to its UTF-8 bytes (+3)
    assert tok.encode("é", bos=False) == [sp, 0xC3 + 3, 0xA9 + 3]
    # decode: the space after BOS is dropped; <0xHH> is the raw byte
    assert tok.piece_bytes(1, sab) == b"ab" and tok.piece_bytes(a, sab) == b" ab"
    assert tok.piece_bytes(a, 0x41 + 3) == b"A"
    # printing skips lone bytes that are neither printable nor whitespace (run's safe_printf)
    assert tok.printable_bytes(a, 0xC3 + 3) == b""
    assert tok.printable_bytes(a, 0x0A + 3) == b"\n"
    assert tok.decode(tok.encode("é")) == "é"  # the dummy-prefix space after BOS is dropped


def test_tokenizer_smaller_than_vocab(tmp_path):
    path = write_tokenizer(tmp_path / "t.bin", byte_vocab())
    with pytest.raises(TokenizerError, match="holds 259 tokens but the model's vocabulary has 300; it belongs"):
        Tokenizer(path, 300)
    # cut inside a record (its 8-byte head, or its bytes): truncated, not another model's
    data = path.read_bytes()
    for cut in (3, 12):
        path.write_bytes(data[:-cut])
        with pytest.raises(TokenizerError, match=r"truncated inside token 258's .*re-download") as e:
            Tokenizer(path, 259)
        assert "vocabulary" not in str(e.value)


def test_tokenizer_larger_than_vocab(llama_tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="beyond the model's 512 tokens"):
        Tokenizer(llama_tokenizer, 512)
    # far larger than any tokenizer of the vocabulary could be: refused unread, with the same advice
    big = write_tokenizer(tmp_path / "big.bin", byte_vocab() + [b"w%d" % i for i in range(20000)])
    assert big.stat().st_size > 4 + 3 * (8 + (1 << 16))  # the most 3 tokens can take
    with pytest.raises(TokenizerError, match=r"for 3 tokens; it belongs to a model with a larger vocabulary \(pass"):
        Tokenizer(big, 3)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "too short"),
        (struct.pack("<i", -5) + b"x" * 20, "max_token_length"),
        (struct.pack("<i", 10) + struct.pack("<fi", 0.0, 99) + b"abc", "invalid length"),
    ],
)
def test_corrupt_tokenizer(tmp_path, content, match):
    p = tmp_path / "bad.bin"
    p.write_bytes(content)
    with pytest.raises(TokenizerError, match=match):
        Tokenizer(p, 3)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        Tokenizer(tmp_path / "nope.bin", 10)


@pytest.mark.parametrize(
    "name,vocab_size,hint",
    [
        ("m.bin", 32000, "(the Llama 2 tokenizer.bin: `llama2py download tokenizer`)"),
        ("stories260K.bin", 512, "(`llama2py download tok512`)"),
        ("aidreams260K.bin", 512, "(the 512-token tokenizer made with this model; stories260K's is `llama2py"),
        ("m.bin", 97, "(the 97-token tokenizer made with this model)"),
    ],
)
def test_no_tokenizer_found_names_the_right_one(tmp_path, monkeypatch, name, vocab_size, hint):
    """The hint fits the model: Llama 2's tokenizer.bin would be refused by a 512-token model, and
    another 512-token model (aidreams260K) is not told that stories260K's tok512 is its own."""
    from llama2py.model import find_tokenizer

    monkeypatch.setenv("LLAMA2PY_MODELS", str(tmp_path / "store"))
    with pytest.raises(TokenizerError) as e:
        find_tokenizer(tmp_path / name, vocab_size)
    assert "pass one with -z (" in str(e.value) and hint in str(e.value), str(e.value)
    assert ("tokenizer.bin: `llama2py download tokenizer`" in str(e.value)) == (vocab_size == 32000)


def test_merge_order_is_by_score_then_leftmost(tmp_path):
    """The best-scoring pair merges first wherever it is; equal scores merge the leftmost pair."""
    pieces = byte_vocab() + [b" ", b"a", b"b", b"c", b"ab", b"bc", b"ca"]
    space, a, b, c, ab, bc = range(259, 265)
    scores = [0.0] * 259 + [0.0, 0.0, 0.0, 0.0, 1.0, 5.0, 0.0]
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", pieces, scores), len(pieces))
    assert tok.encode("abc", bos=False) == [space, a, bc]  # "bc" (5) beats the leftmost "ab" (1)
    scores[263] = scores[264] = 2.0  # now "ab" and "bc" tie: the leftmost pair wins
    tok = Tokenizer(write_tokenizer(tmp_path / "t2.bin", pieces, scores), len(pieces))
    assert tok.encode("abc", bos=False) == [space, ab, c]


def test_four_byte_code_point_is_one_unit(llama_tokenizer):
    """run reads a lead byte and up to 3 continuation bytes as one code point: a 4-byte emoji is
    looked up whole (here a single piece), not split into bytes."""
    assert Tokenizer(llama_tokenizer, 32000).encode("🌍") == [1, 29871, 31494]


def test_byte_fallback_past_the_vocabulary_is_unk(tmp_path):
    """A vocabulary cut short inside the byte pieces (<0x00>..<0xFE>, 258 entries): byte 0xFF has
    no id and becomes <unk>, 0xFE is the last piece."""
    pieces = byte_vocab()[:258]
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", pieces, [0.0] * 258), 258)
    assert tok.encode(b"\xff\xfe", bos=False) == [0, 257]


def test_decode_after_eos_and_bos_drops_the_space_again(tmp_path):
    """A second story after EOS, BOS: its first piece loses its space as the first story's did."""
    pieces = byte_vocab() + [b" ", b"a", b"b", b"ab", b" ab"]
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", pieces, [0.0] * 259 + [1.0] * 5), len(pieces))
    assert tok.decode([1, 263, 2, 1, 263]) == "abab"
    assert tok.decode([1, 263, 263]) == "ab ab"


def test_printable_bytes_bounds_of_run_rule(tmp_path):
    """run prints a lone byte when it is printable ASCII (0x20..0x7E) or whitespace (\\t\\n\\v\\f\\r)."""
    tok = Tokenizer(write_tokenizer(tmp_path / "t.bin", byte_vocab(), [0.0] * 259), 259)
    shown = {c for c in range(256) if tok.printable_bytes(5, c + 3)}
    assert shown == set(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0B, 0x0C, 0x0D}
