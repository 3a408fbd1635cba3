"""The run-compatible sampler: generator sequence, greedy, multinomial and top-p rules."""

import numpy as np
import pytest

from llama2py.sampler import Rng, Sampler, log_softmax_at, sample_mult, sample_topp, softmax

MASK = (1 << 64) - 1


def reference_u32(state):
    """docs/FORMAT.md's generator, step by step."""
    state ^= state >> 12
    state ^= (state << 25) & MASK
    state ^= state >> 27
    return state, ((state * 0x2545F4914F6CDD1D) & MASK) >> 32


@pytest.mark.parametrize("seed", [1, 42, 7, 2**63 + 12345])
def test_rng_sequence(seed):
    rng, state = Rng(seed), seed
    for _ in range(100):
        state, u = reference_u32(state)
        assert rng.u32() == u
    coin = Rng(seed).coin()
    assert 0 <= coin < 1 and coin == np.float32((reference_u32(seed)[1] >> 8) / 16777216.0)


def test_greedy_first_index_on_ties():
    assert Sampler(0.0).sample(np.array([1, 3, 3, 2], np.float32)) == 1


def test_multinomial_walk():
    p = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    assert [sample_mult(p, np.float32(c)) for c in (0.0, 0.0999, 0.1001, 0.35, 0.61, 0.9999)] == [0, 0, 1, 2, 3, 3]


def test_topp_keeps_smallest_nucleus():
    p = np.array([0.05, 0.5, 0.05, 0.3, 0.1], np.float32)
    # sorted: 0.5 (1), 0.3 (3), 0.1 (4) ... cumulative exceeds 0.7 at token 3 -> nucleus {1, 3}
    assert sample_topp(p, 0.7, np.float32(0.0)) == 1
    assert sample_topp(p, 0.7, np.float32(0.99)) == 3  # r = 0.99 * 0.8 = 0.792 > 0.5
    assert sample_topp(p, 0.7, np.float32(0.62)) == 1  # r = 0.496 < 0.5


def topp_by_definition(p, top_p, coin):
    """Nucleus sampling straight from its definition: every token, sorted, no cutoff shortcut."""
    order = sorted(range(p.size), key=lambda i: (-p[i], i))
    cum, last = np.float32(0), len(order) - 1
    for k, i in enumerate(order):
        cum = np.float32(cum + p[i])
        if cum > np.float32(top_p):
            last = k
            break
    r, cdf = np.float32(coin * cum), np.float32(0)
    for i in order[: last + 1]:
        cdf = np.float32(cdf + p[i])
        if r < cdf:
            return i
    return order[last]


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_topp_equals_its_definition(top_p):
    """run's cutoff (1 - top_p) / (n - 1) only skips tokens that can never be in the nucleus."""
    rng = np.random.default_rng(int(top_p * 100))
    for trial in range(300):
        logits = rng.standard_normal(50).astype(np.float32) * rng.uniform(0.1, 8)
        p = softmax(logits)
        coin = np.float32(rng.random())
        assert sample_topp(p, top_p, coin) == topp_by_definition(p, top_p, coin), trial


def test_seed_zero_is_no_seed_and_out_of_range_seeds_are_refused():
    from llama2py.sampler import resolve_seed

    assert resolve_seed(0) != 0 and resolve_seed(None) != 0 and resolve_seed(5) == 5
    assert resolve_seed(2**64 - 1) == 2**64 - 1
    for bad in (2**64, -1):  # 2**64 used to wrap to 0, silently a time seed
        with pytest.raises(ValueError, match="seed must be in 0..18446744073709551615"):
            resolve_seed(bad)
    for bad in (1.5, True, "7"):
        with pytest.raises(TypeError):
            resolve_seed(bad)


def test_no_seed_is_fresh_in_the_library_and_the_time_on_the_command_line(monkeypatch):
    """run's rule (no seed: the time in seconds) gave every library call within one second the
    same story (a web service's requests); the command line keeps it, to match run."""
    from llama2py import sampler

    monkeypatch.setattr(sampler.time, "time", lambda: 1234.5)
    assert sampler.resolve_seed(None, clock=True) == sampler.resolve_seed(0, clock=True) == 1234
    fresh = {sampler.resolve_seed(None) for _ in range(50)} | {sampler.resolve_seed(0) for _ in range(50)}
    assert len(fresh) == 100 and all(0 < s <= sampler.SEED_MAX for s in fresh)


def test_sequence_seeds_wrap_past_the_top_to_one_never_zero():
    from llama2py.sampler import SEED_MAX, nth_seed

    assert [nth_seed(5, b) for b in range(3)] == [5, 6, 7]
    # a state of 0 stays 0 (every coin 0.0): the seeds go on from 1
    assert [nth_seed(SEED_MAX - 1, b) for b in range(4)] == [SEED_MAX - 1, SEED_MAX, 1, 2]


def test_sampler_distribution_matches_softmax():
    logits = np.array([0.0, 1.0, 2.0, -1.0], np.float32)
    s = Sampler(1.0, 1.0, seed=3)
    counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=4) / 20000
    assert np.abs(counts - softmax(logits)).max() < 0.02


def test_log_softmax_at():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    assert log_softmax_at(x, 2) == pytest.approx(np.log(np.exp(3) / np.exp(x.astype(np.float64)).sum()))


@pytest.mark.parametrize(
    "temperature,top_p,rule",
    [(1.0, 0.9, "topp"), (0.7, 0.5, "topp"), (1.3, 1.0, "mult"), (0.5, 0.0, "mult"), (1.0, 1.5, "mult")],
)
def test_sampler_applies_temperature_and_picks_the_rule(temperature, top_p, rule):
    """Sampler = softmax(logits / temperature), one coin per token, multinomial when top_p is
    outside (0, 1), nucleus otherwise: the same tokens as the pieces composed by hand."""
    rng = np.random.default_rng(5)
    s, coins = Sampler(temperature, top_p, seed=77), Rng(77)
    for _ in range(200):
        logits = (rng.standard_normal(40) * 3).astype(np.float32)
        p = softmax(logits / np.float32(temperature))
        coin = coins.coin()
        want = sample_topp(p, top_p, coin) if rule == "topp" else sample_mult(p, coin)
        assert s.sample(logits) == want


def test_greedy_draws_no_coin():
    """Temperature 0 leaves the generator alone (run draws no coin for argmax)."""
    s = Sampler(0.0, 0.9, seed=12)
    s.sample(np.array([0.5, 2.0, 1.0], np.float32))
    assert s.rng.state == 12
