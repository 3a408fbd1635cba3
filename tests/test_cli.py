"""End to end: the CLI and API tell docs/FORMAT.md's reference story; every bad input is a clean error."""

import numpy as np
import pytest
from conftest import (
    HOST_DEVICES,
    REFERENCE_260K,
    SHAPES,
    assert_one_line_error,
    cli,
    cpu_built,
    model_file,
    require_device,
    write_tokenizer,
)

from llama2py.checkpoint import Config, random_weights, write_checkpoint

REFERENCE = REFERENCE_260K + "\n"  # run prints a newline after the story


def write_tokenizer_for(folder, vocab_size: int):
    """A tokenizer file of vocab_size pieces (<unk>, BOS, EOS, then plain words) in folder."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f" w{i}".encode() for i in range(3, vocab_size)]
    return write_tokenizer(folder / "tok.bin", pieces)


EOS = 2


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_reference_story(stories260k, device):
    require_device(device)
    model_path, tok = stories260k
    r = cli(model_path, "-z", tok, "-t", "0", "-n", "200", "--device", device)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == REFERENCE
    assert "achieved tok/s: " in r.stderr.decode()


_CLOCK_AT_1234 = """
import sys, types
import llama2py.sampler as sampler
sampler.time = types.SimpleNamespace(time=lambda: 1234.75)  # the clock run's rule reads
from llama2py.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "flags",
    [["-n", "60"], ["-s", "0", "-n", "60"], ["-m", "chat", "-y", "Be kind", "-i", "Hi", "-n", "80"],
     ["--num-samples", "2", "-i", "Once", "-n", "30"]],
)  # fmt: skip
def test_no_seed_on_the_command_line_is_the_time_as_in_run(stories260k, flags):
    """The library draws a fresh seed where none is given; the command line keeps run's rule (no
    -s, or -s 0: the time in whole seconds), so its stories still match run's: with the clock at
    1234.75, no seed tells the story of -s 1234 (a story, a chat, a batch of samples)."""
    import subprocess
    import sys

    model_path, tok = stories260k
    outs = []
    for seed in ([], ["-s", "1234"]):
        base = [f for f in flags if f not in ("-s", "0")] if seed else flags
        r = subprocess.run([sys.executable, "-c", _CLOCK_AT_1234, str(model_path), "-z", str(tok), *base, *seed],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        outs.append(r.stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 40, outs


def test_seeded_sampling_same_on_every_backend(stories260k):
    model_path, tok = stories260k
    outs = {}
    for device in HOST_DEVICES:
        require_device(device)
        for flags in (
            ["-t", "1", "-p", "0.9", "-s", "42", "-n", "256"],
            ["-t", "0.8", "-p", "0.95", "-s", "7", "-i", "Once upon a time, Lily"],
            ["-t", "1.0", "-p", "0", "-s", "5", "-n", "100"],
        ):
            r = cli(model_path, "-z", tok, "--device", device, *flags)
            assert r.returncode == 0, r.stderr.decode()
            outs.setdefault(tuple(flags), []).append(r.stdout)
    for flags, texts in outs.items():
        assert len(set(texts)) == 1, f"backends disagree for {flags}"
        assert len(texts[0]) > 50
    assert outs[("-t", "0.8", "-p", "0.95", "-s", "7", "-i", "Once upon a time, Lily")][0].startswith(
        b"Once upon a time, Lily"
    )


def test_api_matches_cli(stories260k):
    """The API's run/stream tell the CLI's story: the same bytes as `python -m llama2py`, greedy and
    seeded, and run's tokens (BOS + one per position)."""
    from llama2py import Llama

    model_path, tok = stories260k
    m = Llama.load(model_path, tokenizer=tok, device="numpy")
    assert m.config.vocab_size == 512 and m.tokenizer.vocab_size == 512
    res = m.run(steps=200, temperature=0.0)
    assert res.text + "\n" == REFERENCE
    assert res.tokens[0] == 1 and len(res.tokens) == 201  # BOS + one per position
    assert "".join(m.stream(steps=200, temperature=0.0)) == res.text
    flags = dict(prompt="Once upon a time", steps=60, temperature=1.0, top_p=0.9, seed=9)
    seeded = m.run(**flags)
    r = cli(model_path, "-z", tok, "-i", flags["prompt"], "-n", 60, "-t", 1.0, "-p", 0.9, "-s", 9, "--device", "numpy")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == (seeded.text + "\n").encode(), "API and CLI disagree for the same flags"
    assert seeded.text.startswith("Once upon a time") and len(seeded.text) > len(flags["prompt"]) + 20
    assert seeded.text != m.run(**dict(flags, seed=10)).text, "the seed must change the story"


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_logits_api(stories260k, device):
    from llama2py import Llama
    from llama2py.backends.numpy_backend import NumpyBackend

    require_device(device)
    model_path, tok = stories260k
    m = Llama.load(model_path, tokenizer=tok, device=device)
    ids = m.tokenizer.encode("Lily saw a cat")
    got = m.logits(ids)
    ref = NumpyBackend(m.config, m.checkpoint.weights)
    want = np.stack([ref.forward(np.array([t]), i)[0] for i, t in enumerate(ids)])
    assert got.shape == (len(ids), 512)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-5, f"worst relative error {err:.3g}"


@pytest.mark.parametrize(
    "flags,stdin,template",
    [
        # no -y: run asks for the system prompt first; an empty one gives the plain template
        ([], b"\nHello there\n", "[INST] Hello there [/INST]"),
        (["-y", "Be kind."], b"Hello there\n", "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHello there [/INST]"),
    ],
)
def test_chat_mode(stories260k, flags, stdin, template):
    """Greedy chat prints run's prompts and, for the assistant, what generate mode prints after the
    chat template (written out here, not taken from the library), cut at the first EOS."""
    from llama2py import Llama

    model_path, tok = stories260k
    steps = 60
    r = cli(model_path, "-z", tok, "-m", "chat", *flags, "-t", "0", "-n", steps, "--device", "numpy", stdin=stdin)
    assert r.returncode == 0, r.stderr.decode()

    m = Llama.load(model_path, tokenizer=tok, device="numpy")
    prompt = m.tokenizer.encode(template, bos=True)
    ran = m.run(template, steps=steps, temperature=0.0).tokens  # prompt + one token per later position
    assert ran[: len(prompt)] == prompt and len(ran) == steps + 1, "generate mode stopped early: pick another prompt"
    reply = ran[len(prompt) - 1 :]
    ended = EOS in reply
    if ended:
        reply = reply[: reply.index(EOS)]
    want = b"Enter system prompt (optional): " if not flags else b""
    want += b"User: Assistant: "
    want += b"".join(m.tokenizer.printable_bytes(a, b) for a, b in zip(reply, reply[1:]))
    want += b"\nUser: \n" if ended else b"\n"  # after an EOS the next turn reads stdin, which has ended
    assert r.stdout == want


def test_info(stories260k):
    r = cli("info", stories260k[0])
    assert r.returncode == 0
    assert "dim=64" in r.stdout.decode() and "260,032" in r.stdout.decode()


def test_info_names_the_cpu_kernel_level(stories260k, monkeypatch):
    monkeypatch.setenv("LLAMA2PY_ISA", "generic")  # every x86-64 CPU has it; a forced level must show
    r = cli("info", stories260k[0])
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "cpu kernels: generic" in out and "; this CPU supports generic" in out
    levels = out.split("; this CPU supports ")[1].splitlines()[0].split(", ")
    # below the best level here: info says it was forced, and which level is the best
    assert ("generic (forced; best here: " + levels[-1] in out) == (levels[-1] != "generic")


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
    assert_one_line_error(r, "the context is 16 positions")


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
    assert_one_line_error(r, fragment, rc=2)


def test_error_missing_checkpoint(tmp_path):
    assert_one_line_error(cli(tmp_path / "nope.bin"), "no such file")


def test_error_truncated_checkpoint(stories260k, tmp_path):
    bad = tmp_path / "cut.bin"
    bad.write_bytes(stories260k[0].read_bytes()[:-100])
    assert_one_line_error(cli(bad, "-z", stories260k[1]), "truncated", "1,056,540")


def test_error_tokenizer_mismatch(stories260k, llama_tokenizer):
    assert_one_line_error(cli(stories260k[0], "-z", llama_tokenizer), "beyond the model's 512 tokens")


def test_error_tokenizer_too_small(tmp_path, stories260k):
    c = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=600, seq_len=16)
    p = tmp_path / "m.bin"
    write_checkpoint(p, c, random_weights(c))
    assert_one_line_error(cli(p, "-z", stories260k[1]), "holds 512 tokens", "-z TOKENIZER")


def test_error_foreign_file(tmp_path):
    bad = tmp_path / "foreign.bin"
    bad.write_bytes(b"<html>not a model</html>" * 10)
    assert_one_line_error(cli(bad), "checkpoint")


def test_error_tokenizer_is_a_directory(stories260k, tmp_path):
    assert_one_line_error(cli(stories260k[0], "-z", tmp_path), "is a directory")


def test_error_files_in_each_others_place_say_what_they_are(stories260k):
    """The first mistakes of a new user: the tokenizer given as the checkpoint (and the other way
    round), sentencepiece's tokenizer.model in either place; each error says what the file is and
    what to do."""
    ckpt, tok = stories260k
    sp = model_file("tokenizer.model")
    assert_one_line_error(cli(tok, "-z", ckpt), "this is a llama2.c tokenizer, not a checkpoint", "with -z", rc=1)
    assert_one_line_error(cli(ckpt, "-z", ckpt), "this is a llama2.c checkpoint, not a tokenizer", rc=1)
    assert_one_line_error(cli(ckpt, "-z", sp), "a sentencepiece tokenizer.model; convert it first: llama2py convert")
    assert_one_line_error(
        cli(sp), "this is a sentencepiece tokenizer.model, not a llama2.c checkpoint", "llama2py convert", rc=1
    )
    assert_one_line_error(cli("info", tok), "this is a llama2.c tokenizer, not a checkpoint", rc=1)


@pytest.mark.parametrize("threads", ["100000", "1000000"])
def test_error_absurd_thread_count(stories260k, threads):
    """A bad flag (exit 2), named as the thread count; in the library, checked before the memory
    check (whose per-thread buffers would make 10**6 threads a 30 GiB 'use a shorter context'
    error)."""
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend
    from llama2py.checkpoint import load_checkpoint
    from llama2py.threads import max_threads

    assert_one_line_error(
        cli(*stories260k[:1], "-z", stories260k[1], "-n", "4", "--device", "cpu", "--threads", threads),
        f"--threads must be in 1..{max_threads()}, got {threads}",
        rc=2,
    )
    ck = load_checkpoint(stories260k[0])
    with pytest.raises(ValueError, match=f"threads={threads} is more than this machine can use: at most"):
        CpuBackend(ck.config, ck.weights, threads=np.int64(threads))
    from llama2py.backends.numpy_backend import NumpyBackend  # every backend, the same check

    with pytest.raises(ValueError, match=f"threads={threads} is more than this machine can use"):
        NumpyBackend(ck.config, ck.weights, threads=int(threads))


def test_prompt_bytes_that_are_not_utf8(stories260k):
    """run takes argv bytes; so does -i (the invalid bytes fall back to byte tokens, unprinted)."""
    require_device("cpu")
    model_path, tok = stories260k
    r = cli(model_path, "-z", tok, "-t", 0, "-n", 30, "--device", "cpu", "-i", b"\xff\xfeLily", timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"Lily and Anna")


def test_tok_per_s_when_the_prefill_covers_every_position(stories260k):
    """steps <= prompt length - 1: the prefill call runs every position, so tok/s is that call's own
    rate, and the text is the prompt's first `steps` pieces."""
    from llama2py import Llama

    m = Llama.load(stories260k[0], tokenizer=stories260k[1], device="numpy")
    prompt = m.tokenizer.encode("Once upon a time", bos=True)
    assert len(prompt) > 4
    res = m.run("Once upon a time", steps=3, temperature=0.0)
    stats = res.stats
    assert stats.positions == 3 and stats.first_call_positions == 3 and stats.first_call_s > 0
    assert res.tok_per_s == pytest.approx(3 / stats.first_call_s)
    assert res.text == b"".join(m.tokenizer.printable_bytes(prompt[i], prompt[i + 1]) for i in range(3)).decode()
    assert res.tokens == prompt  # nothing sampled


def test_chat_ends_when_the_context_is_full(tmp_path, stories260k):
    """More turns than fit in a 32-position context: the chat stops cleanly before reading them all."""
    c = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=512, seq_len=32)
    p = tmp_path / "small.bin"
    write_checkpoint(p, c, random_weights(c))
    lines = 21
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
        stdin=b"hi\n" + b"tell me a long story please\n" * (lines - 1),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()
    out = r.stdout
    assert out.startswith(b"User: Assistant: ") and out.endswith(b"\n")
    # each turn's prompt takes several positions of the 32: far fewer turns than lines were read
    assert 1 <= out.count(b"User: ") < lines and out.count(b"Assistant: ") <= out.count(b"User: ")
    assert b"warning" not in r.stderr  # a turn that does not fit is not started: nothing was cut


