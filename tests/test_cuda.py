"""The cuda backend (CuPy + llama2py/backends/cuda_kernels): kernels against the numpy spec, end to
end on stories260K.

Without a GPU the compile check (nvcc, when it is on PATH), the checks of the sources against the
host's constants, the error paths and the launches through a fake CuPy run; every other test skips
saying why. scripts/gpu_check.sh runs the whole file on a GPU machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REFERENCE_260K, SHAPES, rel_err, require_device

from llama2py.backends import cuda as cuda_module
from llama2py.backends.base import PROFILE_KEYS
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import Config, random_weights
from llama2py.errors import DeviceError

KERNEL_DIR = cuda_module.KERNEL_DIR
CU_FILES = sorted(KERNEL_DIR.glob("*.cu"))
TOL = 1e-4


def _gpu_reason() -> str | None:
    """None when a cuda backend can be made here, else why not."""
    try:
        from llama2py.backends.cuda import CudaBackend

        c = SHAPES["odd_tiny"]
        CudaBackend(c, random_weights(c), 1).close()
    except (ImportError, DeviceError) as e:
        return str(e)
    return None


_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(_REASON is not None, reason=f"no usable GPU: {_REASON}")
WORST: dict[str, float] = {}  # test -> worst relative error, printed at the end of the session


def _record(name: str, err: float) -> None:
    WORST[name] = max(WORST.get(name, 0.0), err)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    """Worst errors per test to $LLAMA2PY_CUDA_REPORT (scripts/gpu_check.sh prints it)."""
    yield
    out = os.environ.get("LLAMA2PY_CUDA_REPORT")
    if WORST and out:
        worst = max(WORST.values())
        lines = [f"{k}: {v:.2e}" for k, v in sorted(WORST.items())] + [f"WORST OVERALL: {worst:.2e}"]
        Path(out).write_text("\n".join(lines) + "\n")


def cuda(config: Config, weights, max_batch: int = 1, **options):
    return cuda_module.CudaBackend(config, weights, max_batch, **options)


# -- always: the sources compile, and the no-GPU paths are clean errors --------------------------------
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def _nvcc(src: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nvcc", *flags, str(src)], capture_output=True, text=True)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("src", CU_FILES, ids=[p.name for p in CU_FILES])
def test_sources_compile_with_nvcc(src, arch, tmp_path):
    """With exactly the options NVRTC gets (KERNEL_CONSTANTS as -D, the header folder as -I)."""
    options = cuda_module.compile_options("0" * 64)
    r = _nvcc(src, f"-arch={arch}", "-Werror", "all-warnings", *options, "-c", "-o", str(tmp_path / "k.o"))
    assert r.returncode == 0, r.stderr


@needs_nvcc
@pytest.mark.parametrize("name", list(cuda_module.KERNEL_CONSTANTS))
def test_a_missing_define_stops_the_compile(name, tmp_path):
    """Each constant's #ifndef guard fires, in every file that uses it, naming the constant."""
    options = [o for o in cuda_module.compile_options() if not o.startswith(f"-D{name}=")]
    users = [p for p in CU_FILES if name in _constants_used(p)]
    assert users, f"{name} is in KERNEL_CONSTANTS but no kernel uses it"
    for src in users:
        r = _nvcc(src, *options, "-E", "-o", str(tmp_path / "k.i"))
        assert r.returncode != 0 and f"{name} is not defined" in r.stderr, (src.name, r.stderr[-500:])


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _with_headers(src: Path) -> list[Path]:
    """src and the headers it includes (from the kernel folder), recursively."""
    files = [src]
    for inc in re.findall(r'^#include "([^"]+)"', src.read_text(), re.M):
        files += [p for p in _with_headers(KERNEL_DIR / inc) if p not in files]
    return files


def _constants_used(src: Path) -> set[str]:
    """The KERNEL_CONSTANTS names src or its headers use outside the guards and #error lines."""
    used = set()
    for f in _with_headers(src):
        code = "\n".join(
            line for line in _strip_comments(f.read_text()).splitlines() if not line.startswith(("#ifndef", "#error"))
        )
        used |= {n for n in cuda_module.KERNEL_CONSTANTS if re.search(rf"\b{n}\b", code)}
    return used


