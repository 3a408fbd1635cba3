"""The cpu backend (C++ extension llama2py._cpu) against the numpy oracle.

Kernels one by one against numpy references, whole forward/prefill/step against NumpyBackend
(relative error <= 1e-5, sampled ids equal for the same seeds), the bitwise batch/prefill equalities
the GEMM's accumulation order promises, argument checking, and the stories260K reference text.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REFERENCE_260K, SHAPES, cpu_built, randn, rel_err

from llama2py.backends import numpy_backend as nbk
from llama2py.backends.base import PROFILE_KEYS
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import load_checkpoint
from llama2py.errors import DeviceError
from llama2py.sampler import Rng, Sampler, log_softmax_at, softmax

if not cpu_built():  # (where $LLAMA2PY_REQUIRE_CPU=1, CI, a broken build fails here instead)
    pytest.skip("C++ extension not built (pip install -e .)", allow_module_level=True)
from llama2py import _cpu  # noqa: E402
from llama2py.backends.cpu import CpuBackend  # noqa: E402

TOL = 1e-5
SHAPE_NAMES = list(SHAPES)


# ---- kernels (matmul, rmsnorm and attention: test_isa.py, at every instruction-set level) ----------
@pytest.mark.parametrize("n_heads,head_size", [(3, 6), (4, 10), (6, 8)])
def test_rope_matches_numpy(n_heads, head_size):
    rng = np.random.default_rng(head_size)
    positions = np.array([0, 1, 5, 17, 255], np.int32)
    x = randn(rng, len(positions), n_heads * head_size)
    ref = nbk.rope(x.reshape(1, len(positions), n_heads, head_size), positions, head_size).reshape(x.shape)
    _cpu.rope(x, positions, head_size)
    assert rel_err(x, ref) <= TOL, f"worst relative error {rel_err(x, ref):.3g}"


def test_rope_far_position_needs_no_table_up_to_it():
    """The cos/sin of the rows' own positions: position 10**9 once allocated a table of 10**9 rows."""
    positions = np.array([10**9, 3], np.int32)
    x = randn(np.random.default_rng(0), 2, 8)
    ref = nbk.rope(x.reshape(1, 2, 1, 8), positions, 8).reshape(x.shape)
    _cpu.rope(x, positions, 8)
    assert rel_err(x, ref) <= TOL, f"worst relative error {rel_err(x, ref):.3g}"


def test_swiglu_softmax_argmax_logsoftmax():
    rng = np.random.default_rng(3)
    h, g = randn(rng, 3, 37, scale=3), randn(rng, 3, 37)
    ref = nbk.silu(h) * g
    _cpu.swiglu(h, g)
    assert rel_err(h, ref) <= TOL
    x = randn(rng, 53, scale=4)
    p = np.empty_like(x)
    _cpu.softmax(p, x)
    assert rel_err(p, softmax(x)) <= TOL
    x[[5, 40]] = x.max() + 1  # ties: the first index wins
    assert _cpu.argmax(x) == 5 == int(np.argmax(x))
    for tok in (0, 5, 52):
        assert abs(_cpu.log_softmax_at(x, tok) - log_softmax_at(x, tok)) <= 1e-6


def test_rng_matches_run_generator():
    for seed in (1, 42, 2**63 + 12345):
        state = np.array([seed], np.uint64)
        out = np.empty(100, np.uint32)
        _cpu.rng_u32(out, state)
        ref = Rng(seed)
        assert out.tolist() == [ref.u32() for _ in range(100)]
        assert int(state[0]) == ref.state


