"""Kernels picked at run time: every instruction-set level this CPU supports runs the float32 kernels
and the whole forward pass against the numpy oracle, keeps batch/prefill/decode bitwise equal within
the level, and LLAMA2PY_ISA forces a level (or fails with one clear line)."""

from __future__ import annotations

import os
import platform
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ISA_LEVELS, assert_one_line_error, cli, randn, rel_err, require_device

from llama2py.backends import numpy_backend as nbk
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import load_checkpoint
from llama2py.sampler import Sampler, softmax

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def test_levels_listed_and_best_chosen():
    require_device("cpu")
    import llama2py._cpu as ext

    levels = ext.isa_levels()
    assert levels[0] == "generic" and all(level in ISA_LEVELS for level in levels)
    assert levels == [level for level in ISA_LEVELS if level in levels]  # lowest first
    if "avx512vnni" in levels:  # the avxvnni kernels run there in AVX-512 VNNI's encoding
        assert "avxvnni" in levels
    ext.set_isa("")
    assert ext.isa() == levels[-1]  # the best level by default
    with pytest.raises(ValueError, match="unknown instruction set level"):
        ext.set_isa("sse9")


# The float32 kernels against numpy references at every level (the best one, the default, included).
@pytest.mark.parametrize(
    "d,n,rows",
    [
        (1, 1, 1),
        (7, 13, 1),
        (37, 70, 1),
        (37, 70, 3),
        (64, 96, 5),
        (300, 96, 7),
        (33, 260, 12),
        (9, 8, 3),
        (100, 17, 2),
        (100, 17, 70),
        (4300, 1001, 3),
    ],
)  # the last: > 16 MiB, streamed
def test_matmul_every_level(isa, d, n, rows):
    import llama2py._cpu as ext

    rng = np.random.default_rng(d * 1000 + n)
    w = randn(rng, d, n)
    x = randn(rng, rows, n)
    out = np.empty((rows, d), np.float32)
    ext.matmul(out, x, w)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert rel_err(out, ref) <= TOL, f"{isa}: worst relative error {rel_err(out, ref):.3g}"
    # GEMV (one row) gives bitwise the GEMM's row: one accumulation order for both
    for r in range(rows):
        one = np.empty(d, np.float32)
        ext.matmul(one, x[r], w)
        assert np.array_equal(one, out[r]), f"{isa}: GEMV row {r} differs from the GEMM's"


@pytest.mark.parametrize("rows,n", [(1, 18), (3, 40), (5, 97)])
def test_rmsnorm_every_level(isa, rows, n):
    import llama2py._cpu as ext

    rng = np.random.default_rng(n)
    x, w = randn(rng, rows, n), randn(rng, n)
    out = np.empty_like(x)
    ext.rmsnorm(out, x, w)
    assert rel_err(out, nbk.rmsnorm(x, w)) <= TOL, f"{isa}: worst relative error {rel_err(out, nbk.rmsnorm(x, w)):.3g}"


def test_softmax_every_level(isa):
    import llama2py._cpu as ext

    logits = randn(np.random.default_rng(1), 1001, scale=5)
    probs = np.empty_like(logits)
    ext.softmax(probs, logits)
    ref = np.exp(logits.astype(np.float64) - logits.max())
    assert rel_err(probs, ref / ref.sum()) <= 1e-5


def _exp_of(ext, d: float) -> np.float32:
    """The level's exponential of float32 d (exp_sum of [0, d]: d minus the maximum 0)."""
    e = np.empty((1, 2), np.float32)
    ext.exp_sum(e, np.array([[0.0, d]], np.float32))
    return e[0, 1]


def _power_of_two_input(ext, k: int):
    """A float32 d whose exponential at this level is exactly 2**-k (among the floats nearest -k ln 2),
    or None."""
    d = np.float32(-k * np.log(2.0))
    for _ in range(16):
        got = _exp_of(ext, d)
        if got == np.float32(2.0**-k):
            return d
        d = np.nextafter(d, np.float32(0 if got < 2.0**-k else -np.inf))
    return None


def _tie_row(ext):
    """A row whose sequential sum meets exact ties, or None where this level's exponential gives no
    exact power of two near the inputs tried: 2**m maxima (exponentials 1) and one value of about an
    ulp of their sum (rounded to it: the sum's last bit odd), then a run of values of exactly half
    its ulp: the first one rounds the sum up (to even), the others leave it. Returns the row and that
    sum."""
    for m in range(12, 17):
        d = _power_of_two_input(ext, 24 - m)  # half an ulp of a sum in [2**m, 2**(m + 1))
        if d is None:
            continue
        row = np.full(2**m + 101, -120.0, np.float32)
        row[: 2**m] = 0.0
        row[2**m] = np.float32(d + np.log(2.0))  # ~ one ulp
        row[2**m + 16 : 2**m + 32] = d  # a whole run of ties (16 or 8 wide: 2**m is a block start)
        return row, np.float32(2**m + 2.0 ** (m - 22))
    return None


