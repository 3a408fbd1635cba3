"""`llama2py convert`: Hugging Face / Meta Llama models and sentencepiece tokenizers -> llama2.c files.

The Hugging Face models are tiny random Llamas written here (config.json, two safetensors shards
and an index, by our own safetensors writer, so the reader is tested against an independent one)
and checked against an independent numpy forward pass in Hugging Face's convention (rotate-half
RoPE on the unpermuted q/k weights), not against llama2py's own code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import HOST_DEVICES, SHAPES, model_file, rel_err, require_device

from llama2py.checkpoint import Config, load_checkpoint, model_shape, random_weights, write_checkpoint
from llama2py.cli import main
from llama2py.convert import convert
from llama2py.convert.hf import permute_rotary, unpermute_rotary
from llama2py.convert.meta import merge_axis, merge_model_parallel
from llama2py.convert.safetensors import SafetensorsFile, bf16_to_f32
from llama2py.errors import CheckpointError, ConvertError

TOL = 1e-5


# ---- a small independent safetensors writer -------------------------------------------------------
def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), as uint16 bit patterns."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Header (8-byte length + JSON, padded with spaces to 8 bytes as the reference writer does) and
    the raw little-endian bytes, in dtype F32, F16 or BF16."""
    blobs, header, offset = [], {"__metadata__": {"format": "pt"}}, 0
    for name, a in tensors.items():
        if dtype == "BF16":
            raw = f32_to_bf16_bits(a).tobytes()
        else:
            raw = np.ascontiguousarray(a, {"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for raw in blobs:
            f.write(raw)


def stored(a: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a tensor has once stored in dtype (what the reference must use)."""
    if dtype == "BF16":
        return bf16_to_f32(f32_to_bf16_bits(a)).reshape(a.shape)
    return a.astype({"F32": np.float32, "F16": np.float16}[dtype]).astype(np.float32)


# ---- tiny random Hugging Face Llamas ---------------------------------------------------------------
BASE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 48,
    "intermediate_size": 70,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,  # grouped-query attention
    "vocab_size": 67,
    "max_position_embeddings": 24,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    D, H, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    KV = D // cfg["num_attention_heads"] * cfg["num_key_value_heads"]

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(D)
        t[p + "self_attn.q_proj.weight"] = mat(D, D)
        t[p + "self_attn.k_proj.weight"] = mat(KV, D)
        t[p + "self_attn.v_proj.weight"] = mat(KV, D)
        t[p + "self_attn.o_proj.weight"] = mat(D, D)
        t[p + "post_attention_layernorm.weight"] = norm(D)
        t[p + "mlp.gate_proj.weight"] = mat(H, D)
        t[p + "mlp.up_proj.weight"] = mat(H, D)
        t[p + "mlp.down_proj.weight"] = mat(D, H)
    t["model.norm.weight"] = norm(D)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = mat(V, D)
    return t


def write_hf_model(folder: Path, cfg: dict, tensors: dict, dtype: str = "F32", index: bool = True) -> dict:
    """config.json + two shards (+ index); return the tensors as stored (float32 values)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    names = list(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, part in shards.items():
        write_safetensors(folder / fname, {n: tensors[n] for n in part}, dtype)
    if index:
        weight_map = {n: f for f, part in shards.items() for n in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {n: stored(a, dtype) for n, a in tensors.items()}


def hf_reference_logits(cfg: dict, t: dict, tokens: list[int]) -> np.ndarray:
    """Hugging Face LlamaForCausalLM's forward pass, written independently in float64: rotate-half
    RoPE on the q/k projections exactly as stored (unpermuted), repeat_kv for GQA."""
    D, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV, eps, HS = cfg["num_key_value_heads"], cfg["rms_norm_eps"], D // NH
    T = len(tokens)
    w = {k: v.astype(np.float64) for k, v in t.items()}

    def rmsnorm(x, weight):
        return weight * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))

    def rotate_half(x):
        return np.concatenate([-x[..., HS // 2 :], x[..., : HS // 2]], axis=-1)

    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, HS, 2) / HS))
    freqs = np.outer(np.arange(T), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[None], np.sin(emb)[None]  # (1, T, HS)
    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, NH, HS).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, NKV, HS).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, NKV, HS).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, NH // NKV, axis=0), np.repeat(v, NH // NKV, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(HS) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = (probs @ v).transpose(1, 0, 2).reshape(T, D)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def backend_logits(path: Path, device: str, tokens: list[int]) -> np.ndarray:
    ck = load_checkpoint(path)
    if device == "numpy":
        from llama2py.backends.numpy_backend import NumpyBackend as Backend
    else:
        from llama2py.backends.cpu import CpuBackend as Backend
    backend = Backend(ck.config, ck.weights, 1)
    try:
        return backend.prefill(np.asarray([tokens], np.int32), 0, logits="all")[0]
    finally:
        backend.close()


TOKENS = [1, 5, 66, 17, 3, 42, 8, 0, 23, 61, 2, 9]
VARIANTS = {  # name -> (config changes, dtype, with index)
    "gqa_untied_f32": ({}, "F32", True),
    "gqa_untied_bf16": ({}, "BF16", True),
    "mha_tied_f16_noindex": ({"num_key_value_heads": 6, "tie_word_embeddings": True}, "F16", False),
    "mqa_odd_bf16": ({"hidden_size": 36, "num_attention_heads": 3, "num_key_value_heads": 1}, "BF16", True),
}


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_model_matches_reference(tmp_path, device, variant):
    require_device(device)
    changes, dtype, index = VARIANTS[variant]
    cfg = {**BASE_CONFIG, **changes}
    t = write_hf_model(tmp_path / "hf", cfg, hf_tensors(cfg), dtype, index)
    out = tmp_path / "model.bin"
    config = convert(tmp_path / "hf", out)
    assert config == Config(
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["vocab_size"],
        cfg["max_position_embeddings"],
        shared_classifier=cfg["tie_word_embeddings"],
    )
    ref = hf_reference_logits(cfg, t, TOKENS)
    got = backend_logits(out, device, TOKENS)
    err = rel_err(got, ref)
    # bf16/f16 values are exact in float32, so every source dtype meets the float32 tolerance
    assert err <= TOL, f"{variant} on {device}: worst relative error {err:.3g} > {TOL}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary file left behind"


def test_hf_config_defaults_and_extra_tensors(tmp_path):
    """config.json may omit num_key_value_heads (every head its own: transformers' default) and
    tie_word_embeddings (False: lm_head is its own tensor); older exports also store RoPE's
    inv_freq buffers, which are not weights."""
    cfg = {**BASE_CONFIG, "num_key_value_heads": 6, "tie_word_embeddings": False}
    tensors = hf_tensors(cfg)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    t = write_hf_model(tmp_path / "hf", cfg, tensors)
    written = {k: v for k, v in cfg.items() if k not in ("num_key_value_heads", "tie_word_embeddings")}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(written))
    config = convert(tmp_path / "hf", tmp_path / "m.bin")
    assert config.n_kv_heads == 6 and not config.shared_classifier
    err = rel_err(backend_logits(tmp_path / "m.bin", "numpy", TOKENS), hf_reference_logits(cfg, t, TOKENS))
    assert err <= TOL, f"worst relative error {err:.3g}"


