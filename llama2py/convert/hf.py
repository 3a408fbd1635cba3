"""Hugging Face Llama directories (config.json + *.safetensors) as llama2.c tensors, one at a time.

Names (HF -> llama2.c): embed_tokens -> token_embedding, input_layernorm -> rms_att, q/k/v/o_proj
-> wq/wk/wv/wo, post_attention_layernorm -> rms_ffn, gate/down/up_proj -> w1/w2/w3, norm ->
rms_final, lm_head -> wcls. Hugging Face stores q_proj and k_proj with each head's rows permuted
for its rotate-half RoPE; llama2.c (like Meta) rotates adjacent pairs, so those rows are put back
(`unpermute_rotary`), per query head for wq and per kv head for wk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..checkpoint import Config
from ..errors import ConvertError
from ..input_files import parse_json
from . import shared
from .safetensors import SafetensorsFile
from .shared import check_rope_theta, norm_eps_note, read_json_object, source_shapes

INDEX = "model.safetensors.index.json"

# llama2.c tensor -> HF tensor name (per layer where it has {i})
HF_NAMES = {
    "token_embedding": "model.embed_tokens.weight",
    "rms_att": "model.layers.{i}.input_layernorm.weight",
    "wq": "model.layers.{i}.self_attn.q_proj.weight",
    "wk": "model.layers.{i}.self_attn.k_proj.weight",
    "wv": "model.layers.{i}.self_attn.v_proj.weight",
    "wo": "model.layers.{i}.self_attn.o_proj.weight",
    "rms_ffn": "model.layers.{i}.post_attention_layernorm.weight",
    "w1": "model.layers.{i}.mlp.gate_proj.weight",
    "w2": "model.layers.{i}.mlp.down_proj.weight",
    "w3": "model.layers.{i}.mlp.up_proj.weight",
    "rms_final": "model.norm.weight",
    "wcls": "lm_head.weight",
}
# Tensors some exports carry that hold nothing llama2.c needs (RoPE tables are recomputed).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q_proj/k_proj (n_heads * head_size, dim) from Hugging Face's rotate-half order to
    the interleaved pair order of Meta and llama2.c: within a head, HF row r (r < head_size/2) and
    row r + head_size/2 are a RoPE pair; llama2.c wants them as rows 2r and 2r + 1."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return np.ascontiguousarray(w.reshape(n_heads, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols))


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of unpermute_rotary: what Hugging Face's conversion script does to Meta's rows."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return np.ascontiguousarray(w.reshape(n_heads, half, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols))


def read_config(src: Path, seq_len: Optional[int], note: Callable[[str], None]) -> Config:
    """The llama2.c Config of a HF Llama config.json; refuse, naming the field, what llama2.c
    cannot represent."""
    path = src / "config.json"
    cfg = read_json_object(path, "a Hugging Face model config")

    def refuse(field: str, why: str) -> ConvertError:
        return ConvertError(f"{path}: {field} = {cfg.get(field)!r}: {why}")

    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise refuse("model_type", "llama2py converts Llama models (model_type 'llama') only")
    archs = cfg.get("architectures")
    if archs is not None and archs != ["LlamaForCausalLM"]:
        raise refuse("architectures", "llama2py converts LlamaForCausalLM only")
    if cfg.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", "llama2.c's feed-forward is SwiGLU (silu)")
    if cfg.get("rope_scaling") is not None:
        raise refuse("rope_scaling", "llama2.c's RoPE has no scaling; the converted model would be wrong")
    check_rope_theta(cfg.get("rope_theta", 10000.0), f"{path}: rope_theta")
    for field in ("attention_bias", "mlp_bias"):
        if cfg.get(field):
            raise refuse(field, "llama2.c's format has no bias vectors")
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(field), int) or cfg[field] <= 0:
            raise refuse(field, "a positive integer is required")
    dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv_heads = cfg.get("num_key_value_heads") or n_heads
    if dim % n_heads:
        raise ConvertError(f"{path}: hidden_size {dim} is not a multiple of num_attention_heads {n_heads}")
    head_size = dim // n_heads
    if cfg.get("head_dim") not in (None, head_size):
        raise refuse("head_dim", f"llama2.c's head size is hidden_size / num_attention_heads = {head_size}")
    if head_size % 2:
        raise ConvertError(
            f"{path}: head size hidden_size / num_attention_heads = {head_size} is odd; RoPE rotates pairs, "
            "the kernels need an even head size"
        )
    if not isinstance(n_kv_heads, int) or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise refuse("num_key_value_heads", f"must divide num_attention_heads {n_heads}")
    eps_note = norm_eps_note(cfg.get("rms_norm_eps", 1e-6), f"{path}: rms_norm_eps")
    if eps_note:
        note(eps_note)
    if seq_len is None:
        seq_len = cfg.get("max_position_embeddings", 2048)
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise refuse("max_position_embeddings", "a positive integer is required (or pass --seq-len)")
    config = Config(
        dim=dim,
        hidden_dim=cfg["intermediate_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=cfg["vocab_size"],
        seq_len=seq_len,
        shared_classifier=bool(cfg.get("tie_word_embeddings", False)),
    )
    config.validate(str(path))
    return config


def open_shards(src: Path) -> dict[str, SafetensorsFile]:
    """tensor name -> the open shard holding it, from the index when there is one, else from every
    *.safetensors in the folder. Every shard's header is validated here (sizes, dtypes)."""
    index = src / INDEX
    if index.exists():
        try:
            weight_map = parse_json(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConvertError(f"{index}: not a valid safetensors index (expected a JSON object with a weight_map)")
        for name in files:
            if Path(name).name != name:
                raise ConvertError(f"{index}: shard name {name!r} is not a file name in {src}")
        for name in files:
            if not (src / name).is_file():
                raise ConvertError(f"{index} names the shard {name}, which is missing in {src}; download it")
    else:
        files = sorted(p.name for p in src.glob("*.safetensors"))
        if not files:
            bins = sorted(p.name for p in src.glob("*.bin"))
            hint = f" (found {bins[0]}: PyTorch .bin weights; save the model as safetensors)" if bins else ""
            raise ConvertError(f"{src}: no *.safetensors weights in this folder{hint}")
        weight_map = None
    shards = {name: SafetensorsFile(src / name) for name in files}
    where: dict[str, SafetensorsFile] = {}
    for name in files:
        for tensor in shards[name].tensors:
            if weight_map is not None and weight_map.get(tensor) != name:
                continue  # the index decides; a stray tensor elsewhere is not ours
            if tensor in where:
                raise ConvertError(f"{src}: tensor {tensor} is in both {where[tensor].path.name} and {name}")
            where[tensor] = shards[name]
    if weight_map is not None:
        for tensor, name in weight_map.items():
            if tensor not in where:
                raise ConvertError(f"{src / name}: the index says it holds {tensor}, but it does not")
    return where


class HfSource:
    """A Hugging Face Llama directory, checked completely before any tensor is read."""

    def __init__(self, src: Path, seq_len: Optional[int] = None, note: Callable[[str], None] = lambda s: None):
        self.src = src
        self.config = read_config(src, seq_len, note)
        self.where = open_shards(src)
        self.input_files = [src / "config.json", src / INDEX] + sorted({f.path for f in self.where.values()})
        c = self.config
        expected = source_shapes(c, HF_NAMES)
        for name in self.where:
            if name.endswith(".bias"):
                raise ConvertError(f"{src}: tensor {name}: llama2.c's format has no bias vectors")
            if name not in expected and not name.endswith(_IGNORED_SUFFIXES):
                if name == HF_NAMES["wcls"] and c.shared_classifier:
                    continue
                raise ConvertError(f"{src}: unexpected tensor {name}; this is not a plain Llama model")
        for name, shape in expected.items():
            if name not in self.where:
                raise ConvertError(f"{src}: tensor {name} is missing from the safetensors files")
            got = self.where[name].tensors[name].shape
            if got != shape:
                raise ConvertError(
                    f"{self.where[name].path}: tensor {name} has shape {list(got)}, config.json implies {list(shape)}"
                )

    def _blocks(self, hf_name: str, rope_heads: int = 0) -> Iterator[np.ndarray]:
        """One source tensor as float32 blocks of whole rows, about shared.BLOCK_VALUES values each; with
        rope_heads, blocks of whole heads with their rows put in llama2.c's RoPE order."""
        shard = self.where[hf_name]
        shape = shard.tensors[hf_name].shape
        if len(shape) == 1:
            yield shard.read(hf_name)
            return
        rows, cols = shape
        unit = rows // rope_heads if rope_heads else 1  # rows of one head
        step = max(unit, shared.BLOCK_VALUES // cols // unit * unit)
        for start in range(0, rows, step):
            block = shard.read_rows(hf_name, start, min(rows, start + step))
            yield unpermute_rotary(block, block.shape[0] // unit) if rope_heads else block

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        """The writer's source: tensor `name` (llama2.c naming) as float32 blocks, layer after layer."""
        c = self.config
        if name == "wcls" and c.shared_classifier:
            name = "token_embedding"
        hf = HF_NAMES[name]
        rope_heads = {"wq": c.n_heads, "wk": c.n_kv_heads}.get(name, 0)
        if "{i}" not in hf:
            yield from self._blocks(hf)
            return
        for i in range(c.n_layers):
            yield from self._blocks(hf.format(i=i), rope_heads)