def _guards(src: Path) -> set[str]:
    return {g for f in _with_headers(src) for g in re.findall(r"^#ifndef (\w+)\n#error", f.read_text(), re.M)}


@pytest.mark.parametrize("src", CU_FILES, ids=[p.name for p in CU_FILES])
def test_every_constant_a_kernel_uses_comes_from_the_python_table(src):
    """The launch shapes are written once (cuda.KERNEL_CONSTANTS): a .cu file (with its headers)
    guards every table constant it uses, defines none of them itself, and keeps no old copy."""
    table = set(cuda_module.KERNEL_CONSTANTS)
    text = "".join(_strip_comments(f.read_text()) for f in _with_headers(src))
    used, guards = _constants_used(src), _guards(src)
    assert used <= guards, f"{src.name} uses {sorted(used - guards)} without an #ifndef/#error guard"
    assert guards - {"LLAMA2PY_BLOCK_REDUCE_CUH"} <= table, f"guards for names not in the table: {guards - table}"
    redefined = set(re.findall(r"^#define (\w+)", text, re.M)) & table
    assert not redefined, f"{src.name} defines {sorted(redefined)} itself"
    old = {"GV_NT", "GV_MAXB", "ATT_NT", "SNT"} & set(re.findall(r"\w+", text))
    assert not old, f"{src.name} still uses {sorted(old)}"
    assert not re.search(r"\b(33|36)\b", text), f"{src.name} writes a reduction's shared size as a number"


def test_block_reductions_are_written_once():
    """forward.cu and sample.cu share block_reduce.cuh instead of each defining the reductions."""
    header = KERNEL_DIR / "block_reduce.cuh"
    assert header in _with_headers(KERNEL_DIR / "forward.cu") and header in _with_headers(KERNEL_DIR / "sample.cu")
    for src in CU_FILES:
        text = _strip_comments(src.read_text())
        own = re.findall(r"__device__[^;{]*\b(block_(?:reduce|sum|max|min)|warp_(?:reduce|sum|max))\s*\(", text)
        assert not own, f"{src.name} defines {own} (they live in block_reduce.cuh)"


def test_sources_exist():
    assert [p.name for p in CU_FILES] == list(cuda_module.SOURCES)
    assert set(cuda_module.kernel_sources()) == set(cuda_module.SOURCES + cuda_module.HEADERS)


def test_gemm_tiles_are_checked():
    c = SHAPES["odd_tiny"]
    for bad in ((), (48,), (64, 16)):
        with pytest.raises(ValueError, match="gemm_tiles"):
            cuda_module.CudaBackend(c, random_weights(c), gemm_tiles=bad)


def test_no_cupy_is_a_device_error(monkeypatch):
    from llama2py.backends.cuda import CudaBackend

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    c = SHAPES["odd_tiny"]
    with pytest.raises(DeviceError, match="CuPy.*--device cpu"):
        CudaBackend(c, random_weights(c))


@pytest.mark.skipif(_REASON is None, reason="a GPU is usable here")
def test_no_gpu_is_a_device_error():
    from llama2py.backends.cuda import CudaBackend

    c = SHAPES["odd_tiny"]
    with pytest.raises(DeviceError, match="--device cpu"):
        CudaBackend(c, random_weights(c))


def test_auto_falls_back_without_cuda(monkeypatch):
    from llama2py.backends import create_backend

    require_device("cpu")
    monkeypatch.setitem(sys.modules, "cupy", None)
    c = SHAPES["odd_tiny"]
    notes: list[str] = []
    b = create_backend("auto", c, random_weights(c), notes=notes)
    assert b.name == "cpu" and notes and "cuda" in notes[0]


