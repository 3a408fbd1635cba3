"""Int8 (Q8_0) weights: the numpy spec (runq.c's arithmetic) against its definition, the cpu kernels
and whole cpu forward/prefill/step against the spec, loading (v2 files stay int8, weights="q8_0"
quantizes at load), bad v2 files, and greedy stories260K as v2 against llama2.c's runq.

Q8_0 arithmetic is exact integer dots plus a sequential float sum, so the cpu kernels must equal the
spec bit for bit given the same float input; whole forwards differ from numpy only through the
float32 parts (rmsnorm, attention) and are compared with a tolerance.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from conftest import SHAPES, assert_one_line_error, cli, randn, rel_err, require_device

from llama2py.backends import numpy_backend as nbk
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import (
    Config,
    QuantizedTensor,
    checkpoint_bytes,
    default_group_size,
    load_checkpoint,
    per_layer,
    quantize_tensor,
    random_weights,
    write_checkpoint,
)
from llama2py.errors import CheckpointError

TOL = 1e-4  # whole forwards: float32 differences may move an activation across a rounding boundary

# Q8_0 shapes beyond conftest's (whose group sizes, picked from dim, all straddle w2's rows):
Q8_SHAPES = {
    **SHAPES,
    # stories260K's shape: group 64 (from dim 64) does not divide hidden_dim 172
    "s260k_like": Config(64, 172, 2, 8, 4, 96, 12, True),
    # every row length a multiple of the group (32): the SIMD path of every level
    "aligned": Config(64, 128, 2, 4, 2, 80, 12, False),
}


# ---- the spec against its definition ------------------------------------------------------------------
def test_quantize_activations_definition():
    # group max 127 -> scale 1: halves round away from zero (C's round), not to even
    x = np.array([[127.0, 2.5, -3.5, 0.49999997, -0.5, 0, 1, 2, 0, 0, 0, 0]], np.float32)
    q, s = nbk.quantize_activations(x, 8)
    assert s.tolist() == [[1.0, 0.0]]  # the second group (zeros) gets scale 0
    assert q.tolist() == [[127, 3, -4, 0, -1, 0, 1, 2, 0, 0, 0, 0]]


def test_matmul_q8_spec_is_close_to_float():
    """The spec (also its straddling path) approximates x @ dequantized(w).T."""
    rng = np.random.default_rng(0)
    for d, n, gs in [(12, 64, 32), (64, 172, 64), (8, 37, 2)]:
        w = quantize_tensor(randn(rng, d, n), gs, layered=False)
        x = randn(rng, 3, n)
        ref = x.astype(np.float64) @ w.dequantize().T.astype(np.float64)
        assert rel_err(nbk.matmul_q8(x, w), ref) < 0.02


# ---- cpu kernels against the spec, bit for bit, at every ISA level -----------------------------------


@pytest.mark.parametrize(
    "d,n,gs,rows",
    [
        (1, 32, 32, 1),
        (9, 64, 32, 3),  # aligned, SIMD groups
        (40, 288, 32, 2),  # stories15M's dim and group
        (33, 768, 64, 5),  # stories110M's group
        (17, 48, 16, 4),
        (64, 172, 64, 3),  # groups straddle rows (stories260K's w2)
        (172, 64, 64, 2),
        (14, 37, 2, 3),
        (4, 70, 8, 1),
        (300, 96, 48, 7),  # a group size that is no power of two
        (32, 40, 8, 13),  # packed blocks (VNNI): activation rows 8 + 4 + 1
        (50, 12, 4, 11),  # packed, the smallest group, rows 8 + 2 + 1, two tail rows
        (4099, 64, 32, 11),  # work items of several packed blocks (rows outermost), 3 tail rows
    ],
)
def test_cpu_q8_matmul_equals_spec(isa, d, n, gs, rows):
    import llama2py._cpu as ext

    rng = np.random.default_rng(d * 100 + n)
    w = quantize_tensor(randn(rng, d, n), gs, layered=False)
    x = randn(rng, rows, n)
    x[0, : min(gs, n)] = 0  # a group of zeros (scale 0)
    (values, scales) = w.parts[0]
    out = np.empty((rows, d), np.float32)
    ext.matmul_q8(out, x, values, scales, gs)
    want = nbk.matmul_q8(x, w)
    worst = float(np.abs(out - want).max())
    assert np.array_equal(out, want), f"{isa}: worst difference {worst:.3g}"
    for r in range(rows):  # a GEMV row equals the GEMM's
        one = np.empty((1, d), np.float32)
        ext.matmul_q8(one, x[r : r + 1], values, scales, gs)
        assert np.array_equal(one[0], out[r]), f"{isa}: row {r}"


def test_cpu_q8_matmul_extreme_values(isa):
    """-128 and 127 weights and activations at full scale: every level's integer tricks stay exact
    (VNNI's packed kernel stores w + 128 as unsigned; AVX2's takes |w|)."""
    import llama2py._cpu as ext

    rng = np.random.default_rng(7)
    d, n, gs = 35, 64, 32
    w = quantize_tensor(randn(rng, d, n), gs, layered=False)
    values, scales = w.parts[0]
    values = np.array(values)  # writable copy
    values[::2] = -128
    values[1::2] = 127
    w = QuantizedTensor(((values, scales),), w.shape, gs)
    x = np.where(rng.random((4, n)) < 0.5, -1.0, 1.0).astype(np.float32)  # quantizes to -127 / 127
    out = np.empty((4, d), np.float32)
    ext.matmul_q8(out, x, values, scales, gs)
    want = nbk.matmul_q8(x, w)
    assert np.array_equal(out, want), f"{isa}: worst difference {float(np.abs(out - want).max()):.3g}"


@pytest.mark.parametrize("n,gs", [(1, 1), (37, 8), (64, 32), (172, 64), (300, 48), (96, 16), (40, 24)])
def test_cpu_quantize_equals_spec(isa, n, gs):
    """At every level: whole groups go through vectors of 8 or 16 (the others, and short last groups,
    through the plain loops), with the same bits as the spec."""
    import llama2py._cpu as ext

    rng = np.random.default_rng(n)
    x = randn(rng, 3, n)
    x[1, :gs] = 0
    q = np.empty((3, n), np.int8)
    s = np.empty((3, -(-n // gs)), np.float32)
    ext.quantize(q, s, x, gs)
    want_q, want_s = nbk.quantize_activations(x, gs)
    assert np.array_equal(q, want_q) and np.array_equal(s, want_s)
    # halves away from zero, values just below a half, zeros: as C's round()
    edge = np.array([[127.0, 2.5, -3.5, 0.49999997, -0.5, -0.49999997, 126.5, -126.5]], np.float32)
    q, s = np.empty((1, 8), np.int8), np.empty((1, 1), np.float32)
    ext.quantize(q, s, edge, 8)
    assert q.tolist() == [[127, 3, -4, 0, -1, 0, 127, -127]] and s.tolist() == [[1.0]]
    # the same values in a group of 32 (vectors at the SIMD levels), signs flipped in the second half
    edge32 = np.concatenate([np.tile(edge[0], 2), -np.tile(edge[0], 2)])[None]
    q, s = np.empty((1, 32), np.int8), np.empty((1, 1), np.float32)
    ext.quantize(q, s, edge32, 32)
    want = [127, 3, -4, 0, -1, 0, 127, -127]
    assert q[0].tolist() == want * 2 + [-v for v in want] * 2 and s.tolist() == [[1.0]]
    # non-finite values in whole groups (vectors) and in a short last group (the loop): every level
    # as the spec (a NaN makes its group's scale NaN, an inf its scale inf; their q all 0; NaN
    # payloads may differ: the kernels write the default NaN)
    bad = randn(rng, 3, 40)
    bad[0, 3], bad[0, 37], bad[1, 20], bad[2, 39] = np.nan, np.nan, np.inf, -np.inf
    q, s = np.empty((3, 40), np.int8), np.empty((3, 3), np.float32)
    ext.quantize(q, s, bad, 16)
    want_q, want_s = nbk.quantize_activations(bad, 16)
    assert np.array_equal(q, want_q) and np.array_equal(s, want_s, equal_nan=True)
    assert np.isnan(s[0, [0, 2]]).all() and np.isinf(s[1, 1]) and np.isinf(s[2, 2])
    assert not q[0, :16].any() and not q[0, 32:].any() and not q[1, 16:32].any() and not q[2, 32:].any()
    assert np.isfinite(s[0, 1]) and np.isfinite(s[1, [0, 2]]).all() and np.isfinite(s[2, :2]).all()


# ---- whole cpu backend on int8 weights against the numpy spec ----------------------------------------
def _v2_backends(make_checkpoint, shape, max_batch=3, threads=None):
    from llama2py.backends.cpu import CpuBackend

    config = Q8_SHAPES[shape]
    ck = load_checkpoint(make_checkpoint(config, 2, group_size=default_group_size(config.dim)))
    assert ck.weight_type == "q8_0" and isinstance(ck.weights.wq, QuantizedTensor)
    nb = NumpyBackend(ck.config, ck.weights, max_batch)
    cb = CpuBackend(ck.config, ck.weights, max_batch, threads)
    assert cb.weight_type == "q8_0" and "int8" in cb.describe()
    return ck, nb, cb


@pytest.mark.parametrize("shape", list(Q8_SHAPES))
def test_cpu_v2_forward_prefill_step_match_spec(isa, make_checkpoint, shape):
    from llama2py.backends.cpu import CpuBackend

    ck, nb, cb = _v2_backends(make_checkpoint, shape, max_batch=5)
    c = ck.config
    B, T = 5, min(c.seq_len - 2, 8)  # 5 rows: a 4-row int8 tile and a leftover row
    tokens = np.random.default_rng(11).integers(0, c.vocab_size, (B, c.seq_len)).astype(np.int32)
    got = cb.prefill(tokens[:, :T], 0, "all")
    want = nb.prefill(tokens[:, :T], 0, "all")
    assert rel_err(got, want) <= TOL, f"{shape} {isa}: prefill worst relative error {rel_err(got, want):.3g}"
    nxt = cb.forward(tokens[:, T], T)
    assert rel_err(nxt, nb.forward(tokens[:, T], T)) <= TOL
    # bitwise within a level: prefill rows == single decode steps == rows of a decode batch
    single = CpuBackend(c, ck.weights, 1)
    for b in range(B):
        for pos in range(T):
            row = single.forward(tokens[b : b + 1, pos], pos)[0]
            assert np.array_equal(row, got[b, pos]), f"{shape} {isa}: seq {b} pos {pos} differs from one step"
    batch = CpuBackend(c, ck.weights, B)
    for pos in range(T):
        assert np.array_equal(batch.forward(tokens[:, pos], pos), got[:, pos]), f"{shape}: batch at pos {pos}"
    # sampling on int8 weights: same ids as the spec
    nb2, cb2 = NumpyBackend(c, ck.weights, 2), CpuBackend(c, ck.weights, 2)
    nb2.set_seeds([3, 4])
    cb2.set_seeds([3, 4])
    tn = tc = tokens[:2, 0]
    for pos in range(T):
        tn, _ = nb2.step(tn, pos, 0.8, 0.9)
        tc, _ = cb2.step(tc, pos, 0.8, 0.9)
        assert tc.tolist() == tn.tolist(), f"{shape} {isa}: pos {pos}"


PACKED_LEVELS = ("avxvnni", "avx512vnni")  # the levels with packed int8 kernels


def _packed_args(c, gs: int) -> tuple:
    """ext.packed_q8_bytes's arguments for config c and group size gs."""
    return (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, gs)


