"""Checkpoint formats v0/v1/v2: round trips, identical logits across versions, every damaged file refused."""

import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SHAPES, rel_err

from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import (
    MODEL_SHAPES,
    NORM_TENSORS,
    Config,
    Weights,
    check_group_size,
    checkpoint_bytes,
    default_group_size,
    load_checkpoint,
    quantize_q80,
    random_weights,
    weight_shapes,
    write_checkpoint,
)
from llama2py.errors import CheckpointError


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("version", [0, 1])
def test_fp32_roundtrip(make_checkpoint, shape, version):
    ck = load_checkpoint(make_checkpoint(shape, version))
    ref = random_weights(SHAPES[shape], 0)
    assert ck.version == version and ck.config == SHAPES[shape]
    for name, arr in ref.tensors().items():
        np.testing.assert_array_equal(getattr(ck.weights, name), arr, err_msg=name)
    if SHAPES[shape].shared_classifier:
        assert ck.weights.wcls is ck.weights.token_embedding


@pytest.mark.parametrize("shape", ["gqa_unshared", "mha_shared"])
def test_v0_v1_identical_logits_v2_close(make_checkpoint, shape):
    tokens = np.array([1, 5, 9, 3, 7], np.int32)
    logits = {}
    for v in (0, 1, 2):
        ck = load_checkpoint(make_checkpoint(shape, v, group_size=2 if v == 2 else None))
        logits[v] = NumpyBackend(ck.config, ck.weights).prefill(tokens[None], 0, "all")[0]
    np.testing.assert_array_equal(logits[0], logits[1])
    err = rel_err(logits[2], logits[0])
    assert err < 0.05, f"v2 (Q8_0) logits differ from fp32 by {err:.3g} relative"


def test_q80_dequantization_error(make_checkpoint):
    """Each dequantized weight is within half a quantization step of the original."""
    c = SHAPES["mha_shared"]
    ck = load_checkpoint(make_checkpoint("mha_shared", 2))
    assert ck.group_size == 16  # 64 -> 32 -> 16 divides dim 48
    ref = random_weights(c, 0)
    for name in ("wq", "w2", "token_embedding"):
        w, d = getattr(ref, name).reshape(-1, 16), getattr(ck.weights, name).dequantize().reshape(-1, 16)
        step = np.abs(w).max(axis=1, keepdims=True) / 127
        assert (np.abs(w - d) <= step / 2 + 1e-7).all(), name


def test_quantize_q80_matches_definition():
    w = np.array([0.5, -1.0, 0.25, 0.0, 2.0, 1.0, -0.5, 0.1], np.float32)
    q, s = quantize_q80(w, 4)
    np.testing.assert_allclose(s, [1.0 / 127, 2.0 / 127])
    np.testing.assert_array_equal(q[:4], [64, -127, 32, 0])  # round(0.5*127)=64 (half to even: 63.5 -> 64)


def test_real_stories260k(stories260k):
    ck = load_checkpoint(stories260k[0])
    assert ck.config == Config(64, 172, 5, 8, 4, 512, 512, True)
    assert ck.n_params == 260032 and ck.file_bytes == 1056540
    assert "grouped-query" in ck.describe()


def test_file_size_matches_header(make_checkpoint):
    for v in (0, 1, 2):
        p = make_checkpoint("gqa_unshared", v)
        ck = load_checkpoint(p)
        assert ck.file_bytes == p.stat().st_size


# -- damaged and foreign files --------------------------------------------------------------------
def _bad(tmp_path, data: bytes):
    p = tmp_path / "bad.bin"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("version", [0, 1, 2])
def test_truncated(make_checkpoint, tmp_path, version):
    data = make_checkpoint("odd_tiny", version).read_bytes()
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(_bad(tmp_path, data[:-4]))


@pytest.mark.parametrize("version", [0, 1, 2])
def test_padded(make_checkpoint, tmp_path, version):
    data = make_checkpoint("odd_tiny", version).read_bytes()
    with pytest.raises(CheckpointError, match="trailing bytes"):
        load_checkpoint(_bad(tmp_path, data + b"\0" * 8))