@pytest.mark.parametrize("weights", ["f32", "q8_0"])
def test_cuda_says_when_int8_weights_run_as_float32(monkeypatch, weights):
    """The cuda backend dequantizes Q8_0 weights: the notes (printed by the CLI) say so."""
    from llama2py.backends import create_backend

    made = []

    class FakeCuda:
        name = "cuda"

        def __init__(self, *args):
            made.append(args)

    monkeypatch.setattr(cuda_module, "CudaBackend", FakeCuda)
    c = SHAPES["gqa_unshared"]
    w = random_weights(c, 3)
    if weights == "q8_0":
        w = w.quantized(8)
    notes: list[str] = []
    assert isinstance(create_backend("cuda", c, w, notes=notes), FakeCuda) and made
    assert bool(notes) == (weights == "q8_0")
    assert all("runs int8 (Q8_0) weights as float32" in n and "--device cpu" in n for n in notes)


def test_auto_without_cuda_keeps_int8_weights_int8(monkeypatch):
    """A v2 model on a machine without CuPy: the cuda backend gives up before it makes the float32
    copy it would upload (4x the int8 weights: a 7B Q8_0 file would need 27 GB for nothing)."""
    from llama2py.backends import create_backend
    from llama2py.checkpoint import Weights

    require_device("cpu")
    monkeypatch.setitem(sys.modules, "cupy", None)

    def refuse(self):
        raise AssertionError("dequantized before CuPy was found")

    c = SHAPES["gqa_unshared"]
    w = random_weights(c, 3).quantized(8)  # 8 divides dim 40
    monkeypatch.setattr(Weights, "dequantized", refuse)
    notes: list[str] = []
    b = create_backend("auto", c, w, notes=notes)
    assert b.name == "cpu" and b.weight_type == "q8_0" and "CuPy" in notes[0]
    with pytest.raises(DeviceError, match="CuPy"):
        create_backend("cuda", c, w)


# -- on a GPU: logits against the numpy spec ----------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 3, 7, 11])
def test_forward_matches_numpy(shape, batch):
    c = SHAPES[shape]
    w = random_weights(c, seed=1)
    ref, dev = NumpyBackend(c, w, batch), cuda(c, w, batch)
    rng = np.random.default_rng(2)
    for pos in range(c.seq_len):
        t = rng.integers(0, c.vocab_size, batch).astype(np.int32)
        a, b = dev.forward(t, pos), ref.forward(t, pos)
        err = rel_err(a, b)
        _record(f"forward {shape} B={batch}", err)
        assert a.shape == (batch, c.vocab_size) and np.isfinite(a).all()
        assert err < TOL, f"pos {pos}: {err:.2e}"


@needs_gpu
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_prefill_matches_numpy(shape, batch):
    c = SHAPES[shape]
    w = random_weights(c, seed=3)
    ref, dev = NumpyBackend(c, w, batch), cuda(c, w, batch)
    rng = np.random.default_rng(4)
    T1 = c.seq_len // 2
    toks = rng.integers(0, c.vocab_size, (batch, c.seq_len)).astype(np.int32)
    a, b = dev.prefill(toks[:, :T1], 0, "all"), ref.prefill(toks[:, :T1], 0, "all")
    assert a.shape == (batch, T1, c.vocab_size)
    _record(f"prefill all {shape} B={batch}", rel_err(a, b))
    assert rel_err(a, b) < TOL
    T2 = c.seq_len - T1 - 1
    a, b = dev.prefill(toks[:, T1 : T1 + T2], T1, "last"), ref.prefill(toks[:, T1 : T1 + T2], T1, "last")
    _record(f"prefill last {shape} B={batch}", rel_err(a, b))
    assert a.shape == (batch, c.vocab_size) and rel_err(a, b) < TOL
    assert dev.prefill(toks[:, :1], 0, "none") is None and ref.prefill(toks[:, :1], 0, "none") is None
    # the cache written by prefill serves the next single step
    p = c.seq_len - 1
    a, b = dev.forward(toks[:, p], p), ref.forward(toks[:, p], p)
    _record(f"prefill->forward {shape} B={batch}", rel_err(a, b))
    assert rel_err(a, b) < TOL


