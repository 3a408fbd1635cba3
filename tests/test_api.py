"""The public API beyond run/stream: stop strings, max_new_tokens, chat_completion (Meta's template,
checked against the CLI's chat mode), close() and the context manager, load(device="auto"), and
the CLI's quiet device line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HOST_DEVICES, require_device

from llama2py import Llama
from llama2py.batch import BatchStats
from llama2py.errors import BusyError, ClosedError, Llama2pyError, PromptError
from llama2py.generate import UNSAFE_ERROR, RunStats, dialog_tokens, render_chat
from llama2py.stops import StopMatcher, check_stops, cut_stream
from llama2py.tokenizer import BOS, EOS

PROMPT = "Once upon a time"


@pytest.fixture(params=HOST_DEVICES)
def model(request, stories260k):
    require_device(request.param)
    ckpt, tok = stories260k
    m = Llama.load(ckpt, tok, device=request.param, max_batch_size=4)
    yield m
    m.close()


def _spanning_stop(m: Llama, tokens: list[int], n_prompt: int) -> tuple[str, int]:
    """A stop string made of the end of one generated token and the start of the next, and the
    index of the first of the two among the generated tokens."""
    tok = m.tokenizer
    for j in range(n_prompt + 3, len(tokens) - 1):
        a = tok.decode([tokens[j]], prev=tokens[j - 1])
        b = tok.decode([tokens[j + 1]], prev=tokens[j])
        if len(a) >= 2 and len(b) >= 2 and a.strip() and b.strip():
            return a[-2:] + b[:2], j - n_prompt
    raise AssertionError("no two adjacent multi-character tokens in the story")


def test_stop_string_spanning_two_tokens(model):
    full = model.run(PROMPT, steps=80, temperature=0)
    n = len(model.tokenizer.encode(PROMPT))
    stop, j = _spanning_stop(model, full.tokens, n)
    gen_text = model.tokenizer.decode(full.tokens[n:], prev=full.tokens[n - 1])
    cut_at = gen_text.index(stop)
    prompt_text = full.text[: len(full.text) - len(gen_text)]

    res = model.run(PROMPT, steps=80, temperature=0, stop=[stop, "never appears"])
    assert res.text == prompt_text + gen_text[:cut_at]
    assert stop not in res.text[len(prompt_text) :]
    assert res.tokens == full.tokens[: n + j]  # the token holding the stop's start is dropped
    streamed = list(model.stream(PROMPT, steps=80, temperature=0, stop=stop))
    assert "".join(streamed) == res.text

    out = model.text_completion([PROMPT], temperature=0, max_gen_len=79, stop=[stop])[0]["generation"]
    assert out == gen_text[:cut_at]
    toks, _ = model.generate([full.tokens[:n]], max_gen_len=79, temperature=0, stop=[stop])
    assert toks[0] == full.tokens[n : n + j]


def test_stop_string_in_a_batch_ends_only_its_sequence(model):
    prompts = [PROMPT, "Tom and"]
    free = model.text_completion(prompts, temperature=0.8, max_gen_len=60, seed=5)
    stop = free[0]["generation"][20:26]
    cut = model.text_completion(prompts, temperature=0.8, max_gen_len=60, seed=5, stop=[stop])
    assert cut[0]["generation"] == free[0]["generation"][: free[0]["generation"].index(stop)]
    expected_1 = free[1]["generation"]
    if stop in expected_1:
        expected_1 = expected_1[: expected_1.index(stop)]
    assert cut[1]["generation"] == expected_1


def test_stop_strings_absent_change_nothing(model):
    a = model.run(PROMPT, steps=40, temperature=0.9, seed=3)
    b = model.run(PROMPT, steps=40, temperature=0.9, seed=3, stop=["qqqzzz"])
    assert (a.text, a.tokens) == (b.text, b.tokens)


def test_stop_matcher_takes_the_earliest_stop_string():
    """Stop strings found in one piece: the text ends before the one that starts first, whatever
    their order in the list."""
    m = StopMatcher(["b", "a"])
    assert m.feed("xab") and m.kept_text == "x"


@pytest.mark.parametrize(
    "pieces,stops,want",
    [
        (["aX", "yb"], ["Xy"], ["a"]),  # a one-character start of a stop string is held back
        (["ends Th"], ["The end"], ["ends ", "Th"]),  # held back, then given out when the pieces end
        (["ab", "c"], ["zz"], ["ab", "c"]),
    ],
)
def test_cut_stream_holds_back_and_flushes(pieces, stops, want):
    assert list(cut_stream(iter(pieces), StopMatcher(stops))) == want


def test_stop_matcher_holds_back_a_possible_start():
    m = StopMatcher(["The end"])
    assert not m.feed("and The")
    assert m.text[: m.safe_len()] == "and "  # "The" may begin "The end"
    assert m.feed(" e") is False and m.feed("nd!") is True
    assert m.kept_text == "and " and m.kept_pieces == 0
    # a character split over byte tokens: the tokens whose bytes the decoder held for it go with the
    # stop string that begins with it; a token of no text of its own (run prints nothing for a lone
    # byte; a space after BOS) stays, and so does one whose bytes became a replacement character
    for pieces, kept in (
        ([("ha", 0), ("i", 0), ("", 1), ("\u00e9", 0)], 2),
        ([("", 1), ("\u00e9", 0)], 0),
        ([("a", 0), ("", 1), ("b", 0), ("\u00e9", 0)], 3),
        ([("ha", 0), ("", 0), ("\u00e9", 0)], 2),  # not held: kept
        ([("a", 0), ("", 1), ("\ufffd", 1), ("", 1), ("\u20ac", 0)], 2),  # a, E2 | E2 82 AC with stop "€"
    ):
        m = StopMatcher(["\u00e9", "\u20ac"])
        assert [m.feed(p, bool(held)) for p, held in pieces][-1] and m.kept_pieces == kept, (pieces, m.kept_pieces)
    with pytest.raises(ValueError, match="non-empty"):
        check_stops(["ok", ""])
    assert check_stops("one") == ("one",)


def _safe_len_by_definition(text: str, stops) -> int:
    """The text's length less its longest tail that is a proper prefix of some stop string."""
    for k in range(min(max(map(len, stops)) - 1, len(text)), 0, -1):
        if any(s.startswith(text[len(text) - k :]) for s in stops):
            return len(text) - k
    return len(text)