def test_hf_tied_model_that_also_stores_lm_head(tmp_path):
    """Some exports of a tied model write lm_head.weight too (a copy of the embedding): accepted,
    and the file shares the classifier."""
    cfg = {**BASE_CONFIG, "tie_word_embeddings": True}
    tensors = hf_tensors(cfg)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    t = write_hf_model(tmp_path / "hf", cfg, tensors)
    assert convert(tmp_path / "hf", tmp_path / "m.bin").shared_classifier
    err = rel_err(backend_logits(tmp_path / "m.bin", "numpy", TOKENS), hf_reference_logits(cfg, t, TOKENS))
    assert err <= TOL, f"worst relative error {err:.3g}"


def test_refuses_a_tensor_of_another_shape(tmp_path, capsys):
    """down_proj stored transposed (hidden x intermediate instead of the reverse): refused, not
    converted into a model that computes garbage."""
    tensors = hf_tensors(BASE_CONFIG)
    tensors["model.layers.1.mlp.down_proj.weight"] = np.ascontiguousarray(
        tensors["model.layers.1.mlp.down_proj.weight"].T
    )
    write_hf_model(tmp_path / "hf", BASE_CONFIG, tensors)
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(tmp_path / "hf"), str(out)], out, "down_proj", "config.json implies")