@pytest.mark.parametrize("temperature,top_p", [(0.0, 0.9), (1.0, 0.0), (1.0, 1.0), (0.8, 0.9), (1.3, 0.5), (0.5, 0.99)])
def test_sample_matches_sampler(temperature, top_p):
    rng = np.random.default_rng(int(temperature * 10 + top_p * 100))
    sampler = Sampler(temperature, top_p, seed=1234)
    state = np.array([1234], np.uint64)
    for i in range(200):
        logits = randn(rng, 97 if i % 2 else 512, scale=2.0 + i % 5)
        got = _cpu.sample(logits, temperature, top_p, state)
        want = sampler.sample(logits)
        assert got == want, f"draw {i}: cpu sampled {got}, spec sampler {want}"
    assert int(state[0]) == sampler.rng.state


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_sample_topp_flat_with_ties_matches_sampler(top_p):
    """Flat distributions over a 32000 vocabulary (thousands of top-p candidates: the radix-sorted
    path) with many exactly tied logits: same ids as the spec sampler (ties in index order)."""
    rng = np.random.default_rng(7)
    sampler = Sampler(1.0, top_p, seed=99)
    state = np.array([99], np.uint64)
    for i in range(20):
        logits = np.round(rng.normal(0.0, 0.3 + 0.1 * i, 32000), 1 + i % 3).astype(np.float32)
        got = _cpu.sample(logits, 1.0, top_p, state)
        want = sampler.sample(logits)
        assert got == want, f"draw {i}: cpu sampled {got}, spec sampler {want}"
    assert int(state[0]) == sampler.rng.state


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.9999999])
def test_sample_topp_nucleus_ending_inside_a_large_group_matches_sampler(top_p):
    """The sort of many candidates goes group by group (probabilities of one exponent range) and
    stops at the group where the sum passes top_p: nuclei that end inside a group of thousands of
    (tied or jittered) candidates, or never pass top_p (0.9999999: every candidate), draw the spec
    sampler's ids."""
    rng = np.random.default_rng(11)
    sampler = Sampler(1.0, top_p, seed=5)
    state = np.array([5], np.uint64)
    for i in range(24):
        logits = np.full(32000, -20.0, np.float32)
        ids = rng.permutation(32000)
        logits[ids[:300]] = 0.0  # a group of 300 ties: ~30% of the mass
        logits[ids[300:5300]] = -2.0  # 5,000 ties: the rest of the nucleus
        if i % 2:  # jitter: distinct values within each group, some still tied
            logits += np.round(rng.normal(0.0, 0.05, 32000), 2).astype(np.float32)
        got = _cpu.sample(logits, 1.0, top_p, state)
        want = sampler.sample(logits)
        assert got == want, f"draw {i}: cpu sampled {got}, spec sampler {want}"
    assert int(state[0]) == sampler.rng.state


