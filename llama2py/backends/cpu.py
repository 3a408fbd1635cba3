"""The cpu backend: the C++ extension llama2py._cpu (OpenMP; SIMD kernels for the best instruction
set this CPU has, chosen when the extension loads: generic, avx2, avxvnni, avx512 or avx512vnni;
the environment variable LLAMA2PY_ISA forces a lower one).

Weights are float32, or int8 (Q8_0: a v2 file, or weights="q8_0" at load) used as int8 with
runq.c's arithmetic (activations quantized per group, int32 dot products per group, group results
scaled and summed in float); the numpy backend's matmul_q8 is the spec.

The C++ Model borrows the weight arrays (memory-mapped views stay memory-mapped: nothing is
copied; on CPUs with AVX-512 VNNI, Q8_0 products read one packed int8 copy made at load, 16 rows
interleaved 4 bytes at a time, the same size as the values: see csrc/cpu/kernels.h; float32 models
keep an int8 sketch of the classifier with which greedy steps find the argmax exactly while
reading about a quarter of its bytes: csrc/cpu/model.h), owns the KV cache (n_layers, max_batch,
seq_len, kv_dim) and its buffers, and does all
the work of a step, sampling included, in one extension call with the GIL released. Prefill runs
matrix-matrix products over chunks of (sequence, position) rows; every dot product is summed in
the same order as a single decode step, so batch rows and prefill logits are bitwise equal to
one-sequence decode steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from ..checkpoint import Config, QuantizedTensor, Weights, file_backed, release_pages
from ..threads import set_thread_wait_defaults
from .base import PROFILE_KEYS, Backend, available_memory, check_threads


def _load_extension():
    set_thread_wait_defaults()
    from .._extension import load_cpu_extension  # also finds an installed build a source tree shadows

    return load_cpu_extension()


def extra_bytes(ext, config: Config, group_size: Optional[int]) -> tuple[int, int, int]:
    """Bytes the C++ Model adds to weights of this shape at the current level: (the packed int8
    copy of a Q8_0 model on VNNI CPUs, the greedy classifier sketch of a float32 one, the copy of a
    float32 model too big for the caches on transparent huge pages); 0 for none."""
    c = config
    shape = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size)
    if group_size:
        return ext.packed_q8_bytes(*shape, group_size), 0, 0
    return 0, ext.sketch_bytes(c.dim, c.vocab_size), ext.float_copy_bytes(*shape, c.shared_classifier)


def _f32(a: np.ndarray) -> np.ndarray:
    """The array itself when it already is aligned C-contiguous float32 (memmaps included), else a copy."""
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.require(np.ascontiguousarray(a, dtype=np.float32), requirements="CA")


def _matrix(t: Union[np.ndarray, QuantizedTensor]):
    """A matrix tensor as the extension takes it: float32 array, or Q8_0 (values, scales) parts
    (memory-mapped views; scales that a file leaves unaligned are copied: 1/group_size of the values)."""
    if isinstance(t, QuantizedTensor):
        return [(np.require(q, np.int8, "C"), np.require(s, np.float32, "CA")) for q, s in t.parts]
    return _f32(t)


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None):
        if threads is not None:  # before the memory check, which would blame the context instead
            threads = check_threads(threads)
        ext = _load_extension()
        c = config
        # what the Model adds to the weights (a packed int8 copy, the greedy sketch): the memory
        # check below must count it
        self._packed_bytes, self._sketch_bytes, copy = extra_bytes(ext, config, weights.group_size)
        # The huge-page copy only of a file's weights (whose pages then leave the process: weights
        # already in this process's memory would be held twice) and only where it fits twice over:
        # a model too big for that keeps reading the file's mapping (slower, but it runs).
        avail = available_memory()
        matrices = [t for n, t in weights.tensors().items() if not n.startswith("rms_")]  # what the copy holds
        mapped = copy and all(file_backed(t) for t in matrices)
        self._copy_bytes = copy if mapped and (avail is None or 2 * copy <= avail) else 0
        # int8 values in this process's memory (quantized at load time) stay beside the packed copy;
        # a v2 file's pages leave memory once packed
        self._resident_q8 = bool(self._packed_bytes) and not all(
            file_backed(values) for t in weights.tensors().values() for values, _ in getattr(t, "parts", ())
        )
        super().__init__(config, weights, max_batch, threads)
        self._ext = ext
        self.weight_type = weights.weight_type
        self.group_size = weights.group_size
        w = {k: _matrix(v) for k, v in weights.tensors().items()}
        self._weights_bytes = weights.nbytes(c.shared_classifier)
        if self._copy_bytes:  # the huge-page copy (in the Model's buffer_bytes) holds all but the norms
            self._weights_bytes = weights.rms_att.nbytes + weights.rms_ffn.nbytes + weights.rms_final.nbytes
        self._model = ext.Model(
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size,
            c.seq_len,
            max_batch,
            threads or 0,
            w["token_embedding"],
            w["rms_att"],
            w["wq"],
            w["wk"],
            w["wv"],
            w["wo"],
            w["rms_ffn"],
            w["w1"],
            w["w2"],
            w["w3"],
            w["rms_final"],
            w["wcls"],
            self.group_size or 0,
            bool(self._copy_bytes),
        )
        if self._packed_bytes:  # products read the packed copy: a v2 file's pages can leave memory
            for t in weights.tensors().values():  # (read again from the file where the Model needs rows)
                for values, scales in t.parts if isinstance(t, QuantizedTensor) else ():
                    release_pages(values)
                    release_pages(scales)
        if self._copy_bytes:  # the matrices are read from the huge-page copy: the file's pages can go
            for t in matrices:
                release_pages(t)
        # Reusable outputs of step(); callers get copies.
        self._next = np.empty(max_batch, np.int32)  # (max_batch,)
        self._logprobs = np.empty(max_batch, np.float32)  # (max_batch,)
        # Read-only view of the step logits (max_batch, vocab): step() checks the chosen ids' logits
        # are finite without copying the rows.
        self._logits_view = self._model.logits_view()
        self._logits_view.flags.writeable = False

    def memory_hints(self) -> list[str]:
        if not self._resident_q8:
            return []
        return [
            "a v2 file instead of quantizing at load time (`llama2py quantize IN.bin OUT.bin` once, then load "
            "OUT.bin): int8 weights quantized at load stay in memory beside the packed int8 weights, a v2 file's "
            "pages do not"
        ]

    def host_bytes(self, config: Config, max_batch: int, threads: Optional[int]) -> dict[str, int]:
        parts = super().host_bytes(config, max_batch, threads)
        if self._packed_bytes:
            parts["packed int8 weights"] = self._packed_bytes
        if self._sketch_bytes:
            parts["greedy classifier sketch"] = self._sketch_bytes
        if self._copy_bytes:
            parts["float32 weights on huge pages"] = self._copy_bytes
        return parts

    # -- the model ------------------------------------------------------------------------------
    def _forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        out = np.empty((tokens.shape[0], self.config.vocab_size), np.float32)
        self._model.forward(out, tokens, pos)
        return out

    def _prefill(self, tokens: np.ndarray, pos: int, logits: str) -> Optional[np.ndarray]:
        t = tokens
        B, T = t.shape
        V = self.config.vocab_size
        out = None
        if logits == "last":
            out = np.empty((B, V), np.float32)
        elif logits == "all":
            out = np.empty((B, T, V), np.float32)
        self._model.prefill(out, t, pos, logits)
        return out

    # -- sampling -------------------------------------------------------------------------------
    def _set_seeds(self, seeds: Sequence[int]) -> None:
        self._model.set_seeds(np.array(seeds, dtype=np.uint64))

    def _step(self, tokens, pos, temperature, top_p, forced, want_logprobs):
        B = tokens.shape[0]
        nxt = self._next[:B]
        lp = self._logprobs[:B] if want_logprobs else None
        self._model.step(nxt, lp, tokens, pos, temperature, top_p, forced)
        return nxt.copy(), (lp.copy() if want_logprobs else None)

    def _chosen_logits(self, ids: list[int], rows) -> Optional[list[float]]:
        self._check_open()
        view = self._logits_view  # (max_batch, vocab) over the C++ logits of the last step, no copy
        return [view.item(b, ids[b]) for b in rows]

    # -- reporting ------------------------------------------------------------------------------
    @property
    def warmup_calls(self) -> int:
        # threads not given: the adaptive team leaves the model's first call untimed, then times the
        # full team and one thread once for each kind before it runs the faster (csrc/cpu/model.h)
        self._check_open()
        return 3 if self.threads is None and self._model.threads > 1 else 1

    def _profile(self, tokens: np.ndarray, pos: int, temperature: float, top_p: float) -> dict[str, float]:
        times = np.zeros(len(PROFILE_KEYS), np.float64)
        self._model.profile(times, tokens, pos, temperature, top_p)
        return dict(zip(PROFILE_KEYS, (float(x) for x in times)))

    def memory_bytes(self) -> int:
        return 0 if self._model is None else self._weights_bytes + self._model.buffer_bytes

    def _release(self) -> None:
        # the C++ Model (KV cache, buffers) goes now, and with it its pointers into the weights
        self._logits_view = None
        self._model = None

    @property
    def forked_one_thread(self) -> bool:
        """True in a process forked after the extension had started a team of threads: libgomp's
        threads do not survive fork(), so every product runs on one thread here (same results)."""
        return bool(self._ext.forked_team())

    def describe(self) -> str:
        weights = "float32" if self.weight_type == "f32" else f"int8 Q8_0 group {self.group_size}"
        if self._model is None:
            return f"cpu ({weights}, closed)"
        n = self._model.threads
        return f"cpu (C++ {self._model.isa}, {weights}, {n} OpenMP thread{'s' if n != 1 else ''})"

    @property
    def isa(self) -> str:
        """The instruction-set level of this model's kernels (generic, avx2, avxvnni, avx512, avx512vnni)."""
        self._check_open()
        return self._model.isa