def test_cpu_v2_packed_copy_is_counted(isa, make_checkpoint):
    """At a level with packed kernels (VNNI) a v2 model copies its products' int8 values once into
    16-row blocks: the memory check and memory_bytes count them; other levels make no copy."""
    import llama2py._cpu as ext

    ck, _, cb = _v2_backends(make_checkpoint, "s260k_like")
    c, gs = ck.config, ck.weights.group_size
    kv = c.kv_dim
    shapes = [(c.dim, c.dim), (kv, c.dim), (kv, c.dim), (c.dim, c.dim)] + [(c.hidden_dim, c.dim)] * 2
    shapes = shapes * c.n_layers + [(c.dim, c.hidden_dim)] * c.n_layers + [(c.vocab_size, c.dim)]
    packed_groups = (4, 8, 16, 32, 64)  # the group sizes the packed kernels are built for
    want = sum(d // 16 * 16 * (n + 4 * (n // gs)) for d, n in shapes if n % gs == 0 and gs in packed_groups and d >= 16)
    packs = isa in PACKED_LEVELS
    args = _packed_args(c, gs)
    assert ext.packed_q8_bytes(*args) == (want if packs else 0) and want > 0
    assert ext.packed_q8_bytes(96, 96, 1, 2, 2, 64, 48) == 0  # group 48: no packed kernel, no copy
    parts = cb.host_bytes(c, 3, None)
    assert parts.get("packed int8 weights", 0) == (want if packs else 0), parts
    assert cb.memory_bytes() >= ck.weights.nbytes(c.shared_classifier) + (want if packs else 0)


def test_cpu_v2_threads_do_not_change_results(make_checkpoint):
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend

    config = Q8_SHAPES["s260k_like"]
    ck = load_checkpoint(make_checkpoint(config, 2, group_size=64))
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, (2, 10)).astype(np.int32)
    outs = [CpuBackend(config, ck.weights, 2, threads=t).prefill(tokens, 0, "all") for t in (1, 2, 3)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_v2_weights_stay_int8_and_borrowed(make_checkpoint):
    """A v2 file is used as int8 straight from the memory map: the C++ model borrows the file's
    values and scales (at a VNNI level it also makes the packed copy of the products counted above;
    the embedding rows and any tail of rows past the last 16-row block are read from the file)."""
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend

    config = Q8_SHAPES["aligned"]
    ck = load_checkpoint(make_checkpoint(config, 2, group_size=32))
    w = ck.weights
    cb = CpuBackend(config, w, 1)
    for name in ("wq", "w2", "token_embedding", "wcls"):
        t = getattr(w, name)
        values, scales = t.parts[-1]
        assert values.dtype == np.int8 and isinstance(values.base, (np.memmap, np.ndarray))
        assert np.shares_memory(values, ck._mmap), name  # a view into the file, never a copy
        part = len(t.parts) - 1
        addr = cb._model.weight_address(name, part, True)
        assert addr == values.__array_interface__["data"][0], f"{name}: the model copied the values"
        if scales.flags.aligned:
            assert cb._model.weight_address(name, part, False) == scales.__array_interface__["data"][0]
    assert cb.memory_bytes() < config.weight_bytes("f32") // 2 + config.kv_cache_bytes(1) * 4 + (8 << 20)


def _mapped_kib(a: np.ndarray) -> int:
    """KiB of the mapping that holds a's first byte resident in this process (/proc/self/smaps)."""
    addr, inside = a.__array_interface__["data"][0], False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= addr < end
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the array")


LINUX_ONLY = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
RELEASE_SHAPE = Config(256, 512, 2, 4, 2, 512, 8, True)  # each matrix many pages long


@LINUX_ONLY
def test_load_time_quantization_lets_the_float_pages_go(make_checkpoint):
    """Quantizing a mapped float file at load time drops each tensor's file pages from the process
    once it is quantized (they counted beside the int8 copy); the values equal those of quantizing
    an in-memory copy, and the float views still read the file."""
    ck = load_checkpoint(make_checkpoint(RELEASE_SHAPE, 0))
    copy = {n: np.array(a) for n, a in ck.weights.tensors().items()}  # touches every page of the file
    before = _mapped_kib(ck.weights.wq)
    assert before * 1024 >= 0.9 * ck.file_bytes
    q = ck.weights.quantized(32)
    after = _mapped_kib(ck.weights.wq)
    assert after * 1024 < 0.05 * ck.file_bytes, (before, after)
    for name, t in q.tensors().items():
        if isinstance(t, QuantizedTensor):
            want = quantize_tensor(copy[name], 32, layered=per_layer(name))
            for (qa, sa), (qb, sb) in zip(t.parts, want.parts):
                assert np.array_equal(qa, qb) and np.array_equal(sa, sb), name
        assert np.array_equal(getattr(ck.weights, name), copy[name]), name  # read again from the file


def test_release_pages_refused_is_only_a_saving_lost(make_checkpoint, monkeypatch):
    """madvise fails on locked memory (mlockall): loading must not (it raised EINVAL)."""
    import mmap

    if not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("no MADV_DONTNEED on this platform: nothing is released")
    ck = load_checkpoint(make_checkpoint(RELEASE_SHAPE, 0))
    monkeypatch.setattr(mmap, "MADV_DONTNEED", 0x7FFF)  # advice the kernel refuses (EINVAL), as when locked
    with pytest.raises(OSError):
        ck._mmap._mmap.madvise(mmap.MADV_DONTNEED, 0, mmap.PAGESIZE)
    assert ck.weights.quantized(32).weight_type == "q8_0"


@LINUX_ONLY
@pytest.mark.parametrize("isa", PACKED_LEVELS, indirect=True)
def test_cpu_v2_file_pages_go_once_packed(isa, make_checkpoint):
    """At a packed level the products read the packed copy: the file's int8 pages leave the process
    (the Model reads the embedding rows and any tail rows from the file again where it needs them),
    and the results are those of a model made before any page was dropped."""
    from llama2py.backends.cpu import CpuBackend

    ck = load_checkpoint(make_checkpoint(RELEASE_SHAPE, 2, group_size=32))
    values = ck.weights.wq.parts[0][0]
    tokens = np.random.default_rng(5).integers(0, RELEASE_SHAPE.vocab_size, (1, 6)).astype(np.int32)
    want = NumpyBackend(ck.config, ck.weights, 1).prefill(tokens, 0, "all")
    assert _mapped_kib(values) * 1024 >= 0.9 * ck.file_bytes  # the spec read every page
    cb = CpuBackend(ck.config, ck.weights, 1)
    assert _mapped_kib(values) * 1024 < 0.05 * ck.file_bytes
    got = cb.prefill(tokens, 0, "all")
    assert rel_err(got, want) <= TOL, f"worst relative error {rel_err(got, want):.3g}"


# ---- loading: weights="q8_0" / "f32" --------------------------------------------------------------------
@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_load_time_quantization_equals_a_v2_file(tmp_path, stories260k, device):
    """weights="q8_0" on a float file computes exactly what the v2 file of the same weights does."""
    require_device(device)
    from llama2py.model import Llama

    path, tok = stories260k
    ck = load_checkpoint(path)
    gs = default_group_size(ck.config.dim)
    v2_path = tmp_path / "s260k_v2.bin"
    write_checkpoint(v2_path, ck.config, ck.weights, 2, gs)
    a = Llama.load(path, tok, device=device, weights="q8_0")
    b = Llama.load(v2_path, tok, device=device)
    f = Llama.load(v2_path, tok, device=device, weights="f32")
    assert a.backend.weight_type == b.backend.weight_type == "q8_0" and f.backend.weight_type == "f32"
    assert a.checkpoint.weight_type == "q8_0" and f.checkpoint.weight_type == "f32"
    ids = [1, 403, 407, 261, 378]
    assert np.array_equal(a.logits(ids), b.logits(ids))
    assert rel_err(f.logits(ids), b.logits(ids)) < 0.05
    with pytest.raises(ValueError, match="weights"):
        Llama.load(path, tok, device=device, weights="int4")


def test_cli_weights_flag(stories260k):
    require_device("cpu")
    path, tok = stories260k
    cmd = [path, "-z", tok, "-t", "0", "-n", "40", "--device", "cpu"]
    q8 = cli(*cmd, "--weights", "q8_0", timeout=120)
    assert q8.returncode == 0 and q8.stdout.startswith(b"Once upon a time"), q8.stderr.decode()[-500:]
    bad = cli(*cmd, "--weights", "q4", timeout=120)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr


# ---- bad v2 files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size,fragment", [(0, "group size 0"), (-32, "group size -32"), (7, "divide dim")])
def test_bad_v2_group_size_refused(make_checkpoint, group_size, fragment):
    path = make_checkpoint("mha_shared", 2, group_size=16)
    data = bytearray(path.read_bytes())
    data[37:41] = np.int32(group_size).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=fragment) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_v2_group_size_inconsistent_with_file_size(make_checkpoint):
    """A header whose group size does not fit the file's size: the message names the group size
    the size fits (the header is what is damaged); a file that fits none is truncated or padded."""
    path = make_checkpoint("mha_shared", 2, group_size=16)
    data = bytearray(path.read_bytes())
    data[37:41] = np.int32(8).tobytes()  # divides dim 48, but the scales would take more bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="group size 8 does not match") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    # the size group 8 implies (more scales) against the file's, which holds group 16's
    want = checkpoint_bytes(SHAPES["mha_shared"], 2, 8)
    assert want > len(data) == checkpoint_bytes(SHAPES["mha_shared"], 2, 16)
    assert f"the file's {len(data):,} bytes" in str(e.value) and f"it needs {want:,})" in str(e.value)
    assert str(e.value).endswith("the file's size fits group size 16: its header is damaged")
    data[37:41] = np.int32(0).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="group size 0 must be positive.*fits group size 16"):
        load_checkpoint(path)
    data[37:41] = np.int32(16).tobytes()
    path.write_bytes(bytes(data[:-4]))  # truncated: no group size gives this size
    with pytest.raises(CheckpointError, match=f"truncated: .* must be exactly {len(data):,} bytes"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first scale", "last scale", "norm"])
def test_v2_non_finite_scales_and_norms_refused(make_checkpoint, value, where):
    """A damaged scale or norm is refused when a v2 file is opened, naming where it is, rather than
    left to the per-step finiteness check (which would only say that some logits were not finite)."""
    path = make_checkpoint("gqa_unshared", 2, group_size=8)
    c = SHAPES["gqa_unshared"]
    data = bytearray(path.read_bytes())
    # the token embedding's scales follow its values, after the header and the three norms
    norms = 4 * (2 * c.n_layers * c.dim + c.dim)
    at = {
        "first scale": 256 + norms + c.vocab_size * c.dim,
        "last scale": len(data) - 4,  # the unshared classifier's
        "norm": 256 + 4 * 5,
    }[where]
    data[at : at + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))
    name = {"first scale": "token_embedding scales", "last scale": "wcls scales", "norm": "rms_att values"}[where]
    with pytest.raises(CheckpointError, match=f"{name} hold {value} at index .*damaged") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_v2_shared_classifier_byte_as_runq_reads_it(make_checkpoint):
    """runq treats any nonzero shared-classifier byte as shared."""
    path = make_checkpoint("mha_shared", 2, group_size=16)
    data = bytearray(path.read_bytes())
    assert data[36] == 1
    data[36] = 2
    path.write_bytes(bytes(data))
    ck = load_checkpoint(path)
    assert ck.config.shared_classifier and ck.weights.wcls is ck.weights.token_embedding