def test_kernels_reject_bad_arguments():
    w = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="shape"):
        _cpu.matmul(np.empty(5, np.float32), np.zeros(8, np.float32), w)
    with pytest.raises(ValueError, match="shape"):
        _cpu.matmul(np.empty(4, np.float32), np.zeros(7, np.float32), w)
    with pytest.raises(ValueError, match="float32"):
        _cpu.matmul(np.empty(4, np.float32), np.zeros(8, np.float64), w)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.matmul(np.empty(4, np.float32), np.zeros(16, np.float32)[::2], w)
    with pytest.raises(ValueError, match="read-only"):
        out = np.empty(4, np.float32)
        out.flags.writeable = False
        _cpu.matmul(out, np.zeros(8, np.float32), w)
    with pytest.raises(ValueError):
        _cpu.rmsnorm(np.empty((2, 8), np.float32), np.zeros((2, 8), np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError):
        _cpu.rope(np.zeros((2, 12), np.float32), np.zeros(2, np.int32), 5)
    with pytest.raises(ValueError, match="outside"):
        kc = np.zeros((1, 4, 8), np.float32)
        _cpu.attention(
            np.empty((1, 8), np.float32),
            np.zeros((1, 8), np.float32),
            kc,
            kc,
            np.zeros(1, np.int32),
            np.array([4], np.int32),
            1,
            1,
        )
    with pytest.raises(ValueError):
        _cpu.softmax(np.empty(0, np.float32), np.empty(0, np.float32))
    with pytest.raises(TypeError):
        _cpu.matmul("out", np.zeros(8, np.float32), w)


def test_kernels_reject_what_would_crash_or_misread():
    """Each of these once crashed the process (SIGFPE), wrote outside an array or read the bytes
    in the wrong order instead of raising."""
    empty_q = np.zeros((1, 0), np.float32)
    kc = np.zeros((1, 4, 0), np.float32)
    with pytest.raises(ValueError, match="empty head"):  # head size 0: a division by zero
        _cpu.attention(np.zeros((1, 0), np.float32), empty_q, kc, kc.copy(), *[np.zeros(1, np.int32)] * 2, 1, 1)
    with pytest.raises(ValueError, match="inconsistent model config"):  # n_heads 0: kv_dim divides by it
        _cpu.packed_q8_bytes(64, 128, 1, 0, 1, 100, 32)
    with pytest.raises(ValueError, match="group_size"):
        _cpu.packed_q8_bytes(64, 128, 1, 4, 4, 100, -32)
    with pytest.raises(ValueError, match="dim and vocab_size"):  # a negative size wrapped to 2**64 - n
        _cpu.sketch_bytes(-64, 2000)
    # a group size near INT_MAX: the group count overflowed to 0, and scales of shape (3, 0) were
    # accepted and written past
    big = np.full((3, 4), 7.0, np.float32)
    with pytest.raises(ValueError, match="shape"):
        _cpu.quantize(np.zeros((3, 10), np.int8), big[:, 1:1], np.ones((3, 10), np.float32), 2**31 - 1)
    assert (big == 7.0).all()
    # a length above INT_MAX (the kernels take int lengths): a zero-size array can have one
    with pytest.raises(ValueError, match="too long"):
        _cpu.matmul(np.empty(0, np.float32), np.zeros(0, np.float32), np.empty((2**31, 0), np.float32))
    # big-endian arrays: same kind and size, other bytes
    with pytest.raises(ValueError, match="float32"):
        _cpu.matmul(np.empty(4, np.float32), np.arange(4, dtype="<f4"), np.eye(4, dtype=">f4"))
    out = np.empty(4, np.float32)
    _cpu.matmul(out, np.arange(4, dtype=np.float32), np.eye(4, dtype=np.float32))
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


# ---- the backend against NumpyBackend -------------------------------------------------------------
def _backends(make_checkpoint, shape, version=0, max_batch=3, threads=None):
    ck = load_checkpoint(make_checkpoint(shape, version))
    return ck, NumpyBackend(ck.config, ck.weights, max_batch), CpuBackend(ck.config, ck.weights, max_batch, threads)


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_forward_matches_numpy(make_checkpoint, shape, version):
    ck, nb, cb = _backends(make_checkpoint, shape, version)
    c = ck.config
    tokens = np.random.default_rng(7).integers(0, c.vocab_size, (3, c.seq_len)).astype(np.int32)
    worst = 0.0
    # every position for v0; the other formats only change how weights load, so a few positions
    for pos in range(c.seq_len if version == 0 else min(c.seq_len, 6)):
        B = 1 + pos % 3
        worst = max(worst, rel_err(cb.forward(tokens[:B, pos], pos), nb.forward(tokens[:B, pos], pos)))
    assert worst <= TOL, f"{shape} v{version}: worst relative error {worst:.3g}"


# B=1: one sequence, whose positions are one chunk's rows (its attention items go round the team)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_prefill_matches_numpy_and_single_steps(make_checkpoint, shape, B):
    ck, nb, cb = _backends(make_checkpoint, shape, threads=2)  # (the default may run one thread)
    c = ck.config
    T = c.seq_len - 2
    tokens = np.random.default_rng(11).integers(0, c.vocab_size, (B, c.seq_len)).astype(np.int32)
    got = cb.prefill(tokens[:, :T], 0, "all")
    want = nb.prefill(tokens[:, :T], 0, "all")
    assert got.shape == (B, T, c.vocab_size)
    assert rel_err(got, want) <= TOL, f"{shape}: worst relative error {rel_err(got, want):.3g}"
    # continuing after a prefill sees the cache it filled
    assert rel_err(cb.forward(tokens[:, T], T), nb.forward(tokens[:, T], T)) <= TOL
    # bitwise: prefill rows == one-sequence decode steps (one accumulation order for GEMM and GEMV)
    single = CpuBackend(c, ck.weights, 1)
    for b in range(B):
        for pos in range(T):
            row = single.forward(tokens[b : b + 1, pos], pos)[0]
            assert np.array_equal(row, got[b, pos]), f"{shape}: seq {b} pos {pos} differs from a single step"


@pytest.mark.parametrize("shape", ["gqa_unshared", "wide"])
def test_prefill_modes_and_pieces(make_checkpoint, shape):
    ck, nb, cb = _backends(make_checkpoint, shape)
    c = ck.config
    tokens = np.random.default_rng(5).integers(0, c.vocab_size, (2, c.seq_len)).astype(np.int32)
    a, b = 5, c.seq_len - 3
    assert cb.prefill(tokens[:, :a], 0, "none") is None
    last = cb.prefill(tokens[:, a:b], a, "last")
    nb.prefill(tokens[:, :a], 0, "none")
    want = nb.prefill(tokens[:, a:b], a, "last")
    assert last.shape == (2, c.vocab_size)
    assert rel_err(last, want) <= TOL, f"worst relative error {rel_err(last, want):.3g}"
    again = CpuBackend(c, ck.weights, 2).prefill(tokens[:, :b], 0, "all")
    assert np.array_equal(again[:, -1], last)
    with pytest.raises(ValueError):
        cb.prefill(tokens[:, :2], 0, "some")


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_batch_rows_equal_single_sequences(make_checkpoint, shape):
    ck = load_checkpoint(make_checkpoint(shape))
    c = ck.config
    B = 4
    batch = CpuBackend(c, ck.weights, B)
    singles = [CpuBackend(c, ck.weights, 1) for _ in range(B)]
    tokens = np.random.default_rng(2).integers(0, c.vocab_size, (B, c.seq_len)).astype(np.int32)
    for pos in range(c.seq_len):
        got = batch.forward(tokens[:, pos], pos)
        for b in range(B):
            assert np.array_equal(got[b], singles[b].forward(tokens[b : b + 1, pos], pos)[0]), (
                f"{shape}: batch row {b} at pos {pos} differs from the sequence alone"
            )


def test_threads_do_not_change_results(make_checkpoint):
    ck = load_checkpoint(make_checkpoint("wide"))
    c = ck.config
    tokens = np.random.default_rng(3).integers(0, c.vocab_size, (2, 12)).astype(np.int32)
    outs = [CpuBackend(c, ck.weights, 2, threads=t).prefill(tokens, 0, "all") for t in (1, 2, 3)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_default_threads_switch_teams_with_the_same_bits(make_checkpoint):
    """Without --threads the model picks 1 thread or the full team per call (whichever is faster
    lately, probing the other now and then): every call's logits stay the same bits."""
    ck = load_checkpoint(make_checkpoint("wide"))
    c = ck.config
    tokens = np.random.default_rng(8).integers(0, c.vocab_size, (2, c.seq_len)).astype(np.int32)
    auto, one = CpuBackend(c, ck.weights, 2), CpuBackend(c, ck.weights, 2, threads=1)
    for pos in range(c.seq_len):  # 40 calls: past the first probes
        assert np.array_equal(auto.forward(tokens[:, pos], pos), one.forward(tokens[:, pos], pos)), f"pos {pos}"


_OPENING_SCRIPT = """
import sys, numpy as np
from llama2py.backends.cpu import CpuBackend
from llama2py.checkpoint import load_checkpoint
ck = load_checkpoint(sys.argv[1])
loadavg, calls = sys.argv[2], sys.argv[3:]
teams, pos = [], 0
open(loadavg, "w").write(calls[0].split(":")[1])
backend = CpuBackend(ck.config, ck.weights, 1)
for call in calls:
    kind, state = call.split(":")
    open(loadavg, "w").write(state)
    if kind == "prefill":
        backend.prefill(np.full((1, 4), 5, np.int32), pos, "last")
        pos += 4
    else:
        backend.step(np.array([1], np.int32), pos, 0.0, 0.9)
        pos += 1
    teams.append(backend._model.last_team)
print(backend._model.threads, *teams)
"""
_LOADAVG = {"quiet": "0.00 0.00 0.00 1/100 1", "busy": "9.00 9.00 9.00 999/1000 1"}


_FORK_SCRIPT = """
import multiprocessing as mp, sys
import numpy as np
from llama2py.backends import create_backend
from llama2py.checkpoint import load_checkpoint
ck = load_checkpoint(sys.argv[1])
tokens = np.array([[1, 5, 9]], np.int32)
def make(notes):
    return create_backend("cpu", ck.config, ck.weights, 1, 2, notes)
parent = make([])
want = parent.prefill(tokens, 0, "all").tobytes()  # a team of two has run in this process
def child(q):
    notes = []
    own = make(notes)  # a new model after the fork, and the parent's
    q.put((own.prefill(tokens, 0, "all").tobytes(), parent.prefill(tokens, 0, "all").tobytes(), notes,
           own._model.threads))
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
try:
    own, inherited, notes, threads = q.get(timeout=60)  # (before join: a full pipe would block the child)
except Exception:
    p.kill()
    sys.exit("the forked child hung")
p.join(60)
libgomp = "libgomp" in open("/proc/self/maps").read() if sys.platform == "linux" else True
print(own == want, inherited == want, threads, len(notes), "forked" in " ".join(notes), libgomp)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_process_forked_after_the_team_started_runs_one_thread(make_checkpoint):
    """libgomp's team threads do not survive fork(): a child that asked for a team of two after its
    parent had one waited forever (multiprocessing's "fork" start method, a server forking workers
    after loading). The child runs every region on one thread (the same bits) and says so; with
    LLVM's libomp (a clang build), which starts its team again, it keeps its threads."""
    path = make_checkpoint("wide")
    r = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, str(path)],
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    *out, libgomp = r.stdout.split()
    assert out == (["True", "True", "1", "1", "True"] if libgomp == "True" else ["True", "True", "2", "0", "False"]), (
        r.stdout
    )


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="the team choice reads /proc/loadavg (Linux)")
@pytest.mark.parametrize(
    "calls,want",
    [
        # busy at the 2nd call: our own team mates still spinning from the 1st, not a neighbour
        (["step:quiet", "step:busy"], "team team"),
        (["step:busy", "step:quiet"], "one one"),  # busy at the start: one thread is timed first
        # the first step after a prompt's prefill (a kind of its own) keeps the opening choice too
        (["prefill:quiet", "step:busy"], "team team"),
    ],
)
def test_default_threads_opening_choice_is_made_once(make_checkpoint, tmp_path, calls, want):
    """Until a call of a kind has been timed, the default runs the choice the model's first call
    made from /proc/loadavg: asked again later, it saw the previous call's team mates still
    spinning and ran one thread for 15 steps (5% of a stories15M fp32 story on 2 cores)."""
    loadavg = tmp_path / "loadavg"
    env = {**os.environ, "LLAMA2PY_LOADAVG": str(loadavg), "OMP_NUM_THREADS": "2"}
    argv = [f"{kind}:{_LOADAVG[state]}" for kind, state in (c.split(":") for c in calls)]
    out = subprocess.run(
        [sys.executable, "-c", _OPENING_SCRIPT, str(make_checkpoint("wide")), str(loadavg), *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    threads, teams = int(out[0]), [int(t) for t in out[1:]]
    if threads < 2:
        pytest.skip("one OpenMP thread here: no team to choose")
    assert " ".join("team" if t == threads else "one" for t in teams) == want, (out, calls)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 0.9), (1.0, 0.0), (0.8, 0.9), (1.2, 0.6)])
