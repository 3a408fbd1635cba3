"""Hostile and careless input (issue 10): every case is a clean one-line error or a normal run.

Each test names the cause it guards. Memory limits are tested with MemAvailable patched down, so
the outcome does not depend on the machine; nothing here allocates what it refuses.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import HOST_DEVICES, SHAPES, assert_one_line_error, require_device, write_tokenizer
from conftest import cli as run_cli  # llama2py.cli is `cli` here

from llama2py import cli
from llama2py.backends import base, create_backend
from llama2py.checkpoint import Config, load_checkpoint, random_weights, write_checkpoint
from llama2py.errors import CheckpointError, NonFiniteError, PromptError, ResourceError, TokenizerError
from llama2py.model import Llama
from llama2py.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def main_in_process(capsys, *argv) -> tuple[int, str]:
    """cli.main in this process (so monkeypatches apply): (exit code, stderr)."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def tiny_model(tmp_path, version=1, **over) -> tuple[Path, Path]:
    """A random checkpoint of a small shape (vocab 300) and a fitting tokenizer."""
    fields = dict(dim=16, hidden_dim=24, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=300, seq_len=32)
    fields.update(over)
    c = Config(**fields)
    ck = tmp_path / f"tiny_v{version}.bin"
    write_checkpoint(ck, c, random_weights(c), version)
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    pieces += [bytes([c_]) for c_ in b" abcdefghijklmnopqrstuvwxyz"][: c.vocab_size - len(pieces)]
    pieces += [b"w%d" % i for i in range(c.vocab_size - len(pieces))]
    return ck, write_tokenizer(tmp_path / "tiny_tok.bin", pieces, [float(i % 7) for i in range(len(pieces))])


@pytest.fixture
def low_memory(monkeypatch):
    """MemAvailable patched to 1 GiB."""
    monkeypatch.setattr(base, "available_memory", lambda: 1 * GiB)


# ---- 2. memory set by the header ------------------------------------------------------------------
def test_header_seq_len_cannot_ask_for_unbounded_kv_cache(tmp_path, low_memory):
    """A v1 file's seq_len is not tied to its size: 384 layers x 2**20 positions in a tiny file."""
    ck, tok = tiny_model(tmp_path, n_layers=384, dim=4, hidden_dim=4, n_heads=2, n_kv_heads=1, seq_len=1 << 20)
    assert ck.stat().st_size < 200_000
    for device in HOST_DEVICES:
        require_device(device)
        with pytest.raises(ResourceError) as e:
            Llama.load(ck, tok, device=device)
        msg = str(e.value)
        assert "1.00 GiB is available" in msg and "KV cache" in msg and "--context" in msg, msg
        assert "--max-batch" not in msg, msg  # already one sequence: a smaller batch cannot help
        # the advice is a figure: that context fits the 1 GiB, one position more does not
        fit = int(msg.split("--context ")[1].split()[0])
        config = load_checkpoint(ck).config
        backend = create_backend(device, config.capped(64), random_weights(config.capped(64)), 1)
        need = [sum(backend.host_bytes(config.capped(t), 1, None).values()) for t in (fit, fit + 1)]
        assert need[0] <= 1 * GiB < need[1], (fit, need)
        m = Llama.load(ck, tok, device=device, context=64)  # the override caps the KV cache
        assert m.config.seq_len == 64 and m.checkpoint.config.seq_len == 1 << 20
        assert not any("context" in n for n in m.notes)
        assert len(m.run("ab", steps=8, temperature=0.0, seed=1).tokens) == 9  # positions 0..8


def test_context_above_seq_len_is_a_note(tmp_path):
    """context= only caps: asking for more than the checkpoint holds uses seq_len and says so
    (in notes, which --verbose prints)."""
    require_device("cpu")
    ck, tok = tiny_model(tmp_path)
    seq_len = Llama.load(ck, tok, device="cpu").config.seq_len
    m = Llama.load(ck, tok, device="cpu", context=seq_len + 100)
    assert m.config.seq_len == seq_len
    assert f"context {seq_len + 100} is more than the checkpoint's seq_len {seq_len}: using {seq_len}" in m.notes