def test_cli_bad_v2_file_one_line_error(make_checkpoint, stories260k):
    path = make_checkpoint("mha_shared", 2, group_size=16)
    data = bytearray(path.read_bytes())
    data[37:41] = np.int32(0).tobytes()
    path.write_bytes(bytes(data))
    assert_one_line_error(cli(path, "-z", stories260k[1], "-n", "4", timeout=120), "group size", rc=1)


# ---- the same story as runq ----------------------------------------------------------------------------------
# runq (llama2.c, gcc -O3) on stories260K written as v2 with group size 4 (every row length divides
# by 4, so runq is correct there): `runq s260K_q4.bin -z tok512.bin -t 0 -n 200`.
RUNQ_260K_GS4 = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
    "saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to "
    "the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't "
    "find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to "
    "do.\"\nLily didn't want to help, but she did\n"
)


@pytest.fixture
def stories260k_v2(stories260k, tmp_path):
    ck = load_checkpoint(stories260k[0])
    path = tmp_path / "s260K_q4.bin"
    write_checkpoint(path, ck.config, ck.weights, 2, 4)
    return path, stories260k[1]


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_stories260k_v2_greedy_equals_runq(stories260k_v2, device):
    require_device(device)
    path, tok = stories260k_v2
    cmd = [str(path), "-z", str(tok), "-t", "0", "-n", "200"]
    got = cli(*cmd, "--device", device, timeout=600)
    assert got.returncode == 0, got.stderr.decode()[-1000:]
    assert got.stdout.decode() == RUNQ_260K_GS4
    runq = os.environ.get("LLAMA2PY_RUNQ_BINARY")
    if runq:  # live, when a developer points at llama2.c's runq
        want = subprocess.run([runq, *cmd], capture_output=True, timeout=120)
        assert want.returncode == 0 and got.stdout == want.stdout