def test_exp_sum_is_the_sequential_sum_every_level(isa):
    """Softmax's denominator (the exponentials' sum, before any division) is run's sequential float32
    sum bit for bit, for rows taken one to five at a time (four chains run together): peaked rows
    (runs of values too small to change the sum are skipped), flat rows, NaN deep inside a skippable
    run (it must reach the sum), and a run of exact half-ulp ties (which do change it: round to even)."""
    import llama2py._cpu as ext

    rng = np.random.default_rng(3)
    n = 5003
    nan_deep = randn(rng, n, scale=17.0)
    nan_deep[0] = 200.0  # the maximum first: every other exponential below 2**-100, skipped
    nan_deep[4000] = np.nan
    rows = [nan_deep, randn(rng, n, scale=17.0), randn(rng, n, scale=3.0), randn(rng, n, scale=40.0)]
    rows[3][-1] = rows[3].max() + 1  # the maximum last: the sum stays tiny until the end
    rows.append(randn(rng, n, scale=17.0))
    x = np.stack(rows)
    for k in range(1, len(rows) + 1):
        for temperature in (1.0, 0.7):
            e = np.empty((k, n), np.float32)
            sums = ext.exp_sum(e, x[:k], temperature)
            want = (x[:k] / np.float32(temperature)).astype(np.float32)
            want = np.exp((want - np.nanmax(want, axis=1, keepdims=True)).astype(np.float64))
            for r in range(k):
                seq = np.add.accumulate(e[r], dtype=np.float32)[-1]  # run's loop
                assert sums[r].tobytes() == seq.tobytes(), (
                    f"{isa}: k {k} t {temperature} row {r}: {sums[r]!r} vs {seq!r}"
                )
                ok = ~np.isnan(want[r])
                assert rel_err(e[r][ok], want[r][ok]) <= 1e-5
    tie = _tie_row(ext)
    if isa != "generic":  # the SIMD levels skip runs: their exponential must give the ties
        assert tie is not None, f"{isa}: no exact half-ulp input found"
    if tie is not None:
        for k in (1, 4):  # alone, and four rows' chains together
            e = np.empty((k, tie[0].size), np.float32)
            sums = ext.exp_sum(e, np.stack([tie[0]] * k))
            assert (sums == tie[1]).all(), f"{isa}: {sums} vs {tie[1]!r} (the first tie rounds up)"
            assert sums[0] == np.add.accumulate(e[0], dtype=np.float32)[-1]


def test_topp_candidates_exactly_at_the_cutoff_every_level(isa):
    """A draw divides only the exponentials that can be top-p candidates; probabilities equal to the
    cutoff are candidates (run: p >= cutoff) even where the quotient rounded up to it, so e < sum *
    cutoff. Logits [0, -d, -d] with top_p = 1 - 2 p (so the cutoff is p, the two small ones' exact
    probability) and p(0) <= top_p: the nucleus reaches the first small one, which run's loop (on
    this level's own exponentials and sum) draws now and then."""
    import llama2py._cpu as ext

    from llama2py.sampler import Rng, sample_topp

    f32 = np.float32
    d = f32(1.5)
    for _ in range(20000):
        d = np.nextafter(d, f32(10))
        x = np.array([[0.0, -d, -d]], f32)
        e = np.empty_like(x)
        total = ext.exp_sum(e, x)[0]
        probs = (e[0] / total).astype(f32)  # run's softmax
        top_p = f32(1) - f32(2) * probs[1]
        exact = f32(1) - top_p == f32(2) * probs[1] and f32((f32(1) - top_p) / f32(2)) == probs[1]
        if exact and f32(total * probs[1]) > e[0, 1] and probs[0] <= top_p:
            break
    else:
        raise AssertionError(f"{isa}: no logits found for the construction")
    rng, state = Rng(17), np.array([17], np.uint64)
    draws = [ext.sample(x[0], 1.0, float(top_p), state) for _ in range(60)]
    want = [sample_topp(probs, float(top_p), rng.coin()) for _ in range(60)]
    assert draws == want, f"{isa}: d {d!r} top_p {top_p!r}: {draws} vs run's {want}"
    assert 1 in want  # the test can tell the small candidates' absence


