"""The one backend interface every implementation (numpy, cpu, cuda) provides.

A backend owns its copy of the weights, its KV cache and its buffers, and never hands device
arrays to callers: inputs and outputs are host numpy arrays. It runs B sequences (B <= max_batch)
at one shared position; sequence b always uses KV cache slot b. The generation loop lives in
llama2py.generate and is written once against this interface.

A backend holds one generation's state (KV cache, generators, buffers): it is not thread-safe.
Use one model per thread (each Llama.load has its own backend); batch sequences instead of threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..checkpoint import Config, Weights

PROFILE_KEYS = ("embedding", "rmsnorm", "matmul", "rope", "attention", "swiglu", "residual", "classifier", "sampling")


class Backend(ABC):
    name: str = "?"

    def __init__(self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.config = config
        self.max_batch = max_batch
        self.threads = threads
        self.weight_type = weights.weight_type  # "f32" or "q8_0" (int8) as this backend computes

    # -- the model ------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """One position for a batch: tokens (B,) int32 at position pos.

        Writes the KV cache rows at pos for slots 0..B-1; returns logits (B, vocab) float32."""

    @abstractmethod
    def prefill(self, tokens: np.ndarray, pos: int, logits: str = "last") -> Optional[np.ndarray]:
        """A run of positions at once: tokens (B, T) int32 at positions pos..pos+T-1.

        Matrix-matrix work rather than T single steps; fills the KV cache exactly as T forward()
        calls would. logits: "last" -> (B, vocab) at the last position, "all" -> (B, T, vocab),
        "none" -> None (only the cache is wanted)."""

    # -- sampling -------------------------------------------------------------------------------
    @abstractmethod
    def set_seeds(self, seeds: Sequence[int]) -> None:
        """Reset the run-compatible generator of each slot b to seeds[b] (len(seeds) <= max_batch)."""

    @abstractmethod
    def step(
        self,
        tokens: np.ndarray,
        pos: int,
        temperature: float,
        top_p: float,
        forced: Optional[np.ndarray] = None,
        want_logprobs: bool = False,
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """forward() plus sampling in one call (one extension call / graph replay per token).

        tokens (B,) int32 at position pos. Returns next ids (B,) int32 and, with want_logprobs,
        log softmax(logits)[next] (B,) float32 of the raw (untempered) logits. Where forced[b] >= 0
        the next id is forced[b] and slot b's generator is not advanced (prompt tokens)."""

    # -- reporting ------------------------------------------------------------------------------
    def profile(self, tokens: np.ndarray, pos: int) -> dict[str, float]:
        """Seconds spent per kernel category in one decode step at pos for tokens (B,): keys from
        PROFILE_KEYS (matmul = the layers' projections; classifier separate). For `bench`."""
        raise NotImplementedError(f"{self.name} backend has no per-kernel profile")

    def describe(self) -> str:
        return self.name

    def memory_bytes(self) -> int:
        """Bytes this backend holds for weights, cache and buffers (device memory for cuda)."""
        return 0

    def close(self) -> None:
        """Release device memory early (optional; garbage collection does it too)."""


def check_tokens(backend: Backend, tokens: np.ndarray, pos: int, ndim: int) -> np.ndarray:
    """Validate a token batch at the Python boundary: shape, batch size, range, position."""
    t = np.ascontiguousarray(tokens, dtype=np.int32)
    if t.ndim != ndim:
        raise ValueError(f"tokens must have {ndim} dimension(s), got shape {t.shape}")
    B = t.shape[0]
    T = t.shape[1] if ndim == 2 else 1
    c = backend.config
    if not 1 <= B <= backend.max_batch:
        raise ValueError(f"batch of {B} sequences, this backend was made for 1..{backend.max_batch}")
    if T < 1 or pos < 0 or pos + T > c.seq_len:
        raise ValueError(f"positions {pos}..{pos + T - 1} are outside the context 0..{c.seq_len - 1}")
    if t.size and (t.min() < 0 or t.max() >= c.vocab_size):
        raise ValueError(f"token ids must be in 0..{c.vocab_size - 1}, got {t.min()}..{t.max()}")
    return t


def check_prefill(backend: Backend, tokens: np.ndarray, pos: int, logits: str) -> np.ndarray:
    """Validate prefill's arguments before any work: the logits mode, then the token block (B, T)."""
    if logits not in ("last", "all", "none"):
        raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
    return check_tokens(backend, tokens, pos, 2)