@pytest.mark.parametrize("shape", ["gqa_unshared", "wide"])
def test_step_samples_like_numpy(make_checkpoint, shape, temperature, top_p):
    ck, nb, cb = _backends(make_checkpoint, shape, max_batch=3)
    c = ck.config
    seeds = [42, 7, 2**40 + 3]
    nb.set_seeds(seeds)
    cb.set_seeds(seeds)
    prompt = np.random.default_rng(9).integers(0, c.vocab_size, (3, 4)).astype(np.int32)
    tok_n = tok_c = prompt[:, 0]
    worst_lp = 0.0
    for pos in range(c.seq_len - 1):
        forced = prompt[:, pos + 1] if pos + 1 < prompt.shape[1] else None
        if forced is not None and pos == 1:
            forced = forced.copy()
            forced[1] = -1  # slot 1 samples while the others are forced
        nn, lpn = nb.step(tok_n, pos, temperature, top_p, forced, want_logprobs=True)
        nc, lpc = cb.step(tok_c, pos, temperature, top_p, forced, want_logprobs=True)
        assert nc.dtype == np.int32 and nc.shape == (3,) and lpc.dtype == np.float32
        assert nc.tolist() == nn.tolist(), f"pos {pos}: cpu sampled {nc.tolist()}, numpy {nn.tolist()}"
        if forced is not None:
            assert [int(nc[b]) for b in range(3) if forced[b] >= 0] == [int(f) for f in forced if f >= 0]
        worst_lp = max(worst_lp, float(np.abs(lpc - lpn).max()))
        tok_n, tok_c = nn, nc
    assert worst_lp <= 1e-4, f"worst logprob difference {worst_lp:.3g}"
    nxt, lp = cb.step(tok_c[:2], 0, temperature, top_p)
    assert lp is None and nxt.shape == (2,)


