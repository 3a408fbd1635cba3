"""llama2.c checkpoints: versions 0, 1 and 2 (docs/FORMAT.md), memory-mapped and validated.

Every shape comes from the header and the file size is checked against it, so a truncated,
padded or foreign file is refused before any weight is touched.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

import numpy as np

from .errors import CheckpointError
from .files import PathLike, atomic_output
from .tokenizer import MIN_VOCAB

MAGIC = 0x616B3432  # "ak42" as a little-endian uint32 ("24ka" on disk)
HEADER_BYTES = 256  # versions 1 and 2 pad their header to this size
V0_HEADER_BYTES = 28  # version 0: the 7 int32 of the config only
# Generous sanity limits: they only exist to turn a garbage header into a clear error.
_MAX_DIM = 1 << 16
_MAX_VOCAB = 1 << 22
MAX_SEQ_LEN = 1 << 20


@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def capped(self, context: Optional[int]) -> Config:
        """This config with at most `context` positions (the KV cache's length; llama.cpp's -c): a
        cap, never more than seq_len; None keeps it."""
        if context is None:
            return self
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be an integer >= 1, got {context!r}")
        return replace(self, seq_len=min(context, self.seq_len))

    def cap_note(self, context: Optional[int]) -> str:
        """What capped() does with a context above seq_len, said ("" otherwise): a cap, not a way
        to extend the context."""
        if context is None or context <= self.seq_len:
            return ""
        return f"{context} is more than the checkpoint's seq_len {self.seq_len}: using {self.seq_len}"

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    @property
    def kv_mul(self) -> int:
        """Query heads per kv head (grouped-query attention when > 1)."""
        return self.n_heads // self.n_kv_heads

    def validate(self, where: str = "checkpoint", header: bool = False) -> None:
        """Refuse (CheckpointError, starting with where) a config no llama2.c model has. header:
        the config was read from a file's header, and the messages say so."""
        names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise CheckpointError(
                    f"{where}: {'header field ' if header else ''}{name} = {value} must be positive"
                    + ("; this is not a llama2.c checkpoint or it is damaged" if header else "")
                )
        limits = {
            "dim": _MAX_DIM,
            "hidden_dim": 8 * _MAX_DIM,
            "n_layers": 4096,
            "vocab_size": _MAX_VOCAB,
            "seq_len": MAX_SEQ_LEN,
        }
        over = [
            f"{name} {getattr(self, name):,} > {limit:,}"
            for name, limit in limits.items()
            if getattr(self, name) > limit
        ]
        if over:
            raise CheckpointError(
                f"{where}: header {self.describe()} is implausibly large; this is not a llama2.c checkpoint"
                if header
                else f"{where}: {', '.join(over)}: beyond what llama2py takes"
            )
        if self.vocab_size < MIN_VOCAB:
            raise CheckpointError(
                f"{where}: vocab_size {self.vocab_size} is too small: run's loop needs at least {MIN_VOCAB} "
                "tokens (<unk>, BOS = 1 and EOS = 2)"
            )
        if self.dim % self.n_heads:
            raise CheckpointError(f"{where}: dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise CheckpointError(f"{where}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_size % 2:
            raise CheckpointError(f"{where}: head size {self.head_size} is odd; RoPE needs pairs")

    # -- sizes: the one home of every size formula (bench, backends, cli and C++ estimates use these) --
    def param_counts(self) -> dict[str, int]:
        """Elements of each weight tensor as stored (wcls only when the classifier is not shared)."""
        counts = {name: math.prod(shape) for name, shape in weight_shapes(self).items()}
        if self.shared_classifier:
            del counts["wcls"]
        return counts

    @property
    def n_params(self) -> int:
        return sum(self.param_counts().values())

    def weight_bytes(self, weight_type: str = "f32", group_size: Optional[int] = None) -> int:
        """Bytes of the weights in memory. f32: 4 per parameter. q8_0: the matrices (and the token
        embedding) as int8 plus one float32 scale per group of group_size; the norms stay float32."""
        counts = self.param_counts()
        if weight_type == "f32":
            return 4 * sum(counts.values())
        if weight_type != "q8_0" or not group_size or group_size < 1:
            raise ValueError(f"weight_type must be 'f32' or 'q8_0' with a positive group_size, got {weight_type!r}")
        total = 0
        for name, n in counts.items():
            if name in NORM_TENSORS:
                total += 4 * n
            else:
                per_part = n // _layers(name, self)  # v2 quantizes each layer's matrix separately
                total += _layers(name, self) * (per_part + 4 * -(-per_part // group_size))
        return total

    def kv_cache_bytes(self, batch: int = 1) -> int:
        """Float32 key and value cache for batch sequences of seq_len positions."""
        return 2 * 4 * self.n_layers * batch * self.seq_len * self.kv_dim

    def describe(self) -> str:
        return (
            f"dim={self.dim} hidden_dim={self.hidden_dim} n_layers={self.n_layers} "
            f"n_heads={self.n_heads} n_kv_heads={self.n_kv_heads} vocab_size={self.vocab_size} "
            f"seq_len={self.seq_len} shared_classifier={self.shared_classifier}"
        )


NORM_TENSORS = ("rms_att", "rms_ffn", "rms_final")  # always float32, also in v2 files


# Weight tensors in their canonical (layer-stacked, row-major (out, in)) shapes.
def weight_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    L, D, H, KV, V = c.n_layers, c.dim, c.hidden_dim, c.kv_dim, c.vocab_size
    return {
        "token_embedding": (V, D),
        "rms_att": (L, D),
        "wq": (L, D, D),
        "wk": (L, KV, D),
        "wv": (L, KV, D),
        "wo": (L, D, D),
        "rms_ffn": (L, D),
        "w1": (L, H, D),
        "w2": (L, D, H),
        "w3": (L, H, D),
        "rms_final": (D,),
        "wcls": (V, D),
    }


# Known model shapes, defined once: karpathy's tinyllamas (docs/FORMAT.md) and Llama 2 7B
# (untied classifier). `llama2py synth --shape`, the benchmarks and the tests take them from here.
MODEL_SHAPES: dict[str, Config] = {
    "stories260K": Config(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512),
    "stories15M": Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256),
    "stories42M": Config(dim=512, hidden_dim=1376, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, seq_len=1024),
    "stories110M": Config(
        dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000, seq_len=1024
    ),
    "llama2-7B": Config(
        dim=4096,
        hidden_dim=11008,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        vocab_size=32000,
        seq_len=4096,
        shared_classifier=False,
    ),
}


def shape_name(name: str) -> str:
    """The MODEL_SHAPES key of a shape name in any case (stories15m -> stories15M), or a ValueError
    listing them."""
    for key in MODEL_SHAPES:
        if name.lower() == key.lower():
            return key
    raise ValueError(f"unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPES)}")


def model_shape(name: str) -> Config:
    """The Config of a known model shape (MODEL_SHAPES, any case), or a ValueError listing them."""
    return MODEL_SHAPES[shape_name(name)]


@dataclass(frozen=True)
class QuantizedTensor:
    """A Q8_0 weight tensor as a v2 file stores it (docs/FORMAT.md): int8 values and one float32 scale per
    group of group_size consecutive values (row-major), each layer quantized separately.

    parts[i] = (values (rows, cols) int8, scales (rows * cols / group_size,) float32) of layer i (one
    part for the token embedding and the classifier); usually views into the memory-mapped file.
    value = int8 * scale of its group. Groups may straddle rows (a group size that does not divide
    the row length): the group of element (r, k) of a part is (r * cols + k) // group_size."""

    parts: tuple[tuple[np.ndarray, np.ndarray], ...]
    shape: tuple[int, ...]  # the float tensor's shape, e.g. (n_layers, hidden_dim, dim)
    group_size: int

    dtype = np.dtype(np.int8)

    @property
    def nbytes(self) -> int:
        return sum(q.nbytes + s.nbytes for q, s in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, layer: int) -> QuantizedTensor:
        """One layer of a layer-stacked tensor, as a one-part QuantizedTensor."""
        if len(self.shape) != 3:
            raise TypeError("index a layer-stacked tensor; use rows() for the token embedding")
        return QuantizedTensor((self.parts[layer],), self.shape[1:], self.group_size)

    def dequantize(self) -> np.ndarray:
        """Float32 values (value = int8 * scale); a new array of the tensor's shape. Products beyond
        float32 are inf, silently: a model whose weights overflow stops at its first non-finite logits."""
        with np.errstate(over="ignore"):
            out = [(q.reshape(-1, self.group_size).astype(np.float32) * s[:, None]).reshape(-1) for q, s in self.parts]
        return np.concatenate(out).reshape(self.shape)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dequantized rows of a one-part 2-D tensor (the embedding lookup): index (...) -> (..., cols)."""
        (q, s), cols = self.parts[0], self.shape[-1]
        index = np.asarray(index)
        flat = index.reshape(-1)
        start = flat[:, None] * cols + np.arange(cols)[None, :]  # (n, cols) flat offsets
        with np.errstate(over="ignore"):  # (as dequantize)
            vals = q.reshape(-1)[start].astype(np.float32) * s[start // self.group_size]
        return vals.reshape(index.shape + (cols,))


def quantize_tensor(w: np.ndarray, group_size: int, layered: bool, name: str = "tensor") -> QuantizedTensor:
    """Q8_0-quantize a float tensor as a v2 file would hold it (each layer separately if layered).
    The pages of a memory-mapped w leave the process part by part (release_pages)."""
    w = np.asarray(w, dtype=np.float32)
    layers = list(w) if layered else [w]
    parts = []
    for i, part in enumerate(layers):
        if part.size % group_size:
            raise ValueError(f"group size {group_size} does not divide a tensor part of {part.size} values")
        q, s = quantize_q80(part, group_size, f"{name} layer {i}" if layered else name)
        parts.append((q.reshape(part.shape), s))
        release_pages(part)
    return QuantizedTensor(tuple(parts), tuple(w.shape), group_size)


def _file_mapping(a: np.ndarray) -> Optional[mmap.mmap]:
    """The read-only file mapping a is a view of, else None (arrays in the process's own memory)."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base if isinstance(base, mmap.mmap) and not a.flags.writeable else None


def file_backed(a: np.ndarray) -> bool:
    """Whether a's pages can leave memory and be read again from its file (release_pages)."""
    return _file_mapping(a) is not None


def release_pages(a: np.ndarray) -> None:
    """Drop the pages that hold a's bytes from this process when a is a view of a read-only file
    mapping (a no-op otherwise): read again from the file if touched (a neighbour's too), they no
    longer count in its memory. Load-time quantization reads each float tensor once; without this the float32 file
    stayed resident beside the int8 copy (stories110M: peak RSS 757 MiB, float32 alone 591)."""
    base = _file_mapping(a)
    advise = getattr(base, "madvise", None)
    if advise is None or not hasattr(mmap, "MADV_DONTNEED") or not a.flags.c_contiguous:
        return
    start = a.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    if a.nbytes:
        with contextlib.suppress(OSError):  # locked memory (mlockall) refuses: only a saving is lost
            advise(mmap.MADV_DONTNEED, first, start + a.nbytes - first)


@dataclass
class Weights:
    """The weights, usually views into a memory-mapped file (never copied on load).

    Float32 arrays, or (weight type q8_0: a v2 file, or quantized at load) QuantizedTensor for the
    matrices and the token embedding, the norms staying float32."""

    token_embedding: Union[np.ndarray, QuantizedTensor]  # (vocab, dim)
    rms_att: np.ndarray  # (n_layers, dim)
    wq: Union[np.ndarray, QuantizedTensor]  # (n_layers, dim, dim)
    wk: Union[np.ndarray, QuantizedTensor]  # (n_layers, kv_dim, dim)
    wv: Union[np.ndarray, QuantizedTensor]  # (n_layers, kv_dim, dim)
    wo: Union[np.ndarray, QuantizedTensor]  # (n_layers, dim, dim)
    rms_ffn: np.ndarray  # (n_layers, dim)
    w1: Union[np.ndarray, QuantizedTensor]  # (n_layers, hidden_dim, dim)
    w2: Union[np.ndarray, QuantizedTensor]  # (n_layers, dim, hidden_dim)
    w3: Union[np.ndarray, QuantizedTensor]  # (n_layers, hidden_dim, dim)
    rms_final: np.ndarray  # (dim,)
    wcls: Union[np.ndarray, QuantizedTensor]  # (vocab, dim); the same object as token_embedding when shared

    def tensors(self) -> dict[str, Union[np.ndarray, QuantizedTensor]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def nbytes(self, shared_classifier: bool) -> int:
        return sum(a.nbytes for n, a in self.tensors().items() if not (n == "wcls" and shared_classifier))

    @property
    def weight_type(self) -> str:
        """The weight type: "q8_0" when the matrices are int8 (QuantizedTensor), else "f32"."""
        return "q8_0" if isinstance(self.wq, QuantizedTensor) else "f32"

    @property
    def group_size(self) -> Optional[int]:
        return self.wq.group_size if isinstance(self.wq, QuantizedTensor) else None

    def dequantized(self) -> Weights:
        """Float32 weights (self when already float32)."""
        if self.weight_type == "f32":
            return self
        t = {n: a.dequantize() if isinstance(a, QuantizedTensor) else a for n, a in self.tensors().items()}
        if self.wcls is self.token_embedding:
            t["wcls"] = t["token_embedding"]
        return Weights(**t)

    def quantized(self, group_size: int) -> Weights:
        """Q8_0 weights in groups of group_size (self when already int8 with that group size)."""
        if self.weight_type == "q8_0" and self.group_size == group_size:
            return self
        src = self.dequantized()
        t = dict(src.tensors())
        for name in _Q_ORDER + ("wcls",):
            if name == "wcls" and src.wcls is src.token_embedding:
                continue
            t[name] = quantize_tensor(t[name], group_size, per_layer(name), name)
        if src.wcls is src.token_embedding:
            t["wcls"] = t["token_embedding"]
        return Weights(**t)


WEIGHT_TYPES = ("f32", "q8_0")


def convert_weights(
    weights: Weights, config: Config, weight_type: Optional[str], path: Optional[PathLike] = None
) -> Weights:
    """The weights in memory as weight_type: None keeps the file's (a v2 file int8, else float32);
    "q8_0" quantizes float weights at load time (group size as llama2.c's exporter picks it);
    "f32" dequantizes a v2 file's. path: the checkpoint's, for the message of a value int8 cannot
    hold."""
    if weight_type is None:
        return weights
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, got {weight_type!r}")
    if weight_type == "f32":
        return weights.dequantized()
    if weights.weight_type == "q8_0":
        return weights
    try:
        return weights.quantized(q8_group_size(weights.group_size, config.dim))
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}" if path else str(e)) from None


@dataclass
class Checkpoint:
    path: Path
    version: int
    config: Config
    weights: Weights
    file_bytes: int
    group_size: Optional[int] = None  # version 2 only
    _mmap: Optional[np.memmap] = field(default=None, repr=False)

    @property
    def n_params(self) -> int:
        return self.config.n_params

    @property
    def weight_type(self) -> str:
        """How the weights are held in memory: "q8_0" (int8, a v2 file) or "f32"."""
        return self.weights.weight_type

    def describe(self) -> str:
        c = self.config
        fmt = {
            0: "llama2.c v0 (legacy fp32)",
            1: "llama2.c v1 (fp32)",
            2: f"llama2.c v2 (Q8_0, group {self.group_size})",
        }
        lines = [
            f"file:        {self.path}",
            f"format:      {fmt[self.version]}",
            f"config:      {c.describe()}",
            f"head_size:   {c.head_size}  kv_dim: {c.kv_dim}  "
            f"{'grouped-query attention (' + str(c.kv_mul) + ' query heads per kv head)' if c.kv_mul > 1 else 'multi-head attention'}",
            f"parameters:  {self.n_params:,}",
            f"file bytes:  {self.file_bytes:,}",
        ]
        # Sizes from the one home of size formulas (Config), not from arrays: right for any file size.
        weight_type = self.weight_type
        line = f"weights:     {weight_type}, {c.weight_bytes(weight_type, self.weights.group_size):,} bytes in memory once loaded"
        if weight_type != "f32":
            line += f" ({c.weight_bytes('f32'):,} as float32)"
        lines.append(line)
        lines.append(f"KV cache:    {c.kv_cache_bytes(1):,} bytes per sequence of seq_len {c.seq_len} positions")
        return "\n".join(lines)


def _read_header_ints(buf: bytes, offset: int, n: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{n}i", buf, offset)


# Where a tokenizer goes, for the messages that find a tokenizer given as the checkpoint or the
# other way round (every command that reads a checkpoint says it, quantize and info included, which
# take no tokenizer).
TOKENIZER_PLACE = "a tokenizer goes after the checkpoint, with -z (tokenizer= in the API), where a command takes one"


def convert_tokenizer_command(path: PathLike) -> str:
    """The command that makes a llama2.c tokenizer of sentencepiece's tokenizer.model at path."""
    return f"llama2py convert {path} tokenizer.bin"


def identify(head: bytes) -> str:
    """What the first bytes of an input file look like, for the message when it was given in the
    wrong place: "sentencepiece" (a tokenizer.model), "tokenizer" (a llama2.c tokenizer.bin, whose
    first piece is <unk>), "checkpoint" (llama2.c's magic, or a legacy header that makes a valid
    Config), else ""."""
    if head[:1] == b"\n" and b"<unk>" in head[:16]:  # protobuf field 1 (pieces), the first is <unk>
        return "sentencepiece"
    if len(head) >= 17 and struct.unpack_from("<i", head, 8)[0] == 5 and head[12:17] == b"<unk>":
        return "tokenizer"
    if len(head) >= 4 and struct.unpack_from("<I", head, 0)[0] == MAGIC:
        return "checkpoint"
    if len(head) >= V0_HEADER_BYTES:
        dims = _read_header_ints(head, 0, 7)
        try:
            Config(*dims[:5], abs(dims[5]), dims[6]).validate()
            return "checkpoint" if dims[5] != 0 else ""
        except CheckpointError:
            pass
    return ""


def identify_file(path: PathLike) -> str:
    """identify() of a file's first bytes ("" where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return identify(f.read(64))
    except OSError:
        return ""


# Array order inside the files (docs/FORMAT.md); tensor_order() is the whole layout per version.
_V0_ORDER = ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final")
_V1_ORDER = ("rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")
_Q_ORDER = ("token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")


def per_layer(name: str) -> bool:
    """Whether a v2 file quantizes the array layer by layer (the embedding and classifier: whole)."""
    return name not in ("token_embedding", "wcls")


def _layers(name: str, c: Config) -> int:
    """How many separately quantized tensors an array is stored as in a v2 file."""
    return c.n_layers if per_layer(name) else 1


def _v2_bytes(c: Config, gs: int) -> int:
    return HEADER_BYTES + c.weight_bytes("q8_0", gs)


def _refuse_model_source(path: Path, source: Path) -> None:
    """A Hugging Face or Meta model folder (config.json or params.json in `source`) given where a
    llama2.c checkpoint goes: refused with the command that converts it."""
    if any((source / name).is_file() for name in ("config.json", "params.json")):
        raise CheckpointError(
            f"checkpoint {path}: a Hugging Face or Meta Llama model, not a llama2.c checkpoint; convert it "
            f"first: llama2py convert {source} OUT.bin"
        )


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Open a llama2.c checkpoint of version 0, 1 or 2; raise CheckpointError on anything odd. A
    known name without a folder (stories260K.bin) that is not in the current directory is the model
    store's copy (download.in_store)."""
    from .download import REGISTRY, in_store  # local: download imports this module
    from .input_files import as_path, read_regular_file, regular_file_size

    path = in_store(path, "checkpoint") or as_path(path, "checkpoint")  # a known name, not here: the store's copy
    # a name the model store knows (stories260K, stories260K.bin): the download that fetches it
    known = next(
        (e.name for e in REGISTRY.values() if path.name in (e.name, e.filename) and e.kind == "checkpoint"), ""
    )
    tokenizer_name = any(path.name in (e.name, e.filename) and e.kind == "tokenizer" for e in REGISTRY.values())
    if known:
        hint = f" (run `llama2py download {known}` or pass the path of a llama2.c .bin)"
    elif tokenizer_name:
        hint = f" ({path.name} names a tokenizer; {TOKENIZER_PLACE})"
    else:
        hint = " (give the path of a llama2.c .bin; `llama2py download --list` shows the ones llama2py can fetch)"
    if path.is_dir():
        _refuse_model_source(path, path)
    # one of a Hugging Face or Meta model's files (checked once its bytes are known not to be ours)
    model_file = path.suffix.lower() in (".safetensors", ".pth", ".json")
    size = regular_file_size(path, "checkpoint", CheckpointError, hint)  # no FIFO, device, directory
    if size < 28:
        if model_file:
            _refuse_model_source(path, path.parent)
        raise CheckpointError(f"checkpoint {path}: only {size} bytes, too short for a llama2.c header")
    head = read_regular_file(path, "checkpoint", CheckpointError, hint, first=HEADER_BYTES)
    kind = identify(head)
    if kind != "checkpoint" and model_file:
        _refuse_model_source(path, path.parent)
    if kind == "tokenizer":
        raise CheckpointError(f"checkpoint {path}: this is a llama2.c tokenizer, not a checkpoint ({TOKENIZER_PLACE})")
    if kind == "sentencepiece":
        raise CheckpointError(
            f"checkpoint {path}: this is a sentencepiece tokenizer.model, not a llama2.c checkpoint (as a "
            f"llama2.c tokenizer: {convert_tokenizer_command(path)})"
        )
    magic = struct.unpack_from("<I", head, 0)[0]
    if magic == MAGIC:
        if len(head) < 41:
            raise CheckpointError(f"checkpoint {path}: truncated header ({size} bytes)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise CheckpointError(
                f"checkpoint {path}: llama2.c magic with unknown version {version} (llama2py reads versions 0, 1 and 2)"
            )
        dims = _read_header_ints(head, 8, 7)
        shared = head[36] != 0  # as llama2.c's runq reads it (its export writes 0 or 1)
        config = Config(*dims, shared_classifier=shared)
        config.validate(f"checkpoint {path}", header=True)
        if version == 1:
            return _load_float(path, config, size, 1)
        return _load_v2(path, config, size, struct.unpack_from("<i", head, 37)[0])
    dims = _read_header_ints(head, 0, 7)
    if dims[5] == 0 or any(d <= 0 for i, d in enumerate(dims) if i != 5):
        raise CheckpointError(
            f"checkpoint {path}: not a llama2.c checkpoint (no version magic, and the "
            f"legacy header {dims} has non-positive sizes)"
        )
    config = Config(*dims[:5], abs(dims[5]), dims[6], shared_classifier=dims[5] > 0)
    config.validate(f"checkpoint {path}", header=True)
    return _load_float(path, config, size, 0)


def _size_error(path: Path, version: int, config: Config, expected: int, size: int) -> CheckpointError:
    what = "truncated" if size < expected else "has trailing bytes (padded or not this format)"
    return CheckpointError(
        f"checkpoint {path}: {what}: a v{version} file with {config.describe()} "
        f"must be exactly {expected:,} bytes, found {size:,}"
    )


def _map(path: Path, dtype, size: int) -> np.memmap:
    """The whole file as a read-only memory map of dtype; a map the system refuses (an address-space
    limit below the file's size, most often) a CheckpointError naming the file."""
    try:
        return np.memmap(path, dtype=dtype, mode="r", shape=(size // np.dtype(dtype).itemsize,))
    except OSError as e:
        limit = "; is the address space limited below that (ulimit -v)?" if e.errno == errno.ENOMEM else ""
        raise CheckpointError(
            f"checkpoint {path}: cannot map its {size:,} bytes into memory ({e.strerror or e}){limit}"
        )


def _load_float(path: Path, config: Config, size: int, version: int) -> Checkpoint:
    """A v0 or v1 file: every tensor a float32 view of one memory map, where float_tensor_offsets
    (tensor_order) puts it; v0's RoPE tables are skipped."""
    expected = checkpoint_bytes(config, version)
    if size != expected:
        raise _size_error(path, version, config, expected, size)
    mm = _map(path, "<f4", size)  # headers are whole floats: 28 or 256 bytes
    shapes = weight_shapes(config)
    arrays = {}
    for name, offset in float_tensor_offsets(config, version).items():
        if name != "rope":
            arrays[name] = mm[offset // 4 : offset // 4 + math.prod(shapes[name])].reshape(shapes[name])
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    return Checkpoint(path, version, config, Weights(**arrays), size, _mmap=mm)


def _load_v2(path: Path, config: Config, size: int, gs: int) -> Checkpoint:
    if gs <= 0 or config.dim % gs:
        fit = _fitting_group(config, size)
        raise CheckpointError(
            f"checkpoint {path}: v2 group size {gs} must be positive and divide dim {config.dim} "
            f"(llama2.c's export picks such a size){fit or '; the file is damaged or not from llama2.c'}"
        )
    shapes = weight_shapes(config)  # every tensor has a factor dim, so groups never straddle tensors
    expected = _v2_bytes(config, gs)
    if size != expected:
        fit = _fitting_group(config, size)
        if fit:
            raise CheckpointError(
                f"checkpoint {path}: v2 group size {gs} does not match the file's {size:,} bytes "
                f"(with {config.describe()} it needs {expected:,}){fit}"
            )
        raise _size_error(path, 2, config, expected, size)
    raw = _map(path, np.uint8, size)
    off = HEADER_BYTES
    arrays: dict[str, np.ndarray] = {}
    for name in tensor_order(config, 2):
        shape = shapes[name]
        if name in NORM_TENSORS:  # float32
            n = math.prod(shape)
            arrays[name] = raw[off : off + 4 * n].view("<f4").reshape(shape)
            off += 4 * n
            continue
        # Q8_0 stays int8 (value = int8 * scale of its group of gs consecutive values): views into the
        # file, layer by layer (a tensor's layers alternate values and scales, so they are separate parts).
        n_parts = _layers(name, config)
        part_shape = shape[1:] if len(shape) == 3 else shape  # a layer of a stacked tensor
        per = int(np.prod(shape)) // n_parts
        parts = []
        for _ in range(n_parts):
            q = raw[off : off + per].view(np.int8).reshape(part_shape)
            off += per
            s = raw[off : off + 4 * (per // gs)].view("<f4")
            off += 4 * (per // gs)
            parts.append((q, s))
        arrays[name] = QuantizedTensor(tuple(parts), shape, gs)
    _check_v2_floats(path, arrays)
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    return Checkpoint(path, 2, config, Weights(**arrays), size, group_size=gs, _mmap=raw)


def _fitting_group(config: Config, size: int) -> str:
    """When a v2 header's group size does not fit: the size that makes a file of exactly `size`
    bytes, as a message tail ("" when none does)."""
    for g in range(1, config.dim + 1):
        if config.dim % g == 0 and _v2_bytes(config, g) == size:
            return f"; the file's size fits group size {g}: its header is damaged"
    return ""


def _check_v2_floats(path: Path, arrays: dict) -> None:
    """A v2 file's float parts (the norms and the scales: 4 of every group_size + 4 bytes, 1/17 at group 64) must be finite:
    int8 products quantize their inputs (runq's arithmetic), which turns a NaN into an arbitrary
    integer, so a damaged scale would tell a wrong story instead of failing the finiteness check
    every step makes."""
    for name, a in arrays.items():
        floats = [s for _, s in a.parts] if isinstance(a, QuantizedTensor) else [a.reshape(-1)]
        for part, f in enumerate(floats):
            for i in range(0, f.size, _PIECE_VALUES):  # in pieces: no temporary of the file's size
                bad = np.flatnonzero(~np.isfinite(f[i : i + _PIECE_VALUES]))
                if bad.size:
                    what = "scales" if isinstance(a, QuantizedTensor) else "values"
                    where = f" layer {part}" if len(floats) > 1 else ""
                    raise CheckpointError(
                        f"checkpoint {path}: {name}{where} {what} hold {f[i + bad[0]]} at index {i + bad[0]:,}: "
                        "the file is damaged (a v2 file's norms and scales are finite)"
                    )


# ----------------------------------------------------------------------------------------------
# Writing: one streaming writer for every version (tests, `llama2py synth`, `quantize`, conversions)

# Values quantized or converted per step: bounds the writer's temporaries (~4 MiB of float32)
# whatever size of chunk a source yields.
_PIECE_VALUES = 1 << 20

# A weight source: chunks(name) yields float arrays whose row-major concatenation is the whole
# tensor weight_shapes(config)[name] (any chunk sizes; a v2 layer is quantized as one tensor
# however it is chunked). `write_checkpoint` also takes a Weights.
ChunkSource = Callable[[str], Iterable[np.ndarray]]


def quantize_q80(w: np.ndarray, gs: int, what: str = "a tensor") -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 as llama2.c's exporter does it: per group of gs values, scale = max|w| / 127, int8 =
    round(w / scale) (half to even, as torch.round). A group of zeros gets scale 0 and int8 0,
    where the exporter would divide 0 by 0 (docs/FORMAT.md, version 2). NaN or Inf (what names
    the tensor) is refused: int8 cannot hold it, and the exporter would write NaN scales, which
    make garbage of every product they touch."""
    g = np.asarray(w, dtype=np.float32).reshape(-1, gs)
    scale = np.abs(g).max(axis=1) / np.float32(127.0)
    if not np.isfinite(scale).all():  # a group's max is NaN or Inf exactly when it holds one
        bad = g.reshape(-1)[np.flatnonzero(~np.isfinite(g.reshape(-1)))[0]]
        raise CheckpointError(
            f"{what} holds {bad}: int8 (Q8_0) cannot store NaN or Inf, so these float32 weights cannot be "
            "quantized (the file is damaged, or the model diverged in training)"
        )
    safe = np.where(scale == 0, np.float32(1.0), scale)
    q = np.round(g / safe[:, None]).astype(np.int8)
    return q.reshape(-1), scale.astype(np.float32)


def q8_group_size(file_group_size: Optional[int], dim: int) -> int:
    """The group size of int8 weights loaded from a file: a v2 file's own, else the one load-time
    quantization picks (default_group_size)."""
    return file_group_size or default_group_size(dim)


def default_group_size(dim: int) -> int:
    """The v2 group size llama2.c's export picks: 64, halved until it divides dim. Groups run over
    each flattened tensor, whose size is a multiple of dim, so it tiles every tensor; it need not
    divide hidden_dim (docs/FORMAT.md, version 2). Refused when only 1 would fit (odd dim)."""
    gs = 64
    while gs > 1 and dim % gs:
        gs //= 2
    if gs < 2:
        raise CheckpointError(
            f"dim {dim} is odd: no group size from 64 down to 2 divides it, so it cannot be stored as v2 (Q8_0)"
        )
    return gs


def check_group_size(config: Config, group_size: Optional[int]) -> int:
    """The group size a v2 file of config gets: the requested one, which must divide dim, or the
    export's default."""
    if group_size is None:
        return default_group_size(config.dim)
    if group_size < 1 or config.dim % group_size:
        raise CheckpointError(
            f"group size {group_size} does not divide dim {config.dim}; v2 groups must tile every "
            f"tensor (leave it out to get {default_group_size(config.dim)}, as llama2.c's export picks)"
        )
    return group_size


def runq_group_note(
    config: Config, group_size: int, remedy: str = "`llama2py quantize --group-size {g}` of the float file"
) -> str:
    """What a user comparing with llama2.c should know about a v2 file of this group size: where it
    does not divide hidden_dim (w2's rows), runq drops each row's last hidden_dim % group_size
    products (docs/FORMAT.md, Q8_0 arithmetic; llama2py does not). "" when it divides. remedy: the
    command that writes a file of the group both read alike, {g} standing for that group."""
    tail = config.hidden_dim % group_size
    if not tail:
        return ""
    note = (
        f"group size {group_size} does not divide hidden_dim {config.hidden_dim}: llama2.c's runq reads this "
        f"file with the last {tail} values of each w2 row dropped (llama2py reads it whole)"
    )
    try:
        both = default_group_size(math.gcd(config.dim, config.hidden_dim))
    except CheckpointError:  # only 1 divides both: no v2 file both read alike
        return note
    mib = checkpoint_bytes(config, 2, both) / 2**20
    return note + f"; {remedy.format(g=both)} makes one both read alike ({mib:,.1f} MiB)"


def tensor_order(config: Config, version: int) -> list[str]:
    """The tensors in the order a file of this version stores them (docs/FORMAT.md). "rope" is v0's
    two obsolete RoPE tables (written as zeros, skipped on load); wcls only when not shared."""
    classifier = [] if config.shared_classifier else ["wcls"]
    if version == 0:
        return [*_V0_ORDER, "rope", *classifier]
    if version == 1:
        return [*_V1_ORDER, *classifier]
    if version == 2:
        return [*NORM_TENSORS, *_Q_ORDER, *classifier]
    raise ValueError(f"version must be 0, 1 or 2, got {version}")


def _rope_floats(config: Config) -> int:
    return config.seq_len * config.head_size  # two tables of seq_len * head_size / 2


def checkpoint_bytes(config: Config, version: int, group_size: Optional[int] = None) -> int:
    """The exact size of a file of this config and version: the loaders check it, writers promise it."""
    if version == 0:
        return V0_HEADER_BYTES + config.weight_bytes("f32") + 4 * _rope_floats(config)
    if version == 1:
        return HEADER_BYTES + config.weight_bytes("f32")
    if version == 2:
        return _v2_bytes(config, check_group_size(config, group_size))
    raise ValueError(f"version must be 0, 1 or 2, got {version}")


def float_tensor_offsets(config: Config, version: int) -> dict[str, int]:
    """Where each tensor starts in a v0 or v1 (float32) file, in bytes ("rope": v0's RoPE tables)."""
    if version not in (0, 1):
        raise ValueError(f"float tensor offsets exist for versions 0 and 1, got {version}")
    counts = {**config.param_counts(), "rope": _rope_floats(config)}
    offset = V0_HEADER_BYTES if version == 0 else HEADER_BYTES
    offsets = {}
    for name in tensor_order(config, version):
        offsets[name] = offset
        offset += 4 * counts[name]
    return offsets


def header_bytes(config: Config, version: int, group_size: Optional[int] = None) -> bytes:
    """v0: 7 int32 (vocab negative when the classifier is separate); v1/v2: magic, version, the 7
    int32, the shared-classifier byte, v2's int32 group size, zeros to 256 bytes (docs/FORMAT.md)."""
    c = config
    if version == 0:
        vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
        return struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.seq_len)
    head = struct.pack(
        "<Ii7iB",
        MAGIC,
        version,
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.seq_len,
        int(c.shared_classifier),
    )
    if version == 2:
        head += struct.pack("<i", group_size)
    return head + b"\0" * (HEADER_BYTES - len(head))


def weights_source(config: Config, weights: Weights) -> ChunkSource:
    """A Weights as a chunk source: one layer per chunk (views of float arrays, no copies; a
    quantized tensor, anything with dequantize(), gives one dequantized layer at a time). Shapes are
    checked here, before anything is written."""
    shapes = weight_shapes(config)
    tensors = weights.tensors()
    for name, shape in shapes.items():
        got = tuple(getattr(tensors[name], "shape", ()))
        if got != shape:
            raise ValueError(f"weight {name} has shape {got}, config needs {shape}")

    def chunks(name: str) -> Iterator[np.ndarray]:
        tensor = tensors[name]
        whole = _layers(name, config) == 1 or name in NORM_TENSORS
        for part in [tensor] if whole else (tensor[layer] for layer in range(config.n_layers)):
            yield part.dequantize() if hasattr(part, "dequantize") else part

    return chunks


class _Output:
    """Counts the bytes written and reports them to progress(done, total)."""

    def __init__(self, f: BinaryIO, total: int, progress: Optional[Callable[[int, int], None]]):
        self.f, self.total, self.progress, self.written = f, total, progress, 0

    def write(self, data) -> None:
        data = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
        self.f.write(data)
        self.written += len(data)
        if self.progress:
            self.progress(self.written, self.total)


def _pieces(name: str, chunks: Iterable[np.ndarray], numel: int) -> Iterator[np.ndarray]:
    """The source's values for one tensor as flat little-endian float32 pieces of at most
    _PIECE_VALUES; checks the dtype and that exactly numel values arrive."""
    seen = 0
    for chunk in chunks:
        a = np.asarray(chunk)
        if a.dtype.kind != "f":
            raise ValueError(f"weight {name}: the source gave {a.dtype} values, expected floats")
        flat = a.reshape(-1)
        if seen + flat.size > numel:
            raise ValueError(f"weight {name}: the source gave more than its {numel:,} values")
        for i in range(0, flat.size, _PIECE_VALUES):
            yield np.ascontiguousarray(flat[i : i + _PIECE_VALUES], dtype="<f4")
        seen += flat.size
    if seen != numel:
        raise ValueError(f"weight {name}: the source gave {seen:,} values, the tensor has {numel:,}")


def _write_q80(out: _Output, pieces: Iterator[np.ndarray], part_len: int, gs: int, name: str) -> None:
    """Each part (a layer, or the whole embedding/classifier) as its int8 values, then its scales.
    Pieces need not align with groups: a group split across two pieces is joined first."""
    scales: list[np.ndarray] = []  # of the current part, (part_len / gs,) in the end
    carry = np.empty(0, np.float32)  # (< gs,) values of a group the last piece cut
    filled = 0  # values of the current part seen so far
    part = 0  # its number, for the message of a value int8 cannot hold
    for piece in pieces:
        while piece.size:
            what = f"{name} layer {part}" if per_layer(name) else name
            head, piece = piece[: part_len - filled], piece[part_len - filled :]
            filled += head.size
            if carry.size:
                carry, head = np.concatenate([carry, head[: gs - carry.size]]), head[gs - carry.size :]
            if carry.size == gs:
                q, s = quantize_q80(carry, gs, what)
                out.write(q)
                scales.append(s)
                carry = np.empty(0, np.float32)
            whole = head.size - head.size % gs
            if whole:
                q, s = quantize_q80(head[:whole], gs, what)
                out.write(q)
                scales.append(s)
            if whole < head.size:
                carry = np.concatenate([carry, head[whole:]])
            if filled == part_len:  # part_len is a multiple of gs, so no group is left open
                out.write(np.concatenate(scales).astype("<f4"))
                scales, filled, part = [], 0, part + 1


def write_checkpoint(
    path: PathLike,
    config: Config,
    source: Union[Weights, ChunkSource],
    version: int = 1,
    group_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    inputs: tuple[PathLike, ...] = (),
) -> int:
    """Write a llama2.c checkpoint of `version` (docs/FORMAT.md); return its size in bytes.

    source: a Weights, or chunks(name) -> float arrays whose row-major concatenation is the tensor
    weight_shapes(config)[name] (asked for "wcls" only when the classifier is not shared). Memory: one chunk plus ~4 MiB (and a v2 part's scales); for v2
    each layer of a layered tensor is quantized separately, as llama2.c's export does.
    group_size (v2 only): default as llama2.c's export (default_group_size); it must divide dim.
    progress(bytes written, total bytes) after every write. inputs: files the output must not be.
    The file appears complete or not at all (files.atomic_output)."""
    config.validate("config")
    if version == 2:
        group_size = check_group_size(config, group_size)
    elif group_size is not None:
        raise ValueError(f"group_size is for v2 (Q8_0) files only, got {group_size} for v{version}")
    total = checkpoint_bytes(config, version, group_size)
    chunks = weights_source(config, source) if isinstance(source, Weights) else source
    shapes = weight_shapes(config)
    with atomic_output(path, inputs, total) as f:
        out = _Output(f, total, progress)
        out.write(header_bytes(config, version, group_size))
        for name in tensor_order(config, version):
            if name == "rope":
                for i in range(0, _rope_floats(config), _PIECE_VALUES):
                    out.write(np.zeros(min(_PIECE_VALUES, _rope_floats(config) - i), "<f4"))
                continue
            numel = math.prod(shapes[name])
            pieces = _pieces(name, chunks(name), numel)
            if version == 2 and name not in NORM_TENSORS:
                try:
                    _write_q80(out, pieces, numel // _layers(name, config), group_size, name)
                except CheckpointError as e:  # a value int8 cannot hold: say where it comes from
                    raise CheckpointError(f"{', '.join(map(str, inputs))}: {e}" if inputs else str(e)) from None
            else:
                for piece in pieces:
                    out.write(piece)
        if out.written != total:  # a broken invariant of this module, never bad input
            raise AssertionError(f"wrote {out.written} bytes, the v{version} layout has {total}")
    return total


def random_weights(config: Config, seed: int = 0, scale: Optional[float] = None) -> Weights:
    """Deterministic random float32 weights of the config's shapes (tests and benchmarks).

    Matrices are scaled by 1/sqrt(fan_in) so activations stay O(1) through any depth, and the norm
    weights sit near 1, so a greedy run keeps producing varied tokens instead of collapsing."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in weight_shapes(config).items():
        if name == "wcls" and config.shared_classifier:
            continue
        if name.startswith("rms"):
            arrays[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = shape[-1]
            s = scale if scale is not None else (1.0 if name == "token_embedding" else 1.0 / np.sqrt(fan_in))
            arrays[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(s)
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    return Weights(**arrays)