def test_max_batch_size_is_checked_before_allocating(tmp_path, low_memory):
    ck, tok = tiny_model(tmp_path, seq_len=4096, n_layers=8)
    with pytest.raises(ResourceError, match=r"max_batch_size / --max-batch"):
        Llama.load(ck, tok, device="numpy", max_batch_size=12000)


def test_cli_num_samples_checked_before_any_list(tmp_path, capsys, low_memory):
    ck, tok = tiny_model(tmp_path, seq_len=4096, n_layers=8)
    rc, err = main_in_process(capsys, ck, "-z", tok, "--device", "numpy", "--num-samples", "1000000000", "-n", "0")
    assert rc == 1 and "1.00 GiB is available" in err and "or less" in err, err
    fit = int(err.split("--max-batch ")[1].split()[0])
    assert 1 <= fit < 1000000000
    # the advice is the backend's own figure: fit sequences fit the 1 GiB, one more does not
    config = load_checkpoint(ck).config
    one = create_backend("numpy", config, random_weights(config), 1)
    need = [sum(one.host_bytes(config, b, None).values()) for b in (fit, fit + 1)]
    assert need[0] <= 1 * GiB < need[1], (fit, need)
    # already one sequence at a time and still too big: no "--max-batch 1 or less" advice
    ck2, tok2 = tiny_model(tmp_path, n_layers=384, dim=4, hidden_dim=4, n_heads=2, n_kv_heads=1, seq_len=1 << 20)
    rc, err = main_in_process(
        capsys, ck2, "-z", tok2, "--device", "numpy", "--num-samples", "3", "--max-batch", "1", "-n", "0"
    )
    assert rc == 1 and "--context" in err and "--max-batch 1" not in err, err


@pytest.mark.parametrize("version,weights", [(1, "q8_0"), (2, "f32")])
def test_load_time_conversion_checked_before_converting(tmp_path, monkeypatch, version, weights):
    """weights= converts a file's weights into new arrays in memory: a result that cannot fit beside
    the KV cache and buffers the backend then needs is refused before any of it is made (it once
    quantized a 7B file to 6.6 GiB, then refused)."""
    from llama2py.checkpoint import Weights, checkpoint_bytes, header_bytes

    c = Config(dim=512, hidden_dim=1376, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, seq_len=4096)
    gs = 64 if version == 2 else None
    ck = tmp_path / "big.bin"
    with open(ck, "wb") as f:  # sparse: the header, then a hole of the file's size
        f.write(header_bytes(c, version, gs))
        f.truncate(checkpoint_bytes(c, version, gs))
    tok = tmp_path / "tok.bin"
    write_tokenizer(tok, [b"w%d" % i for i in range(c.vocab_size)], [0.0] * c.vocab_size)

    def refuse(*args, **kwargs):
        raise AssertionError("converted")

    monkeypatch.setattr(Weights, "quantized", refuse)
    monkeypatch.setattr(Weights, "dequantized", refuse)
    converted = c.weight_bytes(weights, 64)
    for avail in (16 * 2**20, converted + 50 * 2**20):  # the weights alone do not fit; they do, not the KV cache
        monkeypatch.setattr(base, "available_memory", lambda avail=avail: avail)
        with pytest.raises(ResourceError) as e:
            Llama.load(ck, tok, device="numpy", weights=weights)
        msg = str(e.value)
        assert f"its weights as {weights} need {converted / 2**20:.1f} MiB of memory, KV cache 128.0 MiB" in msg, msg
        assert f"but only {avail / 2**20:.1f} MiB is available" in msg and "a shorter context" in msg, msg
        assert str(ck) in msg and ("llama2py quantize" in msg) == (weights == "q8_0") and "\n" not in msg, msg
    with pytest.raises(AssertionError, match="converted"):  # a short context fits: converting goes ahead
        Llama.load(ck, tok, device="numpy", weights=weights, context=16)


