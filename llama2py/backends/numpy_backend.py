"""The numpy backend: a plain transcription of docs/FORMAT.md's forward pass, and the test oracle.

Written for reading, not speed: every other backend is checked against it. With int8 weights
(QuantizedTensor: a v2 file, or weights="q8_0") it is also the spec of the Q8_0 arithmetic
(runq.c's, with a correct path for groups that straddle rows): see matmul_q8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from ..checkpoint import Config, QuantizedTensor, Weights
from ..sampler import Rng, Sampler, log_softmax_rows
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


# ---- Q8_0 (int8) products, runq.c's arithmetic -------------------------------------------------------
def quantize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """x (..., n) float32 -> (q (..., n) int8, s (..., ceil(n / gs)) float32), per group of gs along
    the row (the last group shorter when gs does not divide n): s = max|x| / 127, q = C round(x / s)
    (halves away from zero); a group of zeros gets s = 0 and q = 0, a group holding NaN or inf a NaN
    or inf scale and q = 0 (its products are then NaN: a non-finite activation reaches the logits)."""
    n = x.shape[-1]
    groups = -(-n // group_size)
    padded = np.zeros(x.shape[:-1] + (groups * group_size,), np.float32)  # zeros leave max|x| alone
    padded[..., :n] = x
    padded = padded.reshape(x.shape[:-1] + (groups, group_size))  # (..., groups, gs)
    s = (np.abs(padded).max(axis=-1) / np.float32(127.0)).astype(np.float32)  # (..., groups)
    zero = (s == 0) | ~np.isfinite(s)  # (..., groups) groups whose q are all 0
    v = padded / np.where(zero, np.float32(1.0), s)[..., None]  # float32 division, as C
    q = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)  # exact: |v| <= 127 in float64
    q = np.where(zero[..., None], 0, q).astype(np.int8)
    return q.reshape(x.shape[:-1] + (groups * group_size,))[..., :n], s


def _segment_starts(phase: int, n: int, group_size: int) -> np.ndarray:
    """Starts of the runs of a row (length n, its first value at offset phase inside a weight group)
    where both the weight's group and the activation's group stay the same."""
    starts = set(range(0, n, group_size)) | set(range((group_size - phase) % group_size, n, group_size))
    return np.array(sorted(starts), np.int64)


def matmul_q8(x: np.ndarray, w: QuantizedTensor) -> np.ndarray:
    """x (..., n) float32 @ w.T for a one-part QuantizedTensor w (d, n) -> (..., d) float32.

    x is quantized per group (quantize_activations); for each output i, over the runs of k where
    weight group (i * n + k) // gs and activation group k // gs are both constant, in order of k:
    an exact integer dot of the run, then acc += (float(dot) * w_scale) * x_scale in float32 from 0.
    When gs divides n the runs are the groups and this is runq.c's matmul exactly."""
    (qw, sw), gs = w.parts[0], w.group_size
    d, n = qw.shape
    lead = x.shape[:-1]
    qx, sx = quantize_activations(x.reshape(-1, n).astype(np.float32), gs)  # (R, n), (R, groups)
    qx = qx.astype(np.int64)
    out = np.empty((qx.shape[0], d), np.float32)
    if n % gs == 0:  # every row starts a group: runs are groups
        groups = n // gs
        isum = np.einsum("rgk,dgk->rdg", qx.reshape(-1, groups, gs), qw.reshape(d, groups, gs).astype(np.int64))
        terms = (isum.astype(np.float32) * sw.reshape(d, groups)[None]) * sx[:, None, :]  # (R, d, groups)
        out[:] = np.cumsum(terms, axis=-1, dtype=np.float32)[..., -1]  # sequential float32 sum
    else:  # groups straddle rows: the slower general path
        for i in range(d):
            starts = _segment_starts((i * n) % gs, n, gs)
            isum = np.add.reduceat(qx * qw[i].astype(np.int64), starts, axis=-1)  # (R, runs)
            terms = (isum.astype(np.float32) * sw[(i * n + starts) // gs]) * sx[:, starts // gs]
            out[:, i] = np.cumsum(terms, axis=-1, dtype=np.float32)[:, -1]
    return out.reshape(lead + (d,))


def matmul(x: np.ndarray, w: Union[np.ndarray, QuantizedTensor]) -> np.ndarray:
    """x (..., n) @ w (d, n).T: float32 weights, or int8 ones with runq's arithmetic."""
    if isinstance(w, QuantizedTensor):
        return matmul_q8(x, w)
    return x @ w.T


def embed(table: Union[np.ndarray, QuantizedTensor], tokens: np.ndarray) -> np.ndarray:
    """Rows of the token embedding (dequantized rows for int8 weights, as runq's float table)."""
    if isinstance(table, QuantizedTensor):
        return table.rows(tokens)
    return np.array(table[tokens], dtype=np.float32)


# NaN/Inf weights or float32 overflow: step() reports them as one NonFiniteError (the chosen
# logits are checked); numpy's RuntimeWarnings would only repeat that on stderr, with source paths.
def _quiet_floats() -> np.errstate:
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


class NumpyBackend(Backend):
    name = "numpy"

    @property
    def weight_type(self) -> str:
        """The weight type: "q8_0" when the weights are int8 (runq's arithmetic), else "f32"."""
        return self.w.weight_type

    @property
    def group_size(self) -> Optional[int]:
        return self.w.group_size

    def __init__(self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None):
        super().__init__(config, weights, max_batch, threads)
        self.w = weights
        c = config
        self.key_cache = np.zeros((c.n_layers, max_batch, c.seq_len, c.kv_dim), np.float32)  # (L, B, seq_len, kv_dim)
        self.value_cache = np.zeros((c.n_layers, max_batch, c.seq_len, c.kv_dim), np.float32)  # (L, B, seq_len, kv_dim)
        self.rngs = [Rng(0) for _ in range(max_batch)]

    def _release(self) -> None:
        self.w = None  # type: ignore[assignment]  (the weights: maybe views of the mapped file)
        self.key_cache = self.value_cache = None  # type: ignore[assignment]

    def memory_bytes(self) -> int:
        if self.w is None:
            return 0
        return self.w.nbytes(self.config.shared_classifier) + self.key_cache.nbytes + self.value_cache.nbytes

    # -- the forward pass over a block of T positions for B sequences --------------------------
    def _block(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """tokens (B, T) at positions pos..pos+T-1 -> final hidden states (B, T, dim)."""
        with _quiet_floats():
            return self._layers(tokens, pos)

    def _layers(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        c, w = self.config, self.w
        B, T = tokens.shape
        hs, nh, nkv = c.head_size, c.n_heads, c.n_kv_heads
        positions = np.arange(pos, pos + T)
        x = embed(w.token_embedding, tokens)  # (B, T, dim)
        # causal mask over the cache: query at pos+i sees keys 0..pos+i
        keys_t = np.arange(pos + T)
        mask = keys_t[None, :] <= positions[:, None]  # (T, pos+T)
        for layer in range(c.n_layers):
            xb = rmsnorm(x, w.rms_att[layer])
            q = matmul(xb, w.wq[layer]).reshape(B, T, nh, hs)  # (B, T, n_heads, hs)
            k = matmul(xb, w.wk[layer]).reshape(B, T, nkv, hs)  # (B, T, n_kv_heads, hs)
            v = matmul(xb, w.wv[layer])  # (B, T, kv_dim)
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
            x = x + matmul(out, w.wo[layer])
            xb = rmsnorm(x, w.rms_ffn[layer])
            h = silu(matmul(xb, w.w1[layer])) * matmul(xb, w.w3[layer])  # (B, T, hidden_dim)
            x = x + matmul(h, w.w2[layer])
        return rmsnorm(x, w.rms_final)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        with _quiet_floats():
            return matmul(x, self.w.wcls).astype(np.float32)  # (..., vocab)

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
        lp = None
        with _quiet_floats():  # once for every row's sampling and log-prob
            s = Sampler(temperature, top_p)  # each row draws from its own generator
            for b in range(B):
                if forced is not None and forced[b] >= 0:
                    nxt[b] = forced[b]
                    continue
                s.rng = self.rngs[b]
                nxt[b] = s.sample(logits[b])
            if want_logprobs:
                lp = log_softmax_rows(logits, nxt).astype(np.float32)
        return nxt, lp

    def _chosen_logits(self, ids: list[int], rows) -> list[float]:
        return [self._last_logits.item(b, ids[b]) for b in rows]