def _attention_reference(q, kc, vc, slots, positions, n_heads, n_kv_heads) -> np.ndarray:
    """Causal GQA attention in float64, straight from its definition: the values to compare with."""
    head_size = q.shape[1] // n_heads
    kv_mul = n_heads // n_kv_heads
    ref = np.empty_like(q)
    for r, (s, p) in enumerate(zip(slots, positions)):
        for h in range(n_heads):
            g = h // kv_mul
            K = kc[s, : p + 1, g * head_size : (g + 1) * head_size].astype(np.float64)
            V = vc[s, : p + 1, g * head_size : (g + 1) * head_size].astype(np.float64)
            sc = K @ q[r, h * head_size : (h + 1) * head_size] / np.sqrt(head_size)
            a = np.exp(sc - sc.max())
            ref[r, h * head_size : (h + 1) * head_size] = (a / a.sum()) @ V
    return ref


@pytest.mark.parametrize("n_heads,n_kv_heads,head_size", [(4, 2, 10), (6, 6, 8), (3, 1, 6), (4, 2, 8)])
def test_attention_every_level(isa, n_heads, n_kv_heads, head_size):
    import llama2py._cpu as ext

    rng = np.random.default_rng(n_heads * 10 + n_kv_heads)
    slots_n, seq_len, kv_dim = 3, 12, n_kv_heads * head_size
    kc, vc = randn(rng, slots_n, seq_len, kv_dim), randn(rng, slots_n, seq_len, kv_dim)
    slots = np.array([0, 2, 1, 2], np.int32)
    positions = np.array([0, 11, 4, 7], np.int32)
    q = randn(rng, len(slots), n_heads * head_size)
    out = np.empty_like(q)
    ext.attention(out, q, kc, vc, slots, positions, n_heads, n_kv_heads)
    ref = _attention_reference(q, kc, vc, slots, positions, n_heads, n_kv_heads)
    assert rel_err(out, ref) <= TOL, f"{isa}: worst relative error {rel_err(out, ref):.3g}"


@pytest.mark.parametrize("n_heads, n_kv_heads, head_size", [(8, 4, 64), (6, 3, 40)])  # 40: rows not in whole lines
def test_long_attention_is_blocked_without_changing_a_bit(isa, n_heads, n_kv_heads, head_size):
    """Past ~64 KiB of V rows per work item the values pass goes block by block (stories110M-sized
    rows: 64 positions a block); the blocks depend on how a call groups heads into items, which
    depends on its rows. A row alone and the same row in a batch are grouped differently, so equal
    bits show that blocking keeps every element's order; the float64 reference checks the values."""
    import llama2py._cpu as ext

    rng = np.random.default_rng(7)
    seq_len = 300
    kc = randn(rng, 3, seq_len, n_kv_heads * head_size)
    vc = randn(rng, 3, seq_len, n_kv_heads * head_size)
    slots = np.array([0, 1, 2, 0, 1, 2], np.int32)
    positions = np.array([299, 150, 63, 64, 200, 5], np.int32)
    q = randn(rng, len(slots), n_heads * head_size, scale=0.2)
    out = np.empty_like(q)
    ext.attention(out, q, kc, vc, slots, positions, n_heads, n_kv_heads)
    for r, p in enumerate(positions):
        alone = np.empty_like(q[r : r + 1])
        ext.attention(alone, q[r : r + 1], kc, vc, slots[r : r + 1], positions[r : r + 1], n_heads, n_kv_heads)
        assert np.array_equal(alone[0], out[r]), f"{isa}: row {r} (position {p}) alone differs from in the batch"
    ref = _attention_reference(q, kc, vc, slots, positions, n_heads, n_kv_heads)
    assert rel_err(out, ref) <= TOL, f"{isa}: worst relative error {rel_err(out, ref):.3g}"


@pytest.mark.parametrize("shape", ["gqa_unshared", "odd_tiny", "wide"])
def test_forward_every_level(isa, make_checkpoint, shape):
    from llama2py.backends.cpu import CpuBackend

    ck = load_checkpoint(make_checkpoint(shape))
    c = ck.config
    cb, nb = CpuBackend(c, ck.weights, 2), NumpyBackend(c, ck.weights, 2)
    assert cb.isa == isa and isa in cb.describe()
    tokens = np.random.default_rng(5).integers(0, c.vocab_size, (2, c.seq_len)).astype(np.int32)
    T = c.seq_len - 1
    got = cb.prefill(tokens[:, :T], 0, "all")
    want = nb.prefill(tokens[:, :T], 0, "all")
    assert rel_err(got, want) <= TOL, f"{shape} {isa}: worst relative error {rel_err(got, want):.3g}"
    single = CpuBackend(c, ck.weights, 1)
    for pos in range(T):
        assert np.array_equal(single.forward(tokens[:1, pos], pos)[0], got[0, pos]), f"{shape} {isa}: pos {pos}"


