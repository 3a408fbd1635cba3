"""The run-compatible sampler: greedy, temperature, top-p, and llama2.c's xorshift generator.

This is the readable specification (docs/FORMAT.md, "Sampler"); the C++ and CUDA backends carry the
same algorithm in their kernels and are tested against it. Arithmetic is float32 with sequential
sums, as in run.c, so that near-ties fall the same way.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

SEED_BITS = 64  # a seed is the generator's state: a 64-bit unsigned integer (run's unsigned long long)
SEED_MAX = (1 << SEED_BITS) - 1  # also the mask of the state's 64-bit arithmetic


def nth_seed(base: int, b: int) -> int:
    """The seed of sequence b of a batch seeded with base (1..SEED_MAX): base + b, wrapping from
    SEED_MAX to 1 (a generator state of 0 stays 0: every coin would be 0.0)."""
    return (base - 1 + b) % SEED_MAX + 1


def resolve_seed(seed: Optional[int], clock: bool = False) -> int:
    """The seed to use: check_seed's for a given one; for None (or 0, as a state of 0 would stay 0:
    every coin 0.0) a fresh one. clock=True: run's rule, the current time in seconds (the command
    line, whose stories match run's); else a random one, so that library calls within one second
    do not all tell one story (the stats of the call record it: RunStats.seed, BatchStats.seed)."""
    if seed is not None:
        from .backends.base import check_seed  # the one seed check (base imports this module)

        seed = check_seed("seed", seed)
    if seed:
        return seed
    return int(time.time()) if clock else secrets.randbits(SEED_BITS - 1) + 1


class Rng:
    """xorshift64* as in run.c: one 64-bit state, 24-bit float coins in [0, 1)."""

    def __init__(self, seed: int):
        self.state = int(seed) & SEED_MAX

    def u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & SEED_MAX
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & SEED_MAX) >> 32

    def coin(self) -> float:
        return np.float32((self.u32() >> 8) / 16777216.0)


def seq_sum(x: np.ndarray) -> np.float32:
    """Sequential float32 sum (numpy's own sum is pairwise, run's is a plain loop)."""
    return np.cumsum(x, dtype=np.float32)[-1] if x.size else np.float32(0)


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(), dtype=np.float32)
    return (e / seq_sum(e)).astype(np.float32)


def sample_mult(probs: np.ndarray, coin: np.float32) -> int:
    cdf = np.cumsum(probs, dtype=np.float32)
    idx = int(np.searchsorted(cdf, coin, side="right"))  # first index where cdf > coin
    return min(idx, probs.size - 1)


def sample_topp(probs: np.ndarray, top_p: float, coin: np.float32) -> int:
    n = probs.size
    cutoff = np.float32((np.float32(1.0) - np.float32(top_p)) / np.float32(n - 1))
    idx = np.nonzero(probs >= cutoff)[0]
    if idx.size == 0:  # only for top_p < 1/n or NaN probabilities; as the kernels: the argmax
        return int(np.argmax(probs))
    # Descending by probability; ties keep index order (run's qsort leaves them unspecified).
    order = idx[np.argsort(-probs[idx], kind="stable")]
    p = probs[order]
    cum = np.cumsum(p, dtype=np.float32)
    over = np.nonzero(cum > np.float32(top_p))[0]
    last = int(over[0]) if over.size else p.size - 1
    r = np.float32(coin * cum[last])
    pos = int(np.searchsorted(cum[: last + 1], r, side="right"))
    return int(order[min(pos, last)])


@dataclass
class Sampler:
    """Samples one token from a logits row; holds its own generator state."""

    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = Rng(self.seed)

    def sample(self, logits: np.ndarray) -> int:
        if self.temperature == 0.0:
            return int(np.argmax(logits))  # first index on ties
        probs = softmax(np.asarray(logits, np.float32) / np.float32(self.temperature))
        coin = self.rng.coin()
        if self.top_p <= 0 or self.top_p >= 1:
            return sample_mult(probs, coin)
        return sample_topp(probs, self.top_p, coin)


def log_softmax_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (..., vocab), targets (...) -> log p(target) under softmax of each row (...), in
    float64 (logprobs are reported, not sampled)."""
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1, keepdims=True)
    picked = np.take_along_axis(x, np.asarray(targets)[..., None].astype(np.int64), axis=-1)[..., 0]
    return picked - m[..., 0] - np.log(np.exp(x - m).sum(axis=-1))


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under softmax(logits) (one row), in float64."""
    return float(log_softmax_rows(logits, np.asarray(token)))