def test_stop_matcher_safe_len_matches_its_definition():
    """Random pieces over a two-letter alphabet (borders everywhere: "abab", "aab"): after every
    piece, the held-back tail and the hit are those of a plain search of the whole text."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        stops = ["".join(rng.choice(["a", "b"], size=rng.integers(1, 7))) for _ in range(rng.integers(1, 4))]
        m, text = StopMatcher(stops), ""
        for _ in range(12):
            piece = "".join(rng.choice(["a", "b", "c"], p=[0.45, 0.45, 0.1], size=rng.integers(0, 4)))
            text += piece
            hit = m.feed(piece)
            starts = [i for i in (text.find(s) for s in stops) if i >= 0]
            assert hit == bool(starts), (trial, stops, text)
            if hit:
                assert m.kept_text == text[: min(starts)] and m.safe_len() == min(starts)
                break
            assert m.safe_len() == _safe_len_by_definition(text, stops), (trial, stops, text)


def test_stop_matcher_long_stop_strings():
    """A 200,000-character stop string over 2,000 one-character pieces that keep almost matching it:
    everything is held back until a character no prefix of it ends with (safe_len searches no text
    now: its plain search of every tail took seconds here)."""
    stop = "a" * 199_999 + "b"
    m = StopMatcher([stop])
    for _ in range(2000):
        assert not m.feed("a")
        assert m.safe_len() == 0  # all of it may begin the stop string
    assert not m.feed("b")  # "a" * 2000 + "b" begins no stop string: none of it is held back
    assert m.safe_len() == 2001 and m.kept_text == "a" * 2000 + "b"


def test_max_new_tokens_counts_generated_tokens(model):
    n = len(model.tokenizer.encode(PROMPT))
    res = model.run(PROMPT, temperature=0, max_new_tokens=7)
    assert len(res.tokens) == n + 7
    same = model.run(PROMPT, temperature=0, steps=n - 1 + 7)
    assert (res.text, res.tokens) == (same.text, same.tokens)
    assert "".join(model.stream(PROMPT, temperature=0, max_new_tokens=7)) == res.text
    none = model.run(PROMPT, temperature=0, max_new_tokens=0)
    assert none.tokens == model.tokenizer.encode(PROMPT) and none.text == PROMPT
    assert model.run("", temperature=0, max_new_tokens=0).text == ""
    with pytest.raises(ValueError, match="not both"):
        model.run(PROMPT, steps=10, max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.run(PROMPT, max_new_tokens=-1)


SYSTEM, USER = "You are a storyteller.", "Tell me about a cat."


def test_chat_template_tokens_equal_the_cli_chat_mode(stories260k):
    ckpt, tok_path = stories260k
    with Llama.load(ckpt, tok_path, device="numpy") as m:
        tok = m.tokenizer
        single = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        assert dialog_tokens(tok, single) == tok.encode(render_chat(USER, SYSTEM), bos=True)
        assert dialog_tokens(tok, single[1:]) == tok.encode(render_chat(USER), bos=True)
        # Meta strips contents; run's chat mode does not (documented in README)
        padded = [{"role": "user", "content": "  " + USER + "\n"}]
        assert dialog_tokens(tok, padded) == tok.encode(render_chat(USER), bos=True)
        multi = single + [{"role": "assistant", "content": "Once."}, {"role": "user", "content": "More."}]
        toks = dialog_tokens(tok, multi)
        first = tok.encode(f"{render_chat(USER, SYSTEM)} Once. ", bos=True, eos=True)
        assert toks == first + tok.encode("[INST] More. [/INST]", bos=True)
        assert toks.count(BOS) == 2 and toks.count(EOS) == 1 and toks[-1] != EOS


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_chat_completion_greedy_equals_the_cli_chat_mode(stories260k, device, tmp_path):
    require_device(device)
    ckpt, tok_path = stories260k
    n_new = 40
    with Llama.load(ckpt, tok_path, device=device) as m:
        dialog = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        res = m.chat_completion([dialog], temperature=0, max_gen_len=n_new, seed=7)
        content = res[0]["generation"]["content"]
        assert res[0]["generation"]["role"] == "assistant" and content
        n = len(dialog_tokens(m.tokenizer, dialog))
    argv = [sys.executable, "-m", "llama2py", str(ckpt), "-z", str(tok_path), "-m", "chat", "-y", SYSTEM]
    argv += ["-i", USER, "-t", "0", "-s", "7", "-n", str(n - 1 + n_new), "--device", device]
    out = subprocess.run(argv, input=b"", capture_output=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert text.startswith("Assistant: ") and text.endswith("\n"), text
    # the whole reply, then the newline that ends the turn (stdin is empty: no second turn); run
    # prints the first piece with its leading space, Meta's decode (chat_completion) drops it
    reply = text[len("Assistant: ") : -1]
    assert reply in (content, " " + content), (reply, content)


def test_chat_completion_batched_errors_and_unsafe(model):
    d1 = [{"role": "user", "content": "Tell me about a dog."}]
    d2 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    both = model.chat_completion([d1, d2], temperature=0.8, max_gen_len=24, seed=11, logprobs=True)
    alone = model.chat_completion([d2], temperature=0.8, max_gen_len=24, seed=12)  # sequence 1: seed + 1
    assert both[1]["generation"] == alone[0]["generation"]
    assert len(both[0]["tokens"]) == len(both[0]["logprobs"])
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(PromptError, match=r"dialog 1, message 1: role 'user' where 'assistant'"):
        model.chat_completion([d1, bad])
    with pytest.raises(PromptError, match="ends with a user message"):
        model.chat_completion([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]])
    with pytest.raises(PromptError, match="message 0"):
        model.chat_completion([[{"role": "robot", "content": "a"}]])
    with pytest.raises(TypeError, match="list of dialogs"):
        model.chat_completion(d1)
    unsafe = [{"role": "user", "content": "hi [INST] there"}]
    assert model.chat_completion([unsafe], max_gen_len=4)[0]["generation"]["content"] == UNSAFE_ERROR
    # stop strings are matched over the content returned (decoded after BOS: no leading space), so
    # " " stops after the first word, not at a space the content does not have
    whole = model.chat_completion([d2], temperature=0, max_gen_len=24)[0]["generation"]["content"]
    assert " " in whole.strip() and not whole.startswith(" "), whole
    for stop in (" ", " " + whole.split(" ")[1]):
        cut = model.chat_completion([d2], temperature=0, max_gen_len=24, stop=[stop])[0]["generation"]["content"]
        assert cut == whole[: whole.index(stop)], (stop, cut, whole)


def test_chat_completion_refuses_a_dialog_too_long_before_encoding(model, monkeypatch):
    d1 = [{"role": "user", "content": "Tell me about a dog."}]
    huge = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    huge += [{"role": "user", "content": "x " * 200_000}]  # 400,000 characters: ~1 s and ~50 MB to encode
    encode = model.tokenizer.encode

    def short_only(text, *args, **kwargs):
        assert len(text) < 1000, "encoded a dialog that cannot fit"
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(model.tokenizer, "encode", short_only)
    with pytest.raises(PromptError, match=r"dialog 1 is 400,0\d\d characters in its template, at least [\d,]+ tokens"):
        model.chat_completion([d1, huge])
    monkeypatch.undo()
    # within the lower bound but over the context once encoded: still named as a dialog
    n = model.config.seq_len * 2  # one token per "x " pair at most...
    with pytest.raises(PromptError, match=r"dialog 0 is \d+ tokens, but the context is"):
        model.chat_completion([[{"role": "user", "content": "x " * n}]])


def _mapped(path: Path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path.resolve()) in f.read()


@pytest.mark.parametrize("device", HOST_DEVICES + ["cuda"])
def test_close_and_context_manager_unmap_the_checkpoint(stories260k, device):
    require_device(device)
    ckpt, tok = stories260k
    linux = os.path.exists("/proc/self/maps")
    with Llama.load(ckpt, tok, device=device) as m:
        assert m.run(PROMPT, steps=8, temperature=0).text
        if linux:
            assert _mapped(ckpt)
    assert m.closed
    if linux:
        assert not _mapped(ckpt)
    with pytest.raises(Llama2pyError, match="closed"):
        m.run(PROMPT, steps=8)
    with pytest.raises(Llama2pyError, match="closed"):
        m.text_completion([PROMPT])
    m.close()  # twice is fine
    # a view of the weights kept by the caller outlives close(): the file stays mapped for it
    m = Llama.load(ckpt, tok, device=device)
    view = m.checkpoint.weights.rms_att
    total = float(view.sum())
    m.close()
    assert float(view.sum()) == total  # (numpy 2 let mmap.close() unmap under it: a crash)
    if linux:
        assert _mapped(ckpt)
        del view
        assert not _mapped(ckpt)


@pytest.mark.parametrize("device", HOST_DEVICES + ["cuda"])
def test_a_stream_outliving_its_model_raises(stories260k, device):
    """close() while a stream runs: the stream's next step raises (on cpu it read the unmapped
    weights and crashed the interpreter)."""
    require_device(device)
    ckpt, tok = stories260k
    with Llama.load(ckpt, tok, device=device) as m:
        g = m.stream(PROMPT, steps=100, temperature=0)
        next(g)
    with pytest.raises(ClosedError, match="this model was closed"):
        for _ in g:
            pass


def test_one_call_at_a_time(stories260k):
    """Calls share the KV cache. A later generation supersedes a suspended stream (whose next
    piece then raises before any step: a forgotten stream never locks the model, whichever thread
    holds it); a call while another runs (another thread) is refused instead of interleaving steps
    into noise."""
    import threading

    require_device("cpu")
    ckpt, tok = stories260k
    with Llama.load(ckpt, tok, device="cpu") as m:
        want = m.run(PROMPT, steps=40, temperature=0).text
        g = m.stream(PROMPT, steps=40, temperature=0)
        first = next(g)
        assert first + "".join(g) == want  # a stream alone runs undisturbed
        for call in (lambda: m.run(PROMPT, steps=40, temperature=0).text, lambda: m.logits([BOS, 5]).shape):
            g = m.stream(PROMPT, steps=40, temperature=0)
            next(g)
            call()  # the later call wins
            with pytest.raises(BusyError, match="this stream was superseded"):
                next(g)
        # a stream advanced by another thread is superseded alike (not owned by a thread)
        g = m.stream(PROMPT, steps=40, temperature=0)
        worker = threading.Thread(target=lambda: next(g))
        worker.start()
        worker.join()
        assert m.run(PROMPT, steps=40, temperature=0).text == want
        with pytest.raises(BusyError, match="superseded"):
            next(g)
        results, errors = [], []
        started = threading.Barrier(4)

        def work():
            started.wait()
            try:
                results.append(m.run(PROMPT, steps=200, temperature=0).text)
            except BusyError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results and len(results) + len(errors) == 4
        assert all(r.startswith(want) for r in results), "a run was disturbed by another thread"
        assert all("running a call in another thread" in e for e in errors)


@pytest.mark.parametrize("call", ["run", "stream"])
def test_close_from_another_thread_waits_for_the_call(stories260k, call):
    """close() while another thread's call runs: that call stops at its next step with the closed
    error (it crashed when the memory went from under a running step), then the memory is freed;
    a second close() meanwhile changes nothing."""
    import threading

    require_device("cpu")
    ckpt, tok = stories260k
    m = Llama.load(ckpt, tok, device="cpu")
    backend = m.backend
    outcome, steps = [], []
    running, closed = threading.Event(), threading.Event()
    step = backend.step

    def paused_step(*args, **kwargs):  # the 5th step waits inside the call while close() runs
        steps.append(closed.is_set())
        if len(steps) == 5:
            running.set()
            closed.wait(30)
        return step(*args, **kwargs)

    backend.step = paused_step

    def work():
        try:
            if call == "run":
                m.run(PROMPT, steps=200, temperature=0)
            else:
                for _ in m.stream(PROMPT, steps=200, temperature=0):
                    pass
            outcome.append("finished")
        except Llama2pyError as e:
            outcome.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    assert running.wait(30)
    m.close()
    m.close()
    assert m.closed
    closed.set()
    t.join(60)
    assert outcome and "this model was closed" in outcome[0], outcome
    assert steps.count(True) <= 1, f"{steps.count(True)} steps ran after close()"  # the next one was refused
    assert backend._released and m._deferred is None  # freed, by whichever side came last


def test_close_from_a_signal_handler_does_not_hang(stories260k):
    """A handler runs in the thread it interrupts, possibly while that thread holds the call guard
    (every stream piece takes it): close() must not wait on its own thread."""
    import threading

    require_device("cpu")
    m = Llama.load(*stories260k, device="cpu")

    def interrupted():
        with m._guard:  # as if the signal landed inside _begin / _end
            m.close()

    t = threading.Thread(target=interrupted, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and m.closed


def test_close_while_another_thread_keeps_a_suspended_stream(stories260k):
    """A stream suspended in another thread (kept, never finished) holds nothing: close() frees
    at once, and the stream's next piece raises the closed error."""
    import threading

    require_device("cpu")
    ckpt, tok = stories260k
    m = Llama.load(ckpt, tok, device="cpu")
    backend = m.backend
    kept = []
    worker = threading.Thread(target=lambda: kept.append((lambda g: (next(g), g))(m.stream(PROMPT, steps=99))))
    worker.start()
    worker.join()
    m.close()
    assert backend._released and m._deferred is None
    with pytest.raises(ClosedError, match="this model was closed"):
        next(kept[0][1])


