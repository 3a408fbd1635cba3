"""Checkpoint formats v0/v1/v2: round trips, identical logits across versions, every damaged file refused."""

import struct

import numpy as np
import pytest
from conftest import SHAPES, rel_err

from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import Config, load_checkpoint, quantize_q80, random_weights, weight_shapes, write_checkpoint
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