def test_step_forced_tokens_do_not_advance_generator(make_checkpoint):
    ck, _, cb = _backends(make_checkpoint, "mha_shared", max_batch=2)
    ref = CpuBackend(ck.config, ck.weights, 2)
    cb.set_seeds([5, 6])
    ref.set_seeds([5, 6])
    t = np.array([3, 4], np.int32)
    cb.step(t, 0, 1.0, 0.9, forced=np.array([10, 11], np.int32))
    a, _ = cb.step(t, 1, 1.0, 0.9)
    ref.step(t, 0, 1.0, 0.9, forced=np.array([10, 11], np.int32))  # same cache contents
    b, _ = ref.step(t, 1, 1.0, 0.9)
    assert a.tolist() == b.tolist()
    assert cb._model.rng_state(0) == ref._model.rng_state(0)
    fresh = Rng(5)
    fresh.u32()
    assert cb._model.rng_state(0) == fresh.state  # exactly one draw: the unforced step


def test_backend_rejects_bad_input(make_checkpoint):
    ck, _, cb = _backends(make_checkpoint, "odd_tiny", max_batch=2)
    c = ck.config
    with pytest.raises(ValueError):
        cb.forward(np.zeros(3, np.int32), 0)  # batch over max_batch
    with pytest.raises(ValueError):
        cb.forward(np.array([c.vocab_size], np.int32), 0)
    with pytest.raises(ValueError):
        cb.forward(np.array([-1], np.int32), 0)
    with pytest.raises(ValueError):
        cb.forward(np.zeros(1, np.int32), c.seq_len)
    with pytest.raises(ValueError):
        cb.prefill(np.zeros((1, c.seq_len + 1), np.int32), 0)
    with pytest.raises(ValueError):
        cb.prefill(np.zeros(4, np.int32), 0)
    with pytest.raises(ValueError):
        cb.step(np.zeros(2, np.int32), 0, 0.0, 0.9, forced=np.zeros(3, np.int32))
    with pytest.raises(ValueError):
        cb.set_seeds([1, 2, 3])
    # the extension checks on its own too, whatever the Python layer lets through
    m = cb._model
    with pytest.raises(ValueError):
        m.forward(np.empty((1, c.vocab_size), np.float32), np.array([c.vocab_size], np.int32), 0)
    with pytest.raises(ValueError):
        m.forward(np.empty((1, c.vocab_size + 1), np.float32), np.zeros(1, np.int32), 0)
    with pytest.raises(ValueError):
        m.forward(np.empty((1, c.vocab_size), np.float32), np.zeros(1, np.int64), 0)
    with pytest.raises(ValueError):
        m.step(np.empty(1, np.int32), None, np.zeros(1, np.int32), 0, 0.0, 0.9, np.array([c.vocab_size], np.int32))
    with pytest.raises(ValueError):
        m.prefill(None, np.zeros((1, 2), np.int32), 0, "all")
    w = ck.weights
    with pytest.raises(ValueError, match="wq"):
        _cpu.Model(
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size,
            c.seq_len,
            1,
            0,
            w.token_embedding,
            w.rms_att,
            w.wk,
            w.wk,
            w.wv,
            w.wo,
            w.rms_ffn,
            w.w1,
            w.w2,
            w.w3,
            w.rms_final,
            w.wcls,
        )
    with pytest.raises(ValueError):
        CpuBackend(c, w, 1, threads=0)