@pytest.mark.parametrize("quantize", [None, "q8_0"])
def test_blocks_of_rows_give_the_same_file(tmp_path, monkeypatch, quantize):
    """Tensors are streamed in blocks of rows (whole heads for wq/wk): tiny blocks must write the
    very bytes that one block per tensor writes."""
    from llama2py.convert import shared

    cfg = {**BASE_CONFIG, "hidden_size": 40, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 31}
    write_hf_model(tmp_path / "hf", cfg, hf_tensors(cfg), "BF16")
    convert(tmp_path / "hf", tmp_path / "whole.bin", quantize)
    for block_values in (1, 7, 100, 1000):  # a row, a head (10 rows of 40), still a head, a few heads
        monkeypatch.setattr(shared, "BLOCK_VALUES", block_values)
        convert(tmp_path / "hf", tmp_path / f"blocks{block_values}.bin", quantize)
        assert (tmp_path / f"blocks{block_values}.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()


def test_hf_quantized_is_q8_of_float(tmp_path, capsys):
    cfg = dict(BASE_CONFIG)
    write_hf_model(tmp_path / "hf", cfg, hf_tensors(cfg), "BF16")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "f32.bin")]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "q8.bin"), "--quantize", "q8_0"]) == 0
    # group 16 (from hidden_size 48) leaves 6 of intermediate_size 70: the note quantize gives too
    assert "llama2py: group size 16 does not divide hidden_dim 70" in capsys.readouterr().err
    f32, q8 = load_checkpoint(tmp_path / "f32.bin"), load_checkpoint(tmp_path / "q8.bin")
    assert (f32.version, q8.version) == (1, 2)
    assert q8.config == f32.config
    worst = 0.0
    for name, a in f32.weights.tensors().items():
        b = q8.weights.tensors()[name]
        b = b.dequantize() if hasattr(b, "dequantize") else np.asarray(b, np.float32)  # int8 in memory or not
        # Q8_0: each value within half a step (max|group| / 127 / 2) of the float one
        worst = max(worst, float(np.abs(a - b).max() / np.abs(a).max()))
    assert worst <= 0.5 / 127 + 1e-6, f"worst quantization error {worst:.3g} of a tensor's max"


def test_rotary_permutation_round_trip():
    rng = np.random.default_rng(1)
    meta = rng.standard_normal((3 * 8, 5)).astype(np.float32)  # 3 heads of size 8
    hf = permute_rotary(meta, 3)
    assert np.array_equal(unpermute_rotary(hf, 3), meta)
    # head 0: HF rows 0..3 are the pairs' first elements (Meta rows 0, 2, 4, 6), rows 4..7 the seconds
    assert np.array_equal(hf[:4], meta[0:8:2]) and np.array_equal(hf[4:8], meta[1:8:2])


def test_reader_agrees_with_safetensors_package(tmp_path):
    safetensors = pytest.importorskip("safetensors", reason="the safetensors package is not installed (optional)")
    rng = np.random.default_rng(2)
    tensors = {"a": rng.standard_normal((7, 5)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    for dtype in ("F32", "F16"):  # the package's numpy interface cannot return BF16
        path = tmp_path / f"{dtype}.safetensors"
        write_safetensors(path, tensors, dtype)
        ours = SafetensorsFile(path)
        with safetensors.safe_open(str(path), framework="np") as theirs:
            assert sorted(theirs.keys()) == sorted(ours.tensors)
            for name in tensors:
                assert np.array_equal(ours.read(name), theirs.get_tensor(name).astype(np.float32))


def test_bf16_widening_is_exact():
    values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-30, -1e30, np.inf], np.float32)
    assert np.array_equal(stored(values, "BF16")[:3], values[:3])
    assert np.array_equal(bf16_to_f32(np.array([0x3F80, 0xC020, 0x7F80], np.uint16)), [1.0, -2.5, np.inf])


def test_rms_norm_eps_warns(tmp_path, capsys):
    cfg = {**BASE_CONFIG, "rms_norm_eps": 1e-6}
    write_hf_model(tmp_path / "hf", cfg, hf_tensors(cfg))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "m.bin")]) == 0
    err = capsys.readouterr().err
    assert "rms_norm_eps = 1e-06" in err and "1e-5" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "m.bin").exists()


# ---- refusals: one line, exit 1, nothing written ---------------------------------------------------
REFUSALS = {  # name -> (config changes, text the message must contain)
    "rope_theta": ({"rope_theta": 1000000.0}, "rope_theta"),
    "rope_scaling": ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    "attention_bias": ({"attention_bias": True}, "attention_bias"),
    "mlp_bias": ({"mlp_bias": True}, "mlp_bias"),
    "model_type": ({"model_type": "mistral"}, "model_type"),
    "architectures": ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act"),
    "odd_head_size": ({"hidden_size": 30, "num_attention_heads": 6, "num_key_value_heads": 2}, "head size"),
    "head_dim": ({"head_dim": 16}, "head_dim"),
    "kv_heads": ({"num_key_value_heads": 4}, "num_key_value_heads"),
}