@needs_gpu
@pytest.mark.parametrize("tile", cuda_module.GEMM_TILES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_gemm_tile_matches_numpy(shape, tile):
    """The host picks tiles by size; force each one so that all are checked on small shapes."""
    c = SHAPES[shape]
    w = random_weights(c, seed=14)
    B = 6
    ref, dev = NumpyBackend(c, w, B), cuda(c, w, B, gemm_tiles=(tile,))
    toks = np.random.default_rng(15).integers(0, c.vocab_size, (B, c.seq_len)).astype(np.int32)
    T1 = c.seq_len - 1
    a, b = dev.prefill(toks[:, :T1], 0, "all"), ref.prefill(toks[:, :T1], 0, "all")
    _record(f"tile {tile} prefill {shape}", rel_err(a, b))
    assert rel_err(a, b) < TOL
    a, b = dev.forward(toks[:, T1], T1), ref.forward(toks[:, T1], T1)
    _record(f"tile {tile} forward {shape}", rel_err(a, b))
    assert rel_err(a, b) < TOL


@needs_gpu
def test_prefill_longer_than_one_chunk():
    c = Config(
        dim=64,
        hidden_dim=96,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=100,
        seq_len=1100,
        shared_classifier=False,
    )
    w = random_weights(c, seed=5)
    ref, dev = NumpyBackend(c, w, 1), cuda(c, w, 1)
    toks = np.random.default_rng(6).integers(0, c.vocab_size, (1, 1090)).astype(np.int32)
    a, b = dev.prefill(toks, 0, "last"), ref.prefill(toks, 0, "last")
    _record("prefill 1090 positions", rel_err(a, b))
    assert rel_err(a, b) < TOL


@needs_gpu
@pytest.mark.parametrize("shape", list(SHAPES))
def test_step_greedy_and_logprobs_match_numpy(shape):
    c = SHAPES[shape]
    w = random_weights(c, seed=8)
    B = 2
    ref, dev = NumpyBackend(c, w, B), cuda(c, w, B)
    tok = np.array([1, 5], np.int32)
    for pos in range(c.seq_len):
        logits = ref.forward(tok, pos)
        nxt, lp = dev.step(tok, pos, 0.0, 0.9, want_logprobs=True)
        assert (nxt == logits.argmax(axis=1)).all(), f"pos {pos}"
        lse = np.log(np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        np.testing.assert_allclose(lp, logits[np.arange(B), nxt] - lse, atol=1e-4)
        tok = nxt


@needs_gpu
def test_forced_tokens_do_not_advance_the_generator():
    c = SHAPES["wide"]
    w = random_weights(c, seed=9)
    ref, dev = NumpyBackend(c, w, 2), cuda(c, w, 2)
    for b in (ref, dev):
        b.set_seeds([11, 12])
    tok = np.array([3, 4], np.int32)
    outs = {"ref": [], "dev": []}
    for name, be in (("ref", ref), ("dev", dev)):
        t = tok.copy()
        for pos in range(30):
            forced = np.array([7 if pos < 10 else -1, -1 if pos % 2 else 9], np.int32)
            nxt, _ = be.step(t, pos, 1.0, 0.9, forced)
            outs[name].append(nxt.copy())
            t = nxt
    assert np.array_equal(np.array(outs["ref"]), np.array(outs["dev"]))


@needs_gpu
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.7, 1.0), (1.3, 0.0), (0.9, 0.5), (1.0, 0.999)])
def test_sampling_matches_numpy(temperature, top_p):
    c = SHAPES["wide"]
    w = random_weights(c, seed=10)
    B = 3
    ref, dev = NumpyBackend(c, w, B), cuda(c, w, B)
    for b in (ref, dev):
        b.set_seeds([42, 43, 44])
    t_ref = t_dev = np.array([1, 1, 1], np.int32)
    for pos in range(c.seq_len):
        n_ref, _ = ref.step(t_ref, pos, temperature, top_p)
        n_dev, _ = dev.step(t_dev, pos, temperature, top_p)
        assert np.array_equal(n_ref, n_dev), f"pos {pos}: {n_ref} vs {n_dev}"
        t_ref, t_dev = n_ref, n_dev


