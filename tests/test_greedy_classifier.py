"""The greedy classifier of float32 models on the cpu backend (csrc/cpu/model.h, ModelCore::Sketch).

A decode step at temperature 0 (no log-probs) finds the argmax from an int8 sketch of the classifier
and the exact float32 logits of only the ids whose bounds it cannot rule out. Its ids must be those
of the full float32 product, at every instruction-set level, for every shape and batch, ties
included; last_logits() must still give the whole row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import cli, first_difference, load_case, model_file, require_device

from llama2py.checkpoint import Config, load_checkpoint, random_weights

SKETCH_SHAPES = {
    # gs 16; vocab not a multiple of 16 (rows past the last packed block); grouped-query attention
    "tail_rows_gqa": Config(dim=48, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=1500, seq_len=24),
    # gs 4, an unshared classifier
    "gs4_unshared": Config(
        dim=36, hidden_dim=40, n_layers=2, n_heads=3, n_kv_heads=3, vocab_size=1100, seq_len=16, shared_classifier=False
    ),
    # gs 64
    "gs64": Config(dim=128, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=2048, seq_len=12),
}


def _greedy_against_full(config: Config, weights, B: int, label: str) -> list[int]:
    """Greedy steps of B sequences against the argmax of full forward() logits; returns how many
    logits each step computed exactly (the ids its bounds could not rule out, all rows)."""
    from llama2py.backends.cpu import CpuBackend

    greedy, full = CpuBackend(config, weights, B), CpuBackend(config, weights, B)
    tok = np.random.default_rng(5).integers(0, config.vocab_size, B).astype(np.int32)
    exact = []
    for pos in range(config.seq_len):
        ids, _ = greedy.step(tok, pos, 0.0, 0.9)
        exact.append(greedy._model.exact_logits)
        logits = full.forward(tok, pos)
        want = np.argmax(logits, axis=-1)  # first index of the maximum, as run's argmax
        assert ids.tolist() == want.tolist(), f"{label}: pos {pos}"
        view = greedy._model.logits_view()  # the chosen ids' logits are exact
        for b in range(B):
            assert view[b, ids[b]] == logits[b, ids[b]], f"{label}: pos {pos} row {b}"
        if pos % 5 == 0:  # the rest of the row on demand, the same bits as the full product
            assert np.array_equal(greedy._model.last_logits()[:B], logits), f"{label}: last_logits at {pos}"
        tok = ids
    return exact


@pytest.mark.parametrize("shape", list(SKETCH_SHAPES))
def test_greedy_steps_equal_the_full_argmax(isa, shape):
    import llama2py._cpu as ext

    config = SKETCH_SHAPES[shape]
    assert ext.sketch_bytes(config.dim, config.vocab_size) > 0  # the sketch is in use here
    weights = random_weights(config, 1)
    exact = _greedy_against_full(config, weights, 3, f"{shape} {isa}")
    assert max(exact) < 3 * config.vocab_size // 4, f"the bounds ruled out too little: {exact}"


def test_bounds_are_the_same_bits_at_every_level():
    """The sketch's logits are the same bits at every level, and so must its bounds be (16 or 8
    lanes, or the scalar loop). A classifier of near-copies of one row leaves ~10% of the ids within
    their bounds' reach, so the number of exact logits moves with any change of the bounds (one 1%
    larger at the SIMD levels changed it): it must be the same at every level, step by step."""
    require_device("cpu")
    import llama2py._cpu as ext

    config = SKETCH_SHAPES["gs4_unshared"]
    rng = np.random.default_rng(1)
    base = 0.1 * rng.standard_normal((1, config.dim))
    wcls = (base + 0.01 * rng.standard_normal((config.vocab_size, config.dim))).astype(np.float32)
    weights = replace(random_weights(config, 2), wcls=wcls)
    counts = {}
    try:
        for level in ext.isa_levels():
            ext.set_isa(level)
            counts[level] = _greedy_against_full(config, weights, 2, level)
    finally:
        ext.set_isa("")
    assert sum(counts["generic"]) > 2 * config.seq_len  # the bounds leave many candidates here
    assert all(c == counts["generic"] for c in counts.values()), {k: sum(v) for k, v in counts.items()}


def test_greedy_ties_take_the_first_id(isa):
    """Every classifier row the same: every logit ties, no id can be ruled out, the first wins."""
    config = SKETCH_SHAPES["tail_rows_gqa"]
    w = random_weights(config, 2)
    row = w.wcls[7].copy()
    same = np.broadcast_to(row, w.wcls.shape).copy()
    w = replace(w, token_embedding=same, wcls=same)
    from llama2py.backends.cpu import CpuBackend

    b = CpuBackend(config, w, 2)
    ids, _ = b.step(np.array([3, 9], np.int32), 0, 0.0, 0.9)
    assert ids.tolist() == [0, 0]
    assert b._model.exact_logits == 2 * config.vocab_size  # nothing could be ruled out
    _greedy_against_full(config, w, 2, f"ties {isa}")


def test_greedy_close_logits(isa):
    """Classifier rows that differ by less than the sketch's quantization step: many candidates,
    the exact logits decide."""
    config = SKETCH_SHAPES["gs64"]
    w = random_weights(config, 3)
    rng = np.random.default_rng(0)
    base = w.wcls[0]
    close = (base[None, :] * (1 + 1e-4 * rng.standard_normal((config.vocab_size, 1)))).astype(np.float32)
    w = replace(w, token_embedding=close, wcls=close)
    exact = _greedy_against_full(config, w, 2, f"close {isa}")
    assert max(exact) > 2, f"expected near-ties to need several exact logits: {exact}"


def test_non_finite_classifier_has_no_sketch():
    """A NaN in the classifier: no sketch (greedy steps read the full product, with its NaN
    semantics); finite weights of the same shape have one."""
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend

    config = SKETCH_SHAPES["gs4_unshared"]
    w = random_weights(config, 4)
    assert CpuBackend(config, w, 1)._model.greedy_sketch
    wcls = w.wcls.copy()
    wcls[40, 3] = np.nan
    assert not CpuBackend(config, replace(w, wcls=wcls), 1)._model.greedy_sketch


def test_sketch_is_counted_and_only_where_it_fits():
    require_device("cpu")
    import llama2py._cpu as ext

    from llama2py.backends.cpu import CpuBackend

    assert ext.sketch_bytes(64, 512) == 0  # a small vocabulary is read whole
    assert ext.sketch_bytes(70, 4096) == 0  # no group size of 4..64 divides 70
    config = SKETCH_SHAPES["gs64"]
    want = ext.sketch_bytes(config.dim, config.vocab_size)
    assert want >= config.vocab_size * config.dim  # at least the int8 values
    b = CpuBackend(config, random_weights(config, 0), 1)
    assert b.host_bytes(config, 1, None)["greedy classifier sketch"] == want
    assert b.memory_bytes() >= want


def test_info_names_the_sketch(make_checkpoint):
    """`llama2py info` on a float32 file with a sketch-sized vocabulary names the sketch's bytes."""
    require_device("cpu")
    import llama2py._cpu as ext

    config = SKETCH_SHAPES["gs64"]
    r = cli("info", make_checkpoint(config))
    assert r.returncode == 0, r.stderr
    assert f"+{ext.sketch_bytes(config.dim, config.vocab_size):,} bytes" in r.stdout.decode()


