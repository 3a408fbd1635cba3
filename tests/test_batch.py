"""Batched generation (Meta's generate()/text_completion() semantics) on every backend.

The oracle is an independent, one-token-at-a-time loop over the numpy spec (forward + Sampler):
sequence b of a batch must equal its prompt generated alone with seed + b, must equal `run` for
B = 1, and its log-probs must be the log-softmax of the spec's logits at the returned tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, assert_one_line_error, cli, require_device, write_tokenizer

from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.batch import BatchStats, run_batch
from llama2py.checkpoint import Config, load_checkpoint, random_weights, write_checkpoint
from llama2py.errors import DeviceError, PromptError
from llama2py.model import Llama
from llama2py.sampler import Sampler, log_softmax_at

DEVICES = ["numpy", "cpu", "cuda"]
BOS, EOS = 1, 2


# -- helpers --------------------------------------------------------------------------------------
def tokenizer_for(path: Path, vocab_size: int) -> Path:
    """A llama2.c tokenizer file for a random checkpoint: <unk>, <s>, </s>, the characters of
    " t0123456789" (so short texts encode without byte fallback), then " t16", " t17", ..."""
    chars = [bytes([ch]) for ch in b" t0123456789"]
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + chars
    pieces += [b" t%d" % i for i in range(len(pieces), vocab_size)]
    return write_tokenizer(path, pieces[:vocab_size])


def load(device: str, model_path: Path, max_batch: int) -> Llama:
    require_device(device)
    tok = tokenizer_for(model_path.with_suffix(".tok"), load_checkpoint(model_path).config.vocab_size)
    try:
        return Llama.load(model_path, tok, device=device, max_batch_size=max_batch)
    except DeviceError as e:
        pytest.skip(f"{device}: {e}")


def oracle(
    model_path: Path, prompt: list[int], end: int, temperature: float, top_p: float, seed: int, stop=(EOS, BOS)
) -> tuple[list[int], list[float]]:
    """The spec, one position at a time: tokens 0..end-1 at most (prompt forced, then sampled,
    cut before a sampled stop token) and the log-prob of each (0.0 for the first)."""
    c = load_checkpoint(model_path)
    spec = NumpyBackend(c.config, c.weights, 1)
    sampler = Sampler(temperature, top_p, seed)
    toks, lps = list(prompt[:1]), [0.0]
    for pos in range(end - 1):
        logits = spec.forward(np.array([toks[pos]], np.int32), pos)[0]
        if pos + 1 < len(prompt):
            nxt = prompt[pos + 1]
        else:
            nxt = sampler.sample(logits)
            if nxt in stop:
                break
        toks.append(int(nxt))
        lps.append(log_softmax_at(logits, nxt))
    return toks, lps


def random_prompts(vocab: int, lens: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[BOS] + rng.integers(3, vocab, n - 1).tolist() for n in lens]


def meta_end(lens: list[int], max_gen_len: int, seq_len: int) -> list[int]:
    total = min(seq_len, max_gen_len + max(lens))
    return [min(n + max_gen_len, total) for n in lens]


@pytest.fixture
def eos_checkpoint(tmp_path):
    """A random model whose classifier makes EOS likely, so sampled sequences stop at different
    steps (and BOS rarely)."""
    c = Config(
        dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=48, shared_classifier=False
    )
    w = random_weights(c, seed=3)
    w.wcls[EOS] *= 1.5
    path = tmp_path / "eosy.bin"
    write_checkpoint(path, c, w)
    return path


# -- sequence b of a batch == the prompt alone ----------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", ["gqa_unshared", "mha_shared", "wide"])
def test_greedy_batch_equals_alone_and_spec(device, shape, make_checkpoint):
    model_path = make_checkpoint(shape)
    c = SHAPES[shape]
    # longest first: trailing (shorter) sequences finish first and are dropped from the step batch
    lens = [c.seq_len // 2, 5, 3, 3, 1]
    prompts = random_prompts(c.vocab_size, lens)
    max_gen_len = c.seq_len // 2 - 1
    m = load(device, model_path, len(prompts))
    toks, lps = m.generate(prompts, max_gen_len, temperature=0.0)
    assert lps is None
    ends = meta_end(lens, max_gen_len, c.seq_len)
    for b, p in enumerate(prompts):
        alone, _ = m.generate([p], max_gen_len, temperature=0.0)
        assert toks[b] == alone[0], f"sequence {b}"
        want, _ = oracle(model_path, p, ends[b], 0.0, 0.9, 1)
        assert p + toks[b] == want, f"sequence {b} vs spec"
        assert len(toks[b]) <= max_gen_len


@pytest.mark.parametrize("device", DEVICES)
def test_b1_greedy_equals_run(device, make_checkpoint):
    model_path = make_checkpoint("wide")
    m = load(device, model_path, 1)
    for text in ["", "t5 t9 t200"]:
        prompt = m.tokenizer.encode(text, bos=True)
        gen, _ = m.generate([prompt], 20, temperature=0.0)
        r = m.run(text, steps=len(prompt) + 19, temperature=0.0)
        ran = r.tokens[len(prompt) :]
        ran = ran[: ran.index(EOS)] if EOS in ran else ran  # run stops at BOS only; generate at EOS too
        assert gen[0] == ran


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.8, 1.0), (1.2, 0.5)])
def test_seeded_sampling_equals_alone_with_seed_plus_b(device, temperature, top_p, make_checkpoint):
    model_path = make_checkpoint("mha_shared")
    c = SHAPES["mha_shared"]
    lens = [2, 9, 4, 6, 3, 7]  # the cpu backend samples in fours: a full four with forced rows, then two
    prompts = random_prompts(c.vocab_size, lens, seed=1)
    m = load(device, model_path, len(prompts))
    seed = 1234
    toks, _ = m.generate(prompts, 12, temperature, top_p, seed=seed)
    ends = meta_end(lens, 12, c.seq_len)
    for b, p in enumerate(prompts):
        alone, _ = m.generate([p], 12, temperature, top_p, seed=seed + b)
        assert toks[b] == alone[0], f"sequence {b}"
        want, _ = oracle(model_path, p, ends[b], temperature, top_p, seed + b)
        assert p + toks[b] == want, f"sequence {b} vs spec"
    # B = 1 is run's sampling for the same seed
    r = m.run("t7 t8", steps=len(m.tokenizer.encode("t7 t8")) + 11, temperature=temperature, top_p=top_p, seed=seed)
    p = m.tokenizer.encode("t7 t8", bos=True)
    gen, _ = m.generate([p], 12, temperature, top_p, seed=seed)
    ran = r.tokens[len(p) :]
    assert gen[0] == (ran[: ran.index(EOS)] if EOS in ran else ran)


@pytest.mark.parametrize("device", DEVICES)
def test_seeds_past_the_top_wrap_to_one(device, make_checkpoint):
    model_path = make_checkpoint("mha_shared")
    c = SHAPES["mha_shared"]
    p = random_prompts(c.vocab_size, [3], seed=5)[0]
    m = load(device, model_path, 3)
    top = 2**64 - 1
    toks, _ = m.generate([p, p, p], 10, 1.0, 0.0, seed=top)  # seeds top, 1, 2 (not top, 0, 1)
    for b, seed in enumerate([top, 1, 2]):
        alone, _ = m.generate([p], 10, 1.0, 0.0, seed=seed)
        assert toks[b] == alone[0], f"sequence {b}"


# -- log-probabilities and echo -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_prompt_logprobs_do_not_depend_on_the_batch(device, make_checkpoint):
    # A prompt token's log-prob comes from the prefill (up to the shortest prompt) or from the step
    # that forces it: both must give the same value, whatever the other prompts' lengths. (Bitwise
    # on the cpu, whose batched logits are a single row's bits; numpy's matrix products round a
    # batch differently, so there within float32 rounding.)
    model_path = make_checkpoint("gqa_unshared")
    c = SHAPES["gqa_unshared"]
    prompts = random_prompts(c.vocab_size, [9, 2, 5], seed=4)
    m = load(device, model_path, 3)
    _, batch = m.generate(prompts, 4, temperature=0.0, logprobs=True, echo=True)
    for b, p in enumerate(prompts):
        _, alone = m.generate([p], 4, temperature=0.0, logprobs=True, echo=True)
        if device == "cpu":
            assert batch[b] == alone[0], f"sequence {b}"
        else:
            np.testing.assert_allclose(batch[b], alone[0], rtol=1e-6, atol=1e-6, err_msg=f"sequence {b}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("echo", [False, True])
def test_logprobs_are_log_softmax_of_spec_logits(device, echo, make_checkpoint):
    model_path = make_checkpoint("gqa_unshared")
    c = SHAPES["gqa_unshared"]
    lens = [3, 7, 1]
    prompts = random_prompts(c.vocab_size, lens, seed=2)
    m = load(device, model_path, 3)
    toks, lps = m.generate(prompts, 6, temperature=1.0, top_p=0.95, logprobs=True, echo=echo, seed=77)
    spec = load("numpy", model_path, 1)
    for b, p in enumerate(prompts):
        full = toks[b] if echo else p + toks[b]
        if echo:
            assert toks[b][: len(p)] == p, "echo returns the prompt first"
            assert lps[b][0] == 0.0, "the first prompt token has no log-prob (Meta: 0.0)"
        assert len(lps[b]) == len(toks[b])
        logits = spec.logits(full[:-1]) if len(full) > 1 else np.zeros((0, c.vocab_size))
        want = [log_softmax_at(logits[i - 1], full[i]) for i in range(1, len(full))]
        got = lps[b][1:] if echo else lps[b]
        if not echo:
            want = want[len(p) - 1 :]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_echo_returns_prompt_and_prompt_logprobs(device, make_checkpoint):
    model_path = make_checkpoint("wide")
    c = SHAPES["wide"]
    lens = [4, 11, 2]
    prompts = random_prompts(c.vocab_size, lens, seed=3)
    m = load(device, model_path, 3)
    toks, lps = m.generate(prompts, 5, temperature=0.0, logprobs=True, echo=True)
    plain, plps = m.generate(prompts, 5, temperature=0.0, logprobs=True)
    ends = meta_end(lens, 5, c.seq_len)
    for b, p in enumerate(prompts):
        assert toks[b] == p + plain[b]
        np.testing.assert_allclose(lps[b][len(p) :], plps[b], rtol=1e-5, atol=1e-6)
        want_t, want_lp = oracle(model_path, p, ends[b], 0.0, 0.9, 1)
        assert toks[b] == want_t
        np.testing.assert_allclose(lps[b], want_lp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_prompt_logprobs_in_chunks_equal_one_prefill(device, make_checkpoint, monkeypatch):
    """Prompt log-probs come from prefills of at most _ALL_LOGITS_BYTES of logits: chunks of 1 and
    2 positions give the values of one prefill."""
    from llama2py import batch

    model_path = make_checkpoint("gqa_unshared")
    c = SHAPES["gqa_unshared"]
    prompts = random_prompts(c.vocab_size, [9, 7], seed=5)
    m = load(device, model_path, 2)
    want = m.generate(prompts, 3, temperature=0.0, logprobs=True, echo=True)
    for positions in (1, 2):
        monkeypatch.setattr(batch, "_ALL_LOGITS_BYTES", positions * 2 * c.vocab_size * 4)
        got = m.generate(prompts, 3, temperature=0.0, logprobs=True, echo=True)
        assert got[0] == want[0], positions
        np.testing.assert_allclose(np.concatenate(got[1]), np.concatenate(want[1]), rtol=1e-6, atol=1e-6)


# -- stopping and cutting -------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_stop_tokens_inside_a_prompt_end_nothing(device, make_checkpoint):
    """EOS and BOS inside a prompt (a multi-turn dialog's earlier turns) are forced, not sampled:
    they stop nothing, batched or alone."""
    model_path = make_checkpoint("gqa_unshared")
    c = SHAPES["gqa_unshared"]
    turns = random_prompts(c.vocab_size, [4, 3], seed=6)
    prompts = [turns[0] + [EOS] + turns[1], random_prompts(c.vocab_size, [2], seed=7)[0]]
    m = load(device, model_path, 2)
    toks, _ = m.generate(prompts, 4, temperature=0.0, echo=True)
    for b, p in enumerate(prompts):
        assert toks[b][: len(p)] == p, b
        assert toks[b] == m.generate([p], 4, temperature=0.0, echo=True)[0][0], b


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_max_gen_len_zero_samples_nothing(device, make_checkpoint):
    model_path = make_checkpoint("gqa_unshared")
    m = load(device, model_path, 2)
    stats = BatchStats()
    toks, _ = m.generate([[BOS, 5], [BOS, 5, 6, 7]], 0, temperature=0.0, stats=stats)
    assert toks == [[], []] and stats.generated == [0, 0]


# -- stopping and cutting -------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_each_sequence_stops_at_its_own_eos(device, eos_checkpoint):
    model_path = eos_checkpoint
    c = load_checkpoint(model_path).config
    prompts = random_prompts(c.vocab_size, [3, 5, 2, 4, 3, 6], seed=4)
    m = load(device, model_path, len(prompts))
    max_gen_len = 30
    toks, lps = m.generate(prompts, max_gen_len, temperature=1.0, top_p=1.0, logprobs=True, seed=11)
    ends = meta_end([len(p) for p in prompts], max_gen_len, c.seq_len)
    n_short = 0
    for b, p in enumerate(prompts):
        # the uncut stream of the same generator: the cut must fall right before its first stop token
        stream, _ = oracle(model_path, p, ends[b], 1.0, 1.0, 11 + b, stop=())
        gen = stream[len(p) :]
        stops = [i for i, t in enumerate(gen) if t in (EOS, BOS)]
        # (parenthesized: `a == b if c else d` would assert the bare `d` when there is no stop)
        assert toks[b] == (gen[: stops[0]] if stops else gen), f"sequence {b}"
        assert EOS not in toks[b] and BOS not in toks[b]
        assert len(lps[b]) == len(toks[b])
        n_short += len(toks[b]) < max_gen_len
    assert 0 < n_short < len(prompts), "the case should have sequences that stop early and some that do not"


@pytest.mark.parametrize("device", DEVICES)
def test_loop_ends_when_all_sequences_are_done(device, eos_checkpoint):
    model_path = eos_checkpoint
    c = load_checkpoint(model_path).config
    m = load(device, model_path, 2)
    prompts = random_prompts(c.vocab_size, [2, 3], seed=5)
    stats = BatchStats()
    toks, _ = m.generate(prompts, 40, temperature=1.0, top_p=1.0, seed=11, stats=stats)
    longest = max(len(p) + len(t) for p, t in zip(prompts, toks))
    assert longest < c.seq_len - 1, "pick a seed where both stop well before the context ends"
    # one step per position after the prefill, up to the stop token of the last sequence
    assert stats.steps == longest - (min(map(len, prompts)) - 1)
    assert stats.total_generated == sum(len(t) + 1 for t in toks)  # stop tokens were sampled too


@pytest.mark.parametrize("device", DEVICES)
def test_max_gen_len_and_context_cut(device, make_checkpoint):
    model_path = make_checkpoint("gqa_unshared")  # seq_len 16
    c = SHAPES["gqa_unshared"]
    prompts = random_prompts(c.vocab_size, [2, 5, 16, 12], seed=6)
    m = load(device, model_path, 4)
    lengths = set()
    for max_gen_len in [0, 1, 3, 20]:
        toks, lps = m.generate(prompts, max_gen_len, temperature=0.0, logprobs=True)
        ends = meta_end([len(p) for p in prompts], max_gen_len, c.seq_len)
        for b, p in enumerate(prompts):
            want, _ = oracle(model_path, p, ends[b], 0.0, 0.9, 1)
            assert p + toks[b] == want
            assert len(toks[b]) <= min(max_gen_len, c.seq_len - len(p))
            lengths.add(len(toks[b]))
    # the case must reach both cuts: max_gen_len (0, 1, 3) and the context (prompts of 5 and 12 tokens)
    assert {0, 1, 3, c.seq_len - 5, c.seq_len - 12} <= lengths, sorted(lengths)
    # a prompt filling the context gets nothing; with echo it comes back whole
    assert m.generate([prompts[2]], 5, temperature=0.0)[0] == [[]]
    assert m.generate([prompts[2]], 5, temperature=0.0, echo=True)[0] == [prompts[2]]
    assert m.generate(prompts, 0, temperature=0.0, echo=True)[0] == prompts


def test_run_batch_cli_ends_past_meta_cap(make_checkpoint):
    """The CLI's rule (run's -n): every story holds tokens 0..steps, even steps = seq_len."""
    model_path = make_checkpoint("odd_tiny")  # seq_len 9
    c = SHAPES["odd_tiny"]
    m = load("numpy", model_path, 2)
    prompts = random_prompts(c.vocab_size, [1, 4], seed=7)
    res = run_batch(m.backend, prompts, [c.seq_len + 1] * 2, 0.0, 0.9, [1, 2], stop_tokens=())
    for b, p in enumerate(prompts):
        want, _ = oracle(model_path, p, c.seq_len + 1, 0.0, 0.9, 1, stop=())
        assert res.tokens[b] == want and len(want) == c.seq_len + 1


# -- errors ---------------------------------------------------------------------------------------
def test_errors(make_checkpoint):
    model_path = make_checkpoint("gqa_unshared")
    c = SHAPES["gqa_unshared"]
    m = load("numpy", model_path, 2)
    ok = [BOS, 5]
    with pytest.raises(PromptError, match="max_batch_size=2"):
        m.generate([ok, ok, ok], 4)
    with pytest.raises(PromptError, match="seq_len"):
        m.generate([ok, [BOS] * (c.seq_len + 1)], 4)
    with pytest.raises(PromptError, match="empty"):
        m.generate([ok, []], 4)
    with pytest.raises(PromptError, match="no prompts"):
        m.generate([], 4)
    with pytest.raises(PromptError, match="vocabulary"):
        m.generate([[BOS, c.vocab_size]], 4)
    with pytest.raises(ValueError, match="max_gen_len"):
        m.generate([ok], -1)
    with pytest.raises(ValueError, match="top_p"):
        m.generate([ok], 4, top_p=1.5)
    with pytest.raises(PromptError, match="max_batch_size"):
        m.text_completion(["t1", "t2", "t3"])
    with pytest.raises(TypeError):
        m.text_completion("a single string")
    for flat in (ok, np.array(ok)):  # one prompt not wrapped: it ran as len(ok) one-token prompts
        with pytest.raises(TypeError, match="got a flat list of ids; for one prompt pass"):
            m.generate(flat, 4)


# -- text_completion and the CLI on the real stories260K -----------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_text_completion_stories260k(device, stories260k):
    require_device(device)
    model_path, tok = stories260k
    try:
        m = Llama.load(model_path, tok, device=device, max_batch_size=3)
    except DeviceError as e:
        pytest.skip(f"{device}: {e}")
    prompts = ["Once upon a time", "Lily and Tom", ""]
    res = m.text_completion(prompts, temperature=0.0, max_gen_len=40)
    echo = m.text_completion(prompts, temperature=0.0, max_gen_len=40, echo=True, logprobs=True)
    for p, d, e in zip(prompts, res, echo):
        n = len(m.tokenizer.encode(p))
        ran = m.run(p, steps=n + 39, temperature=0.0).text
        assert p + d["generation"] == ran
        assert e["generation"] == ran
        assert "".join(e["tokens"]) == e["generation"]
        assert len(e["tokens"]) == len(e["logprobs"]) and e["logprobs"][0] == 0.0
        assert all(logprob <= 0.0 for logprob in e["logprobs"])
    sampled = m.text_completion(prompts, temperature=0.8, top_p=0.9, max_gen_len=30, seed=42)
    for b, (p, d) in enumerate(zip(prompts, sampled)):
        n = len(m.tokenizer.encode(p))
        assert p + d["generation"] == m.run(p, steps=n + 29, temperature=0.8, top_p=0.9, seed=42 + b).text
    # top_p=0 keeps only the most likely token, as Meta's sample_top_p (greedy whatever the seed);
    # Llama.run keeps run's rule, where -p 0 means no top-p (sampling from everything)
    for seed in (1, 2):
        assert m.text_completion(prompts, temperature=0.8, top_p=0.0, max_gen_len=40, seed=seed) == res
    assert len({m.run(prompts[0], steps=30, temperature=0.8, top_p=0.0, seed=s).text for s in (1, 2, 3)}) > 1


def split_stories(stdout: bytes) -> list[tuple[str, str]]:
    out, head, body = [], None, []
    for line in stdout.decode().split("\n"):
        if line.startswith("--- ") and line.endswith(" ---"):
            if head is not None:
                out.append((head, "\n".join(body)))
            head, body = line, []
        else:
            body.append(line)
    out.append((head, "\n".join(body)))
    # each story is printed with a newline after it; the last one's is the final "" line's split
    return [(h, b + "\n") for h, b in out[:-1]] + out[-1:]


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_cli_prompts_file_and_num_samples(device, stories260k, tmp_path):
    require_device(device)
    model_path, tok = stories260k
    prompts_path = tmp_path / "prompts.txt"
    prompts_path.write_text("Once upon a time\n\nLily went to\r\nThe dog\n")
    r = cli(
        model_path, "-z", tok, "--device", device, "--prompts-file", prompts_path, "-t", "0.8", "-s", "7", "-n", "60"
    )
    assert r.returncode == 0, r.stderr.decode()
    stories = split_stories(r.stdout)
    assert [h for h, _ in stories] == [  # the file's line where a blank line shifts the count
        "--- prompt 1 (seed 7) ---",
        "--- prompt 2, line 3 (seed 8) ---",
        "--- prompt 3, line 4 (seed 9) ---",
    ]
    m = Llama.load(model_path, tok, device=device)  # run's story alone (the API prints what the CLI prints)
    for (h, body), (prompt, seed) in zip(stories, [("Once upon a time", 7), ("Lily went to", 8), ("The dog", 9)]):
        assert body == m.run(prompt, 60, 0.8, 0.9, seed).text + "\n", h
    err = r.stderr.decode()
    assert "achieved tok/s:" in err and "aggregate over 3 sequences" in err and "prompt 3, line 4:" in err

    r = cli(model_path, "-z", tok, "--device", device, "--num-samples", "3", "-s", "42", "-n", "40", "--max-batch", "2")
    assert r.returncode == 0, r.stderr.decode()
    stories = split_stories(r.stdout)
    assert [h for h, _ in stories] == [f"--- sample {i + 1} (seed {42 + i}) ---" for i in range(3)]
    for i, (_, body) in enumerate(stories):
        assert body == m.run("", 40, 1.0, 0.9, 42 + i).text + "\n"
    assert len({b for _, b in stories}) == 3


def test_cli_prompts_from_stdin(stories260k, tmp_path):
    """--prompts-file - reads the prompts from a pipe: the same stories as from a file."""
    model_path, tok = stories260k
    base = [model_path, "-z", tok, "--device", "numpy", "-t", "0", "-n", "20", "-s", "5"]
    text = "Once upon a time\n\nLily went\n"
    (tmp_path / "p.txt").write_text(text)
    piped = cli(*base, "--prompts-file", "-", stdin=text.encode())
    filed = cli(*base, "--prompts-file", tmp_path / "p.txt")
    assert piped.returncode == 0 and piped.stdout == filed.stdout, piped.stderr
    assert b"--- prompt 2, line 3 (seed" in piped.stdout
    assert_one_line_error(cli(*base, "--prompts-file", "-", stdin=b"\n"), "no prompts")


def test_cli_batch_errors(stories260k, tmp_path):
    model_path, tok = stories260k
    base = [model_path, "-z", tok, "--device", "numpy"]
    assert_one_line_error(cli(*base, "--prompts-file", tmp_path / "missing.txt"), "cannot read")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert_one_line_error(cli(*base, "--prompts-file", empty), "no prompts")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe hello\n")
    assert_one_line_error(cli(*base, "--prompts-file", bad), "UTF-8")
    long = tmp_path / "long.txt"
    long.write_text("Once upon a time\n" + "Lily " * 600 + "\n")
    assert_one_line_error(cli(*base, "--prompts-file", long), "prompt 2 is")
    long.write_text("Once upon a time\n\n\n" + "Lily " * 600 + "\n")
    assert_one_line_error(cli(*base, "--prompts-file", long), "prompt 2, line 4, is")
    assert_one_line_error(cli(*base, "--num-samples", "1000000"), "--max-batch")
    assert_one_line_error(cli(*base, "--num-samples", "2", "-m", "chat"), "chat")
    assert_one_line_error(cli(*base, "--prompts-file", empty, "-i", "x"), "not both")
    assert_one_line_error(cli(*base, "--max-batch", "2"), "--max-batch")
    assert_one_line_error(cli(*base, "--num-samples", "0"), "--num-samples")