def test_a_refused_memory_map_names_the_file(tmp_path, monkeypatch):
    """mmap fails with ENOMEM under an address-space limit (ulimit -v) below the file's size: the
    error names the file and the likely cause (it was a bare '[Errno 12] Cannot allocate memory')."""
    import errno

    from llama2py import checkpoint

    ck, tok = tiny_model(tmp_path)

    def refused(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(checkpoint.np, "memmap", refused)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert str(ck) in msg and "cannot map its" in msg and "ulimit -v" in msg and "\n" not in msg, msg


def test_memory_advice_names_what_fits(tmp_path, monkeypatch):
    """Each way out the refusal offers is computed: the batch and the context that fit, one
    sequence with a shorter context where neither a smaller batch nor a shorter context alone
    does, and no advice where not even one position of one sequence fits."""
    ck, tok = tiny_model(tmp_path, seq_len=4096, n_layers=8)
    config = load_checkpoint(ck).config
    one = create_backend("numpy", config, random_weights(config), 1)

    def need(context, batch):
        return sum(one.host_bytes(config.capped(context), batch, None).values())

    def refusal(avail, batch):
        monkeypatch.setattr(base, "available_memory", lambda: avail)
        with pytest.raises(ResourceError) as e:
            Llama.load(ck, tok, device="numpy", max_batch_size=batch)
        assert "\n" not in str(e.value)
        return str(e.value)

    avail = need(4096, 1)  # one sequence fits, two do not; or 3 with a shorter context
    msg = refusal(avail, 3)
    assert "(max_batch_size / --max-batch 1)" in msg, msg
    fit = int(msg.split("--context ")[1].split()[0])
    assert need(fit, 3) <= avail < need(fit + 1, 3), (fit, msg)
    # neither alone: this batch does not fit even at context 1, one sequence does up to 100
    avail = need(100, 1)
    big = base._largest(lambda b: need(1, b) <= avail, 10**7) + 1
    msg = refusal(avail, big)
    assert "--max-batch" not in msg.split("; use ")[1].replace("--max-batch 1)", ""), msg
    assert msg.endswith(
        "; use one sequence (max_batch_size=1 / --max-batch 1) with a context of 100 or less (context= / --context)"
    ), msg
    msg = refusal(need(1, 1) - 1, 3)
    assert msg.endswith("is available; even one sequence of one position does not fit"), msg


def test_cli_kv_cache_holds_only_the_positions_n_reaches(tmp_path, capsys, monkeypatch):
    """-n caps the KV cache (run stops at position n, whatever the prompt): a batch that needs
    more than the memory for the whole 4096-position context fits with -n 16; stories, and a
    prompt longer than -n (run prints its first n tokens), come out as with the whole context."""
    ck, tok = tiny_model(tmp_path, seq_len=4096, n_layers=8)

    def run(*argv) -> tuple[int, str, str]:
        rc = cli.main([str(a) for a in (ck, "-z", tok, "--device", "numpy", *argv)])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    monkeypatch.setattr(base, "available_memory", lambda: 1 * GiB)
    many = ["--num-samples", "2000", "-t", "0"]
    rc, _, err = run(*many, "-n", "0")
    assert rc == 1 and "1.00 GiB is available" in err, err
    rc, _, err = run(*many, "-n", "16", "--max-batch", "2000")
    assert rc == 0, err
    prompts = tmp_path / "prompts.txt"  # 60 characters, 180 UTF-8 bytes: more tokens than characters
    prompts.write_text("\u65e5\u672c" * 30 + "\n", encoding="utf-8")
    cases = (["-n", "16", "-s", "3"], ["-n", "5", "-i", "abcdefghijklmnopqrstuvwxyz", "-t", "0"])
    for argv in (*cases, ["-n", "20", "-s", "1", "--prompts-file", prompts]):
        (rc1, capped, err1), (rc2, whole, err2) = run(*argv, "--verbose"), run(*argv, "--context", "4096", "--verbose")
        assert rc1 == rc2 == 0 and capped == whole and capped, (argv, capped, whole)
        assert "KV cache for" in err1 and "KV cache for" not in err2, (err1, err2)


def test_cli_context_flag(tmp_path, capsys):
    ck, tok = tiny_model(tmp_path)
    rc, err = main_in_process(capsys, ck, "-z", tok, "--device", "numpy", "--context", "4", "-n", "0", "-t", "0")
    assert rc == 0, err
    # a context of one position holds BOS: no prompt runs one step; a prompt is refused naming --context
    rc, err = main_in_process(capsys, ck, "-z", tok, "--device", "numpy", "--context", "1", "-t", "0")
    assert rc == 0, err
    assert_one_line_error(
        run_cli(ck, "-z", tok, "--context", "1", "-i", "a"), "but the context is 1 position (", "--context", rc=1
    )
    assert_one_line_error(run_cli(ck, "-z", tok, "--context", "0"), "--context must be >= 1", rc=2)


def test_prompts_file_lines_capped_and_summary_bounded(tmp_path, capsys, monkeypatch):
    """Memory grows with the number of prompts (each keeps its line number and tokens), so a
    prompts file past PROMPTS_FILE_LINES lines is refused up front; the per-sequence tok/s lines stop at
    SUMMARY_LINES, a last line counting the others (400,000 prompts printed 400,000 lines)."""
    ck, tok = tiny_model(tmp_path)
    monkeypatch.setattr(cli, "PROMPTS_FILE_LINES", 3)
    monkeypatch.setattr(cli, "SUMMARY_LINES", 2)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n\nb\nc\n")  # 4 lines, one blank
    rc, err = main_in_process(capsys, ck, "-z", tok, "--device", "numpy", "--prompts-file", prompts, "-n", "3")
    assert_one_line_error((rc, err), f"--prompts-file {prompts}: 4 lines, more than the 3 one run takes", rc=1)
    prompts.write_text("a\nb\nc")  # 3 lines, the last without a newline
    rc, err = main_in_process(capsys, ck, "-z", tok, "--device", "numpy", "--prompts-file", prompts, "-n", "3")
    assert rc == 0, err
    assert "aggregate over 3 sequences" in err and "  prompt 1: " in err and "  prompt 2: " in err
    assert "  prompt 3: " not in err and err.rstrip().endswith("(1 more sequence: the aggregate above counts them)")


def test_memory_error_is_a_clean_cli_error(tmp_path, capsys, monkeypatch):
    ck, tok = tiny_model(tmp_path)

    def boom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(Llama, "load", boom)
    assert_one_line_error(main_in_process(capsys, ck, "-z", tok), "out of memory", "--max-batch", rc=1)


# ---- 3. time set by the input ---------------------------------------------------------------------
def encode_reference(tok: Tokenizer, text: str) -> list[int]:
    """run's merge loop as it was (O(n^2)): the reference the heap version must equal exactly."""
    raw = text.encode("utf-8")
    tokens = [1] + ([tok._ids[b" "]] if raw and b" " in tok._ids else [])
    i = 0
    while i < len(raw):
        j = i + 1
        while j < len(raw) and (raw[j] & 0xC0) == 0x80 and j - i < 4:
            j += 1
        t = tok._ids.get(raw[i:j])
        tokens += [t] if t is not None else [b + 3 if b + 3 < tok.vocab_size else 0 for b in raw[i:j]]
        i = j
    while True:
        best_score, best_id, best_i = -1e10, -1, -1
        for k in range(len(tokens) - 1):
            tid = tok._ids.get(tok.pieces[tokens[k]] + tok.pieces[tokens[k + 1]])
            if tid is not None and tok.scores[tid] > best_score:
                best_score, best_id, best_i = tok.scores[tid], tid, k
        if best_i < 0:
            break
        tokens[best_i : best_i + 2] = [best_id]
    return tokens


def tie_heavy_tokenizer(tmp_path) -> Tokenizer:
    """Every string of 1..4 letters over 'abc' is a piece, scores from {0, 1, 2} (many ties),
    some below run's -1e10 floor (never merged) and one NaN (never merged either)."""
    import itertools

    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)] + [b" "]
    for n in range(1, 5):
        pieces += ["".join(p).encode() for p in itertools.product("abc", repeat=n)]
    pieces += [b" a", b" ab", b" abc"]
    rng = random.Random(3)
    scores = [0.0] * 260 + [float(rng.choice([0, 1, 2])) for _ in pieces[260:]]
    scores[pieces.index(b"ca")] = -2e10
    scores[pieces.index(b"bb")] = float("nan")
    return Tokenizer(write_tokenizer(tmp_path / "ties.bin", pieces, scores), len(pieces))


