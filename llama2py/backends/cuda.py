"""The cuda backend: CuPy + the extern "C" kernels of csrc/cuda (compiled at run time by NVRTC).

CuPy is imported here only, and only when the backend is made: without CuPy, a GPU or a usable
driver, the constructor raises DeviceError (create_backend("auto") then falls back to cpu).

Design (docs/GPU.md and the README's architecture section):
- Weights, KV cache and every buffer are allocated once, after checking that they fit in the free
  device memory. wq|wk|wv are stored as one (n_layers, dim + 2 kv_dim, dim) matrix, w1 and w3
  interleaved row by row as one (n_layers, 2 hidden_dim, dim) matrix, so that each layer is five
  kernels: [rmsnorm + q|k|v GEMV + RoPE + KV-cache store], attention, [wo GEMV + residual],
  [rmsnorm + w1|w3 GEMV + SwiGLU], [w2 GEMV + residual]. Batches of more than 4 rows (and
  prefill) use a tiled GEMM with the same epilogues after a separate rmsnorm.
- The decode step (embedding, layers, classifier, sampler) is captured once per batch size as a
  CUDA graph. Its kernels read the position and the input tokens from device memory; the sampler
  writes the next tokens where the embedding reads them and advances the position, so a token
  costs one graph replay and one small device-to-host copy of the sampled ids. Host-side mirrors
  of what is on the device skip every upload that is not needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..checkpoint import Config, Weights
from ..errors import DeviceError
from .base import PROFILE_KEYS, Backend

SOURCES = ("forward.cu", "sample.cu")
GV_MAXB = 4  # csrc/cuda/forward.cu: rows a GEMV kernel handles
GV_NT = 256
ATT_NT = 256  # attention threads per block; head_size must not exceed it
SNT = 1024  # sampler threads per block
SMEM_DEFAULT = 48 * 1024
PREFILL_ROWS = 512  # rows (batch * positions) of one prefill chunk
CPU_HINT = "run with --device cpu"
# GEMM tiles (csrc/cuda/forward.cu, GEMM_ENTRIES), largest first; %s is the epilogue
EPILOGUES = ("store", "add", "swiglu", "qkv")
TILES = ((128, "gemm_%s_128"), (64, "gemm_%s_64"), (32, "gemm_%s_32"))

_KERNELS: dict = {}  # (device id, sources hash) -> {name: RawKernel}


def source_dir() -> Path:
    """Where the .cu files are: installed package data first, else the source tree."""
    pkg = Path(__file__).resolve().parent.parent
    for d in (pkg / "cuda_src", pkg.parent / "csrc" / "cuda"):
        if all((d / s).is_file() for s in SOURCES):
            return d
    raise DeviceError(
        f"the CUDA kernel sources ({', '.join(SOURCES)}) were not found in {pkg / 'cuda_src'} "
        f"or {pkg.parent / 'csrc' / 'cuda'}; reinstall llama2py or {CPU_HINT}"
    )


def import_cupy():
    """CuPy with at least one usable GPU, or DeviceError saying what is missing."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken install failing at import
        raise DeviceError(
            f"the cuda backend needs CuPy, which could not be imported ({e}); install the one "
            f"for your CUDA (pip install cupy-cuda12x or cupy-cuda13x) or {CPU_HINT}"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise DeviceError(f"no usable CUDA GPU: {e}; check the NVIDIA driver (nvidia-smi) or {CPU_HINT}") from None
    if n < 1:
        raise DeviceError(f"no CUDA GPU found; {CPU_HINT}")
    return cupy


def estimate_bytes(config: Config, max_batch: int) -> dict[str, int]:
    """Device bytes the backend will allocate: weights, KV cache, buffers (plus a fixed margin)."""
    c = config
    D, H, KV, V, S = c.dim, c.hidden_dim, c.kv_dim, c.vocab_size, c.seq_len
    weights = c.weight_bytes()
    kv = c.kv_cache_bytes(max_batch)
    R = max(max_batch, PREFILL_ROWS)
    buffers = 4 * (R * (4 * D + H + max(D + 2 * KV, 2 * H, D) + V) + max_batch * V + S * c.head_size + 8 * R)
    return {"weights": weights, "kv_cache": kv, "buffers": buffers, "margin": 64 << 20}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class CudaBackend(Backend):
    name = "cuda"

    def __init__(
        self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None, device_id: int = 0
    ):
        super().__init__(config, weights, max_batch, threads)
        self._tiles = TILES  # the tests force one tile at a time here
        cp = import_cupy()
        self.cp = cp
        c = config
        if c.head_size > ATT_NT:
            raise DeviceError(f"head size {c.head_size} is larger than the cuda kernels support ({ATT_NT}); {CPU_HINT}")
        try:
            self.device = cp.cuda.Device(device_id)
            self.device.use()
            props = cp.cuda.runtime.getDeviceProperties(device_id)
            free, total = cp.cuda.runtime.memGetInfo()
        except Exception as e:
            raise DeviceError(f"CUDA device {device_id} is not usable: {e}; {CPU_HINT}") from None
        name = props["name"]
        self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        self.n_sm = int(props["multiProcessorCount"])
        est = estimate_bytes(c, max_batch)
        need = sum(est.values())
        if need > free:
            raise DeviceError(
                f"not enough GPU memory on {self.gpu_name}: this model with max_batch={max_batch} and "
                f"seq_len={c.seq_len} needs about {_mib(need)} (weights {_mib(est['weights'])}, KV cache "
                f"{_mib(est['kv_cache'])}, buffers {_mib(est['buffers'])}) but only {_mib(free)} of "
                f"{_mib(total)} is free; use a smaller batch, or {CPU_HINT}"
            )
        self.k = self._load_kernels()
        self._att_smem = 4 * (c.seq_len + c.head_size + 4 * ATT_NT + 40)
        if self._att_smem > SMEM_DEFAULT:
            try:
                self.k["attention"].max_dynamic_shared_size_bytes = self._att_smem
            except Exception as e:
                raise DeviceError(
                    f"a context of {c.seq_len} positions is too long for the attention kernel on "
                    f"{self.gpu_name} ({e}); {CPU_HINT}"
                ) from None
        self.stream = cp.cuda.Stream(non_blocking=True)
        try:
            self._allocate(weights)
        except cp.cuda.memory.OutOfMemoryError as e:
            self.close()
            raise DeviceError(
                f"out of GPU memory on {self.gpu_name} while loading the model ({e}); use a smaller batch or {CPU_HINT}"
            ) from None
        self._graphs: dict[int, object] = {}
        # host mirrors of small device state, so that unchanged inputs are not uploaded again
        self._dev_tok = np.full(max_batch, -1, np.int64)  # -1: unknown
        self._dev_pos: Optional[int] = None
        self._dev_fparams: Optional[tuple] = None
        self._dev_lp: Optional[int] = None
        self._forced_clear = False

    # -- setup ----------------------------------------------------------------------------------
    def host_bytes(self, config: Config, max_batch: int, threads: Optional[int]) -> dict[str, int]:
        return {}  # weights, KV cache and buffers live in GPU memory: checked against its free memory

    def _load_kernels(self) -> dict:
        cp = self.cp
        d = source_dir()
        srcs = {s: (d / s).read_text() for s in SOURCES}
        key = (self.device.id, hashlib.sha256("".join(srcs.values()).encode()).hexdigest())
        if key in _KERNELS:
            return _KERNELS[key]
        names = {
            "forward.cu": [f"gemv_{e}" for e in EPILOGUES]
            + [name % e for _, name in TILES for e in EPILOGUES]
            + ["rmsnorm_rows", "embed", "apply_qkv", "apply_swiglu", "apply_add", "attention", "spin"],
            "sample.cu": ["sample"],
        }
        kernels = {}
        for s, code in srcs.items():
            try:
                mod = cp.RawModule(code=code, options=("-std=c++17",))
                for n in names[s]:
                    kernels[n] = mod.get_function(n)
            except Exception as e:
                raise DeviceError(f"compiling the CUDA kernels of {d / s} failed: {e}; {CPU_HINT}") from None
        _KERNELS[key] = kernels
        return kernels

    def _allocate(self, w: Weights) -> None:
        cp, c = self.cp, self.config
        L, D, H, KV, V, S = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size, c.seq_len
        f32 = np.float32
        up = lambda a: cp.asarray(np.ascontiguousarray(a, dtype=f32))  # noqa: E731
        self.emb = up(w.token_embedding)
        self.wcls = self.emb if c.shared_classifier else up(w.wcls)
        self.rms_att, self.rms_ffn, self.rms_final = up(w.rms_att), up(w.rms_ffn), up(w.rms_final)
        self.wo, self.w2 = up(w.wo), up(w.w2)
        self.n_qkv = D + 2 * KV
        self.wqkv = cp.empty((L, self.n_qkv, D), f32)
        self.w13 = cp.empty((L, 2 * H, D), f32)
        for layer in range(L):
            self.wqkv[layer].set(
                np.ascontiguousarray(np.concatenate([w.wq[layer], w.wk[layer], w.wv[layer]], axis=0), dtype=f32)
            )
            t = np.empty((2 * H, D), f32)
            t[0::2] = w.w1[layer]
            t[1::2] = w.w3[layer]
            self.w13[layer].set(t)
        # RoPE tables, float32 exactly as the numpy spec computes them
        hs = c.head_size
        j = np.arange(0, hs, 2, dtype=f32)
        freq = f32(1.0) / np.power(f32(10000.0), j / f32(hs))
        angle = np.arange(S, dtype=f32)[:, None] * freq[None, :]
        self.rcos, self.rsin = up(np.cos(angle)), up(np.sin(angle))
        B = self.max_batch
        self.kc = cp.zeros((L, B, S, KV), f32)
        self.vc = cp.zeros((L, B, S, KV), f32)
        R = self.max_rows = max(B, PREFILL_ROWS)
        self.x, self.xb, self.q, self.att = (cp.empty((R, D), f32) for _ in range(4))
        self.hb = cp.empty((R, H), f32)
        self.tmp = cp.empty((R, max(self.n_qkv, 2 * H, D)), f32)
        self.logits = cp.empty((R, V), f32)
        self.scratch = cp.empty((B, V), f32)
        self.tokens_d = cp.zeros(R, np.int32)
        self.pos_d = cp.zeros(1, np.int32)
        self.forced_d = cp.full(B, -1, np.int32)
        self.rng_d = cp.zeros(B, np.uint64)
        self.fparams_d = cp.zeros(2, f32)
        self.iparams_d = cp.zeros(1, np.int32)
        self.lp_d = cp.zeros(B, f32)
        # pinned host memory for the per-token transfers
        self._pin_mem = cp.cuda.alloc_pinned_memory(8 * B + 64)
        self._pin_tok = np.frombuffer(self._pin_mem, np.int32, B, 0)
        self._pin_lp = np.frombuffer(self._pin_mem, np.float32, B, 4 * B)
        self.stream.synchronize()
        cp.cuda.Device().synchronize()

    # -- reporting ------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"cuda ({self.gpu_name}, CuPy {self.cp.__version__})"

    def memory_bytes(self) -> int:
        arrays = [
            getattr(self, n, None)
            for n in (
                "emb",
                "rms_att",
                "rms_ffn",
                "rms_final",
                "wo",
                "w2",
                "wqkv",
                "w13",
                "rcos",
                "rsin",
                "kc",
                "vc",
                "x",
                "xb",
                "q",
                "att",
                "hb",
                "tmp",
                "logits",
                "scratch",
                "tokens_d",
                "pos_d",
                "forced_d",
                "rng_d",
                "fparams_d",
                "iparams_d",
                "lp_d",
            )
        ]
        total = sum(a.nbytes for a in arrays if a is not None)
        if not self.config.shared_classifier and getattr(self, "wcls", None) is not None:
            total += self.wcls.nbytes
        return int(total)

    def close(self) -> None:
        self._graphs = {}
        for n in list(vars(self)):
            if isinstance(getattr(self, n), self.cp.ndarray):
                setattr(self, n, None)
        self.cp.get_default_memory_pool().free_all_blocks()

    # -- uploads --------------------------------------------------------------------------------
    def _h2d(self, dst, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        self.cp.cuda.runtime.memcpyAsync(
            dst.data.ptr, host.ctypes.data, host.nbytes, self.cp.cuda.runtime.memcpyHostToDevice, self.stream.ptr
        )
        self.stream.synchronize()  # host may be pageable and temporary

    def _set_pos(self, pos: int) -> None:
        if self._dev_pos != pos:
            self._h2d(self.pos_d, np.array([pos], np.int32))
            self._dev_pos = pos

    def _set_tokens(self, t: np.ndarray) -> None:
        """t: (rows,) int32 into tokens_d; mirrored only for decode-sized uploads."""
        n = t.size
        if n <= self.max_batch and np.array_equal(self._dev_tok[:n], t):
            return
        self._h2d(self.tokens_d[:n], t)
        if n <= self.max_batch:
            self._dev_tok[:n] = t
        else:
            self._dev_tok[:] = -1

    # -- kernel sequences -----------------------------------------------------------------------
    def _small(self, M: int) -> bool:
        c = self.config
        return M <= GV_MAXB and 4 * M * max(c.dim, c.hidden_dim) + 4 * 33 <= SMEM_DEFAULT

    def _gv_grid(self, N: int) -> tuple:
        return (max(1, min(-(-N // (2 * (GV_NT // 32))), self.n_sm * 8)),)

    def _gemm(self, kind: str, A, W, M: int, N: int, K: int, *ep) -> None:
        """The largest tile that still gives every multiprocessor a block (twice for 128x128)."""
        for t, name in self._tiles:  # noqa: B007 (the chosen tile is used after the loop)
            if (-(-M // t)) * (-(-N // t)) >= (2 if t == 128 else 1) * self.n_sm:
                break
        self.k[name % kind]((-(-N // t), -(-M // t)), (256,), (A, W, np.int32(M), np.int32(N), np.int32(K)) + ep)

    def _attention(self, layer: int, M: int, T: int) -> None:
        c = self.config
        self.k["attention"](
            (c.n_heads, M),
            (ATT_NT,),
            (
                self.q,
                self.kc[layer],
                self.vc[layer],
                self.att,
                np.int32(T),
                self.pos_d,
                np.int32(c.seq_len),
                np.int32(c.kv_mul),
                np.int32(c.head_size),
                np.int32(c.kv_dim),
                np.int32(c.dim),
            ),
            shared_mem=self._att_smem,
        )

    def _qkv_ep(self, layer: int, T: int) -> tuple:
        c = self.config
        return (
            self.q,
            self.kc[layer],
            self.vc[layer],
            self.rcos,
            self.rsin,
            self.pos_d,
            np.int32(T),
            np.int32(c.seq_len),
            np.int32(c.dim),
            np.int32(c.kv_dim),
            np.int32(c.head_size),
        )

    def _layers(self, M: int, T: int) -> None:
        """All layers for M = B * T rows of x (tokens already embedded), positions from pos_d."""
        c, k, i32 = self.config, self.k, np.int32
        D, H = c.dim, c.hidden_dim
        if self._small(M):
            gv = lambda name, N, K, x, rmsw, use, W, *ep: k["gemv_" + name](  # noqa: E731
                self._gv_grid(N),
                (GV_NT,),
                (x, rmsw, i32(use), W, i32(N), i32(K), i32(M)) + ep,
                shared_mem=4 * M * K + 4 * 33,
            )
            for layer in range(c.n_layers):
                gv("qkv", self.n_qkv, D, self.x, self.rms_att[layer], 1, self.wqkv[layer], *self._qkv_ep(layer, T))
                self._attention(layer, M, T)
                gv("add", D, D, self.att, self.rms_final, 0, self.wo[layer], self.x, i32(D))
                gv("swiglu", 2 * H, D, self.x, self.rms_ffn[layer], 1, self.w13[layer], self.hb, i32(H))
                gv("add", D, H, self.hb, self.rms_final, 0, self.w2[layer], self.x, i32(D))
        else:
            for layer in range(c.n_layers):
                k["rmsnorm_rows"]((M,), (256,), (self.x, self.rms_att[layer], self.xb, i32(D)))
                self._gemm("qkv", self.xb, self.wqkv[layer], M, self.n_qkv, D, *self._qkv_ep(layer, T))
                self._attention(layer, M, T)
                self._gemm("add", self.att, self.wo[layer], M, D, D, self.x, i32(D))
                k["rmsnorm_rows"]((M,), (256,), (self.x, self.rms_ffn[layer], self.xb, i32(D)))
                self._gemm("swiglu", self.xb, self.w13[layer], M, 2 * H, D, self.hb, i32(H))
                self._gemm("add", self.hb, self.w2[layer], M, D, H, self.x, i32(D))

    def _classifier(self, x, M: int) -> None:
        """logits[:M] = wcls . rmsnorm(x[:M], rms_final)."""
        c, i32 = self.config, np.int32
        if self._small(M):
            self.k["gemv_store"](
                self._gv_grid(c.vocab_size),
                (GV_NT,),
                (
                    x,
                    self.rms_final,
                    i32(1),
                    self.wcls,
                    i32(c.vocab_size),
                    i32(c.dim),
                    i32(M),
                    self.logits,
                    i32(c.vocab_size),
                ),
                shared_mem=4 * M * c.dim + 4 * 33,
            )
        else:
            self.k["rmsnorm_rows"]((M,), (256,), (x, self.rms_final, self.xb, i32(c.dim)))
            self._gemm("store", self.xb, self.wcls, M, c.vocab_size, c.dim, self.logits, i32(c.vocab_size))

    def _embed(self, M: int) -> None:
        self.k["embed"]((M,), (256,), (self.tokens_d, self.emb, self.x, np.int32(self.config.dim)))

    def _sample(self, B: int, advance: bool) -> None:
        self.k["sample"](
            (B,),
            (SNT,),
            (
                self.logits,
                np.int32(self.config.vocab_size),
                self.fparams_d,
                self.iparams_d,
                self.forced_d,
                self.rng_d,
                self.tokens_d,
                self.lp_d,
                self.scratch,
                self.pos_d,
                np.int32(1 if advance else 0),
            ),
        )

    def _decode(self, B: int, sample: bool) -> None:
        self._embed(B)
        self._layers(B, 1)
        self._classifier(self.x, B)
        if sample:
            self._sample(B, advance=True)

    # -- the model ------------------------------------------------------------------------------
    def _forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        t = tokens
        B = t.shape[0]
        with self.device, self.stream:
            self._set_tokens(t)
            self._set_pos(pos)
            self._decode(B, sample=False)
            out = self.logits[:B].get(stream=self.stream)
        self.stream.synchronize()
        return out

    def _prefill(self, tokens: np.ndarray, pos: int, logits: str) -> Optional[np.ndarray]:
        t = tokens
        B, T = t.shape
        c = self.config
        chunk = max(1, self.max_rows // B)
        outs = []
        last = None
        with self.device, self.stream:
            for s in range(0, T, chunk):
                tc = t[:, s : s + chunk]
                Tc = tc.shape[1]
                M = B * Tc
                self._set_tokens(tc.reshape(-1))
                self._set_pos(pos + s)
                self._embed(M)
                self._layers(M, Tc)
                if logits == "all":
                    self._classifier(self.x, M)
                    outs.append(self.logits[:M].get(stream=self.stream).reshape(B, Tc, c.vocab_size))
                elif logits == "last" and s + Tc == T:
                    xl = self.x[:M].reshape(B, Tc, c.dim)[:, -1].copy()
                    self._classifier(xl, B)
                    last = self.logits[:B].get(stream=self.stream)
            self.stream.synchronize()
        if logits == "all":
            return np.concatenate(outs, axis=1)
        return last

    # -- sampling -------------------------------------------------------------------------------
    def _set_seeds(self, seeds: Sequence[int]) -> None:
        if len(seeds):
            s = np.array(seeds, np.uint64)
            with self.device:
                self._h2d(self.rng_d[: len(s)], s)

    def _graph(self, B: int):
        g = self._graphs.get(B)
        if g is None:
            s = self.stream
            s.begin_capture()
            try:
                self._decode(B, sample=True)
            finally:
                g = s.end_capture()
            self._graphs[B] = g
        return g

    def _step(self, tokens, pos, temperature, top_p, forced, want_logprobs):
        t = tokens
        B = t.shape[0]
        cp = self.cp
        with self.device, self.stream:
            self._set_tokens(t)
            self._set_pos(pos)
            fp = (temperature, top_p)  # already float32 values (base.check_sampling)
            if self._dev_fparams != fp:
                self._h2d(self.fparams_d, np.array(fp, np.float32))
                self._dev_fparams = fp
            lpf = 1 if want_logprobs else 0
            if self._dev_lp != lpf:
                self._h2d(self.iparams_d, np.array([lpf], np.int32))
                self._dev_lp = lpf
            f = forced  # None or (B,) int32 < vocab (base.check_forced)
            if f is None or not (f >= 0).any():
                if not self._forced_clear:
                    self._h2d(self.forced_d, np.full(self.max_batch, -1, np.int32))
                    self._forced_clear = True
            else:
                self._h2d(self.forced_d[:B], f)
                self._forced_clear = False
            self._graph(B).launch(stream=self.stream)
            rt = cp.cuda.runtime
            rt.memcpyAsync(
                self._pin_tok.ctypes.data, self.tokens_d.data.ptr, 4 * B, rt.memcpyDeviceToHost, self.stream.ptr
            )
            if want_logprobs:
                rt.memcpyAsync(
                    self._pin_lp.ctypes.data, self.lp_d.data.ptr, 4 * B, rt.memcpyDeviceToHost, self.stream.ptr
                )
            self.stream.synchronize()
        nxt = self._pin_tok[:B].copy()
        self._dev_tok[:B] = nxt
        self._dev_pos = pos + 1
        return nxt, (self._pin_lp[:B].copy() if want_logprobs else None)

    # -- profiling ------------------------------------------------------------------------------
    def _profile(self, tokens: np.ndarray, pos: int) -> dict[str, float]:
        """Seconds per category for one decode step at pos, every category launched on its own
        (no graph, no fusion) between CUDA events; the second of two passes is reported."""
        t = tokens
        B = t.shape[0]
        cp, c, k, i32 = self.cp, self.config, self.k, np.int32
        D, H = c.dim, c.hidden_dim
        small = self._small(B)
        times = {key: 0.0 for key in PROFILE_KEYS}
        with self.device, self.stream:
            self._set_tokens(t)
            self._set_pos(pos)
            self._h2d(self.fparams_d, np.array([0.0, 1.0], np.float32))
            self._h2d(self.iparams_d, np.array([0], np.int32))
            self._h2d(self.forced_d, np.full(self.max_batch, -1, np.int32))
            self._dev_fparams, self._dev_lp, self._forced_clear = (0.0, 1.0), 0, True

            def mm(x, W, N, K, out, ldo):
                if small:
                    k["gemv_store"](
                        self._gv_grid(N),
                        (GV_NT,),
                        (x, self.rms_final, i32(0), W, i32(N), i32(K), i32(B), out, i32(ldo)),
                        shared_mem=4 * B * K + 4 * 33,
                    )
                else:
                    self._gemm("store", x, W, B, N, K, out, i32(ldo))

            def ew(n):
                return (max(1, min(-(-n // 256), self.n_sm * 16)),), (256,)

            tmp = self.tmp
            steps = [("embedding", lambda: self._embed(B))]
            for layer in range(c.n_layers):
                steps += [
                    (
                        "rmsnorm",
                        lambda layer=layer: k["rmsnorm_rows"](
                            (B,), (256,), (self.x, self.rms_att[layer], self.xb, i32(D))
                        ),
                    ),
                    ("matmul", lambda layer=layer: mm(self.xb, self.wqkv[layer], self.n_qkv, D, tmp, self.n_qkv)),
                    (
                        "rope",
                        lambda layer=layer: k["apply_qkv"](
                            *ew(B * self.n_qkv // 2), (tmp, i32(B), i32(self.n_qkv)) + self._qkv_ep(layer, 1)
                        ),
                    ),
                    ("attention", lambda layer=layer: self._attention(layer, B, 1)),
                    ("matmul", lambda layer=layer: mm(self.att, self.wo[layer], D, D, tmp, D)),
                    ("residual", lambda: k["apply_add"](*ew(B * D), (tmp, i32(B), i32(D), self.x, i32(D)))),
                    (
                        "rmsnorm",
                        lambda layer=layer: k["rmsnorm_rows"](
                            (B,), (256,), (self.x, self.rms_ffn[layer], self.xb, i32(D))
                        ),
                    ),
                    ("matmul", lambda layer=layer: mm(self.xb, self.w13[layer], 2 * H, D, tmp, 2 * H)),
                    ("swiglu", lambda: k["apply_swiglu"](*ew(B * H), (tmp, i32(B), i32(2 * H), self.hb, i32(H)))),
                    ("matmul", lambda layer=layer: mm(self.hb, self.w2[layer], D, H, tmp, D)),
                    ("residual", lambda: k["apply_add"](*ew(B * D), (tmp, i32(B), i32(D), self.x, i32(D)))),
                ]
            steps += [
                ("rmsnorm", lambda: k["rmsnorm_rows"]((B,), (256,), (self.x, self.rms_final, self.xb, i32(D)))),
                ("classifier", lambda: mm(self.xb, self.wcls, c.vocab_size, D, self.logits, c.vocab_size)),
                ("sampling", lambda: self._sample(B, advance=False)),
            ]
            clock_khz = int(self.cp.cuda.runtime.getDeviceProperties(self.device.id).get("clockRate", 2_000_000))
            spin = np.int64(clock_khz * 30)  # ~30 ms: long enough to queue every launch behind it
            for _rep in range(2):
                events = []
                k["spin"]((1,), (32,), (spin,))
                for key, launch in steps:
                    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                    e0.record(self.stream)
                    launch()
                    e1.record(self.stream)
                    events.append((key, e0, e1))
                self._set_tokens_invalid()
                self._h2d(self.tokens_d[:B], t)  # the sampler overwrote the inputs
                self.stream.synchronize()
            for key, e0, e1 in events:
                times[key] += cp.cuda.get_elapsed_time(e0, e1) / 1e3
        return times

    def _set_tokens_invalid(self) -> None:
        self._dev_tok[:] = -1