def assert_refused(capsys, argv, out: Path, *needles: str, rc: int = 1) -> str:
    before = set(out.parent.iterdir()) if out.parent.is_dir() else set()
    assert main(argv) == rc
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama2py convert: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    if out.parent.is_dir():
        assert set(out.parent.iterdir()) == before, "a file was left behind"
    assert not out.is_file() or out.stat().st_size == 0 or out in before
    return lines[0]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refuses_what_llama2c_cannot_hold(tmp_path, capsys, case):
    changes, needle = REFUSALS[case]
    cfg = {**BASE_CONFIG, **changes}
    write_hf_model(tmp_path / "hf", cfg, hf_tensors(BASE_CONFIG))
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(tmp_path / "hf"), str(out)], out, needle, "config.json")


def test_refuses_bias_tensors(tmp_path, capsys):
    t = hf_tensors(BASE_CONFIG)
    t["model.layers.1.self_attn.q_proj.bias"] = np.zeros(48, np.float32)
    write_hf_model(tmp_path / "hf", BASE_CONFIG, t)
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(tmp_path / "hf"), str(out)], out, "q_proj.bias", "bias")


def test_refuses_damaged_sources(tmp_path, capsys):
    hf = tmp_path / "hf"
    write_hf_model(hf, BASE_CONFIG, hf_tensors(BASE_CONFIG))
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    shard = hf / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    for cut in (100, 1):  # truncated shard, by many bytes or by one: found when opened, before any work
        shard.write_bytes(data[:-cut])
        assert_refused(capsys, ["convert", str(hf), str(out)], out, "truncated", "ends at byte", shard.name)
    shard.write_bytes(data[:6])  # not even a header
    assert_refused(capsys, ["convert", str(hf), str(out)], out, shard.name)
    shard.unlink()  # a shard the index names is missing
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "missing", shard.name)
    (hf / "model.safetensors.index.json").unlink()  # no index: the tensors in shard 2 are missing
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "missing")
    for f in hf.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))  # PyTorch pickles only: say what to do
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "no *.safetensors", "model-00001-of-00002.bin")
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../x.safetensors"}}))
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "not a file name")
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": 5}}))
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "not a valid safetensors index")
    (hf / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "not a valid safetensors index")
    (hf / "model.safetensors.index.json").unlink()
    (hf / "config.json").write_text("{not json")
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "config.json", "JSON")
    (hf / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # past Python's recursion limit
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "config.json", "nested too deeply")
    (hf / "config.json").unlink()
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "config.json", "params.json")
    assert_refused(capsys, ["convert", str(tmp_path / "nothing"), str(out)], out, "no such file")


def test_an_unconverted_model_given_as_a_checkpoint_says_convert(tmp_path):
    """A Hugging Face folder (or one of its .safetensors files) where a llama2.c checkpoint goes:
    the error gives the convert command, not 'is a directory'."""
    hf = tmp_path / "hf"
    write_hf_model(hf, BASE_CONFIG, hf_tensors(BASE_CONFIG))
    for given in (hf, next(hf.glob("*.safetensors")), hf / "config.json"):
        with pytest.raises(
            CheckpointError, match=f"a Hugging Face or Meta Llama model, .*llama2py convert {hf} OUT.bin"
        ):
            load_checkpoint(given)
    # a llama2.c checkpoint in such a folder is one, whatever its name
    c = SHAPES["mha_shared"]
    for name in ("m.bin", "m.pth"):
        write_checkpoint(hf / name, c, random_weights(c, 1), 0)
        assert load_checkpoint(hf / name).config == c


def test_config_beyond_the_limits_names_the_field(tmp_path, capsys):
    """A config.json asking for more than llama2py takes names the field and its limit (the
    message for a llama2.c header would be wrong here, whatever the folder is called)."""
    hf = tmp_path / "checkpoints" / "m"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps(dict(BASE_CONFIG, num_hidden_layers=5000)))
    out = tmp_path / "out.bin"
    err = assert_refused(
        capsys, ["convert", str(hf), str(out)], out, "n_layers 5,000 > 4,096: beyond what llama2py takes"
    )
    assert "llama2.c checkpoint" not in err


def test_refuses_inconsistent_shards(tmp_path, capsys):
    hf = tmp_path / "hf"
    write_hf_model(hf, BASE_CONFIG, hf_tensors(BASE_CONFIG))
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    index = hf / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    wrong = dict(weight_map, **{"model.norm.weight": "model-00001-of-00002.safetensors"})
    index.write_text(json.dumps({"weight_map": wrong}))  # the index points at the wrong shard
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "model.norm.weight", "does not")
    index.unlink()  # no index, and a tensor in two shards
    write_safetensors(hf / "extra.safetensors", {"model.norm.weight": np.ones(48, np.float32)}, "F32")
    assert_refused(capsys, ["convert", str(hf), str(out)], out, "model.norm.weight", "in both")