def test_trained_model_through_the_sketch_tells_runs_story(monkeypatch):
    """stories260K (trained weights; its 512-token vocabulary is below the sketch's minimum, which
    LLAMA2PY_SKETCH_MIN_VOCAB lowers): greedy steps through the sketch give the full product's ids
    at every position, and the CLI prints run's greedy golden story byte for byte."""
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend

    monkeypatch.setenv("LLAMA2PY_SKETCH_MIN_VOCAB", "1")
    path = model_file("stories260K.bin")
    ck = load_checkpoint(path)
    greedy, full = CpuBackend(ck.config, ck.weights, 1), CpuBackend(ck.config, ck.weights, 1)
    assert greedy._model.greedy_sketch
    tok, pruned = np.array([1], np.int32), 0
    for pos in range(200):
        ids, _ = greedy.step(tok, pos, 0.0, 0.9)
        want = int(np.argmax(full.forward(tok, pos)[0]))
        assert int(ids[0]) == want, f"pos {pos}"
        pruned += greedy._model.exact_logits < ck.config.vocab_size
        tok = np.array([want], np.int32)
    assert pruned >= 150, f"the bounds ruled ids out at only {pruned} of 200 positions"
    case, want = load_case("s260K_greedy_tom")
    r = cli(*case["argv"], "--device", "cpu", cwd=path.parent, env={"LLAMA2PY_SKETCH_MIN_VOCAB": "1"})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == want, first_difference(r.stdout, want)