@needs_gpu
@pytest.mark.parametrize("B", [3, 8])
def test_batch_rows_equal_single_runs(B):
    c = SHAPES["mha_shared"]
    w = random_weights(c, seed=12)
    seeds = [100 + b for b in range(B)]
    batched = cuda(c, w, B)
    batched.set_seeds(seeds)
    tok = np.arange(1, B + 1, dtype=np.int32)
    rows = [tok.copy()]
    for pos in range(20):
        tok, _ = batched.step(tok, pos, 0.8, 0.9)
        rows.append(tok.copy())
    rows = np.array(rows)
    for b in range(B):
        single = cuda(c, w, 1)
        single.set_seeds([seeds[b]])
        t = np.array([b + 1], np.int32)
        got = [t[0]]
        for pos in range(20):
            t, _ = single.step(t, pos, 0.8, 0.9)
            got.append(t[0])
        assert rows[:, b].tolist() == got, f"row {b}"
        single.close()


@needs_gpu
def test_profile_and_memory():
    c = SHAPES["gqa_unshared"]
    dev = cuda(c, random_weights(c, seed=13), 2)
    prof = dev.profile(np.array([1, 2], np.int32), 0)
    assert set(prof) == set(PROFILE_KEYS)
    assert all(v >= 0 for v in prof.values())
    fused = {"rope", "swiglu", "residual"}  # inside the matmul kernels; rmsnorm too at batch <= 4
    assert all(prof[k] > 0 for k in set(PROFILE_KEYS) - fused - {"rmsnorm"}), prof
    assert all(prof[k] == 0 for k in fused), prof
    # profiling leaves a consistent state: the KV cache row it wrote is the one a step writes, and
    # the inputs and position it consumed are uploaded again
    ref = NumpyBackend(c, random_weights(c, seed=13), 2)
    tok = np.array([1, 2], np.int32)
    for pos in range(3):
        dev.forward(tok, pos)
        ref.forward(tok, pos)
    dev.set_seeds([7, 8])
    dev.profile(tok, 3, 1.0, 0.9)  # sampled: the generators come back as they were
    assert dev.rng_state[:2].get().tolist() == [7, 8]
    dev.profile(tok, 3)
    nxt, _ = dev.step(tok, 3, 0.0, 0.9)
    assert (nxt == ref.forward(tok, 3).argmax(1)).all()
    assert dev.memory_bytes() > 0
    assert "cuda" in dev.describe()


@needs_gpu
def test_too_large_is_a_device_error_before_allocating():
    c = Config(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=64, seq_len=8192)
    with pytest.raises(DeviceError, match=r"needs about .* MiB.*free.*--device cpu"):
        cuda(c, random_weights(c), max_batch=1 << 20)


# -- on a GPU, end to end on the real stories260K ------------------------------------------------
def _llama(stories260k, device):
    from llama2py.model import Llama

    ck, tok = stories260k
    return Llama.load(ck, tok, device=device)


@needs_gpu
def test_reference_story_greedy(stories260k):
    res = _llama(stories260k, "cuda").run("", steps=200, temperature=0.0)
    assert res.text == REFERENCE_260K


@needs_gpu
@pytest.mark.parametrize(
    "prompt,temperature,top_p,seed,steps",
    [
        ("", 1.0, 0.9, 42, 256),
        ("Once upon a time, Lily", 0.8, 0.95, 7, 256),
        ("", 1.0, 0.0, 5, 100),
    ],
)
def test_seeded_sampling_equals_numpy(stories260k, prompt, temperature, top_p, seed, steps):
    got = _llama(stories260k, "cuda").run(prompt, steps, temperature, top_p, seed)
    want = _llama(stories260k, "numpy").run(prompt, steps, temperature, top_p, seed)
    assert got.tokens == want.tokens
    assert got.text == want.text and len(got.text) > 50
    if prompt:
        assert got.text.startswith(prompt)