def test_refuses_bad_outputs(tmp_path, capsys):
    hf = tmp_path / "hf"
    write_hf_model(hf, BASE_CONFIG, hf_tensors(BASE_CONFIG))
    (tmp_path / "adir").mkdir()
    assert_refused(capsys, ["convert", str(hf), str(tmp_path / "adir")], tmp_path / "adir" / "x", "is a directory")
    missing = tmp_path / "missing" / "m.bin"
    assert_refused(capsys, ["convert", str(hf), str(missing)], missing, "does not exist")
    slash = str(tmp_path / "newdir") + "/"  # a folder that does not exist yet: never a file named newdir
    assert_refused(capsys, ["convert", str(hf), slash], tmp_path / "newdir", "names a folder, not a file")
    assert not (tmp_path / "newdir").exists()
    shard = hf / "model-00001-of-00002.safetensors"  # the output is one of the inputs (via another path)
    assert_refused(capsys, ["convert", str(hf), str(hf / ".." / "hf" / shard.name)], shard, "is the input file")
    assert SafetensorsFile(shard).tensors
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_refused(capsys, ["convert", str(hf), str(afile / "m.bin")], afile / "m.bin", "is not a folder")


def test_refuses_unwritable_output_folder(tmp_path, capsys):
    hf = tmp_path / "hf"
    write_hf_model(hf, BASE_CONFIG, hf_tensors(BASE_CONFIG))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "m.bin"
    elif Path("/sys").is_dir():  # root ignores permission bits; sysfs refuses new files even to root
        out = Path("/sys/llama2py-convert-test.bin")
    else:
        pytest.skip("running as root without /sys: no folder here is unwritable")
    try:
        assert main(["convert", str(hf), str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out.parent) in err[0], err
        assert "not writable" in err[0] or "cannot create a file" in err[0], err
        assert not out.exists()
    finally:
        if out.parent != Path("/sys"):
            out.parent.chmod(0o700)


def test_bad_flags_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path), str(tmp_path / "m.bin"), "--quantize", "q4_0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path), str(tmp_path / "m.bin"), "--seq-len", "0"])
    assert e.value.code == 2


def test_library_raises_convert_error(tmp_path):
    write_hf_model(tmp_path / "hf", {**BASE_CONFIG, "rope_theta": 500000.0}, hf_tensors(BASE_CONFIG))
    with pytest.raises(ConvertError, match="rope_theta"):
        convert(tmp_path / "hf", tmp_path / "m.bin")


def test_seq_len_override(tmp_path):
    write_hf_model(tmp_path / "hf", BASE_CONFIG, hf_tensors(BASE_CONFIG))
    assert convert(tmp_path / "hf", tmp_path / "m.bin", seq_len=7).seq_len == 7
    assert load_checkpoint(tmp_path / "m.bin").config.seq_len == 7


# ---- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_model_converts_byte_identical(tmp_path):
    pytest.importorskip("sentencepiece", reason="sentencepiece is not installed (pip install sentencepiece)")
    model, reference = model_file("tokenizer.model"), model_file("tokenizer.bin")
    out = tmp_path / "tokenizer.bin"
    assert main(["convert", str(model), str(out)]) == 0
    assert out.read_bytes() == reference.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.bin"]
    # told by its bytes, not only by its name (a link or a copy named otherwise)
    (tmp_path / "sp").symlink_to(model)
    assert main(["convert", str(tmp_path / "sp"), str(tmp_path / "t2.bin")]) == 0
    assert (tmp_path / "t2.bin").read_bytes() == reference.read_bytes()


def test_tokenizer_refusals(tmp_path, capsys):
    pytest.importorskip("sentencepiece", reason="sentencepiece is not installed (pip install sentencepiece)")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00garbage" * 10)
    out = tmp_path / "out" / "tokenizer.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(bad), str(out)], out, "bad.model", "sentencepiece")
    model = model_file("tokenizer.model")
    # one piece's bytes not UTF-8 (the "▁the" piece's first byte made 0xff): the file and token named
    data = bytearray(model.read_bytes())
    at = data.find(b"\x0a\x06\xe2\x96\x81the")
    assert at > 0
    data[at + 2] = 0xFF
    damaged = tmp_path / "damaged.model"
    damaged.write_bytes(bytes(data))
    assert_refused(capsys, ["convert", str(damaged), str(out)], out, "damaged.model", "not valid UTF-8", "token ")
    # flags the input cannot take: exit 2, as any bad flag
    assert_refused(capsys, ["convert", str(model), str(out), "--quantize", "q8_0"], out, "tokenizer", rc=2)


