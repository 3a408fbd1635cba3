"""The cuda backend: CuPy + the extern "C" kernels of cuda_kernels/ (compiled at run time by NVRTC).

CuPy is imported here only, and only when the backend is made: without CuPy, a GPU or a usable
driver, the constructor raises DeviceError (create_backend("auto") then falls back to cpu).

Design (docs/GPU.md and the README's architecture section):
- The kernels (cuda_kernels/*.cu, package data) are compiled with the launch shapes of
  KERNEL_CONSTANTS as -D defines, so the host launches exactly the block sizes they were built for.
- Weights, KV cache and every buffer are allocated once, after checking that they fit in the free
  device memory. wq|wk|wv are stored as one (n_layers, dim + 2 kv_dim, dim) matrix, w1 and w3
  interleaved row by row as one (n_layers, 2 hidden_dim, dim) matrix, so that each layer is five
  kernels: [rmsnorm + q|k|v GEMV + RoPE + KV-cache store], attention, [wo GEMV + residual],
  [rmsnorm + w1|w3 GEMV + SwiGLU], [w2 GEMV + residual]. Batches of more than GEMV_MAX_ROWS rows
  (and prefill) use a tiled GEMM with the same epilogues after a separate rmsnorm.
- The decode step (embedding, layers, classifier, sampler) is captured once per batch size as a
  CUDA graph. Its kernels read the position and the input tokens from device memory; the sampler
  writes the next tokens where the embedding reads them and advances the position, so a token
  costs one graph replay and one small device-to-host copy of the sampled ids. Host-side mirrors
  of what is on the device skip every upload that is not needed.
- profile() launches the same decode step eagerly, with CUDA events around every launch.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..checkpoint import Config, Weights
from ..errors import DeviceError
from .base import PROFILE_KEYS, Backend

KERNEL_DIR = Path(__file__).resolve().parent / "cuda_kernels"  # package data (pyproject.toml)
SOURCES = ("forward.cu", "sample.cu")
HEADERS = ("block_reduce.cuh",)

# The launch shapes, in one place: the kernels are compiled with each as -DNAME=value (every .cu
# file stops with #error when one it uses is missing) and the host launches and sizes shared
# memory with the same values.
KERNEL_CONSTANTS = {
    "GEMV_THREADS": 256,  # threads per GEMV block
    "GEMV_MAX_ROWS": 4,  # rows (batch) the GEMV kernels take; more go through the tiled GEMM
    "GEMM_THREADS": 256,  # threads per GEMM block, for every tile size
    "ROW_THREADS": 256,  # threads per row of rmsnorm_rows and embed
    "ATTENTION_THREADS": 256,  # threads per (head, row) block; head_size must not exceed it
    "SAMPLER_THREADS": 1024,  # threads per sampled row (32 warps)
    "REDUCE_SLOTS": 33,  # shared floats a block reduction uses: one per warp (<= 32) + the result
}
GEMV_THREADS = KERNEL_CONSTANTS["GEMV_THREADS"]
GEMV_MAX_ROWS = KERNEL_CONSTANTS["GEMV_MAX_ROWS"]
GEMM_THREADS = KERNEL_CONSTANTS["GEMM_THREADS"]
ROW_THREADS = KERNEL_CONSTANTS["ROW_THREADS"]
ATTENTION_THREADS = KERNEL_CONSTANTS["ATTENTION_THREADS"]
SAMPLER_THREADS = KERNEL_CONSTANTS["SAMPLER_THREADS"]
REDUCE_SLOTS = KERNEL_CONSTANTS["REDUCE_SLOTS"]

SHARED_MEMORY_DEFAULT = 48 * 1024  # dynamic shared memory a launch gets without opting in
PREFILL_ROWS = 512  # rows (batch * positions) of one prefill chunk
CPU_HINT = 'use the cpu backend (--device cpu, or device="cpu" in the API)'
# GEMM tile sizes (forward.cu, GEMM_ENTRIES), largest first; the kernels are gemm_<epilogue>_<tile>
GEMM_TILES = (128, 64, 32)
EPILOGUES = ("store", "add", "swiglu", "qkv")
PROFILE_GATE_TIMEOUT_S = 5.0  # longest the profiler holds the stream while it queues a step

_KERNELS: dict = {}  # (device id, sources hash) -> {name: RawKernel}


def gemm_kernel(epilogue: str, tile: int) -> str:
    return f"gemm_{epilogue}_{tile}"


def kernel_names() -> dict[str, list[str]]:
    """The extern "C" kernels of each source file, as the host launches them."""
    return {
        "forward.cu": [f"gemv_{e}" for e in EPILOGUES]
        + [gemm_kernel(e, t) for t in GEMM_TILES for e in EPILOGUES]
        + ["rmsnorm_rows", "embed", "attention"],
        "sample.cu": ["sample"],
    }


def compile_options(sources_sha256: str = "") -> tuple[str, ...]:
    """NVRTC (and nvcc compile-check) options: C++17, the header folder, KERNEL_CONSTANTS as -D.

    sources_sha256 (of the sources and headers) goes in as a define too: CuPy's on-disk compile
    cache keys on the source text and the options, not on the included header."""
    options = ("-std=c++17", f"-I{KERNEL_DIR}") + tuple(f"-D{k}={v}" for k, v in KERNEL_CONSTANTS.items())
    return options + ((f"-DLLAMA2PY_SOURCES_SHA256={sources_sha256}",) if sources_sha256 else ())


def gemv_shared_bytes(rows: int, width: int) -> int:
    """Dynamic shared memory of a GEMV launch: the staged input (rows, width) + a reduction."""
    return 4 * (rows * width + REDUCE_SLOTS)


def attention_shared_bytes(config: Config) -> int:
    """Dynamic shared memory of an attention launch (forward.cu, attention: q, the per-group partial
    sums, a reduction rounded to 4 floats, one score per cached position)."""
    round4 = lambda n: (n + 3) & ~3  # noqa: E731
    return 4 * (round4(config.head_size) + 4 * ATTENTION_THREADS + round4(REDUCE_SLOTS) + config.seq_len)


def kernel_sources() -> dict[str, str]:
    """The text of every .cu and .cuh file, or DeviceError when the package data is missing."""
    missing = [n for n in SOURCES + HEADERS if not (KERNEL_DIR / n).is_file()]
    if missing:
        raise DeviceError(
            f"the CUDA kernel sources {', '.join(missing)} are missing from {KERNEL_DIR}; reinstall llama2py or {CPU_HINT}"
        )
    return {n: (KERNEL_DIR / n).read_text() for n in SOURCES + HEADERS}


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
    D, H, V, S = c.dim, c.hidden_dim, c.vocab_size, c.seq_len
    weights = c.weight_bytes()
    kv = c.kv_cache_bytes(max_batch)
    R = max(max_batch, PREFILL_ROWS)
    buffers = 4 * (R * (4 * D + H + V) + max_batch * V + S * c.head_size + 8 * R)
    return {"weights": weights, "kv_cache": kv, "buffers": buffers, "margin": 64 << 20}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


class CudaBackend(Backend):
    name = "cuda"

    def __init__(
        self,
        config: Config,
        weights: Weights,
        max_batch: int = 1,
        threads: Optional[int] = None,
        device_id: int = 0,
        gemm_tiles: Sequence[int] = GEMM_TILES,
    ):
        """gemm_tiles: the GEMM tile sizes to choose from, largest first (tests force one at a time)."""
        super().__init__(config, weights, max_batch, threads)
        if not gemm_tiles or any(t not in GEMM_TILES for t in gemm_tiles):
            raise ValueError(f"gemm_tiles must be a non-empty selection of {GEMM_TILES}, got {tuple(gemm_tiles)}")
        self.gemm_tiles = tuple(sorted(gemm_tiles, reverse=True))
        cp = import_cupy()
        self.cp = cp
        c = config
        if c.head_size > ATTENTION_THREADS:
            raise DeviceError(
                f"head size {c.head_size} is larger than the cuda kernels support ({ATTENTION_THREADS}); {CPU_HINT}"
            )
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
        estimate = estimate_bytes(c, max_batch)
        need = sum(estimate.values())
        if need > free:
            raise DeviceError(
                f"not enough GPU memory on {self.gpu_name}: this model with max_batch={max_batch} and "
                f"seq_len={c.seq_len} needs about {_mib(need)} (weights {_mib(estimate['weights'])}, KV cache "
                f"{_mib(estimate['kv_cache'])}, buffers {_mib(estimate['buffers'])}) but only {_mib(free)} of "
                f"{_mib(total)} is free; use a smaller batch, or {CPU_HINT}"
            )
        # int8 (Q8_0) weights run as float32 here, dequantized for the upload: only now that CuPy and
        # the GPU are known usable (--device auto on a machine without them must not pay for it)
        weights = weights.dequantized()
        self.kernels = self._load_kernels()
        self._attention_shared = attention_shared_bytes(c)
        if self._attention_shared > SHARED_MEMORY_DEFAULT:
            try:
                self.kernels["attention"].max_dynamic_shared_size_bytes = self._attention_shared
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
        self._tokens_on_device = np.full(max_batch, -1, np.int64)  # (max_batch,) -1: unknown
        self._pos_on_device: Optional[int] = None
        self._sampling_on_device: Optional[tuple] = None  # (temperature, top_p) as float32
        self._logprob_flag_on_device: Optional[int] = None
        self._forced_cleared = False
        # (category, start event, end event) per launch while profile() runs, else None
        self._profile_events: Optional[list] = None

    # -- setup ----------------------------------------------------------------------------------
    def host_bytes(self, config: Config, max_batch: int, threads: Optional[int]) -> dict[str, int]:
        return {}  # weights, KV cache and buffers live in GPU memory: checked against its free memory

    def _load_kernels(self) -> dict:
        cp = self.cp
        texts = kernel_sources()
        digest = hashlib.sha256("".join(texts[n] for n in SOURCES + HEADERS).encode()).hexdigest()
        key = (self.device.id, digest)
        if key in _KERNELS:
            return _KERNELS[key]
        kernels = {}
        for source, names in kernel_names().items():
            try:
                module = cp.RawModule(code=texts[source], options=compile_options(digest))
                for name in names:
                    kernels[name] = module.get_function(name)
            except Exception as e:
                raise DeviceError(
                    f"compiling the CUDA kernels of {KERNEL_DIR / source} failed: {e}; {CPU_HINT}"
                ) from None
        _KERNELS[key] = kernels
        return kernels

    def _allocate(self, w: Weights) -> None:
        cp, c = self.cp, self.config
        L, D, H, KV, V, S = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size, c.seq_len
        f32 = np.float32
        upload = lambda a: cp.asarray(np.ascontiguousarray(a, dtype=f32))  # noqa: E731
        self.token_embedding = upload(w.token_embedding)  # (vocab, dim)
        self.wcls = self.token_embedding if c.shared_classifier else upload(w.wcls)  # (vocab, dim)
        self.rms_att, self.rms_ffn, self.rms_final = upload(w.rms_att), upload(w.rms_ffn), upload(w.rms_final)
        self.wo, self.w2 = upload(w.wo), upload(w.w2)  # (L, dim, dim), (L, dim, hidden)
        self.n_qkv = D + 2 * KV
        self.wqkv = cp.empty((L, self.n_qkv, D), f32)  # (L, dim + 2 kv_dim, dim): wq | wk | wv
        self.w13 = cp.empty((L, 2 * H, D), f32)  # (L, 2 hidden, dim): w1 and w3 rows interleaved
        for layer in range(L):
            self.wqkv[layer].set(
                np.ascontiguousarray(np.concatenate([w.wq[layer], w.wk[layer], w.wv[layer]], axis=0), dtype=f32)
            )
            interleaved = np.empty((2 * H, D), f32)  # (2 hidden, dim)
            interleaved[0::2] = w.w1[layer]
            interleaved[1::2] = w.w3[layer]
            self.w13[layer].set(interleaved)
        # RoPE tables, float32 exactly as the numpy spec computes them
        hs = c.head_size
        j = np.arange(0, hs, 2, dtype=f32)
        freq = f32(1.0) / np.power(f32(10000.0), j / f32(hs))
        angle = np.arange(S, dtype=f32)[:, None] * freq[None, :]
        self.rope_cos, self.rope_sin = upload(np.cos(angle)), upload(np.sin(angle))  # (seq_len, head_size / 2)
        B = self.max_batch
        self.key_cache = cp.zeros((L, B, S, KV), f32)  # (n_layers, max_batch, seq_len, kv_dim)
        self.value_cache = cp.zeros((L, B, S, KV), f32)  # (n_layers, max_batch, seq_len, kv_dim)
        R = self.max_rows = max(B, PREFILL_ROWS)
        self.x = cp.empty((R, D), f32)  # (rows, dim) the residual stream
        self.x_norm = cp.empty((R, D), f32)  # (rows, dim) rmsnorm(x) in front of a GEMM
        self.q = cp.empty((R, D), f32)  # (rows, dim) queries after RoPE
        self.attention_out = cp.empty((R, D), f32)  # (rows, dim) attention output, before wo
        self.hidden = cp.empty((R, H), f32)  # (rows, hidden) SwiGLU output, before w2
        self.logits = cp.empty((R, V), f32)  # (rows, vocab)
        self.probabilities = cp.empty((B, V), f32)  # (max_batch, vocab) the sampler's softmax
        self.device_tokens = cp.zeros(R, np.int32)  # (rows,) input tokens; the sampler writes the next
        self.device_pos = cp.zeros(1, np.int32)  # (1,) position; the decode graph advances it
        self.device_forced = cp.full(B, -1, np.int32)  # (max_batch,) forced next token or -1
        self.rng_state = cp.zeros(B, np.uint64)  # (max_batch,) run's xorshift64* state per slot
        self.sampling_params = cp.zeros(2, f32)  # (2,) temperature, top_p
        self.logprob_flag = cp.zeros(1, np.int32)  # (1,) 1: the sampler writes logprobs
        self.logprobs = cp.zeros(B, f32)  # (max_batch,) log softmax(logits)[next token]
        # pinned host memory for the per-token transfers
        self._pinned = cp.cuda.alloc_pinned_memory(8 * B + 64)
        self._pinned_tokens = np.frombuffer(self._pinned, np.int32, B, 0)  # (max_batch,)
        self._pinned_logprobs = np.frombuffer(self._pinned, np.float32, B, 4 * B)  # (max_batch,)
        self.stream.synchronize()
        cp.cuda.Device().synchronize()

    # -- reporting ------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"cuda ({self.gpu_name}, CuPy {self.cp.__version__})"

    def _device_arrays(self) -> list:
        """Every device array this backend holds, each once (the shared classifier is the embedding)."""
        seen, arrays = set(), []
        for value in vars(self).values():
            if isinstance(value, self.cp.ndarray) and id(value) not in seen:
                seen.add(id(value))
                arrays.append(value)
        return arrays

    def memory_bytes(self) -> int:
        return int(sum(a.nbytes for a in self._device_arrays()))

    def _release(self) -> None:
        self._graphs = {}
        for n in list(vars(self)):
            if isinstance(getattr(self, n), self.cp.ndarray):
                setattr(self, n, None)
        self.cp.get_default_memory_pool().free_all_blocks()

    # -- uploads --------------------------------------------------------------------------------
    def _copy_to_device(self, dst, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(dst.data.ptr, host.ctypes.data, host.nbytes, runtime.memcpyHostToDevice, self.stream.ptr)
        self.stream.synchronize()  # host may be pageable and temporary

    def _copy_to_host(self, pinned: np.ndarray, src) -> None:
        """pinned (n,) <- the first n values of src, queued on the stream (synchronize before use)."""
        runtime = self.cp.cuda.runtime
        runtime.memcpyAsync(
            pinned.ctypes.data, src.data.ptr, pinned.nbytes, runtime.memcpyDeviceToHost, self.stream.ptr
        )

    def _set_pos(self, pos: int) -> None:
        if self._pos_on_device != pos:
            self._copy_to_device(self.device_pos, np.array([pos], np.int32))
            self._pos_on_device = pos

    def _set_tokens(self, tokens: np.ndarray) -> None:
        """tokens: (rows,) int32 into device_tokens; mirrored only for decode-sized uploads."""
        n = tokens.size
        if n <= self.max_batch and np.array_equal(self._tokens_on_device[:n], tokens):
            return
        self._copy_to_device(self.device_tokens[:n], tokens)
        if n <= self.max_batch:
            self._tokens_on_device[:n] = tokens
        else:
            self._tokens_on_device[:] = -1

    def _set_sampling(self, temperature: float, top_p: float, want_logprobs: bool) -> None:
        params = (float(np.float32(temperature)), float(np.float32(top_p)))
        if self._sampling_on_device != params:
            self._copy_to_device(self.sampling_params, np.array(params, np.float32))
            self._sampling_on_device = params
        flag = 1 if want_logprobs else 0
        if self._logprob_flag_on_device != flag:
            self._copy_to_device(self.logprob_flag, np.array([flag], np.int32))
            self._logprob_flag_on_device = flag

    def _clear_forced(self) -> None:
        if not self._forced_cleared:
            self._copy_to_device(self.device_forced, np.full(self.max_batch, -1, np.int32))
            self._forced_cleared = True

    # -- kernel sequences -----------------------------------------------------------------------
    def _launch(self, category: str, kernel: str, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        """Every kernel launch goes through here; while profile() runs, CUDA events bracket each
        launch and attribute it to a PROFILE_KEYS category."""
        events = self._profile_events
        if events is None:
            self.kernels[kernel](grid, block, args, shared_mem=shared_mem)
            return
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record(self.stream)
        self.kernels[kernel](grid, block, args, shared_mem=shared_mem)
        end.record(self.stream)
        events.append((category, start, end))

    def _uses_gemv(self, rows: int) -> bool:
        c = self.config
        return rows <= GEMV_MAX_ROWS and gemv_shared_bytes(rows, max(c.dim, c.hidden_dim)) <= SHARED_MEMORY_DEFAULT

    def _gemv(
        self, epilogue: str, rows: int, N: int, K: int, x, rms_weight, use_rms: int, W, *ep, category: str = "matmul"
    ):
        """out (rows, N) = W (N, K) . [rmsnorm](x (rows, K)), through the epilogue's arguments ep."""
        i32 = np.int32
        grid = (max(1, min(-(-N // (2 * (GEMV_THREADS // 32))), self.n_sm * 8)),)  # a warp per output pair
        self._launch(
            category,
            "gemv_" + epilogue,
            grid,
            (GEMV_THREADS,),
            (x, rms_weight, i32(use_rms), W, i32(N), i32(K), i32(rows)) + ep,
            shared_mem=gemv_shared_bytes(rows, K),
        )

    def _gemm(self, epilogue: str, A, W, M: int, N: int, K: int, *ep, category: str = "matmul") -> None:
        """The largest tile that still gives every multiprocessor a block (twice for 128x128)."""
        for tile in self.gemm_tiles:  # noqa: B007 (the chosen tile is used after the loop)
            if (-(-M // tile)) * (-(-N // tile)) >= (2 if tile == 128 else 1) * self.n_sm:
                break
        self._launch(
            category,
            gemm_kernel(epilogue, tile),
            (-(-N // tile), -(-M // tile)),
            (GEMM_THREADS,),
            (A, W, np.int32(M), np.int32(N), np.int32(K)) + ep,
        )

    def _rmsnorm_rows(self, x, weight, M: int) -> None:
        """x_norm[:M] = rmsnorm(x[:M], weight), in front of a GEMM."""
        self._launch(
            "rmsnorm", "rmsnorm_rows", (M,), (ROW_THREADS,), (x, weight, self.x_norm, np.int32(self.config.dim))
        )

    def _attention(self, layer: int, M: int, T: int) -> None:
        c = self.config
        self._launch(
            "attention",
            "attention",
            (c.n_heads, M),
            (ATTENTION_THREADS,),
            (
                self.q,
                self.key_cache[layer],
                self.value_cache[layer],
                self.attention_out,
                np.int32(T),
                self.device_pos,
                np.int32(c.seq_len),
                np.int32(c.kv_mul),
                np.int32(c.head_size),
                np.int32(c.kv_dim),
                np.int32(c.dim),
            ),
            shared_mem=self._attention_shared,
        )

    def _qkv_epilogue(self, layer: int, T: int) -> tuple:
        c = self.config
        return (
            self.q,
            self.key_cache[layer],
            self.value_cache[layer],
            self.rope_cos,
            self.rope_sin,
            self.device_pos,
            np.int32(T),
            np.int32(c.seq_len),
            np.int32(c.dim),
            np.int32(c.kv_dim),
            np.int32(c.head_size),
        )

    def _layers(self, M: int, T: int) -> None:
        """All layers for M = B * T rows of x (tokens already embedded), positions from device_pos.

        Profile categories: each fused kernel counts as its matmul (the rmsnorm, RoPE, SwiGLU and
        residual it fuses are inside it); the separate rmsnorm of the GEMM path as rmsnorm."""
        c, i32 = self.config, np.int32
        D, H = c.dim, c.hidden_dim
        if self._uses_gemv(M):
            for layer in range(c.n_layers):
                qkv = self._qkv_epilogue(layer, T)
                self._gemv("qkv", M, self.n_qkv, D, self.x, self.rms_att[layer], 1, self.wqkv[layer], *qkv)
                self._attention(layer, M, T)
                self._gemv("add", M, D, D, self.attention_out, self.rms_final, 0, self.wo[layer], self.x, i32(D))
                self._gemv("swiglu", M, 2 * H, D, self.x, self.rms_ffn[layer], 1, self.w13[layer], self.hidden, i32(H))
                self._gemv("add", M, D, H, self.hidden, self.rms_final, 0, self.w2[layer], self.x, i32(D))
        else:
            for layer in range(c.n_layers):
                qkv = self._qkv_epilogue(layer, T)
                self._rmsnorm_rows(self.x, self.rms_att[layer], M)
                self._gemm("qkv", self.x_norm, self.wqkv[layer], M, self.n_qkv, D, *qkv)
                self._attention(layer, M, T)
                self._gemm("add", self.attention_out, self.wo[layer], M, D, D, self.x, i32(D))
                self._rmsnorm_rows(self.x, self.rms_ffn[layer], M)
                self._gemm("swiglu", self.x_norm, self.w13[layer], M, 2 * H, D, self.hidden, i32(H))
                self._gemm("add", self.hidden, self.w2[layer], M, D, H, self.x, i32(D))

    def _classifier(self, x, M: int) -> None:
        """logits[:M] = wcls . rmsnorm(x[:M], rms_final)."""
        c, i32 = self.config, np.int32
        V = c.vocab_size
        if self._uses_gemv(M):
            self._gemv(
                "store", M, V, c.dim, x, self.rms_final, 1, self.wcls, self.logits, i32(V), category="classifier"
            )
        else:
            self._rmsnorm_rows(x, self.rms_final, M)
            self._gemm("store", self.x_norm, self.wcls, M, V, c.dim, self.logits, i32(V), category="classifier")

    def _embed(self, M: int) -> None:
        self._launch(
            "embedding",
            "embed",
            (M,),
            (ROW_THREADS,),
            (self.device_tokens, self.token_embedding, self.x, np.int32(self.config.dim)),
        )

    def _sample(self, B: int) -> None:
        """Next tokens into device_tokens (and logprobs), then device_pos += 1."""
        self._launch(
            "sampling",
            "sample",
            (B,),
            (SAMPLER_THREADS,),
            (
                self.logits,
                np.int32(self.config.vocab_size),
                self.sampling_params,
                self.logprob_flag,
                self.device_forced,
                self.rng_state,
                self.device_tokens,
                self.logprobs,
                self.probabilities,
                self.device_pos,
                np.int32(1),
            ),
        )

    def _decode(self, B: int, sample: bool) -> None:
        """One position for B sequences; with sample, exactly the launches the decode graph holds."""
        self._embed(B)
        self._layers(B, 1)
        self._classifier(self.x, B)
        if sample:
            self._sample(B)

    # -- the model ------------------------------------------------------------------------------
    def _forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        B = tokens.shape[0]
        with self.device, self.stream:
            self._set_tokens(tokens)
            self._set_pos(pos)
            self._decode(B, sample=False)
            out = self.logits[:B].get(stream=self.stream)
        self.stream.synchronize()
        return out

    def _prefill(self, tokens: np.ndarray, pos: int, logits: str) -> Optional[np.ndarray]:
        B, T = tokens.shape
        c = self.config
        chunk_len = max(1, self.max_rows // B)  # positions per chunk: at most max_rows rows
        outs = []
        last = None
        with self.device, self.stream:
            for start in range(0, T, chunk_len):
                chunk = tokens[:, start : start + chunk_len]  # (B, Tc)
                Tc = chunk.shape[1]
                M = B * Tc
                self._set_tokens(chunk.reshape(-1))
                self._set_pos(pos + start)
                self._embed(M)
                self._layers(M, Tc)
                if logits == "all":
                    self._classifier(self.x, M)
                    outs.append(self.logits[:M].get(stream=self.stream).reshape(B, Tc, c.vocab_size))
                elif logits == "last" and start + Tc == T:
                    x_last = self.x[:M].reshape(B, Tc, c.dim)[:, -1].copy()  # (B, dim)
                    self._classifier(x_last, B)
                    last = self.logits[:B].get(stream=self.stream)
            self.stream.synchronize()
        if logits == "all":
            return np.concatenate(outs, axis=1)
        return last

    # -- sampling -------------------------------------------------------------------------------
    def _set_seeds(self, seeds: Sequence[int]) -> None:
        if len(seeds):
            with self.device:
                self._copy_to_device(self.rng_state[: len(seeds)], np.array(seeds, np.uint64))

    def _graph(self, B: int):
        graph = self._graphs.get(B)
        if graph is None:
            self.stream.begin_capture()
            try:
                self._decode(B, sample=True)
            finally:
                graph = self.stream.end_capture()
            self._graphs[B] = graph
        return graph

    def _step(self, tokens, pos, temperature, top_p, forced, want_logprobs):
        B = tokens.shape[0]
        with self.device, self.stream:
            self._set_tokens(tokens)
            self._set_pos(pos)
            self._set_sampling(temperature, top_p, want_logprobs)
            # forced: None or (B,) int32 < vocab (base.check_forced)
            if forced is None or not (forced >= 0).any():
                self._clear_forced()
            else:
                self._copy_to_device(self.device_forced[:B], forced)
                self._forced_cleared = False
            self._graph(B).launch(stream=self.stream)
            self._copy_to_host(self._pinned_tokens[:B], self.device_tokens)
            if want_logprobs:
                self._copy_to_host(self._pinned_logprobs[:B], self.logprobs)
            self.stream.synchronize()
        next_tokens = self._pinned_tokens[:B].copy()
        self._tokens_on_device[:B] = next_tokens
        self._pos_on_device = pos + 1
        return next_tokens, (self._pinned_logprobs[:B].copy() if want_logprobs else None)

    # -- profiling ------------------------------------------------------------------------------
    def _profile(self, tokens: np.ndarray, pos: int, temperature: float, top_p: float) -> dict[str, float]:
        """Seconds per PROFILE_KEYS category of one decode step at pos: the launches the
        decode graph holds, issued eagerly with CUDA events around each (_launch names each one's
        category). Fused kernels count as their matmul, so rope, swiglu and residual stay 0.

        The step runs twice, the first to warm up (lazy module loading); the second is queued
        behind a host function that holds the stream until every launch is issued, so that the
        events time the GPU's work, not the pace of the Python that issues it. A step writes the
        KV cache at pos exactly as step() would; the generators are restored afterwards."""
        B = tokens.shape[0]
        times = {key: 0.0 for key in PROFILE_KEYS}
        with self.device, self.stream:
            rng = self.rng_state.copy()  # (max_batch,) the sampled steps below advance it
            try:
                self._set_sampling(temperature, top_p, False)
                self._clear_forced()
                for measured in (False, True):
                    self._set_tokens(tokens)
                    self._set_pos(pos)
                    events = self._profiled_decode(B, gated=measured)
                    # the sampler overwrote the inputs and advanced the position
                    self._tokens_on_device[:] = -1
                    self._pos_on_device = None
            finally:
                self.rng_state[...] = rng  # in place: the captured graphs hold this buffer
        for category, start, end in events:
            times[category] += self.cp.cuda.get_elapsed_time(start, end) / 1e3
        return times

    def _profiled_decode(self, B: int, gated: bool) -> list:
        """_decode(B, sample=True) with events around each launch; returns them once all are done."""
        stream = self.stream
        release = threading.Event()
        if gated:
            try:
                stream.launch_host_func(lambda _arg: release.wait(PROFILE_GATE_TIMEOUT_S), None)
            except (AttributeError, RuntimeError):  # no host functions (old CuPy, HIP): time as issued
                pass
        events: list = []
        self._profile_events = events
        try:
            self._decode(B, sample=True)
        finally:
            self._profile_events = None
            release.set()
        # poll, not synchronize: the host function needs the GIL to return
        deadline = time.monotonic() + PROFILE_GATE_TIMEOUT_S + 5.0
        while not events[-1][2].done and time.monotonic() < deadline:
            time.sleep(1e-4)
        stream.synchronize()
        return events