def test_weights_are_borrowed_and_reporting(make_checkpoint):
    ck = load_checkpoint(make_checkpoint("wide", 1))
    c = ck.config
    cb = CpuBackend(c, ck.weights, 2, threads=2)
    assert isinstance(ck.weights.wq, np.memmap) or isinstance(ck.weights.wq.base, np.memmap)
    # the C++ model reads the memory-mapped arrays themselves (no copy)
    for name in ("wq", "w2"):
        for layer in range(c.n_layers):
            arr = getattr(ck.weights, name)[layer]
            assert cb._model.weight_address(name, layer) == arr.__array_interface__["data"][0], (name, layer)
    assert cb._model.weight_address("token_embedding") == ck.weights.token_embedding.__array_interface__["data"][0]
    cache = 2 * c.n_layers * 2 * c.seq_len * c.kv_dim * 4
    assert cb.memory_bytes() >= ck.weights.nbytes(c.shared_classifier) + cache
    assert "cpu" in cb.describe() and "2" in cb.describe()
    prof = cb.profile(np.array([1, 2], np.int32), 3)
    assert set(prof) == set(PROFILE_KEYS) and all(v >= 0 for v in prof.values())
    assert prof["matmul"] > 0 and prof["classifier"] > 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("shape", ["gqa_unshared", "odd_tiny"])