def test_chat_cut_by_n_inside_a_turn_says_so(stories260k):
    """-n smaller than the first turn's prompt: run stops without an answer and says nothing; the
    story on stdout stays run's, and stderr says why there was no answer."""
    path, tok = stories260k
    r = cli(path, "-z", tok, "-m", "chat", "-y", "sys", "-t", "0", "-n", "20", stdin=b"hi there\n", timeout=120)
    assert r.returncode == 0 and r.stdout == b"User: Assistant: \n", r.stdout
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llama2py: warning: the chat reached -n 20 positions 20 tokens into a")
    r = cli(path, "-z", tok, "-m", "chat", "-y", "sys", "-t", "0", "-n", "100", stdin=b"hi there\n", timeout=120)
    assert r.returncode == 0 and b"warning" not in r.stderr and len(r.stdout) > len(b"User: Assistant: \n")


@pytest.mark.parametrize(
    "device,gpu_expected,printed",
    [("cuda", True, ["llama2py: note one"]), ("cpu", True, ["llama2py: GPU not usable, running on cpu (--verbose says why)"]),
     ("cpu", False, [])],
)  # fmt: skip
def test_device_notes_without_verbose(monkeypatch, capsys, device, gpu_expected, printed):
    """Without --verbose: a cuda model's notes (how it runs int8 weights) are shown; a fallback to
    the cpu is one short line only where a GPU was expected."""
    import types

    import llama2py.cli as cli_module

    monkeypatch.setattr(cli_module, "_gpu_expected", lambda: gpu_expected)
    model = types.SimpleNamespace(device=device, notes=["note one"])
    cli_module._report_device(model, types.SimpleNamespace(verbose=False))
    assert capsys.readouterr().err.splitlines() == printed


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["{ck}", "--max-batch", "2"], "--max-batch only applies"),
        (["{ck}", "-m", "chat", "--num-samples", "2"], "do not work with -m chat"),
        (["{ck}", "--prompts-file", "{ck}", "-i", "hi"], "either with -i or with --prompts-file"),
        (["synth", "--shape", "stories260K", "--seed", "-1", "{tmp}/x.bin"], "--seed must be >= 0"),
        (["synth", "--shape", "stories260K", "--dim", "65", "{tmp}/x.bin"], "dim 65 is not a multiple"),
        (["synth", "--dim", "64", "{tmp}/x.bin"], "no --shape given"),
        (["synth", "--shape", "stories260K", "--group-size", "32", "{tmp}/x.bin"], "add --version 2"),
        (["synth", "--seq-len", "0", "{tmp}/x.bin"], "--seq-len must be >= 1"),
    ],
)
def test_flag_errors_exit_2(tmp_path, argv, needle):
    """Flags the command cannot take, whether argparse or the command finds it: exit 2, one
    error line, nothing written; argparse's points at --help."""
    ck = tmp_path / "m.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    r = cli(*[a.format(ck=ck, tmp=tmp_path) for a in argv], text=True)
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r, needle, rc=2)
    if r.stderr.startswith(("llama2py: error: argument", "llama2py synth: error: argument")):
        assert r.stderr.rstrip().endswith("--help)"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_closed_stderr_keeps_stdout_the_story():
    """`llama2py ... 2>&-`: sys.stderr is None, and print(file=None) writes to stdout: the tok/s
    line went into a piped story. The messages are dropped instead."""
    import os
    import subprocess
    import sys

    ck, tok = model_file("stories260K.bin"), model_file("tok512.bin")  # a real story: run's tok/s line
    argv = [sys.executable, "-m", "llama2py", str(ck), "-n", "16", "-s", "1", "-t", "0", "-z", str(tok)]
    told = subprocess.run(argv, capture_output=True, timeout=120)
    assert told.returncode == 0 and b"achieved tok/s" in told.stderr, told.stderr
    closed = subprocess.run(argv, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2), timeout=120)  # fmt: skip
    assert closed.returncode == 0 and closed.stdout == told.stdout, closed.stdout


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_full_output_device_is_said_plainly(tmp_path):
    """Standard output on a full device: one line saying so, not "[Errno 28] ..."."""
    import subprocess
    import sys

    ck = tmp_path / "m.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    tok = write_tokenizer_for(tmp_path, SHAPES["mha_shared"].vocab_size)
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "llama2py", str(ck), "-z", str(tok), "-n", "8"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "llama2py: error: cannot write to standard output: no space left on the device it goes to; free some or redirect it"
    ], r.stderr


