"""Meta's own Llama checkpoints (params.json + consolidated.NN.pth) as llama2.c tensors.

Meta's q/k rows are already in the interleaved pair order llama2.c uses (no permutation). Several
consolidated files mean model parallelism: each holds a slice of every matrix, and the slices are
joined along the axis llama2.c's export joins them (`merge_model_parallel`). Reading .pth files
needs PyTorch (the `meta` extra); they are memory-mapped, and converted in blocks of rows. (The
mapped pages read stay resident until the end, counted in the RSS, but they are clean file pages
the kernel drops under memory pressure: the conversion does not need the model's size in RAM.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..checkpoint import Config
from ..errors import ConvertError
from . import shared
from .shared import check_rope_theta, norm_eps_note, read_json_object, source_shapes

META_NAMES = {
    "token_embedding": "tok_embeddings.weight",
    "rms_att": "layers.{i}.attention_norm.weight",
    "wq": "layers.{i}.attention.wq.weight",
    "wk": "layers.{i}.attention.wk.weight",
    "wv": "layers.{i}.attention.wv.weight",
    "wo": "layers.{i}.attention.wo.weight",
    "rms_ffn": "layers.{i}.ffn_norm.weight",
    "w1": "layers.{i}.feed_forward.w1.weight",
    "w2": "layers.{i}.feed_forward.w2.weight",
    "w3": "layers.{i}.feed_forward.w3.weight",
    "rms_final": "norm.weight",
    "wcls": "output.weight",
}
DEFAULT_SEQ_LEN = 4096  # Llama 2's context; params.json does not record it (--seq-len overrides)


def merge_axis(name: str) -> int:
    """The axis model-parallel slices of a matrix are joined along: the token embedding, wo and w2
    are split by columns (their input), every other matrix by rows (its output)."""
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1
    return 0


def merge_model_parallel(name: str, parts: list[np.ndarray]) -> np.ndarray:
    """One tensor from its model-parallel slices; vectors (the norms) are replicated in every
    shard, so the first is taken."""
    if len(parts) == 1 or parts[0].ndim == 1:
        return parts[0]
    return np.concatenate(parts, axis=merge_axis(name))


def merged_shape(name: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if len(shapes) == 1 or len(shapes[0]) == 1:
        return tuple(shapes[0])
    axis = merge_axis(name)
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConvertError(
            "reading Meta .pth checkpoints needs PyTorch: pip install torch (the meta extra) "
            "(Hugging Face safetensors directories convert without it)"
        )
    return torch


class MetaSource:
    def __init__(self, src: Path, seq_len: Optional[int] = None, note: Callable[[str], None] = lambda s: None):
        self.src = src
        path = src / "params.json"
        params = read_json_object(path, "a Meta params.json")
        check_rope_theta(params.get("rope_theta", 10000.0), f"{path}: rope_theta")
        if params.get("use_scaled_rope"):
            raise ConvertError(f"{path}: use_scaled_rope = true: llama2.c's RoPE has no scaling (Llama 3.1)")
        for field in ("dim", "n_layers", "n_heads"):
            if not isinstance(params.get(field), int) or params[field] <= 0:
                raise ConvertError(f"{path}: {field} = {params.get(field)!r}: a positive integer is required")
        eps_note = norm_eps_note(params.get("norm_eps", 1e-5), f"{path}: norm_eps")
        if eps_note:
            note(eps_note)
        files = sorted(src.glob("consolidated.*.pth"))
        self.input_files = [path, *files]
        if not files:
            raise ConvertError(f"{src}: no consolidated.*.pth files beside params.json")
        torch = _import_torch()
        self.shards = []
        for f in files:
            try:
                self.shards.append(torch.load(f, map_location="cpu", mmap=True, weights_only=True))
            except Exception as e:  # torch raises many types for a damaged file
                raise ConvertError(f"{f}: cannot load it with PyTorch ({type(e).__name__}: {e}); download it again")
        shapes = self._shapes()
        dim, n_heads = params["dim"], params["n_heads"]
        n_kv_heads = params.get("n_kv_heads") or n_heads
        for key in ("token_embedding", "wcls", "w1"):
            if META_NAMES[key].format(i=0) not in shapes:
                raise ConvertError(f"{files[0]}: tensor {META_NAMES[key].format(i=0)} is missing")
        vocab_size, emb_dim = shapes[META_NAMES["token_embedding"]]
        if emb_dim != dim or dim % n_heads or (dim // n_heads) % 2:
            raise ConvertError(
                f"{path}: dim {dim} and n_heads {n_heads} do not fit the weights (embedding width {emb_dim}) "
                "or give an odd head size"
            )
        self.config = Config(
            dim=dim,
            hidden_dim=shapes[META_NAMES["w1"].format(i=0)][0],
            n_layers=params["n_layers"],
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=vocab_size,
            seq_len=seq_len or params.get("max_seq_len") or DEFAULT_SEQ_LEN,
            shared_classifier=False,  # Meta always stores output.weight
        )
        self.config.validate(str(path))
        for name, shape in source_shapes(self.config, META_NAMES).items():
            if shapes.get(name) != shape:
                raise ConvertError(f"{src}: tensor {name} has shape {shapes.get(name)}, params.json implies {shape}")

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        names = [n for n in self.shards[0] if not n.startswith("rope.")]
        for i, shard in enumerate(self.shards[1:], 1):
            if sorted(n for n in shard if not n.startswith("rope.")) != sorted(names):
                raise ConvertError(f"{self.src}: consolidated shard {i} holds other tensors than shard 0")
        return {n: merged_shape(n, [tuple(s[n].shape) for s in self.shards]) for n in names}

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of the merged tensor, reading only those rows of each slice."""
        parts = [shard[name] for shard in self.shards]
        if len(parts) == 1 or merge_axis(name) == 1:  # every slice holds some columns of every row
            return merge_model_parallel(name, [p[start:stop].float().numpy() for p in parts])
        blocks, first = [], 0  # sliced by rows: take the rows each slice holds
        for p in parts:
            lo, hi = max(start, first), min(stop, first + p.shape[0])
            if lo < hi:
                blocks.append(p[lo - first : hi - first].float().numpy())
            first += p.shape[0]
        return np.concatenate(blocks)

    def _blocks(self, name: str) -> Iterator[np.ndarray]:
        """One tensor as float32 blocks of whole rows, about shared.BLOCK_VALUES values each."""
        if self.shards[0][name].ndim == 1:  # the norms: replicated in every shard
            yield self.shards[0][name].float().numpy()
            return
        rows, cols = merged_shape(name, [tuple(s[name].shape) for s in self.shards])
        step = max(1, shared.BLOCK_VALUES // cols)
        for start in range(0, rows, step):
            yield self._rows(name, start, min(rows, start + step))

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        meta = META_NAMES[name]
        if "{i}" not in meta:
            yield from self._blocks(meta)
            return
        for i in range(self.config.n_layers):
            yield from self._blocks(meta.format(i=i))