def test_heap_encoding_equals_runs_merge_loop(tmp_path, stories260k, llama_tokenizer):
    rng = random.Random(12345)
    toks = [tie_heavy_tokenizer(tmp_path), Tokenizer(stories260k[1], 512), Tokenizer(llama_tokenizer, 32000)]
    alphabets = ["abc", "abc ", "ab c\u00e9\u4f60", "Once upon a time, Lily saw a cat. \n"]
    for tok in toks:
        merged = fallback = 0  # texts whose encoding holds a merged piece / a byte-fallback token
        for _ in range(150):
            alpha = rng.choice(alphabets)
            text = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 60)))
            ids = tok.encode(text)
            assert ids == encode_reference(tok, text), repr(text)
            merged += any(len(tok.pieces[t]) > 1 and not 3 <= t < 259 for t in ids[1:])
            fallback += any(3 <= t < 259 for t in ids)
        # the texts exercise both paths of the merge loop (ids 3..258 are the <0xXX> byte pieces)
        assert merged >= 100 and fallback >= 5, (tok.vocab_size, merged, fallback)


def test_long_prompt_refused_before_encoding(stories260k, monkeypatch):
    m = Llama.load(*stories260k, device="numpy")
    calls = []
    monkeypatch.setattr(m.tokenizer, "encode", lambda *a, **k: calls.append(1) or [1])
    with pytest.raises(PromptError, match="at least .* tokens, but the context is 512 positions"):
        m.run("Lily " * 100_000)  # 500 KB: minutes with the quadratic encoder, refused at once now
    assert calls == []


