"""Shared fixtures and helpers: the real models (through $LLAMA2PY_MODELS), run's golden outputs
(through $LLAMA2PY_GOLDEN), random checkpoints in odd shapes, the one tokenizer-file writer, the one
way to run the CLI, and stories260K's greedy reference story (docs/FORMAT.md)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llama2py.checkpoint import Config, random_weights, write_checkpoint

MODELS_ENV = "LLAMA2PY_MODELS"
GOLDEN_ENV = "LLAMA2PY_GOLDEN"
ROOT = Path(__file__).resolve().parents[1]

# The README's command gives a relative folder (../shared/models); tests that run the CLI in another
# working directory must still find it, so make both folders absolute once, for every child process.
for _name in (MODELS_ENV, GOLDEN_ENV):
    if os.environ.get(_name):
        os.environ[_name] = os.path.abspath(os.environ[_name])


def _reference_story() -> str:
    """stories260K.bin + tok512.bin, temperature 0, 200 positions, no prompt: run's stdout without
    its final newline, read from its one home, docs/FORMAT.md ("Reference output", the first fenced
    block), so the tests hold the document to the truth too."""
    doc = (ROOT / "docs" / "FORMAT.md").read_text(encoding="utf-8")
    section = doc.split("\n## Reference output\n", 1)[1]
    return section.split("```\n", 2)[1].rstrip("\n")


REFERENCE_260K = _reference_story()
assert REFERENCE_260K.startswith("Once upon a time, there was a little girl named Lily.") and REFERENCE_260K.endswith(
    "so she"
), "docs/FORMAT.md's reference output block moved or changed shape"

# Shapes the tests sweep: GQA, unshared classifiers, sizes that are not multiples of 8 or 16,
# short contexts. Each must stay small: the numpy oracle runs them too.
SHAPES = {
    "gqa_unshared": Config(
        dim=40, hidden_dim=70, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=16, shared_classifier=False
    ),
    "mha_shared": Config(
        dim=48, hidden_dim=100, n_layers=3, n_heads=6, n_kv_heads=6, vocab_size=64, seq_len=32, shared_classifier=True
    ),
    "odd_tiny": Config(
        dim=18, hidden_dim=37, n_layers=1, n_heads=3, n_kv_heads=1, vocab_size=53, seq_len=9, shared_classifier=False
    ),
    "wide": Config(
        dim=96, hidden_dim=260, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=300, seq_len=40, shared_classifier=True
    ),
}


def models_dir() -> Path | None:
    d = os.environ.get(MODELS_ENV)
    return Path(d) if d else None


def model_file(name: str) -> Path:
    """Path of a real model file in $LLAMA2PY_MODELS, or skip the test saying why."""
    d = models_dir()
    if d is None:
        pytest.skip(f"${MODELS_ENV} is not set (point it at a folder with {name}; .ci/run sets ../shared/models)")
    p = d / name
    if not p.exists():
        pytest.skip(f"{name} not found in ${MODELS_ENV}={d}")
    return p


def find_golden() -> tuple[Path | None, str]:
    """(the folder of run's exact outputs, cases.json + *.out, or None; why not): $LLAMA2PY_GOLDEN,
    else $LLAMA2PY_MODELS/../golden."""
    d = os.environ.get(GOLDEN_ENV)
    if not d:
        models = models_dir()
        if models is None:
            return None, f"neither ${GOLDEN_ENV} nor ${MODELS_ENV} is set (.ci/run sets ../shared/golden)"
        d = str(models / ".." / "golden")
    p = Path(d).resolve()
    if not (p / "cases.json").is_file():
        return None, f"no cases.json in the golden folder {p} (set ${GOLDEN_ENV})"
    return p, ""


def golden_dir() -> Path:
    """The golden folder, or skip the test saying why it is absent."""
    folder, why = find_golden()
    if folder is None:
        pytest.skip(why)
    return folder


def cli(
    *args, stdin: bytes | None = None, cwd=None, env=None, timeout: float = 300, text: bool = False
) -> subprocess.CompletedProcess:
    """`python -m llama2py ARGS` in a fresh process with this checkout importable; stdout and
    stderr captured, as bytes (as str with text=True). Arguments may be paths or numbers; a bytes
    argument goes through as raw argv bytes."""
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run(
        [sys.executable, "-m", "llama2py", *argv],
        capture_output=True,
        input=stdin.decode() if text and stdin is not None else stdin,
        text=text,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        timeout=timeout,
    )


def load_case(name: str) -> tuple[dict, bytes]:
    """One golden case (cases.json entry) and run's exact stdout for it; skips without the folder."""
    folder = golden_dir()
    cases = {c["name"]: c for c in json.loads((folder / "cases.json").read_text("utf-8"))["cases"]}
    case = cases[name]
    want = (folder / case["stdout"]).read_bytes()
    assert len(want) == case["bytes"], f"{case['stdout']} has {len(want)} bytes, cases.json says {case['bytes']}"
    return case, want


def first_difference(got: bytes, want: bytes) -> str:
    """Where two outputs part: the byte offset, both lengths, and 40 bytes of context of each."""
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    start = max(0, n - 40)
    return (
        f"first difference at byte {n} (got {len(got)} bytes, want {len(want)}):\n"
        f"  got:  {got[start : n + 40]!r}\n  want: {want[start : n + 40]!r}"
    )


def write_tokenizer(path: Path, pieces: list[bytes], scores: list[float] | None = None, max_len=None) -> Path:
    """Write a llama2.c tokenizer file (docs/FORMAT.md, "Tokenizer file"): int32 max_token_length,
    then per piece float score, int32 length, the bytes. Scores default to 0."""
    scores = [0.0] * len(pieces) if scores is None else scores
    assert len(scores) == len(pieces)
    data = bytearray(struct.pack("<i", max(len(p) for p in pieces) if max_len is None else max_len))
    for piece, score in zip(pieces, scores):
        data += struct.pack("<fi", score, len(piece)) + piece
    Path(path).write_bytes(bytes(data))
    return Path(path)


@pytest.fixture
def stories260k():
    """(checkpoint path, tokenizer path) of karpathy's trained stories260K."""
    return model_file("stories260K.bin"), model_file("tok512.bin")


@pytest.fixture
def llama_tokenizer():
    return model_file("tokenizer.bin")


@pytest.fixture
def make_checkpoint(tmp_path):
    """make_checkpoint(shape_name_or_Config, version=0, seed=0) -> path of a random checkpoint."""

    def make(shape, version: int = 0, seed: int = 0, group_size=None) -> Path:
        config = SHAPES[shape] if isinstance(shape, str) else shape
        name = shape if isinstance(shape, str) else "custom"
        path = tmp_path / f"{name}_v{version}_s{seed}.bin"
        write_checkpoint(path, config, random_weights(config, seed), version, group_size)
        return path

    return make


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float32 values of `shape`, times scale."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_one_line_error(r, *fragments: str, rc: int | None = None) -> str:
    """A CLI failure as the README promises it: a non-zero exit (rc, when given), no traceback, and
    one error line on stderr ("PROG: error: ...") holding every fragment; besides it only
    "PROG: warning: ..." lines (bench's busy-machine note). r: a CompletedProcess
    (bytes or text) or (exit code, stderr) of an in-process main(). Returns stderr."""
    code, err = r if isinstance(r, tuple) else (r.returncode, r.stderr)
    err = err.decode(errors="replace") if isinstance(err, bytes) else err
    assert code != 0, f"expected an error, got exit code 0: {err}"
    assert rc is None or code == rc, f"exit code {code}, expected {rc}: {err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and all(": warning: " in ln for ln in lines if ln not in errors), err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return err


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Worst error relative to the reference's scale: max|a - b| / max|b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


REQUIRE_CPU_ENV = "LLAMA2PY_REQUIRE_CPU"  # CI sets it to 1: a broken extension build fails instead of skipping


def _cpu_import_error() -> ImportError | None:
    """Why llama2py._cpu does not import (None when it does); raised where $LLAMA2PY_REQUIRE_CPU=1."""
    try:
        import llama2py._cpu  # noqa: F401
    except ImportError as e:
        if os.environ.get(REQUIRE_CPU_ENV) == "1":
            raise
        return e
    return None


def cpu_built() -> bool:
    """Whether the C++ extension is built (never False where $LLAMA2PY_REQUIRE_CPU=1: it raises)."""
    return _cpu_import_error() is None


def require_device(device: str) -> None:
    """Skip unless `device` can run here. The cpu backend must exist when LLAMA2PY_REQUIRE_CPU=1
    (CI sets it, so a broken extension build fails instead of skipping)."""
    if device == "numpy":
        return
    if device == "cpu":
        e = _cpu_import_error()
        if e is not None:
            pytest.skip(f"C++ extension not built ({e}); run `pip install -e .`")
        return
    if device == "cuda":
        from llama2py.checkpoint import random_weights
        from llama2py.errors import DeviceError

        try:
            from llama2py.backends.cuda import CudaBackend

            c = SHAPES["odd_tiny"]
            CudaBackend(c, random_weights(c), 1).close()
        except (ImportError, DeviceError) as e:
            pytest.skip(f"cuda backend unusable here: {e}")
        return
    raise ValueError(device)


HOST_DEVICES = ["numpy", "cpu"]


ISA_LEVELS = ["generic", "avx2", "avxvnni", "avx512", "avx512vnni"]


@pytest.fixture(params=ISA_LEVELS)
def isa(request):
    """Each instruction-set level of the cpu kernels this CPU runs (the others skip), selected for
    the test and reset to the best level after it."""
    require_device("cpu")
    import llama2py._cpu as ext

    if request.param not in ext.isa_levels():
        pytest.skip(f"this CPU does not run the {request.param} level")
    ext.set_isa(request.param)
    assert ext.isa() == request.param
    yield request.param
    ext.set_isa("")
