"""The cuda backend (CuPy + csrc/cuda): kernels against the numpy spec, end to end on stories260K.

Without a GPU only the compile check (nvcc, when it is on PATH) and the error paths run; every
other test skips saying why. scripts/gpu_check.sh runs the whole file on a GPU machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REFERENCE_260K, SHAPES, rel_err

from llama2py.backends.base import PROFILE_KEYS
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import Config, random_weights
from llama2py.errors import DeviceError

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
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


def cuda(config: Config, weights, max_batch: int = 1):
    from llama2py.backends.cuda import CudaBackend

    return CudaBackend(config, weights, max_batch)


# -- always: the sources compile, and the no-GPU paths are clean errors --------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("src", CU_FILES, ids=[p.name for p in CU_FILES])
def test_sources_compile_with_nvcc(src, arch, tmp_path):
    r = subprocess.run(
        ["nvcc", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", "-c", str(src), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_sources_exist():
    assert [p.name for p in CU_FILES] == ["forward.cu", "sample.cu"]


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

    monkeypatch.setitem(sys.modules, "cupy", None)
    c = SHAPES["odd_tiny"]
    notes: list[str] = []
    try:
        b = create_backend("auto", c, random_weights(c), notes=notes)
    except (ImportError, DeviceError) as e:  # the cpu extension may not be built here
        pytest.skip(f"cpu backend unavailable: {e}")
    assert b.name == "cpu" and notes and "cuda" in notes[0]


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
@pytest.mark.parametrize("tile", ["gemm_%s_32", "gemm_%s_64", "gemm_%s_128"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_gemm_tile_matches_numpy(shape, tile):
    """The host picks tiles by size; force each one so that all are checked on small shapes."""
    c = SHAPES[shape]
    w = random_weights(c, seed=14)
    B = 6
    ref, dev = NumpyBackend(c, w, B), cuda(c, w, B)
    dev._tiles = ((int(tile.rsplit("_", 1)[1]), tile),)
    toks = np.random.default_rng(15).integers(0, c.vocab_size, (B, c.seq_len)).astype(np.int32)
    T1 = c.seq_len - 1
    a, b = dev.prefill(toks[:, :T1], 0, "all"), ref.prefill(toks[:, :T1], 0, "all")
    _record(f"tile {tile % 'x'} prefill {shape}", rel_err(a, b))
    assert rel_err(a, b) < TOL
    a, b = dev.forward(toks[:, T1], T1), ref.forward(toks[:, T1], T1)
    _record(f"tile {tile % 'x'} forward {shape}", rel_err(a, b))
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
    prof = dev.profile(np.array([1, 2], np.int32), 3)
    assert set(prof) == set(PROFILE_KEYS)
    assert all(v >= 0 for v in prof.values()) and prof["matmul"] > 0 and prof["attention"] > 0
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
    """extern "C" kernel name -> parameter declarations, parsed from csrc/cuda (macros expanded)."""
    import re

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


def _fake_cupy(sigs: dict, launches: list):
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
            pass

        def get_function(self, name):
            assert name in sigs, name
            return Kernel(name)

    class Ctx:
        id, ptr = 0, 0

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


def test_every_launch_matches_its_kernel_signature(monkeypatch):
    """Without a GPU: run forward/prefill/step/profile through a fake CuPy whose kernels check each
    launch's argument count and types (pointer = array, int = np.int32, ...) against csrc/cuda, at
    batches on the GEMV path (<= GV_MAXB rows) and the GEMM path (more rows, prefill), with every GEMM tile
    forced in turn; every kernel in csrc/cuda must be launched (no orphans, none left unchecked)."""
    from llama2py.backends import cuda as cuda_mod

    sigs = _kernel_signatures()
    assert {"sample", "attention", "gemv_qkv", "gemm_qkv_32", "gemm_store_128", "spin"} <= set(sigs)
    launches: list = []
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(sigs, launches))
    monkeypatch.setattr(cuda_mod, "_KERNELS", {})
    for shape in ("gqa_unshared", "odd_tiny"):
        c = SHAPES[shape]
        for B in (1, 3, 7, 11):
            be = cuda_mod.CudaBackend(c, random_weights(c), B)
            assert be._small(B) == (B <= cuda_mod.GV_MAXB)
            be.set_seeds(list(range(B)))
            be.forward(np.ones(B, np.int32), 0)
            be.prefill(np.ones((B, c.seq_len - 1), np.int32), 0, "all")
            be.prefill(np.ones((B, 3), np.int32), 0, "last")
            n = len(launches)
            be.step(np.ones(B, np.int32), 1, 0.0, 0.9)
            step = launches[n:]
            assert step[0] == "<capture>" and step[-1] == "<replay>" and "sample" in step
            assert any(x.startswith("gemv_" if B <= cuda_mod.GV_MAXB else "gemm_") for x in step), step
            be.step(np.ones(B, np.int32), 2, 1.0, 0.9, forced=np.full(B, 3, np.int32), want_logprobs=True)
            assert set(be.profile(np.ones(B, np.int32), 2)) == set(PROFILE_KEYS)
            for t, name in cuda_mod.TILES:
                be._tiles = ((t, name),)
                n = len(launches)
                be.prefill(np.ones((B, cuda_mod.GV_MAXB + 1), np.int32), 0, "all")  # more rows than GEMV takes
                assert {name % e for e in cuda_mod.EPILOGUES} <= set(launches[n:]), name
    launched = set(launches) - {"<capture>", "<replay>"}
    assert launched == set(sigs), f"never launched: {sorted(set(sigs) - launched)}"