def test_unknown_version(make_checkpoint, tmp_path):
    data = bytearray(make_checkpoint("odd_tiny", 1).read_bytes())
    data[4:8] = struct.pack("<i", 7)
    with pytest.raises(CheckpointError, match="unknown version 7"):
        load_checkpoint(_bad(tmp_path, bytes(data)))


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "too short"),
        (b"PK\x03\x04" + b"\0" * 100, "not a llama2.c checkpoint"),
        (b"\x89PNG\r\n\x1a\n" + b"\xff" * 100, "not a llama2.c checkpoint|implausibly large|positive"),
        (struct.pack("<7i", 30, 10, 1, 4, 4, 10, 8) + b"\0" * 64, "not a multiple of n_heads"),
        (struct.pack("<7i", 8, 10, 1, 2, 3, 10, 8) + b"\0" * 64, "not a multiple of n_kv_heads"),
        (struct.pack("<7i", 12, 10, 1, 4, 4, 10, 8) + b"\0" * 64, "head size 3 is odd; RoPE needs pairs"),
    ],
)
def test_foreign_files(tmp_path, data, match):
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(_bad(tmp_path, data))


def test_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.bin")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_weight_shapes_cover_every_tensor():
    c = SHAPES["gqa_unshared"]
    shapes = weight_shapes(c)
    assert shapes["wk"] == (c.n_layers, c.kv_dim, c.dim) and c.kv_dim == 20
    assert set(shapes) == set(random_weights(c).tensors())


def test_write_refuses_wrong_shapes(tmp_path):
    c = SHAPES["odd_tiny"]
    w = random_weights(c)
    w.wq = w.wq[:, :-1]
    with pytest.raises(ValueError, match="wq"):
        write_checkpoint(tmp_path / "x.bin", c, w)


# -- the writer ------------------------------------------------------------------------------------
def _odd_chunks(weights: Weights, sizes=(1, 7, 13, 100)):
    """A chunk source that cuts every tensor at odd places (across rows, layers and groups)."""

    def chunks(name):
        flat = getattr(weights, name).reshape(-1)
        i = k = 0
        while i < flat.size:
            n = sizes[k % len(sizes)]
            yield flat[i : i + n].astype(np.float64)  # any float type is accepted
            i, k = i + n, k + 1

    return chunks


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("version", [0, 1, 2])
def test_chunking_does_not_change_the_file(tmp_path, shape, version):
    c = SHAPES[shape]
    w = random_weights(c, 5)
    gs = 2 if version == 2 else None  # small groups: many of them straddle the odd chunks
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_checkpoint(a, c, w, version, gs)
    write_checkpoint(b, c, _odd_chunks(w), version, gs)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_v0_and_v1_of_the_same_weights_load_equal(tmp_path, shape):
    c = SHAPES[shape]
    w = random_weights(c, 6)
    loaded = []
    for v in (0, 1):
        write_checkpoint(tmp_path / f"v{v}.bin", c, w, v)
        loaded.append(load_checkpoint(tmp_path / f"v{v}.bin"))
    assert loaded[0].config == loaded[1].config == c
    for name, arr in loaded[0].weights.tensors().items():
        np.testing.assert_array_equal(arr, getattr(loaded[1].weights, name), err_msg=name)