def test_stories260k_v2_straddling_groups_match_spec(stories260k, tmp_path):
    """Group 64 (what llama2.c's export picks for dim 64) straddles w2's rows of 172: runq is wrong
    there; the cpu backend follows the spec's correct path."""
    require_device("cpu")
    from llama2py.backends.cpu import CpuBackend

    ck = load_checkpoint(stories260k[0])
    path = tmp_path / "s260K_q64.bin"
    write_checkpoint(path, ck.config, ck.weights, 2, default_group_size(ck.config.dim))
    v2 = load_checkpoint(path)
    assert v2.group_size == 64 and ck.config.hidden_dim % 64
    ids = np.array([[1, 403, 407, 261, 378, 80, 30, 45]], np.int32)
    got = CpuBackend(v2.config, v2.weights, 1).prefill(ids, 0, "all")
    want = NumpyBackend(v2.config, v2.weights, 1).prefill(ids, 0, "all")
    assert rel_err(got, want) <= TOL, f"worst relative error {rel_err(got, want):.3g}"
    fp32 = NumpyBackend(ck.config, ck.weights, 1).prefill(ids, 0, "all")
    assert rel_err(got, fp32) < 0.05  # and it is a good approximation of the float model


def test_random_weights_quantized_roundtrip():
    c = Q8_SHAPES["s260k_like"]
    w = random_weights(c, 1)
    q = w.quantized(64)
    assert q.weight_type == "q8_0" and q.wcls is q.token_embedding and q.group_size == 64
    back = q.dequantized()
    assert rel_err(back.w2, w.w2) < 0.01 and back.wcls is back.token_embedding
    assert q.nbytes(True) == c.weight_bytes("q8_0", 64)