def test_tokenizer_without_sentencepiece_names_the_extra(tmp_path, capsys, monkeypatch):
    model = tmp_path / "tokenizer.model"
    model.write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece raises ImportError
    out = tmp_path / "out" / "tokenizer.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(model), str(out)], out, "pip install sentencepiece", "convert")


# ---- Meta checkpoints: the model-parallel merge (numpy) and, with torch, the whole path ------------
def meta_state(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Meta names and layout (q/k rows interleaved) of the same random model."""
    t = hf_tensors(cfg, seed)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = {"tok_embeddings.weight": t["model.embed_tokens.weight"], "norm.weight": t["model.norm.weight"]}
    out["output.weight"] = t["lm_head.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        out[m + "attention_norm.weight"] = t[p + "input_layernorm.weight"]
        out[m + "attention.wq.weight"] = unpermute_rotary(t[p + "self_attn.q_proj.weight"], nh)
        out[m + "attention.wk.weight"] = unpermute_rotary(t[p + "self_attn.k_proj.weight"], nkv)
        out[m + "attention.wv.weight"] = t[p + "self_attn.v_proj.weight"]
        out[m + "attention.wo.weight"] = t[p + "self_attn.o_proj.weight"]
        out[m + "ffn_norm.weight"] = t[p + "post_attention_layernorm.weight"]
        out[m + "feed_forward.w1.weight"] = t[p + "mlp.gate_proj.weight"]
        out[m + "feed_forward.w2.weight"] = t[p + "mlp.down_proj.weight"]
        out[m + "feed_forward.w3.weight"] = t[p + "mlp.up_proj.weight"]
    return out


def split_model_parallel(state: dict, n: int) -> list[dict]:
    """What Meta's model-parallel training saves: each matrix cut into n slices along merge_axis."""
    shards = [{} for _ in range(n)]
    for name, a in state.items():
        parts = [a] * n if a.ndim == 1 else np.split(a, n, axis=merge_axis(name))
        for shard, part in zip(shards, parts):
            shard[name] = np.ascontiguousarray(part)
    return shards


META_CONFIG = {**BASE_CONFIG, "vocab_size": 68}  # every sliced axis even, as Meta's shards need


def test_model_parallel_merge_restores_every_tensor():
    state = meta_state(META_CONFIG)
    shards = split_model_parallel(state, 2)
    assert shards[0]["tok_embeddings.weight"].shape == (68, 24)  # embedding split by columns
    assert shards[0]["layers.0.feed_forward.w1.weight"].shape == (35, 48)  # w1 by rows
    assert shards[0]["layers.0.attention.wo.weight"].shape == (48, 24)  # wo by columns
    assert shards[0]["layers.0.feed_forward.w2.weight"].shape == (48, 35)  # w2 by columns
    assert shards[0]["layers.0.attention.wq.weight"].shape == (24, 48)  # wq by rows
    assert shards[0]["output.weight"].shape == (34, 48)  # the classifier by rows
    for name, a in state.items():
        assert np.array_equal(merge_model_parallel(name, [s[name] for s in shards]), a), name


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_checkpoint_matches_reference(tmp_path, monkeypatch, n_shards):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (only Meta .pth checkpoints need it)")
    cfg = META_CONFIG
    src = tmp_path / "meta"
    src.mkdir()
    params = {"dim": 48, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2, "multiple_of": 32, "norm_eps": 1e-5}
    (src / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))
    for i, shard in enumerate(split_model_parallel(meta_state(cfg), n_shards)):
        state = {n: torch.from_numpy(a).to(torch.bfloat16) for n, a in shard.items()}
        torch.save(state, src / f"consolidated.{i:02d}.pth")
    config = convert(src, tmp_path / "m.bin", seq_len=24)
    assert config.n_kv_heads == 2 and config.vocab_size == 68 and not config.shared_classifier
    t = {n: stored(a, "BF16") for n, a in hf_tensors(cfg).items()}
    ref = hf_reference_logits(cfg, t, TOKENS)
    err = rel_err(backend_logits(tmp_path / "m.bin", "numpy", TOKENS), ref)
    assert err <= TOL, f"worst relative error {err:.3g}"
    from llama2py.convert import shared

    monkeypatch.setattr(shared, "BLOCK_VALUES", 30)  # blocks of rows cut across the slices: same file
    convert(src, tmp_path / "blocks.bin", seq_len=24)
    assert (tmp_path / "blocks.bin").read_bytes() == (tmp_path / "m.bin").read_bytes()


