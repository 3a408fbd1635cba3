"""The numpy backend: a plain transcription of docs/FORMAT.md's forward pass, and the test oracle.

Written for reading, not speed: every other backend is checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..checkpoint import Config, Weights
from ..sampler import Rng, Sampler, log_softmax_at
from .base import Backend

EPS = np.float32(1e-5)


def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (..., dim) -> w * x / sqrt(mean(x^2) + 1e-5)."""
    ss = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True, dtype=np.float32)
    return (w * (x / np.sqrt(ss + EPS))).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, head_size: int) -> np.ndarray:
    """Rotate adjacent pairs inside each head. x (..., T, n_heads, head_size), positions (T,)."""
    j = np.arange(0, head_size, 2, dtype=np.float32)  # (head_size/2,)
    freq = np.float32(1.0) / np.power(np.float32(10000.0), j / np.float32(head_size))
    angle = positions.astype(np.float32)[:, None] * freq[None, :]  # (T, head_size/2)
    cos = np.cos(angle)[:, None, :]  # (T, 1, head_size/2)
    sin = np.sin(angle)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def silu(z: np.ndarray) -> np.ndarray:
    return z / (np.float32(1.0) + np.exp(-z))


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None):
        super().__init__(config, weights, max_batch, threads)
        self.w = weights
        c = config
        self.key_cache = np.zeros((c.n_layers, max_batch, c.seq_len, c.kv_dim), np.float32)  # (L, B, seq_len, kv_dim)
        self.value_cache = np.zeros((c.n_layers, max_batch, c.seq_len, c.kv_dim), np.float32)  # (L, B, seq_len, kv_dim)
        self.rngs = [Rng(0) for _ in range(max_batch)]

    def memory_bytes(self) -> int:
        return self.w.nbytes(self.config.shared_classifier) + self.key_cache.nbytes + self.value_cache.nbytes

    # -- the forward pass over a block of T positions for B sequences --------------------------
    def _block(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """tokens (B, T) at positions pos..pos+T-1 -> final hidden states (B, T, dim)."""
        c, w = self.config, self.w
        B, T = tokens.shape
        hs, nh, nkv = c.head_size, c.n_heads, c.n_kv_heads
        positions = np.arange(pos, pos + T)
        x = np.array(w.token_embedding[tokens], dtype=np.float32)  # (B, T, dim)
        # causal mask over the cache: query at pos+i sees keys 0..pos+i
        keys_t = np.arange(pos + T)
        mask = keys_t[None, :] <= positions[:, None]  # (T, pos+T)
        for layer in range(c.n_layers):
            xb = rmsnorm(x, w.rms_att[layer])
            q = (xb @ w.wq[layer].T).reshape(B, T, nh, hs)  # (B, T, n_heads, hs)
            k = (xb @ w.wk[layer].T).reshape(B, T, nkv, hs)  # (B, T, n_kv_heads, hs)
            v = xb @ w.wv[layer].T  # (B, T, kv_dim)
            q = rope(q, positions, hs)
            k = rope(k, positions, hs)
            self.key_cache[layer, :B, pos : pos + T] = k.reshape(B, T, c.kv_dim)
            self.value_cache[layer, :B, pos : pos + T] = v
            K = self.key_cache[layer, :B, : pos + T].reshape(B, pos + T, nkv, hs)  # (B, S, n_kv_heads, hs)
            V = self.value_cache[layer, :B, : pos + T].reshape(B, pos + T, nkv, hs)
            # grouped-query attention: query head h reads kv head h // kv_mul
            K = np.repeat(K, c.kv_mul, axis=2)  # (B, S, n_heads, hs)
            V = np.repeat(V, c.kv_mul, axis=2)
            scores = np.einsum("bthd,bshd->bhts", q, K) / np.sqrt(np.float32(hs))  # (B, n_heads, T, S)
            scores = np.where(mask[None, None], scores, -np.inf).astype(np.float32)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            att = scores / scores.sum(axis=-1, keepdims=True)
            out = np.einsum("bhts,bshd->bthd", att, V).reshape(B, T, c.dim)  # (B, T, dim)
            x = x + out @ w.wo[layer].T
            xb = rmsnorm(x, w.rms_ffn[layer])
            h = silu(xb @ w.w1[layer].T) * (xb @ w.w3[layer].T)  # (B, T, hidden_dim)
            x = x + h @ w.w2[layer].T
        return rmsnorm(x, w.rms_final)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.w.wcls.T).astype(np.float32)  # (..., vocab)

    def _forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        return self._logits(self._block(tokens[:, None], pos)[:, 0])

    def _prefill(self, tokens: np.ndarray, pos: int, logits: str) -> Optional[np.ndarray]:
        x = self._block(tokens, pos)
        if logits == "none":
            return None
        if logits == "all":
            return self._logits(x)
        return self._logits(x[:, -1])

    # -- sampling with the spec sampler ---------------------------------------------------------
    def _set_seeds(self, seeds: Sequence[int]) -> None:
        for b, s in enumerate(seeds):
            self.rngs[b] = Rng(s)

    def _step(self, tokens, pos, temperature, top_p, forced, want_logprobs):
        logits = self._forward(tokens, pos)
        self._last_logits = logits  # (B, vocab), for _chosen_logits
        B = logits.shape[0]
        nxt = np.empty(B, np.int32)
        for b in range(B):
            if forced is not None and forced[b] >= 0:
                nxt[b] = forced[b]
                continue
            s = Sampler(temperature, top_p)
            s.rng = self.rngs[b]
            nxt[b] = s.sample(logits[b])
        lp = None
        if want_logprobs:
            lp = np.array([log_softmax_at(logits[b], int(nxt[b])) for b in range(B)], np.float32)
        return nxt, lp

    def _chosen_logits(self, ids: list[int], rows) -> list[float]:
        return [self._last_logits.item(b, ids[b]) for b in rows]