def test_long_prompt_encodes_in_n_log_n(llama_tokenizer):
    tok = Tokenizer(llama_tokenizer, 32000)
    text = "Once upon a time, there was a little girl named Lily. " * 2000  # 108 KB
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text) // 3


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
@pytest.mark.parametrize("role", ["checkpoint", "tokenizer", "prompts"])
def test_non_regular_files_are_refused_without_opening(tmp_path, kind, role):
    ck, tok = tiny_model(tmp_path)
    if kind == "fifo":
        bad = tmp_path / "fifo"
        os.mkfifo(bad)
        expect = "FIFO"
    elif kind == "dev_zero":
        bad = Path("/dev/zero")
        if not bad.exists():
            pytest.skip("no /dev/zero")
        expect = "character device"
    else:
        bad = tmp_path
        expect = "directory"
    args = {"checkpoint": [bad, "-z", tok], "tokenizer": [ck, "-z", bad], "prompts": [ck, "-z", tok]}[role]
    if role == "prompts":
        args += ["--prompts-file", bad]
    what = {"checkpoint": "checkpoint", "tokenizer": "tokenizer", "prompts": "--prompts-file"}[role]
    r = run_cli(*args, "--device", "numpy", timeout=60)
    assert_one_line_error(r, f"{what} {bad}: is a", expect, rc=1)