def test_meta_params_defaults_and_seq_len(tmp_path):
    """params.json without n_kv_heads is multi-head attention; its max_seq_len is the context
    unless --seq-len (seq_len=) says otherwise."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (only Meta .pth checkpoints need it)")
    cfg = {**META_CONFIG, "num_key_value_heads": 6}
    src = tmp_path / "meta"
    src.mkdir()
    params = {"dim": 48, "n_layers": 2, "n_heads": 6, "norm_eps": 1e-5, "max_seq_len": 32, "vocab_size": -1}
    (src / "params.json").write_text(json.dumps(params))
    state = {n: torch.from_numpy(a) for n, a in meta_state(cfg).items()}
    torch.save(state, src / "consolidated.00.pth")
    config = convert(src, tmp_path / "m.bin")
    assert config.n_kv_heads == 6 and config.seq_len == 32
    assert convert(src, tmp_path / "m24.bin", seq_len=24).seq_len == 24


def test_meta_without_torch_names_the_extra(tmp_path, capsys, monkeypatch):
    src = tmp_path / "meta"
    src.mkdir()
    (src / "params.json").write_text(json.dumps({"dim": 48, "n_layers": 2, "n_heads": 6, "norm_eps": 1e-5}))
    (src / "consolidated.00.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert_refused(capsys, ["convert", str(src), str(out)], out, "pip install torch", "meta")
    (src / "consolidated.00.pth").unlink()
    assert_refused(capsys, ["convert", str(src), str(out)], out, "no consolidated.*.pth")
    (src / "params.json").write_text(json.dumps({"dim": 48, "n_layers": 2, "n_heads": 6, "rope_theta": 5e5}))
    assert_refused(capsys, ["convert", str(src), str(out)], out, "params.json", "rope_theta")


# ---- against transformers, where it is installed ----------------------------------------------------
def test_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional cross-check)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (optional cross-check)")
    cfg = dict(BASE_CONFIG)
    t = write_hf_model(tmp_path / "hf", cfg, hf_tensors(cfg), "F32")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    model.load_state_dict({n: torch.from_numpy(a) for n, a in t.items()})
    with torch.no_grad():
        ref = model(torch.tensor([TOKENS])).logits[0].double().numpy()
    convert(tmp_path / "hf", tmp_path / "m.bin")
    err = rel_err(backend_logits(tmp_path / "m.bin", "numpy", TOKENS), ref)
    assert err <= TOL, f"worst relative error against transformers {err:.3g}"


# ---- memory: tensor by tensor, not the model ------------------------------------------------------------
_PEAK_RSS = """
import sys
from pathlib import Path
from llama2py.checkpoint import weight_shapes
from llama2py.convert import convert, open_model

def peak_kb():  # VmHWM = ru_maxrss of this process image (ru_maxrss itself inherits the forking parent's peak)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

base = peak_kb()
if sys.argv[3] == "read":  # every chunk the writer would ask for, in order, and nothing else
    source = open_model(Path(sys.argv[1]))
    n = sum(chunk.size for name in weight_shapes(source.config) for chunk in source.chunks(name))
else:
    convert(sys.argv[1], sys.argv[2])