def test_info_names_the_packed_copy(make_checkpoint, monkeypatch):
    """`llama2py info` on a v2 file says whether (and how big) the cpu backend's packed copy is."""
    require_device("cpu")
    import llama2py._cpu as ext

    config = Q8_SHAPES["aligned"]
    path = make_checkpoint(config, 2, group_size=32)
    args = _packed_args(config, 32)
    for level in ext.isa_levels():
        monkeypatch.setenv("LLAMA2PY_ISA", level)
        r = cli("info", path)
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        ext.set_isa(level)
        packed = ext.packed_q8_bytes(*args)
        ext.set_isa("")
        assert (packed > 0) == (level in PACKED_LEVELS)
        assert (f"+{packed:,} bytes" in out) == (packed > 0), f"{level}: {out}"


@pytest.mark.parametrize("isa", PACKED_LEVELS, indirect=True)
def test_cpu_memory_refusal_names_the_v2_file_for_load_time_int8(isa, make_checkpoint, monkeypatch):
    """Quantized at load time, the int8 values stay in memory beside the packed copy; a v2 file's
    pages do not: a refusal for memory says so only in the first case."""
    from llama2py.backends import base
    from llama2py.backends.cpu import CpuBackend
    from llama2py.errors import ResourceError

    monkeypatch.setattr(base, "available_memory", lambda: 1)
    for version, want in ((0, True), (2, False)):
        ck = load_checkpoint(make_checkpoint(RELEASE_SHAPE, version, **({"group_size": 32} if version else {})))
        weights = ck.weights if version else ck.weights.quantized(32)
        with pytest.raises(ResourceError) as e:
            CpuBackend(ck.config, weights, 1)
        assert ("llama2py quantize IN.bin OUT.bin" in str(e.value)) == want, (version, str(e.value))
        assert "packed int8 weights" in str(e.value), str(e.value)