def _first_max(x: np.ndarray) -> int:
    """run's argmax loop: the first index whose value is greater than every earlier one."""
    best = 0
    for i in range(1, x.size):
        if x[i] > x[best]:
            best = i
    return best


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 33, 1001])
def test_sampling_row_kernels_every_level(isa, n):
    """argmax, softmax and the sampler (its top-p filter) against run's plain loops at every level,
    lengths around the vector widths: ties, NaN first or later, signed zeros, the maximum last."""
    import llama2py._cpu as ext

    rng = np.random.default_rng(n)
    cases = [randn(rng, n) for _ in range(3)]
    cases[1][-1] = cases[1].max() + 1  # the maximum in the scalar tail
    cases.append(np.full(n, -np.inf, np.float32))
    cases.append(-np.abs(randn(rng, n)) - 1)  # every value below 0
    cases.append(-np.abs(randn(rng, n)) - 1)
    cases[-1][n // 2] = -0.0
    cases[-1][-1] = 0.0  # a -0 before a +0: the first one is the argmax
    tied = np.round(rng.standard_normal(n), 0).astype(np.float32)
    tied[n // 3 :: 3] = tied.max()
    cases.append(tied)
    nan_late = randn(rng, n)
    nan_late[n // 2] = np.nan  # run's loop skips it
    cases.append(nan_late)
    nan_first = randn(rng, n)
    nan_first[0] = np.nan  # nothing is greater than NaN: index 0
    cases.append(nan_first)
    for k, x in enumerate(cases):
        assert ext.argmax(x) == _first_max(x), f"{isa}: case {k}"
    for k, x in enumerate(cases[:3] + [tied]):
        probs = np.empty_like(x)
        ext.softmax(probs, x)
        assert rel_err(probs, softmax(x)) <= 1e-5, f"{isa}: case {k}: worst {rel_err(probs, softmax(x)):.3g}"
    draws = [(1.0, 0.9), (0.7, 0.5), (1.3, 1.0)] if n > 1 else []  # a sampler needs two entries
    for temperature, top_p in draws:
        sampler = Sampler(temperature, top_p, seed=n)
        state = np.array([n], np.uint64)
        for i in range(40):
            logits = randn(rng, n, scale=1 + i % 4)
            got, want = ext.sample(logits, temperature, top_p, state), sampler.sample(logits)
            assert got == want, f"{isa}: t {temperature} p {top_p} draw {i}: {got} vs the spec's {want}"


def _run_with_isa(value: str):
    code = "import llama2py._cpu as e; print(e.isa())"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, LLAMA2PY_ISA=value, PYTHONPATH=str(ROOT)),
    )


def test_environment_forces_a_level():
    require_device("cpu")
    import llama2py._cpu as ext

    for level in ext.isa_levels():
        r = _run_with_isa(level)
        assert r.returncode == 0 and r.stdout.decode().strip() == level, r.stderr.decode()[-500:]
    r = _run_with_isa("avx1024")
    assert r.returncode != 0 and b"LLAMA2PY_ISA: unknown instruction set level 'avx1024'" in r.stderr
    missing = [level for level in ISA_LEVELS if level not in ext.isa_levels()]
    if missing:
        r = _run_with_isa(missing[0])
        assert r.returncode != 0 and b"not supported by this CPU" in r.stderr


def test_cli_bad_isa_is_one_line(stories260k):
    require_device("cpu")
    path, tok = stories260k
    r = cli(path, "-z", tok, "-n", "4", "--device", "cpu", env={"LLAMA2PY_ISA": "avx1024"}, timeout=60)
    assert_one_line_error(r, "LLAMA2PY_ISA: unknown instruction set level 'avx1024'", rc=1)
    r = cli(path, "-z", tok, "-n", "4", "--device", "cpu", env={"LLAMA2PY_ISA": "avx2\n"}, timeout=60)
    assert_one_line_error(r, "LLAMA2PY_ISA: unknown instruction set level 'avx2\\x0a'", rc=1)  # one line
    r = cli(path, "-z", tok, "-n", "4", "--device", "cpu", env={"LLAMA2PY_ISA": "\u00e9"}, timeout=60)
    assert_one_line_error(r, "LLAMA2PY_ISA: unknown instruction set level '\\xc3\\xa9'", rc=1)


# ---- the build on another CPU: an emulated one without AVX-512 ---------------------------------------
EMULATOR = shutil.which("qemu-x86_64") if platform.machine() in ("x86_64", "AMD64") else None
SPEC_CHECK = """
import numpy as np
import llama2py._cpu as ext
from llama2py.backends.cpu import CpuBackend
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import Config, random_weights

c = Config(dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=300, seq_len=16)
worst = {}
for kind, w in (("f32", random_weights(c, 3)), ("q8_0", random_weights(c, 3).quantized(32))):
    cpu, spec = CpuBackend(c, w, 1, 1), NumpyBackend(c, w, 1)
    for pos, tok in enumerate([1, 5, 7, 9]):
        a, b = (m.forward(np.array([tok], np.int32), pos) for m in (cpu, spec))
        worst[kind] = max(worst.get(kind, 0.0), float(np.abs(a - b).max() / np.abs(b).max()))
print(ext.isa(), ",".join(ext.isa_levels()), worst["f32"], worst["q8_0"])
"""  # (the level found at load)


@pytest.mark.skipif(EMULATOR is None, reason="qemu-x86_64 (user mode) is not installed: no CPU without AVX-512 to try")
def test_a_cpu_without_avx512_picks_avx2_and_matches_the_spec():
    """The extension built here, run on an emulated CPU with AVX2 and FMA but no AVX-512 or VNNI
    (QEMU's Haswell model): the level found at load is avx2 (whatever this machine has), and its
    float32 and int8 forward passes equal the numpy spec's."""
    require_device("cpu")
    env = {k: v for k, v in os.environ.items() if k != "LLAMA2PY_ISA"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])  # (the venv, without its python)
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    r = subprocess.run(
        [EMULATOR, "-cpu", "Haswell", python, "-c", SPEC_CHECK], capture_output=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    isa, levels, f32, q8 = r.stdout.decode().split()
    assert (isa, levels) == ("avx2", "generic,avx2"), r.stdout
    assert float(f32) <= TOL and float(q8) <= 1e-4, r.stdout  # (test_q8's tolerance for int8 forwards)


# ---- the build with clang and LLVM's libomp (README: "g++, or clang with libomp") ------------------
CLANG = shutil.which("clang++")


@pytest.mark.skipif(CLANG is None, reason="clang++ is not installed (.ci/run installs it where apt-get can)")
def test_a_clang_build_runs_every_level_and_matches_the_spec(tmp_path):
    """clang ignores `#pragma GCC target`, so the levels' kernels did not compile with it (and it
    rejected a CPU feature name GCC knows): built with clang and libomp, the extension finds the same
    levels as this build, and its float32 and int8 forward passes at each equal the numpy spec's."""
    require_device("cpu")
    import llama2py._cpu as ext

    env = dict(os.environ, CC=shutil.which("clang") or "clang", CXX=CLANG)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "obj")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    if build.returncode and "cannot build an OpenMP program" in build.stdout + build.stderr:  # (setup.py's probe)
        pytest.skip("clang++ has no OpenMP runtime here (Debian: apt install libomp-dev)")
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    package = tmp_path / "pkg" / "llama2py"
    shutil.copytree(ROOT / "llama2py", package, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    (built,) = (tmp_path / "lib" / "llama2py").glob("_cpu*")
    shutil.copy(built, package)
    check = (
        "import os\n"
        + SPEC_CHECK.replace(
            "print(ext.isa()",
            "print(os.path.dirname(ext.__file__), 'libomp' in open('/proc/self/maps').read(), ext.isa()",
        )
        + "for level in ext.isa_levels():\n"
        "    ext.set_isa(level)\n"
        "    for kind, w in (('f32', random_weights(c, 5)), ('q8_0', random_weights(c, 5).quantized(32))):\n"
        "        a = CpuBackend(c, w, 1, 2).forward(np.array([3], np.int32), 0)\n"
        "        b = NumpyBackend(c, w, 1).forward(np.array([3], np.int32), 0)\n"
        "        print(level, kind, float(np.abs(a - b).max() / np.abs(b).max()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLAMA2PY_ISA"}
    r = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
        env=dict(env, PYTHONPATH=str(package.parent)), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    where, libomp, isa, levels, f32, q8 = lines[0].split()
    assert (where, libomp) == (str(package), "True"), lines[0]
    assert (isa, levels) == (ext.isa_levels()[-1], ",".join(ext.isa_levels())), lines[0]
    assert float(f32) <= TOL and float(q8) <= 1e-4, lines[0]
    for line in lines[1:]:
        level, kind, err = line.split()
        assert float(err) <= (TOL if kind == "f32" else 1e-4), line
    assert len(lines) == 1 + 2 * len(ext.isa_levels()), r.stdout