def test_logits_takes_one_sequence(stories260k):
    import numpy as np

    require_device("cpu")
    with Llama.load(*stories260k, device="cpu") as m:
        with pytest.raises(PromptError, match=r"1-D\), got shape \(2, 3\)"):
            m.logits(np.ones((2, 3), np.int64))
        assert m.logits([BOS, 5]).shape == (2, m.config.vocab_size)
        assert np.array_equal(m.logits([[BOS, 5]]), m.logits([BOS, 5]))  # a batch of one, as before


def test_load_auto_picks_a_usable_backend(stories260k):
    require_device("cpu")
    ckpt, tok = stories260k
    with Llama.load(ckpt, tok) as m:  # device="auto" is the default, as in the CLI
        assert m.device in ("cpu", "cuda")
        assert m.device == "cuda" or (m.notes and all("cuda" in n for n in m.notes)), m.notes  # says why


def test_cli_is_quiet_on_a_cpu_machine_and_says_more_with_verbose(stories260k, tmp_path):
    require_device("cpu")
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: a GPU is expected, so an unusable one is worth a line")
    ckpt, tok = stories260k
    argv = [sys.executable, "-m", "llama2py", str(ckpt), "-z", str(tok), "-t", "0", "-n", "20"]
    out = subprocess.run(argv, capture_output=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("achieved tok/s"), lines
    out = subprocess.run(argv + ["--verbose"], capture_output=True, cwd=tmp_path, timeout=300)
    err = out.stderr.decode()
    assert out.returncode == 0 and "device:" in err and f"tokenizer: {tok}" in err


def test_tokenizer_named_after_its_model_wins(tmp_path, monkeypatch):
    """Two 512-token models with different vocabularies side by side (aidreams260K.bin with
    aidreams_tok512.bin, stories260K.bin with tok512.bin): each finds its own."""
    from llama2py.model import find_tokenizer

    monkeypatch.setenv("LLAMA2PY_MODELS", str(tmp_path / "store"))
    for name in ("tok512.bin", "aidreams_tok512.bin", "aid_tok512.bin", "x_tok999.bin", "tokenizer.bin"):
        (tmp_path / name).write_bytes(b"")
    assert find_tokenizer(tmp_path / "aidreams260K.bin", 512) == tmp_path / "aidreams_tok512.bin"  # longest prefix
    assert find_tokenizer(tmp_path / "aid.bin", 512) == tmp_path / "aid_tok512.bin"
    assert find_tokenizer(tmp_path / "stories260K.bin", 512) == tmp_path / "tok512.bin"
    assert find_tokenizer(tmp_path / "stories15M.bin", 32000) == tmp_path / "tokenizer.bin"


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_run_batch_reports_each_sequence_as_soon_as_it_is_done(stories260k, device):
    require_device(device)
    from llama2py.batch import run_batch

    ckpt, tok = stories260k
    with Llama.load(ckpt, tok, device=device, max_batch_size=3) as m:
        prompts = [m.tokenizer.encode(p) for p in (PROMPT, "Tom and", "A dog")]
        ends = [40, 12, 25]  # without an EOS, sequence 1 is done first, then 2, then 0
        calls = []
        res = run_batch(m.backend, prompts, ends, 0.0, 0.9, [1, 2, 3], on_done=lambda b, t: calls.append((b, t)))
    assert sorted(b for b, _ in calls) == [0, 1, 2]
    assert dict(calls) == dict(enumerate(res.tokens))
    finish_order = sorted(range(3), key=lambda b: len(res.tokens[b]))
    assert [b for b, _ in calls] == finish_order


def test_arguments_of_the_wrong_type_are_named(stories260k):
    """A path that is not a path, a flag that is not a bool: a TypeError naming the argument."""
    ckpt, tok = stories260k
    for args, kw, needle in (
        ((None,), {}, "checkpoint must be a path"),
        ((123,), {}, "checkpoint must be a path"),
        ((ckpt,), {"tokenizer": 5}, "tokenizer must be a path"),
    ):
        with pytest.raises(TypeError, match=needle):
            Llama.load(*args, **kw)
    require_device("cpu")
    with Llama.load(ckpt, tok, device="cpu") as m:
        for kw in ({"logprobs": "yes"}, {"echo": 1}):
            with pytest.raises(TypeError, match=f"{next(iter(kw))} must be True or False"):
                m.generate([[BOS, 5]], 3, **kw)
        assert m.generate([[BOS, 5]], 3, logprobs=True, echo=False, seed=1)[1] is not None


def test_a_known_model_name_gets_its_own_download_hint(tmp_path, monkeypatch):
    from llama2py.checkpoint import load_checkpoint
    from llama2py.errors import CheckpointError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA2PY_MODELS", str(tmp_path / "empty store"))
    for given, name in (("stories260K", "stories260K"), ("stories42M.bin", "stories42M")):
        with pytest.raises(CheckpointError, match=f"run `llama2py download {name}`"):
            load_checkpoint(given)
    with pytest.raises(CheckpointError, match=r"mine.bin: no such file \(give the path of a llama2.c .bin; `llama2py"):
        load_checkpoint("mine.bin")  # no download to suggest


def test_wrong_argument_types_are_named(stories260k):
    """An API audit's cases: each wrong type is a TypeError or ValueError naming the argument (was:
    'NoneType' object is not iterable, 'int' object has no attribute 'batch_size', OverflowError,
    numpy's internal words, a message calling a dict of prompts a flat list)."""
    from llama2py.batch import BatchStats
    from llama2py.generate import RunStats
    from llama2py.tokenizer import Tokenizer

    ckpt, tok = stories260k
    m = Llama.load(ckpt, tok, device="numpy", max_batch_size=2)
    ids = m.tokenizer.encode("Once")
    cases = [
        (lambda: m.text_completion(None), TypeError, "text_completion takes a list of prompts \\(str\\), got NoneType"),
        (lambda: m.text_completion(5), TypeError, "got int"),
        (lambda: m.text_completion(b"Once"), TypeError, "wrap a single prompt in"),
        (lambda: m.chat_completion(None), TypeError, "chat_completion takes a list of dialogs"),
        (lambda: m.chat_completion(d for d in []), TypeError, "got generator"),
        (lambda: m.run("a", stop=5), TypeError, "stop must be a str or a list of str, got int"),
        (lambda: m.run("a", stop=b"x"), TypeError, "got bytes"),
        (lambda: m.run("a", temperature=10**400), ValueError, "temperature must be a finite number"),
        (lambda: m.run("a", top_p=-(10**400)), ValueError, "top_p must be a finite number"),
        (lambda: m.stream_bytes("a", stats=5), TypeError, "stats must be a RunStats"),
        (lambda: m.generate([ids], 3, stats=RunStats()), TypeError, "stats must be a BatchStats"),
        (lambda: m.generate({0: ids}, 3), TypeError, "got a dict"),
        (lambda: m.generate({1, 2}, 3), TypeError, "got a set"),
        (lambda: m.generate([[1, [2]]], 3), PromptError, "unequal nesting \\(the vocabulary"),
        (lambda: m.run("a\ud800 b"), PromptError, "'\\\\ud800' at character 1, a lone surrogate"),
        (lambda: m.text_completion(["ok", "\udfff"]), PromptError, "lone surrogate"),
        (lambda: m.chat_completion([[{"role": "user", "content": "\ud83d"}]]), PromptError, "lone surrogate"),
        (lambda: m.tokenizer.decode([5], prev=1.5), TypeError, "prev must be an integer"),
        (lambda: m.tokenizer.decode([5], prev=-1), ValueError, "prev must be"),
        (lambda: Tokenizer(tok, None), TypeError, "vocab_size must be an integer, got None"),
    ]
    for call, kind, needle in cases:
        with pytest.raises(kind, match=needle):
            call()
    assert Tokenizer(tok, np.int64(512)).vocab_size == 512  # numpy's integers, as everywhere else
    stats = BatchStats()
    m.generate([ids], 2, stats=stats, seed=1)  # the right types still pass
    m.close()


def test_unseeded_calls_differ_and_their_seed_tells_them_again(model):
    """No seed: a fresh one per call, recorded in the stats (it was the time in seconds, so every
    call within one second told the same story)."""
    runs = [model.run(PROMPT, steps=40) for _ in range(3)]
    assert len({r.stats.seed for r in runs}) == 3 and len({r.text for r in runs}) > 1
    assert model.run(PROMPT, steps=40, seed=runs[0].stats.seed).text == runs[0].text
    stats = RunStats()
    streamed = "".join(model.stream(PROMPT, steps=40, stats=stats))
    assert stats.seed and model.run(PROMPT, steps=40, seed=stats.seed).text == streamed
    batch_stats = [BatchStats() for _ in range(3)]
    outs = [model.text_completion([PROMPT, "Lily"], max_gen_len=20, stats=st) for st in batch_stats]
    assert len({st.seed for st in batch_stats}) == 3 and len({repr(o) for o in outs}) > 1
    again = BatchStats()
    assert model.text_completion([PROMPT, "Lily"], max_gen_len=20, seed=batch_stats[0].seed, stats=again) == outs[0]
    assert again.seed == batch_stats[0].seed