def test_profiled_path_equals_fused_path(make_checkpoint, shape, temperature):
    # profile() times the same fused pass step() runs with that sampling (clock reads only, no
    # extra work) and leaves the generators as they were
    ck = load_checkpoint(make_checkpoint(shape))
    c = ck.config
    a, b = CpuBackend(c, ck.weights, 2), CpuBackend(c, ck.weights, 2)
    a.set_seeds([5, 6])
    tokens = np.random.default_rng(4).integers(0, c.vocab_size, (2, c.seq_len)).astype(np.int32)
    for pos in range(c.seq_len):
        a.profile(tokens[:, pos], pos, temperature, 0.9)
        b.step(tokens[:, pos], pos, temperature, 0.9)
        assert np.array_equal(a._model.last_logits(), b._model.last_logits()), f"pos {pos}"
    assert [a._model.rng_state(s) for s in (0, 1)] == [5, 6]
    if temperature:  # sampling advanced b's generators
        b.set_seeds([5, 6])
        b.step(tokens[:, 0], 0, temperature, 0.9)
        assert [b._model.rng_state(s) for s in (0, 1)] != [5, 6]


def test_missing_extension_raises_device_error(monkeypatch, make_checkpoint):
    import sys

    ck = load_checkpoint(make_checkpoint("odd_tiny"))
    monkeypatch.setitem(sys.modules, "llama2py._cpu", None)  # import fails as if never built
    with pytest.raises(DeviceError, match="pip install -e"):
        CpuBackend(ck.config, ck.weights)


# ---- the real model -----------------------------------------------------------------------------
def test_stories260k_greedy_reference_text(stories260k):
    from llama2py.tokenizer import Tokenizer

    model_path, tok_path = stories260k
    ck = load_checkpoint(model_path)
    tok = Tokenizer(tok_path, ck.config.vocab_size)
    cb = CpuBackend(ck.config, ck.weights, 1, threads=2)
    prompt = tok.encode("")
    token, out = prompt[0], bytearray()
    for pos in range(200):  # run's loop: feed 200 positions, print each next token, stop at BOS
        forced = np.array([prompt[pos + 1] if pos + 1 < len(prompt) else -1], np.int32)
        nxt = int(cb.step(np.array([token], np.int32), pos, 0.0, 0.9, forced)[0][0])
        if nxt == 1:
            break
        out += tok.printable_bytes(token, nxt)
        token = nxt
    assert out.decode("utf-8") == REFERENCE_260K