def test_unreadable_file_names_the_file_and_its_role(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    ck, tok = tiny_model(tmp_path)
    for role, args, path in [("tokenizer", [ck, "-z", tok], tok), ("checkpoint", [ck, "-z", tok], ck)]:
        os.chmod(path, 0)
        try:
            assert_one_line_error(
                run_cli(*args, "--device", "numpy"), f"{role} {path}: cannot read it (Permission denied)"
            )
        finally:
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def test_unreadable_file_message_even_as_root(tmp_path, monkeypatch):
    """The same message through a patched open() (root can read a mode-0 file)."""
    from llama2py import input_files

    ck, tok = tiny_model(tmp_path)

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(input_files, "open", denied, raising=False)
    with pytest.raises(TokenizerError, match=r"tokenizer .*tiny_tok.bin: cannot read it \(Permission denied\)"):
        Tokenizer(tok, 300)
    with pytest.raises(CheckpointError, match=r"checkpoint .*tiny_v1.bin: cannot read it \(Permission denied\)"):
        load_checkpoint(ck)


# ---- 4. silent nonsense -----------------------------------------------------------------------------
@pytest.mark.parametrize("device", HOST_DEVICES)
def test_temperature_in_float32(device, stories260k):
    """-t 1e-300 is 0 in float32: greedy, as run. 1e-40 (subnormal) would overflow: refused."""
    require_device(device)
    m = Llama.load(*stories260k, device=device)
    greedy = m.run("Lily", steps=24, temperature=0.0).tokens
    assert m.run("Lily", steps=24, temperature=1e-300, seed=5).tokens == greedy
    for t in (1e-40, 1e-38, float("inf"), float("nan"), -1.0, 1e39):
        with pytest.raises(ValueError, match="temperature"):
            m.run("Lily", steps=4, temperature=t)
    for p in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            m.run("Lily", steps=4, top_p=p)


def test_cli_temperature_and_seed_flags(stories260k):
    require_device("cpu")
    ck, tok = stories260k
    greedy = run_cli(ck, "-z", tok, "-t", "0", "-n", "24", "--device", "cpu")
    tiny = run_cli(ck, "-z", tok, "-t", "1e-300", "-n", "24", "--device", "cpu")
    assert greedy.returncode == 0 and tiny.stdout == greedy.stdout
    assert_one_line_error(run_cli(ck, "-z", tok, "-t", "1e-40"), "smallest normal", rc=2)
    assert_one_line_error(run_cli(ck, "-z", tok, "-t", "inf"), "-t temperature must be a finite number", rc=2)
    assert_one_line_error(run_cli(ck, "-z", tok, "-p", "nan"), "-p top_p must be a finite number", rc=2)
    assert_one_line_error(run_cli(ck, "-z", tok, "-s", str(2**64)), "-s seed must be in 0..18446744073709551615", rc=2)
    assert_one_line_error(run_cli(ck, "-z", tok, "-y", "be nice"), "-y (system prompt) only applies with -m chat", rc=2)


def nan_checkpoint(tmp_path, value, tensor="wq", version=1) -> tuple[Path, Path]:
    ck, tok = tiny_model(tmp_path, version=version)
    c = load_checkpoint(ck).config
    w = random_weights(c)
    getattr(w, tensor)[0].flat[3] = value
    write_checkpoint(ck, c, w, version)
    return ck, tok


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_weights_stop_with_a_clear_error(tmp_path, device, value, temperature):
    require_device(device)
    ck, tok = nan_checkpoint(tmp_path, value)
    m = Llama.load(ck, tok, device=device, max_batch_size=2)
    with warnings.catch_warnings():  # one error, no RuntimeWarnings from the numpy spec on stderr
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(NonFiniteError, match="non-finite logits .* at position .* NaN/Inf"):
            m.run("ab", steps=10, temperature=temperature, seed=3)
        with pytest.raises(NonFiniteError):
            m.generate([[1, 5, 6], [1, 7]], max_gen_len=5, temperature=temperature, seed=3)


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("source", ["v2 file", "v1 file, weights q8_0"])
def test_int8_overflow_stops_with_a_clear_error(tmp_path, device, source):
    """Finite int8 weights whose products overflow float32: the NaN that attention makes of the
    infinities must reach the logits on every backend (quantizing activations once turned it into
    0, and the cpu backend told a story)."""
    require_device(device)
    version, weights = (2, None) if source == "v2 file" else (1, "q8_0")
    ck, tok = tiny_model(tmp_path, version=version)
    c = load_checkpoint(ck).config
    w = random_weights(c)
    # finite, and quantizable (scale max / 127, every value 127), but 127 * scale rounds up to inf
    w.wq[0][:] = np.finfo(np.float32).max
    write_checkpoint(ck, c, w, version)
    m = Llama.load(ck, tok, device=device, max_batch_size=2, weights=weights)
    assert m.backend.weight_type == "q8_0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the numpy spec's overflow in the products)
        with pytest.raises(NonFiniteError, match="non-finite logits .* at position"):
            m.run("ab", steps=10, temperature=0.0)
        with pytest.raises(NonFiniteError):
            m.generate([[1, 5, 6], [1, 7]], max_gen_len=5, temperature=0.8, seed=3)
    # the command line says it in one line, with no numpy overflow warning on stderr before it
    for flags in (["--weights", "f32"], [] if source == "v2 file" else ["--weights", "q8_0"]):
        assert_one_line_error(run_cli(ck, "-z", tok, "--device", device, "-t", "0", *flags), "non-finite", rc=1)


def test_non_finite_weights_cli_exit_1(tmp_path):
    require_device("cpu")
    ck, tok = nan_checkpoint(tmp_path, np.nan, "w2")
    assert_one_line_error(run_cli(ck, "-z", tok, "--device", "cpu", "-t", "0"), "non-finite logits", rc=1)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_backend_refuses_bad_ids_and_arguments(device):
    require_device(device)
    c = SHAPES["odd_tiny"]
    be = create_backend(device, c, random_weights(c), 2)
    V = c.vocab_size
    bad_tokens = [
        np.array([2**32 + 5], np.int64),  # would wrap to 5 as int32
        np.array([1.0]),  # a float, even an integral one: no silent casts
        np.array([True]),
        np.array([V]),
        np.array([-1]),
        [1, 2**70],
    ]
    for t in bad_tokens:
        with pytest.raises(ValueError, match="tokens"):
            be.forward(t, 0)
        with pytest.raises(ValueError, match="tokens"):
            be.step(t, 0, 0.0, 0.9)
    with pytest.raises(TypeError, match="integer token ids, got None"):
        be.forward(None, 0)
    with pytest.raises(ValueError, match=r"got None \(NoneType\)"):  # not "ids beyond 64 bits"
        be.forward([1, None], 0)
    ok = np.array([1], np.int32)
    with pytest.raises(TypeError, match="pos must be an integer"):
        be.forward(ok, 1.5)
    with pytest.raises(ValueError, match="positions"):
        be.forward(ok, c.seq_len)
    for t, p in [(float("inf"), 0.9), (0.8, float("nan")), (-0.1, 0.9), (1e-40, 0.9)]:
        with pytest.raises(ValueError, match="temperature|top_p"):
            be.step(ok, 0, t, p)
    with pytest.raises(TypeError):
        be.step(ok, 0, "hot", 0.9)
    for forced in (np.zeros(2, np.int32), np.array([V]), np.array([0.5]), np.array([[0]])):
        with pytest.raises(ValueError, match="forced"):
            be.step(ok, 0, 0.0, 0.9, forced=forced)
    with pytest.raises(ValueError, match="logits"):
        be.prefill(np.ones((1, 2), np.int32), 0, logits="some")
    for seeds in ([2**64], [-1], [1, 2, 3]):
        with pytest.raises(ValueError):
            be.set_seeds(seeds)
    with pytest.raises(TypeError):
        be.set_seeds([1.5])
    # a good call after all that still works
    nxt, _ = be.step(np.array([1, 2]), 0, 0.0, 0.9, forced=np.array([-1, 4]))
    assert nxt[1] == 4 and 0 <= nxt[0] < V


def test_api_refuses_non_integer_prompts(stories260k):
    m = Llama.load(*stories260k, device="numpy", max_batch_size=2)
    for prompts in ([[1, 300.7]], [[1, 2**32 + 5]], [[1, True]], [[1, "a"]], [[1, -3]], [[1, 512]]):
        with pytest.raises(PromptError, match="prompt 0"):
            m.generate(prompts, max_gen_len=2)
    with pytest.raises(TypeError):
        m.generate("Once", max_gen_len=2)
    for bad in (5, 3.5, None, ["Lily"]):
        with pytest.raises(PromptError, match="must be text"):
            m.run(bad, steps=2)
    with pytest.raises(ValueError):
        m.logits([1, 2.5])
    assert m.run(b"Lily", steps=6, temperature=0.0).text == m.run("Lily", steps=6, temperature=0.0).text


def test_decode_refuses_ids_outside_the_vocabulary(stories260k):
    tok = Tokenizer(stories260k[1], 512)
    for ids in ([-1], [512 + 5], [2**32 + 5], [1.0]):
        with pytest.raises(ValueError):
            tok.decode(ids)
    with pytest.raises(ValueError):
        tok.piece_bytes(1, -1)
    assert tok.decode([1, 403]) == tok.decode(np.array([1, 403]))


# ---- 5. undefined behaviour: exp of NaN ------------------------------------------------------------------
def test_softmax_nan_is_nan_on_vector_and_scalar_paths():
    require_device("cpu")
    from llama2py import _cpu
    from llama2py.sampler import softmax

    for n in (8, 11, 19):  # 8-lane vector body and the scalar tail
        for where in sorted({0, 3, n - 1}):
            x = np.linspace(-3, 3, n).astype(np.float32)
            x[where] = np.nan
            out = np.empty(n, np.float32)
            _cpu.softmax(out, x)
            spec = softmax(x)
            assert np.isnan(out).all() and np.isnan(spec).all(), (n, where, out)
        x = np.linspace(-200, 5, n).astype(np.float32)  # the clamp at -87.3 on both paths
        out = np.empty(n, np.float32)
        _cpu.softmax(out, x)
        assert np.isfinite(out).all() and abs(float(out.sum()) - 1.0) < 1e-5


# ---- 6. tracebacks ---------------------------------------------------------------------------------------
def test_vocabulary_without_byte_tokens(tmp_path):
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" ", b"a", b"b", b"ab"] + [b"x%d" % i for i in range(193)]
    tok = Tokenizer(write_tokenizer(tmp_path / "small.bin", pieces), len(pieces))
    ids = tok.encode("ab \u00e9\u4f60\xff")  # bytes 0xC3 + 3 etc. would index past 200 entries
    assert all(0 <= i < len(pieces) for i in ids) and 0 in ids
    assert tok.decode(ids)