def test_bound_keeps_an_argmax_the_sketch_ranks_second(isa):
    """An adversarial classifier: rows A and B where the int8 sketch ranks B above A by a whole
    quantization step while the exact float32 logits put A first. Only a bound of the size the
    rounding really allows keeps A a candidate (a bound a hundred times too small loses it).

    The layers are zero, so the classifier's input is the normed token embedding, which the test
    knows; the classifier is unshared."""
    config = Config(
        dim=64, hidden_dim=32, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=1024, seq_len=4, shared_classifier=False
    )
    w = random_weights(config, 6)
    zero = {name: np.zeros_like(getattr(w, name)) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
    w = replace(w, rms_final=np.ones_like(w.rms_final), **zero)
    token = 5
    e = w.token_embedding[token].astype(np.float64)
    x = e / np.sqrt(np.mean(e * e) + 1e-5)  # the classifier's input (rms weights are 1)
    rng = np.random.default_rng(0)
    wcls = (0.001 * rng.standard_normal((config.vocab_size, config.dim))).astype(np.float32)
    top = int(np.argmax(np.abs(x)))
    a = x / np.abs(x).max()  # row A: aligned with x, max |a| = 1, so its quantization step is 1/127
    positive = [k for k in np.argsort(-x) if k != top and x[k] > 0]
    j, k = positive[0], positive[1]
    eta = 0.01
    q_j, q_k = np.round(a[j] * 127), np.round(a[k] * 127)
    a[j] = (q_j + 0.5 - eta) / 127  # just below a rounding midpoint: the sketch rounds it down
    a[k] = q_k / 127  # on the grid
    b = a.copy()
    b[j] = (q_j + 0.5 + eta) / 127  # just above: the sketch rounds it up, a whole step
    b[k] = a[k] - 4 * eta * x[j] / x[k] / 127  # and B loses more than that gains, exactly
    ia, ib = 100, 700
    wcls[ia], wcls[ib] = a, b
    w = replace(w, wcls=wcls)
    from llama2py.backends.cpu import CpuBackend

    greedy, full = CpuBackend(config, w, 1), CpuBackend(config, w, 1)
    logits = full.forward(np.array([token], np.int32), 0)[0]
    assert int(np.argmax(logits)) == ia and logits[ia] > logits[ib], "the construction: A first, B second"
    ids, _ = greedy.step(np.array([token], np.int32), 0, 0.0, 0.9)
    assert int(ids[0]) == ia, f"{isa}: the sketch's second-ranked exact argmax was ruled out"
    assert greedy._model.exact_logits >= 2  # both A and B had to be computed exactly


@pytest.mark.parametrize("weight_type", ["f32", "q8_0"])
@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_epilogue_takes_the_first_of_tied_maxima(isa, weight_type, threads):
    """Models without a sketch (int8 weights; float32 with a vocabulary read whole) take the argmax
    beside the classifier product, block by block: with whole sets of exactly tied logits (rows
    v, 2 v and -v, whose int8 groups are the same integers at twice the scale or negated) its id must
    be the full product's first maximum, wherever the tied rows fall in the blocks and the threads'
    halves (2 v in both halves, -v only in the second)."""
    from llama2py.backends.cpu import CpuBackend
    from llama2py.checkpoint import convert_weights

    config = Config(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=520, seq_len=10)
    w = random_weights(config, 6)
    doubled = np.zeros(config.vocab_size, bool)
    doubled[[17, 18, 19, 33, 130, 131, 259, 260, 261, 262, 263, 500, 519]] = True
    doubled[5::37] = True
    row = w.wcls[11]
    wcls = np.where(doubled[:, None], 2 * row, row).astype(np.float32)
    wcls[[300, 301, 450]] = -row  # the winners where row . x < 0, all in the second thread's half
    config = replace(config, shared_classifier=False)  # the embedding stays random
    w = replace(w, wcls=wcls)
    w = convert_weights(w, config, weight_type)
    import llama2py._cpu as ext

    assert weight_type == "q8_0" or ext.sketch_bytes(config.dim, config.vocab_size) == 0  # no sketch here
    B = 3
    greedy, full = CpuBackend(config, w, B, threads), CpuBackend(config, w, B, threads)
    tok = np.array([3, 9, 200], np.int32)
    winners = set()
    for pos in range(config.seq_len):
        ids, _ = greedy.step(tok, pos, 0.0, 0.9)
        want = np.argmax(full.forward(tok, pos), axis=-1)
        assert ids.tolist() == want.tolist(), f"{weight_type} {isa} threads {threads}: pos {pos}"
        winners.update(ids.tolist())
        tok = ids
    assert winners == {5, 300}, winners  # the first of each tied set, and both sets won somewhere