print(base, peak_kb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_peak_memory_is_about_one_tensor(tmp_path):
    # 24 layers of dim 512 / hidden 1536: 344 MB as float32, 172 MB of bf16 on disk, largest tensor 3 MB
    cfg = {
        **BASE_CONFIG,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 24,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 1024,
    }
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    D, H, V, L = 512, 1536, 1024, 24
    plain = np.full((H, D), 0.01, np.float32)
    for part, layers in enumerate((range(0, L // 2), range(L // 2, L))):
        t = {}
        for i in layers:
            p = f"model.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[p + f"self_attn.{n}.weight"] = plain[:D]
            for n in ("input_layernorm", "post_attention_layernorm"):
                t[p + f"{n}.weight"] = plain[0]
            t[p + "mlp.gate_proj.weight"] = t[p + "mlp.up_proj.weight"] = plain
            t[p + "mlp.down_proj.weight"] = plain.reshape(D, H)
        if part == 0:
            t["model.embed_tokens.weight"] = t["lm_head.weight"] = plain[:V]
            t["model.norm.weight"] = plain[0]
        write_safetensors(src / f"model-{part}.safetensors", t, "BF16")
    model_bytes = Config(D, H, L, 8, 8, V, 24, False).weight_bytes("f32")
    for mode in ("read", "convert"):
        res = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(src), str(tmp_path / "m.bin"), mode],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        base_kb, peak_kb = map(int, res.stdout.split())
        grew = (peak_kb - base_kb) * 1024
        assert grew < model_bytes / 4, (
            f"{mode}: a {model_bytes / 2**20:.0f} MiB model grew the peak RSS by {grew / 2**20:.0f} MiB "
            f"(from {base_kb / 1024:.0f} to {peak_kb / 1024:.0f} MiB): not tensor by tensor"
        )
    assert (tmp_path / "m.bin").stat().st_size > model_bytes


# ---- big models: sizes from Config, and info on a 7B-shaped v2 file ----------------------------------
LLAMA2_7B = model_shape("llama2-7B")


def test_info_sizes_for_7b_shape(tmp_path):
    from llama2py.checkpoint import Checkpoint

    int8 = SimpleNamespace(weight_type="q8_0", group_size=64)  # what a loaded v2 file holds; not built
    text = Checkpoint(tmp_path / "x.bin", 2, LLAMA2_7B, int8, 0, group_size=64).describe()
    assert "parameters:  6,738,415,616" in text
    q8, f32 = LLAMA2_7B.weight_bytes("q8_0", 64), LLAMA2_7B.weight_bytes("f32")
    assert 7.0e9 < q8 < 7.3e9 and 26.9e9 < f32 < 27.0e9  # int8 + a scale per 64 values, against 4 bytes each
    weights_line = next(line for line in text.splitlines() if line.startswith("weights:"))
    assert f"{q8:,}" in weights_line and f"{f32:,}" in weights_line, weights_line
    assert f"{LLAMA2_7B.kv_cache_bytes(1):,}" in next(
        line for line in text.splitlines() if line.startswith("KV cache:")
    )
    v1 = Checkpoint(tmp_path / "x.bin", 1, LLAMA2_7B, SimpleNamespace(weight_type="f32", group_size=None), 0).describe()
    assert f"{f32:,}" in next(line for line in v1.splitlines() if line.startswith("weights:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_info_on_7b_shaped_v2_file_reads_no_weights(tmp_path, make_checkpoint):
    from llama2py.checkpoint import HEADER_BYTES, header_bytes

    if getattr(load_checkpoint(make_checkpoint("odd_tiny", version=2)).weights.wq, "dtype", None) == np.float32:
        pytest.skip("the v2 loader still dequantizes to float32 (int8 v2 weights come with branch cpu)")
    path = tmp_path / "7b_q8.bin"
    with open(path, "wb") as f:  # a sparse file: the header, then zeros to the exact v2 size
        f.write(header_bytes(LLAMA2_7B, 2, 64))
        f.truncate(HEADER_BYTES + LLAMA2_7B.weight_bytes("q8_0", 64))
    code = (
        "import sys; from llama2py.cli import main; rc = main(['info', sys.argv[1]]); "
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr); sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "6,738,415,616" in res.stdout and f"{LLAMA2_7B.weight_bytes('q8_0', 64):,}" in res.stdout
    peak_mib = int(res.stderr.split()[-1]) / 1024
    assert peak_mib < 1024, f"info on a 7B-shaped v2 file peaked at {peak_mib:.0f} MiB of RSS"


def test_source_that_is_a_device_or_pipe(tmp_path, capsys):
    fifo = tmp_path / "t.model"
    os.mkfifo(fifo)
    for src in (fifo, Path("/dev/zero")):
        assert main(["convert", str(src), str(tmp_path / "out.bin")]) == 1
        err = capsys.readouterr().err
        assert "not a file or a folder (a device, a pipe or a socket)" in err, err
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path), str(tmp_path / "out.bin"), "--seq-len", "99999999999"])
    assert e.value.code == 2 and "--seq-len must be in 1..1048576" in capsys.readouterr().err


def test_safetensors_tensors_that_overlap_are_refused(tmp_path):
    """Each tensor owns its bytes: a header whose entries share bytes is damaged (the same bytes
    would be read as two weights)."""
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": a, "b": b}, "F32")
    assert set(SafetensorsFile(path).tensors) == {"a", "b"}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["b"]["data_offsets"] = [12, 36]  # 24 bytes, as a (2, 3) F32 tensor holds, from inside a
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + raw[8 + n :])
    with pytest.raises(ConvertError, match="tensors a and b overlap in the file"):
        SafetensorsFile(path)