def test_chat_with_stdin_closed_and_raw_bytes(tmp_path, stories260k):
    require_device("cpu")  # the default device: cpu where there is no GPU
    ck, tok = stories260k
    base_args = [sys.executable, "-m", "llama2py", str(ck), "-z", str(tok), "-m", "chat", "-n", "40", "-t", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *base_args, "-y", "hi"], capture_output=True, env=env, timeout=120
    )
    assert closed.returncode == 0 and b"Traceback" not in closed.stderr, closed.stderr.decode()
    raw = subprocess.run(
        base_args, input=b"\xff system \xfe\n\xff\xfe Lily \xc3\n", capture_output=True, env=env, timeout=120
    )  # not UTF-8: bytes as run takes them
    assert raw.returncode == 0, raw.stderr.decode()
    assert b"Assistant:" in raw.stdout


def test_type_errors_do_not_dump_arrays(tmp_path):
    ck, tok = tiny_model(tmp_path)
    for kw in ({"threads": 2.5}, {"max_batch_size": 1.5}, {"context": "x"}):
        with pytest.raises(TypeError) as e:
            Llama.load(ck, tok, device="cpu", **kw)
        assert len(str(e.value)) < 200 and "array" not in str(e.value)


def test_tokenizer_vocab_size_must_be_an_int_of_at_least_3(stories260k):
    for bad in (0, -3, 1, 2):
        with pytest.raises(TokenizerError, match=r"vocab_size must be an integer >= 3 \(<unk>, BOS and EOS\)"):
            Tokenizer(stories260k[1], bad)
    for bad in (512.0, True, None, "512"):
        with pytest.raises(TypeError, match="vocab_size must be an integer, got"):
            Tokenizer(stories260k[1], bad)