# -- everywhere: the host code against the kernels' signatures, with a fake CuPy --------------------
def _kernel_signatures() -> dict[str, list[str]]:
    """extern "C" kernel name -> parameter declarations, parsed from the .cu files (macros expanded)."""
    sigs = {}
    for path in CU_FILES:
        src = path.read_text()
        for m in re.finditer(
            r'extern "C" __global__ void(?: __launch_bounds__\(\w+\))?\s+(?!__launch_bounds__)(\w+)\(([^)]*)\)', src
        ):
            sigs[m.group(1)] = [a.strip() for a in m.group(2).split(",")]
        for macro in re.findall(r"^#define (\w+_ENTRIES)\(", src, re.M):
            body = src.split(f"#define {macro}(", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
            for suf in re.findall(rf"^{macro}\((_\d+),", src, re.M):
                for m in re.finditer(r"(\w+)##SUF\(([^)]*)\)", body):
                    sigs[m.group(1) + suf] = [a.strip() for a in m.group(2).split(",")]
    return sigs


def _fake_cupy(sigs: dict, launches: list, fake: dict):
    """A CuPy stand-in: kernels check each launch against its signature and log it in `launches`;
    `fake` collects the compile options and the profiler's host functions (threads)."""
    import threading
    import types

    class ndarray(np.ndarray):
        @property
        def data(self):
            return types.SimpleNamespace(ptr=self.ctypes.data)

        def set(self, a, stream=None):
            self[...] = a

        def get(self, stream=None):
            return np.asarray(self).copy()

    wrap = lambda a: np.asarray(a).view(ndarray)  # noqa: E731

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args, shared_mem=0):
            sig = sigs[self.name]
            assert len(sig) == len(args), f"{self.name}: {len(args)} arguments for {len(sig)} parameters"
            for p, a in zip(sig, args):
                want = (
                    ndarray
                    if "*" in p
                    else np.int64
                    if p.startswith("long long")
                    else np.int32
                    if p.startswith("int")
                    else np.float32
                )
                assert isinstance(a, want), f"{self.name}: {p} given {type(a).__name__}"
            assert all(isinstance(g, int) and g >= 1 for g in grid + block), (self.name, grid, block)
            assert shared_mem <= 48 * 1024, (self.name, shared_mem)
            launches.append(self.name)

    class Module:
        def __init__(self, code, options=()):
            fake["options"].append(tuple(options))

        def get_function(self, name):
            assert name in sigs, name
            return Kernel(name)

    class Ctx:
        id, ptr, done = 0, 0, True

        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        use = synchronize = lambda self: None
        record = lambda self, stream=None: None  # noqa: E731

        def begin_capture(self):
            launches.append("<capture>")

        def end_capture(self):
            return types.SimpleNamespace(launch=lambda stream=None: launches.append("<replay>"))

        def launch_host_func(self, callback, arg):
            """Like CUDA: the callback runs on another thread; the stream waits for it to return."""
            result = {}
            thread = threading.Thread(target=lambda: result.setdefault("returned", callback(arg)))
            thread.start()
            fake["holds"].append((thread, result))
            launches.append("<hold>")

    rt = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"Fake", "multiProcessorCount": 132},
        memGetInfo=lambda: (8 << 30, 8 << 30),
        memcpyAsync=lambda *a: None,
        memcpyHostToDevice=1,
        memcpyDeviceToHost=2,
    )
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake"
    cp.ndarray = ndarray
    cp.asarray = lambda a: wrap(np.array(a))
    cp.empty = cp.zeros = lambda shape, dtype=np.float32: wrap(np.zeros(shape, dtype))
    cp.full = lambda shape, v, dtype=None: wrap(np.full(shape, v, dtype))
    cp.RawModule = Module
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    cp.cuda = types.SimpleNamespace(
        runtime=rt,
        Stream=Ctx,
        Device=Ctx,
        Event=Ctx,
        get_elapsed_time=lambda a, b: 0.001,
        alloc_pinned_memory=lambda n: bytearray(n),
        memory=types.SimpleNamespace(OutOfMemoryError=MemoryError),
    )
    return cp