# docs/FORMAT.md's layouts, spelled out here rather than taken from tensor_order: the loaders read
# every tensor where the document puts it, not merely where the writer (sharing that order) wrote it.
DOC_ORDER = {
    0: ["token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "rope"],
    1: ["rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3"],
    2: ["rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3"],
}


@pytest.mark.parametrize("shape", ["gqa_unshared", "mha_shared"])
@pytest.mark.parametrize("version", [0, 1, 2])
def test_loaders_follow_the_documented_layout(tmp_path, shape, version):
    """A file built by hand from docs/FORMAT.md loads as exactly the arrays put into it."""
    c = SHAPES[shape]
    gs = 2  # divides every dim in SHAPES
    rng = np.random.default_rng(9)
    arrays = {name: rng.standard_normal(shp).astype("<f4") for name, shp in weight_shapes(c).items()}
    if c.shared_classifier:
        del arrays["wcls"]
    dims = [c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len]
    if version == 0:
        dims[5] = dims[5] if c.shared_classifier else -dims[5]
        data = [struct.pack("<7i", *dims)]
    else:
        head = struct.pack("<Ii7iB", 0x616B3432, version, *dims, int(c.shared_classifier))
        data = [(head + (struct.pack("<i", gs) if version == 2 else b"")).ljust(256, b"\0")]
    parts = {}  # v2: each quantized tensor's (int8 values, scales) per layer, as written
    for name in DOC_ORDER[version] + ([] if c.shared_classifier else ["wcls"]):
        if name == "rope":  # two obsolete tables, not zero here: the loader must skip them
            data.append(rng.standard_normal(c.seq_len * c.head_size).astype("<f4").tobytes())
        elif version < 2 or name in NORM_TENSORS:
            data.append(arrays[name].tobytes())
        else:
            layers = [arrays[name]] if name in ("token_embedding", "wcls") else list(arrays[name])
            parts[name] = []
            for layer in layers:
                groups = layer.reshape(-1, gs)
                scales = (np.abs(groups).max(axis=1) / np.float32(127)).astype("<f4")
                values = np.round(groups / scales[:, None]).astype(np.int8).reshape(layer.shape)
                parts[name].append((values, scales))
                data += [values.tobytes(), scales.tobytes()]
    path = tmp_path / f"hand_v{version}.bin"
    path.write_bytes(b"".join(data))
    ck = load_checkpoint(path)
    assert ck.version == version and ck.config == c
    for name, want in arrays.items():
        got = getattr(ck.weights, name)
        if name in parts:
            assert got.shape == want.shape and len(got.parts) == len(parts[name]), name
            for (q, s), (want_q, want_s) in zip(got.parts, parts[name]):
                np.testing.assert_array_equal(q, want_q, err_msg=name)
                np.testing.assert_array_equal(s, want_s, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    if c.shared_classifier:
        assert ck.weights.wcls is ck.weights.token_embedding


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_v2_roundtrip_is_per_layer_q80(tmp_path, shape):
    """Each layer of each matrix is quantized on its own (llama2.c's export); the norms stay exact."""
    c = SHAPES[shape]
    w = random_weights(c, 7)
    w.wq[-1] *= 1000  # the last layer's scales must not leak into the others
    gs = default_group_size(c.dim)
    write_checkpoint(tmp_path / "q.bin", c, w, 2)
    ck = load_checkpoint(tmp_path / "q.bin")
    assert ck.group_size == gs and ck.file_bytes == checkpoint_bytes(c, 2, gs)
    worst = 0.0
    loaded = ck.weights.dequantized()  # v2 loads as int8 (QuantizedTensor)
    for name, arr in w.tensors().items():
        got = getattr(loaded, name)
        if name in NORM_TENSORS:
            np.testing.assert_array_equal(got, arr, err_msg=name)
            continue
        parts = [arr] if name in ("token_embedding", "wcls") else list(arr)
        want = np.concatenate(
            [(lambda q, s: q.reshape(-1, gs) * s[:, None])(*quantize_q80(p, gs)).reshape(-1) for p in parts]
        )
        np.testing.assert_array_equal(got.reshape(-1), want, err_msg=name)
        worst = max(worst, rel_err(got, arr))
    assert 0 < worst < 0.01, f"worst Q8_0 error {worst:.3g}"


def test_group_size_rule():
    """llama2.c's export: 64, halved until it divides dim (hidden_dim does not matter)."""
    assert [default_group_size(d) for d in (4096, 768, 288, 48, 64, 18, 2)] == [64, 64, 32, 16, 64, 2, 2]
    with pytest.raises(CheckpointError, match="dim 37 is odd"):
        default_group_size(37)
    c = MODEL_SHAPES["stories260K"]
    assert check_group_size(c, None) == 64 and check_group_size(c, 16) == 16  # 64 does not divide hidden 172
    for bad in (0, 3, 48, 128):
        with pytest.raises(CheckpointError, match=f"group size {bad} does not divide dim 64"):
            check_group_size(c, bad)


def test_v2_with_groups_across_rows(tmp_path):
    """stories260K's shape gets group 64, which does not divide w2's rows of 172: groups run over the
    flattened layer, as in llama2.c's export."""
    c = Config(64, 172, 2, 8, 4, 512, 32)
    w = random_weights(c, 8)
    write_checkpoint(tmp_path / "q.bin", c, w, 2)
    ck = load_checkpoint(tmp_path / "q.bin")
    assert ck.group_size == 64
    q, s = quantize_q80(w.w2[1], 64)
    np.testing.assert_array_equal(
        ck.weights.w2.dequantize()[1].reshape(-1), (q.reshape(-1, 64) * s[:, None]).reshape(-1)
    )


@pytest.mark.parametrize(
    "make_source,match",
    [
        (lambda w: lambda name: [getattr(w, name).reshape(-1)[:-1]], "gave .* values, the tensor has"),
        (lambda w: lambda name: [getattr(w, name), np.zeros(1, np.float32)], "more than its"),
        (lambda w: lambda name: [getattr(w, name).astype(np.int8)], "int8 values, expected floats"),
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_bad_source_leaves_nothing(tmp_path, make_source, match, version):
    c = SHAPES["gqa_unshared"]
    out = tmp_path / "x.bin"
    with pytest.raises(ValueError, match=match):
        write_checkpoint(out, c, make_source(random_weights(c)), version)
    assert list(tmp_path.iterdir()) == []


def test_progress_reaches_the_total(tmp_path):
    c = SHAPES["wide"]
    seen = []
    n = write_checkpoint(tmp_path / "p.bin", c, random_weights(c), 2, progress=lambda d, t: seen.append((d, t)))
    assert n == (tmp_path / "p.bin").stat().st_size == seen[-1][0]
    assert {t for _, t in seen} == {n} and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_writer_refuses_bad_arguments(tmp_path):
    c = SHAPES["odd_tiny"]
    w = random_weights(c)
    with pytest.raises(ValueError, match="version must be 0, 1 or 2"):
        write_checkpoint(tmp_path / "x.bin", c, w, 3)
    with pytest.raises(ValueError, match="v2 .* only"):
        write_checkpoint(tmp_path / "x.bin", c, w, 1, group_size=2)
    with pytest.raises(CheckpointError, match="does not divide dim 18"):
        write_checkpoint(tmp_path / "x.bin", c, w, 2, group_size=4)
    assert list(tmp_path.iterdir()) == []


# -- atomic writes ---------------------------------------------------------------------------------
_READER = """
import sys
from llama2py.checkpoint import load_checkpoint
ck = load_checkpoint(sys.argv[1])  # memory-mapped (v2: int8, dequantized from the map on each read)
w = ck.weights
print(float(w.dequantized().wq.sum()), float(w.dequantized().w2.sum()), flush=True)
sys.stdin.readline()  # the file is rewritten meanwhile
print(float(w.dequantized().wq.sum()), float(w.dequantized().w2.sum()), flush=True)
"""


@pytest.mark.parametrize("version", [0, 2])
def test_a_mapped_checkpoint_keeps_its_contents_while_rewritten(tmp_path, version):
    """Rewriting a file in place would show the reader the new weights or kill it with SIGBUS; the
    writer renames a new file over it, so the reader keeps reading the old one."""
    c = SHAPES["wide"]
    path = tmp_path / "m.bin"
    write_checkpoint(path, c, random_weights(c, 1), version)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        before = reader.stdout.readline()
        assert before, "the reader failed to load the checkpoint"
        write_checkpoint(path, c, random_weights(c, 2), version)  # same size, other weights
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0, f"the reader died (signal {-reader.returncode})"
    assert out == before
    assert load_checkpoint(path).weights.dequantized().wq.sum() == pytest.approx(
        random_weights(c, 2).wq.sum(), rel=0.02
    )
    assert os.listdir(tmp_path) == ["m.bin"]


_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


@pytest.mark.parametrize("signum", _SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_an_interrupted_write_leaves_nothing(tmp_path, signum):
    """Ctrl-C, `kill` or a closed terminal (SIGHUP: the temporary file stayed) while `llama2py
    synth` writes: exit 128 + the signal (130, 143, 129), neither the file nor the temporary."""
    out = tmp_path / "big.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama2py", "synth", "--shape", "stories110M", "--no-progress", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a shell's background job inherits SIGINT ignored, and Python keeps it ignored: give the
        # child the default, as a terminal's foreground process has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None, "synth ended before it could be interrupted"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.01)
    proc.send_signal(signum)
    out_text, err_text = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, (out_text, err_text)
    assert os.listdir(tmp_path) == []


class _Int8Tensor:
    """A stand-in for a quantized weight type: shape, per-layer indexing and dequantize()."""

    def __init__(self, values: np.ndarray, group_size: int):
        self.values, self.group_size, self.shape = values, group_size, values.shape

    def __getitem__(self, layer: int) -> "_Int8Tensor":
        return _Int8Tensor(self.values[layer], self.group_size)

    def dequantize(self) -> np.ndarray:
        q, s = quantize_q80(self.values, self.group_size)
        return (q.reshape(-1, self.group_size) * s[:, None]).reshape(self.shape)


@pytest.mark.parametrize("version", [1, 2])
def test_quantized_weights_are_written_as_their_values(tmp_path, version):
    """Weights holding int8 tensors (a loaded v2 file) are written from their dequantized values,
    one layer at a time; written again as v2 with their group size they give the same bytes."""
    c = SHAPES["gqa_unshared"]
    w = random_weights(c, 9)
    gs = default_group_size(c.dim)
    write_checkpoint(tmp_path / "ref.bin", c, w, 2)
    mixed = Weights(**{n: a if n in NORM_TENSORS else _Int8Tensor(a, gs) for n, a in w.tensors().items()})
    write_checkpoint(tmp_path / "out.bin", c, mixed, version)
    if version == 2:
        assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    else:
        got = load_checkpoint(tmp_path / "out.bin").weights
        for name, tensor in mixed.tensors().items():
            if name in NORM_TENSORS:
                want = tensor
            elif name in ("token_embedding", "wcls"):
                want = tensor.dequantize()
            else:
                want = np.stack([tensor[layer].dequantize() for layer in range(c.n_layers)])
            np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)


@pytest.mark.parametrize("signum", _SIGNALS[1:], ids=lambda s: signal.Signals(s).name)
def test_an_interrupted_bench_removes_its_checkpoint_folder(tmp_path, signum):
    """`bench --shape` writes a checkpoint into a temporary folder and measures it: SIGTERM or SIGHUP
    during the measurement left the folder (a whole model) in $TMPDIR."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama2py", "bench", "--shape", "stories110M", "--batch", "1", "--steps", "250"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    deadline = time.monotonic() + 120

    def written() -> bool:  # the checkpoint renamed into place: measuring now
        return any(p.name == "stories110M.bin" for d in tmp_path.iterdir() if d.is_dir() for p in d.iterdir())

    while not written():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signum)
    out_text, err_text = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, (out_text, err_text)
    assert b"Traceback" not in err_text, err_text
    assert os.listdir(tmp_path) == []


_SLOW_IMPORT = """
import sys
class Interrupt:  # Ctrl-C while the command loads numpy
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from llama2py.__main__ import main
sys.argv = ["llama2py", "info", sys.argv[1]]
sys.exit(main())
"""


def test_an_interrupt_while_the_command_loads_is_no_traceback(tmp_path):
    """Ctrl-C in the first fraction of a second (while numpy and the extension load) printed a
    30-line traceback: the command's entry point imports the program inside its handling."""
    r = subprocess.run(
        [sys.executable, "-c", _SLOW_IMPORT, str(tmp_path / "x.bin")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)


_HELD_KEY = """
import os, signal, sys, time
import llama2py.cli as cli
def interrupted(argv):  # the command interrupted while it runs: by a signal, or a bare KeyboardInterrupt
    if sys.argv[1] == "bare":
        raise KeyboardInterrupt
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(10)
cli._dispatch = interrupted
from llama2py.__main__ import main
status = main()
print(status, *(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("how,status", [("SIGINT", "130"), ("SIGTERM", "143"), ("SIGHUP", "129"), ("bare", "130")])
def test_after_an_interrupt_the_command_ignores_more_of_them(how, status):
    """A held Ctrl-C key sends an interrupt every few milliseconds: the second one, landing while
    the command unwound from the first (removing what it was writing), cut that short and printed
    a traceback. The command's process ignores every further interrupt once one is ending it (and
    main() called in-process does not touch the handlers)."""
    r = subprocess.run([sys.executable, "-c", _HELD_KEY, how], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == [status, "True", "True", "True"], (r.stdout, r.stderr)
    from llama2py import cli

    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["info", "/nonexistent/x.bin"]) == 1 and signal.getsignal(signal.SIGINT) is before
