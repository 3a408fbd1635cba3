"""End to end: the CLI and API tell FORMAT.md's reference story; every bad input is a clean error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HOST_DEVICES, require_device

from llama2py.checkpoint import Config, random_weights, write_checkpoint

REFERENCE = """Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she
"""
ROOT = Path(__file__).resolve().parents[1]


def cli(*args, stdin=None, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "llama2py", *map(str, args)], capture_output=True, input=stdin, env=e, timeout=300
    )


def assert_clean_error(r, *fragments):
    err = r.stderr.decode()
    assert r.returncode != 0, f"expected failure, got rc 0; stderr: {err}"
    assert "Traceback" not in err, err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_reference_story(stories260k, device):
    require_device(device)
    ck, tok = stories260k
    r = cli(ck, "-z", tok, "-t", "0", "-n", "200", "--device", device)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == REFERENCE
    assert "achieved tok/s: " in r.stderr.decode()


def test_seeded_sampling_same_on_every_backend(stories260k):
    ck, tok = stories260k
    outs = {}
    for device in HOST_DEVICES:
        require_device(device)
        for flags in (
            ["-t", "1", "-p", "0.9", "-s", "42", "-n", "256"],
            ["-t", "0.8", "-p", "0.95", "-s", "7", "-i", "Once upon a time, Lily"],
            ["-t", "1.0", "-p", "0", "-s", "5", "-n", "100"],
        ):
            r = cli(ck, "-z", tok, "--device", device, *flags)
            assert r.returncode == 0, r.stderr.decode()
            outs.setdefault(tuple(flags), []).append(r.stdout)
    for flags, texts in outs.items():
        assert len(set(texts)) == 1, f"backends disagree for {flags}"
        assert len(texts[0]) > 50
    assert outs[("-t", "0.8", "-p", "0.95", "-s", "7", "-i", "Once upon a time, Lily")][0].startswith(
        b"Once upon a time, Lily"
    )


def test_api_matches_cli(stories260k):
    from llama2py import Llama

    ck, tok = stories260k
    m = Llama.load(ck, tokenizer=tok, device="numpy")
    assert m.config.vocab_size == 512 and m.tokenizer.vocab_size == 512
    res = m.run(steps=200, temperature=0.0)
    assert res.text + "\n" == REFERENCE
    assert res.tokens[0] == 1 and len(res.tokens) == 201 and res.tok_per_s > 0  # BOS + one per position
    assert "".join(m.stream(steps=200, temperature=0.0)) == res.text
    seeded = m.run("Once upon a time", steps=60, temperature=1.0, top_p=0.9, seed=9)
    assert seeded.text == m.run("Once upon a time", steps=60, temperature=1.0, top_p=0.9, seed=9).text
    assert seeded.text.startswith("Once upon a time")


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_logits_api(stories260k, device):
    from llama2py import Llama
    from llama2py.backends.numpy_backend import NumpyBackend

    require_device(device)
    ck, tok = stories260k
    m = Llama.load(ck, tokenizer=tok, device=device)
    ids = m.tokenizer.encode("Lily saw a cat")
    got = m.logits(ids)
    ref = NumpyBackend(m.config, m.checkpoint.weights)
    want = np.stack([ref.forward(np.array([t]), i)[0] for i, t in enumerate(ids)])
    assert got.shape == (len(ids), 512)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-5, f"worst relative error {err:.3g}"


def test_chat_mode(stories260k):
    ck, tok = stories260k
    r = cli(ck, "-z", tok, "-m", "chat", "-t", "0", "-n", "60", "--device", "numpy", stdin=b"\nHello there\n")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith("Enter system prompt (optional): User: Assistant: ")


def test_info(stories260k):
    r = cli("info", stories260k[0])
    assert r.returncode == 0
    assert "dim=64" in r.stdout.decode() and "260,032" in r.stdout.decode()


# -- errors -------------------------------------------------------------------------------------------
@pytest.fixture
def small_model(tmp_path):
    """A random checkpoint with the 512-token vocabulary and a 16-position context."""
    c = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=512, seq_len=16)
    p = tmp_path / "small.bin"
    write_checkpoint(p, c, random_weights(c))
    return p


def test_error_prompt_longer_than_context(small_model, stories260k):
    r = cli(
        small_model,
        "-z",
        stories260k[1],
        "-i",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
        "--device",
        "numpy",
    )
    assert_clean_error(r, "seq_len) is 16")


@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["-n", "-1"], "-n steps must be >= 0"),
        (["-t", "-0.5"], "-t temperature must be >= 0.0"),
        (["-t", "hot"], "must be a number"),
        (["-p", "1.5"], "-p top_p must be in [0.0, 1.0]"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--device", "tpu"], "invalid choice"),
        (["--frobnicate"], "unrecognized arguments"),
        (["-m", "poem"], "invalid choice"),
    ],
)
def test_error_bad_flags(stories260k, flags, fragment):
    r = cli(stories260k[0], "-z", stories260k[1], *flags)
    assert_clean_error(r, fragment)
    assert r.returncode == 2


def test_error_missing_checkpoint(tmp_path):
    assert_clean_error(cli(tmp_path / "nope.bin"), "no such file")


def test_error_truncated_checkpoint(stories260k, tmp_path):
    bad = tmp_path / "cut.bin"
    bad.write_bytes(stories260k[0].read_bytes()[:-100])
    assert_clean_error(cli(bad, "-z", stories260k[1]), "truncated", "1,056,540")


def test_error_tokenizer_mismatch(stories260k, llama_tokenizer):
    assert_clean_error(cli(stories260k[0], "-z", llama_tokenizer), "beyond the model's 512 tokens")


def test_error_tokenizer_too_small(tmp_path, stories260k):
    c = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=600, seq_len=16)
    p = tmp_path / "m.bin"
    write_checkpoint(p, c, random_weights(c))
    assert_clean_error(cli(p, "-z", stories260k[1]), "ends after 512 tokens")


def test_error_foreign_file(tmp_path):
    bad = tmp_path / "foreign.bin"
    bad.write_bytes(b"<html>not a model</html>" * 10)
    assert_clean_error(cli(bad), "checkpoint")


def test_error_tokenizer_is_a_directory(stories260k, tmp_path):
    assert_clean_error(cli(stories260k[0], "-z", tmp_path), "is a directory")


def test_error_absurd_thread_count(stories260k):
    assert_clean_error(
        cli(*stories260k[:1], "-z", stories260k[1], "-n", "4", "--device", "cpu", "--threads", "100000"),
        "threads=100000 is far more than",
    )


def test_prompt_bytes_that_are_not_utf8(stories260k):
    """run takes argv bytes; so does -i (the invalid bytes fall back to byte tokens, unprinted)."""
    require_device("cpu")
    ck, tok = stories260k
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama2py",
            str(ck),
            "-z",
            str(tok),
            "-t",
            "0",
            "-n",
            "30",
            "--device",
            "cpu",
            "-i",
            os.fsdecode(b"\xff\xfeLily"),
        ],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"Lily and Anna")


def test_tok_per_s_when_the_prefill_covers_every_position(stories260k):
    from llama2py import Llama

    m = Llama.load(stories260k[0], tokenizer=stories260k[1], device="numpy")
    res = m.run("Once upon a time", steps=3, temperature=0.0)
    assert res.stats.positions == 3 and res.tok_per_s > 0


def test_chat_ends_when_the_context_is_full(tmp_path, stories260k):
    c = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=512, seq_len=32)
    p = tmp_path / "small.bin"
    write_checkpoint(p, c, random_weights(c))
    r = cli(
        p,
        "-z",
        stories260k[1],
        "-m",
        "chat",
        "-y",
        "",
        "-t",
        "0",
        "-n",
        "0",
        "--device",
        "numpy",
        stdin=b"hi\n" + b"tell me a long story please\n" * 20,
    )
    assert r.returncode == 0, r.stderr.decode()