def test_chat_with_an_unreadable_stdin_is_one_line(stories260k, tmp_path):
    """stdin opened for writing only (`0>file`): "[Errno 9] Bad file descriptor" said nothing of
    the chat reading its turns there."""
    import subprocess
    import sys

    model_path, tok = stories260k
    with open(tmp_path / "w.txt", "wb") as write_only:
        r = subprocess.run([sys.executable, "-m", "llama2py", str(model_path), "-z", str(tok), "-m", "chat", "-y", "hi"],
                           stdin=write_only, capture_output=True, timeout=60)  # fmt: skip
    assert_one_line_error((r.returncode, r.stderr), "-m chat reads its turns from standard input", rc=1)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_to_a_gone_reader_or_a_full_device(flag):
    """argparse drops a failed write: `llama2py --help | true` exited 0 with the help lost and
    `--version > /dev/full` too. A reader gone is 141, as for every other output; a full device
    one error line and 1."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        r = subprocess.run([sys.executable, "-m", "llama2py", flag], stdout=write, stderr=subprocess.PIPE,
                           timeout=60)  # fmt: skip
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == b"", r.stderr
    if os.path.exists("/dev/full"):
        with open("/dev/full", "wb") as full:
            r = subprocess.run([sys.executable, "-m", "llama2py", flag], stdout=full, stderr=subprocess.PIPE,
                               timeout=60)  # fmt: skip
        assert_one_line_error((r.returncode, r.stderr), "cannot write its output", rc=1)


def test_reports_on_an_ascii_stdout_escape_the_paths(tmp_path):
    """PYTHONIOENCODING=ascii (or an ASCII locale): `info` of a file with a non-ASCII name failed
    with a codec error and printed nothing; the path is escaped as stderr escapes it."""
    import os
    import subprocess
    import sys

    ck = tmp_path / "m\u00fc\u2713.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    r = subprocess.run([sys.executable, "-m", "llama2py", "info", str(ck)], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"m\\xfc\\u2713.bin" in r.stdout and b"dim" in r.stdout, r.stdout


def test_more_threads_than_cores_are_warned_about(tmp_path):
    """--threads above the core count runs, but far slower: said once on stderr."""
    import os

    from llama2py.threads import usable_cores

    ck = tmp_path / "m.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    tok = write_tokenizer_for(tmp_path, SHAPES["mha_shared"].vocab_size)
    cores = usable_cores()
    common = (ck, "-z", tok, "-n", 3, "-t", 0, "--device", "numpy")  # the warning is the cpu backend's
    assert "warning" not in cli(*common, "--threads", cores + 1, text=True).stderr
    if not cpu_built():
        pytest.skip("the cpu backend is not built")
    r = cli(*common[:-1], "cpu", "--threads", cores + 1, text=True)
    assert r.returncode == 0 and f"warning: --threads {cores + 1} on {cores} cores" in r.stderr, r.stderr
    assert "warning" not in cli(*common[:-1], "cpu", "--threads", cores, text=True).stderr
    if hasattr(os, "sched_setaffinity"):  # a cpuset (taskset, a container): the cores it allows count
        import subprocess
        import sys

        one = sorted(os.sched_getaffinity(0))[:1]
        argv = [sys.executable, "-m", "llama2py", *map(str, common[:-1]), "cpu", "--threads", "2"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, one))  # fmt: skip
        assert r.returncode == 0 and "warning: --threads 2 on 1 core:" in r.stderr, r.stderr


def test_closed_stdout_is_one_line(tmp_path):
    """`llama2py ... >&-`: sys.stdout is None; one line on stderr, not a traceback."""
    import os
    import subprocess
    import sys

    ck = tmp_path / "m.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    r = subprocess.run([sys.executable, "-m", "llama2py", str(ck), "-n", "4"], capture_output=False,
                       stdout=None, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=120)  # fmt: skip
    assert r.returncode == 1 and r.stderr.decode().strip() == (
        "llama2py: error: standard output is closed; redirect it to a file or /dev/null"
    )


def test_flags_before_a_command_and_other_habits(tmp_path, capsys):
    """--debug (or --help) before a command applies to it; --verbose, the story command's flag, is
    named as such; 'run' (llama2.c's program) and a tokenizer given without -z say what to type."""
    from llama2py.cli import main

    ck = tmp_path / "m.bin"
    write_checkpoint(ck, SHAPES["mha_shared"], random_weights(SHAPES["mha_shared"], 1), 0)
    assert main(["--debug", "info", str(ck)]) == 0
    assert "llama2.c v0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help", "bench"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: llama2py bench")
    with pytest.raises(SystemExit) as e:
        main(["--verbose", "download", "--list"])
    assert e.value.code == 2
    assert_one_line_error((2, capsys.readouterr().err), "--verbose is a flag of the story command", rc=2)
    with pytest.raises(SystemExit):
        main(["run", str(ck)])
    assert_one_line_error((2, capsys.readouterr().err), "'run' is not a command", "llama2py CHECKPOINT", rc=2)
    with pytest.raises(SystemExit):
        main(["--debug", "run", str(ck)])  # after leading flags too
    assert_one_line_error((2, capsys.readouterr().err), "'run' is not a command", rc=2)
    tok = write_tokenizer_for(tmp_path, SHAPES["mha_shared"].vocab_size)
    with pytest.raises(SystemExit):
        main([str(ck), str(tok)])
    err = capsys.readouterr().err
    assert_one_line_error((2, err), f"a tokenizer goes after -z (llama2py {ck} -z {tok})", rc=2)
    with pytest.raises(SystemExit):
        main([str(ck), "once upon a time"])  # a prompt without -i: said so, quoted for the shell
    assert_one_line_error((2, capsys.readouterr().err), f"a prompt goes after -i (llama2py {ck} -i 'once upon a time')")
    with pytest.raises(SystemExit):
        main([str(ck), "-z", str(tok), "Once upon"])  # -z given: the word is no tokenizer
    assert_one_line_error((2, capsys.readouterr().err), f"a prompt goes after -i (llama2py {ck} -i 'Once upon')")
    for argv in ([str(ck), "--bogus"], [str(ck), "-i", "x", str(ck)], [str(ck), "-i", "x", "more"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = assert_one_line_error((2, capsys.readouterr().err), "unrecognized arguments:", rc=2)
        assert "goes after" not in err, err  # -z and -i given already; a checkpoint is no tokenizer
    # flags before a command go after its name, before a `--` that ends its options
    odd = tmp_path / "-m.bin"
    odd.write_bytes(ck.read_bytes())
    assert main(["--debug", "info", "--", str(odd)]) == 0 and "llama2.c v0" in capsys.readouterr().out


@pytest.mark.parametrize("typo, command", [("infoo", "info"), ("bnech", "bench"), ("quantise", "quantize")])
def test_mistyped_command_is_named(tmp_path, typo, command):
    """`llama2py infoo x.bin` said "unrecognized arguments: x.bin"; it names the command meant. A
    file of that name is still a checkpoint (its own error), and a far name is a missing checkpoint."""
    r = cli(typo, tmp_path / "x.bin", cwd=tmp_path, text=True)
    assert_one_line_error(r, f"'{typo}' is neither a command nor a file; did you mean `llama2py {command}`?", rc=2)
    (tmp_path / typo).write_bytes(b"\0" * 8)
    assert "did you mean" not in assert_one_line_error(cli(typo, cwd=tmp_path, text=True), typo, rc=1)
    assert_one_line_error(cli("stories.bin", cwd=tmp_path, text=True), "checkpoint stories.bin: no such file", rc=1)
    # a missing file named like a command (synth's output) is a missing checkpoint, not a typo
    for name in ("synth.bin", "out/quantized", "quantized.bin"):
        assert "did you mean" not in assert_one_line_error(cli(name, cwd=tmp_path, text=True), "no such file", rc=1)