def _between(launches: list, start: str, end: str) -> list:
    """The launches after the last `start` marker up to the next `end` marker."""
    i = len(launches) - 1 - launches[::-1].index(start)
    return launches[i + 1 : launches.index(end, i)]


def test_every_launch_matches_its_kernel_signature(monkeypatch):
    """Without a GPU: run forward/prefill/step/profile through a fake CuPy whose kernels check each
    launch's argument count and types (pointer = array, int = np.int32, ...) against the .cu files,
    at batches on the GEMV path (<= GEMV_MAX_ROWS rows) and the GEMM path (more rows, prefill), with
    every GEMM tile forced in turn; every kernel in the .cu files must be launched (no orphans, none
    left unchecked). The kernels are compiled with the table's -D defines and the header folder;
    profile() times exactly the launches the decode graph captures."""
    sigs = _kernel_signatures()
    assert set(sigs) == {n for names in cuda_module.kernel_names().values() for n in names}
    launches: list = []
    fake: dict = {"options": [], "holds": []}
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(sigs, launches, fake))
    monkeypatch.setattr(cuda_module, "_KERNELS", {})
    max_rows = cuda_module.GEMV_MAX_ROWS
    for shape in ("gqa_unshared", "odd_tiny"):
        c = SHAPES[shape]
        for B in (1, 3, 7, 11):
            be = cuda_module.CudaBackend(c, random_weights(c), B)
            assert be._uses_gemv(B) == (B <= max_rows)
            be.set_seeds(list(range(B)))
            be.forward(np.ones(B, np.int32), 0)
            be.prefill(np.ones((B, c.seq_len - 1), np.int32), 0, "all")
            be.prefill(np.ones((B, 3), np.int32), 0, "last")
            be.step(np.ones(B, np.int32), 1, 0.0, 0.9)
            captured = _between(launches, "<capture>", "<replay>")
            assert "sample" in captured
            assert any(x.startswith("gemv_" if B <= max_rows else "gemm_") for x in captured), captured
            be.step(np.ones(B, np.int32), 2, 1.0, 0.9, forced=np.full(B, 3, np.int32), want_logprobs=True)
            launches.append("<profile>")
            prof = be.profile(np.ones(B, np.int32), 2)
            launches.append("<end>")
            assert set(prof) == set(PROFILE_KEYS)
            # a warm-up pass, then the measured pass behind the host function that holds the stream
            assert _between(launches, "<profile>", "<hold>") == captured
            assert _between(launches, "<hold>", "<end>") == captured
            thread, result = fake["holds"][-1]
            thread.join(timeout=10)
            assert not thread.is_alive() and result["returned"] is True, "the profiler never released the stream"
            n_layers = c.n_layers
            assert prof["attention"] == pytest.approx(n_layers * 1e-6)
            assert prof["matmul"] == pytest.approx(4 * n_layers * 1e-6)  # qkv, wo, w1|w3, w2
            assert prof["rmsnorm"] == pytest.approx(0 if B <= max_rows else (2 * n_layers + 1) * 1e-6)
            assert prof["embedding"] == prof["classifier"] == prof["sampling"] == pytest.approx(1e-6)
            assert prof["rope"] == prof["swiglu"] == prof["residual"] == 0
            for tile in cuda_module.GEMM_TILES:
                forced = cuda_module.CudaBackend(c, random_weights(c), B, gemm_tiles=(tile,))
                n = len(launches)
                forced.prefill(np.ones((B, max_rows + 1), np.int32), 0, "all")  # more rows than GEMV takes
                assert {cuda_module.gemm_kernel(e, tile) for e in cuda_module.EPILOGUES} <= set(launches[n:]), tile
    launched = set(launches) - {"<capture>", "<replay>", "<hold>", "<profile>", "<end>"}
    assert launched == set(sigs), f"never launched: {sorted(set(sigs) - launched)}"
    # every module got the table as -D defines and the kernel folder for its #include
    defines = {f"-D{k}={v}" for k, v in cuda_module.KERNEL_CONSTANTS.items()}
    assert fake["options"] and all(defines | {f"-I{KERNEL_DIR}"} <= set(o) for o in fake["options"])