@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}])
def test_greedy_argmax_with_a_smaller_thread_team(env, tmp_path):
    """OpenMP may run fewer threads than asked; the fused classifier argmax must not pick up a slot
    of a thread that never ran (all logits negative here, so a stale {0, token 0} would win)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "argmax.py"
    script.write_text(
        "import numpy as np\n"
        "from conftest import SHAPES\n"
        "from llama2py.checkpoint import random_weights\n"
        "from llama2py.backends.cpu import CpuBackend\n"
        "from llama2py.backends.numpy_backend import NumpyBackend\n"
        "c = SHAPES['gqa_unshared']\n"
        "w = random_weights(c, 3)\n"
        "w.rms_final = np.zeros(c.dim, np.float32); w.rms_final[0] = 1  # logits = wcls[:, 0] * x0\n"
        "w.wcls = np.ones_like(w.wcls)\n"
        "s = np.sign(NumpyBackend(c, w).forward(np.array([5], np.int32), 0)[0, 0])\n"
        "w.wcls = (-s * (np.abs(random_weights(c, 4).wcls) + 1)).astype(np.float32)  # every logit < 0\n"
        "t = np.array([5], np.int32)\n"
        "want = int(np.argmax(NumpyBackend(c, w).forward(t, 0)[0]))\n"
        "got = int(CpuBackend(c, w, 1, threads=4).step(t, 0, 0.0, 0.9)[0][0])\n"
        "assert want != 0 and got == want, (got, want)\n"
        "assert NumpyBackend(c, w).forward(t, 0).max() < 0\n"
    )
    here = Path(__file__).resolve().parent
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=f"{here}{os.pathsep}{here.parent}", **env),
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]


@pytest.mark.parametrize(
    "env,want",
    [({}, "20000"), ({"GOMP_SPINCOUNT": "7"}, "7"), ({"OMP_WAIT_POLICY": "active"}, "None")],
)
def test_thread_wait_policy_set_before_libgomp_loads(env, want):
    """Waiting threads spin briefly then sleep, unless the user chose a policy."""
    import subprocess
    import sys
    from pathlib import Path

    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    root = Path(__file__).resolve().parents[1]
    # the variable is set by the import, and libgomp (which reads it once, when it loads) comes later,
    # with the extension; where /proc/self/maps cannot tell, only the first half is checked
    child = (
        "import os, sys, llama2py\n"
        "maps = '/proc/self/maps'\n"
        "early = os.path.exists(maps) and 'libgomp' in open(maps).read()\n"
        "import llama2py._cpu\n"
        "late = not os.path.exists(maps) or 'libgomp' in open(maps).read()\n"
        "llvm = os.path.exists(maps) and 'libomp' in open(maps).read()\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), early, late, llvm)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        timeout=60,
        env=dict(base, PYTHONPATH=str(root), **env),
    )
    out = r.stdout.decode().split()
    if r.returncode == 0 and out[2:] == ["False", "True"]:
        pytest.skip("the extension runs LLVM's libomp (a clang build), which does not read GOMP_SPINCOUNT")
    assert r.returncode == 0 and out == [want, "False", "True", "False"], (r.stdout, r.stderr[-500:])


@pytest.mark.parametrize("shared", [True, False])
def test_streamed_float32_weights_on_huge_pages_give_the_same_bits(make_checkpoint, monkeypatch, shared):
    """A float32 model too big for the caches (here 20-28 MB: over STREAM_BYTES) reads a copy of its
    file's matrices on transparent huge pages, counted in the memory check, where the copy fits
    twice in the available memory; its logits and draws are bitwise those of reading the file's
    mapping, for a shared and an unshared classifier. No copy for a model that fits the caches,
    nor of weights already in memory (they would be held twice)."""
    import llama2py._cpu as ext

    import llama2py.backends.cpu as cpu_backend
    from llama2py.backends.cpu import CpuBackend
    from llama2py.checkpoint import Config, load_checkpoint, random_weights

    config = Config(dim=128, hidden_dim=352, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40000, seq_len=32,
                    shared_classifier=shared)  # fmt: skip
    shape = (config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size)
    copy = ext.float_copy_bytes(*shape, shared)
    if copy == 0:
        pytest.skip("no transparent huge pages here (not Linux, or THP set to never): no copy is made")
    kv = config.kv_dim
    per_layer = 2 * config.dim * config.dim + 2 * kv * config.dim + 3 * config.hidden_dim * config.dim
    embeddings = 1 if shared else 2
    assert copy == 4 * (config.n_layers * per_layer + embeddings * config.vocab_size * config.dim)
    assert ext.float_copy_bytes(64, 172, 5, 8, 4, 512, True) == 0  # stories260K fits the caches
    ck = load_checkpoint(make_checkpoint(config, 0, 3))
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 6)).astype(np.int32)
    copied = CpuBackend(config, ck.weights, 2, threads=2)
    assert copied.host_bytes(config, 2, None)["float32 weights on huge pages"] == copy
    norms = ck.weights.rms_att.nbytes + ck.weights.rms_ffn.nbytes + ck.weights.rms_final.nbytes
    assert copy + norms <= copied.memory_bytes() < ck.weights.nbytes(shared) + copy  # counted once
    in_memory = CpuBackend(config, random_weights(config, 3), 1)  # weights not from a file: no copy
    assert "float32 weights on huge pages" not in in_memory.host_bytes(config, 1, None)
    monkeypatch.setattr(cpu_backend, "available_memory", lambda: 2 * copy - 1)  # no room for it twice
    mapped = CpuBackend(config, ck.weights, 2, threads=2)
    assert "float32 weights on huge pages" not in mapped.host_bytes(config, 2, None)
    a, b = copied.prefill(tokens, 0, "all"), mapped.prefill(tokens, 0, "all")
    assert np.array_equal(a, b), f"worst difference {np.abs(a - b).max():.3g}"
    for backend in (copied, mapped):
        backend.set_seeds([5, 6])
    for pos in range(6, 10):
        (na, _), (nb, _) = copied.step(tokens[:, -1], pos, 1.0, 0.9), mapped.step(tokens[:, -1], pos, 1.0, 0.9)
        assert np.array_equal(na, nb), f"pos {pos}: {na} vs {nb}"