@pytest.mark.parametrize("vocab", [1, 2])
def test_vocabulary_without_bos_and_eos_is_refused(tmp_path, vocab):
    """A 1- or 2-token vocabulary was accepted (synth wrote one, the loader took it), then encoding
    any prompt raised IndexError: run's loop needs BOS = 1 and EOS = 2."""
    with pytest.raises(CheckpointError, match=f"vocab_size {vocab} is too small: run's loop needs at least 3"):
        replace(SHAPES["mha_shared"], vocab_size=vocab).validate()
    r = run_cli("synth", "--shape", "stories260K", "--vocab", vocab, tmp_path / "v.bin", text=True)
    assert_one_line_error(r, f"vocab_size {vocab} is too small", rc=2)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_too_short_is_still_named(tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="only 10 bytes"):
        load_checkpoint(p)


def test_empty_paths_are_said_to_be_empty(stories260k):
    """Llama.load("") named the current folder ("checkpoint .: is a directory")."""
    ck, tok = stories260k
    with pytest.raises(ValueError, match="checkpoint path is empty; give the file's path"):
        Llama.load("", tok)
    with pytest.raises(ValueError, match="tokenizer path is empty"):
        Tokenizer("", 512)
    assert_one_line_error(run_cli("", "-n", "3", text=True), "checkpoint path is empty", rc=1)
