"""llama2.c checkpoints: versions 0, 1 and 2 (../shared/FORMAT.md), memory-mapped and validated.

Every shape comes from the header and the file size is checked against it, so a truncated,
padded or foreign file is refused before any weight is touched.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import CheckpointError

MAGIC = 0x616B3432  # "ak42" as a little-endian uint32 ("24ka" on disk)
HEADER_BYTES = 256  # versions 1 and 2 pad their header to this size
# Generous sanity limits: they only exist to turn a garbage header into a clear error.
_MAX_DIM = 1 << 16
_MAX_VOCAB = 1 << 22
_MAX_SEQ = 1 << 20


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

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    @property
    def kv_mul(self) -> int:
        """Query heads per kv head (grouped-query attention when > 1)."""
        return self.n_heads // self.n_kv_heads

    def validate(self, where: str = "checkpoint") -> None:
        names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise CheckpointError(
                    f"{where}: header field {name} = {value} must be positive; "
                    "this is not a llama2.c checkpoint or it is damaged"
                )
        if (
            self.dim > _MAX_DIM
            or self.hidden_dim > 8 * _MAX_DIM
            or self.n_layers > 4096
            or self.vocab_size > _MAX_VOCAB
            or self.seq_len > _MAX_SEQ
        ):
            raise CheckpointError(
                f"{where}: header {self.describe()} is implausibly large; this is not a llama2.c checkpoint"
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


@dataclass
class Weights:
    """Float32 weights, usually views into a memory-mapped file (never copied on load)."""

    token_embedding: np.ndarray  # (vocab, dim)
    rms_att: np.ndarray  # (n_layers, dim)
    wq: np.ndarray  # (n_layers, dim, dim)
    wk: np.ndarray  # (n_layers, kv_dim, dim)
    wv: np.ndarray  # (n_layers, kv_dim, dim)
    wo: np.ndarray  # (n_layers, dim, dim)
    rms_ffn: np.ndarray  # (n_layers, dim)
    w1: np.ndarray  # (n_layers, hidden_dim, dim)
    w2: np.ndarray  # (n_layers, dim, hidden_dim)
    w3: np.ndarray  # (n_layers, hidden_dim, dim)
    rms_final: np.ndarray  # (dim,)
    wcls: np.ndarray  # (vocab, dim); the same array as token_embedding when shared

    def tensors(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def nbytes(self, shared_classifier: bool) -> int:
        return sum(a.nbytes for n, a in self.tensors().items() if not (n == "wcls" and shared_classifier))


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
        if self.version == 2:
            lines.append(
                f"weights:     {c.weight_bytes('q8_0', self.group_size):,} bytes as int8 + scales, "
                f"{c.weight_bytes('f32'):,} as float32"
            )
        else:
            lines.append(f"weights:     {c.weight_bytes('f32'):,} bytes as float32")
        lines.append(f"KV cache:    {c.kv_cache_bytes(1):,} bytes per sequence of seq_len {c.seq_len} positions")
        return "\n".join(lines)


def _read_header_ints(buf: bytes, offset: int, n: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{n}i", buf, offset)


def _expected_v0_floats(c: Config) -> int:
    shapes = weight_shapes(c)
    n = sum(int(np.prod(s)) for k, s in shapes.items() if k != "wcls")
    n += c.seq_len * c.head_size  # the two obsolete RoPE tables, seq_len * head_size / 2 each
    if not c.shared_classifier:
        n += c.vocab_size * c.dim
    return n


# Array order inside version 1 and 2 files (docs/FORMAT.md).
_V1_ORDER = ("rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")
_Q_ORDER = ("token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _layers(name: str, c: Config) -> int:
    """How many separately quantized tensors an array is stored as in a v2 file."""
    return 1 if name in ("token_embedding", "wcls") else c.n_layers


def _v2_bytes(c: Config, gs: int) -> int:
    return HEADER_BYTES + c.weight_bytes("q8_0", gs)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a llama2.c checkpoint of version 0, 1 or 2; raise CheckpointError on anything odd."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path}: no such file (run `llama2py download stories15M` or pass the path of a llama2.c .bin)"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, expected a llama2.c .bin file")
    size = path.stat().st_size
    if size < 28:
        raise CheckpointError(f"checkpoint {path}: only {size} bytes, too short for a llama2.c header")
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
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
        shared = head[36] == 1
        config = Config(*dims, shared_classifier=shared)
        config.validate(f"checkpoint {path}")
        if version == 1:
            return _load_v1(path, config, size)
        return _load_v2(path, config, size, struct.unpack_from("<i", head, 37)[0])
    dims = _read_header_ints(head, 0, 7)
    if dims[5] == 0 or any(d <= 0 for i, d in enumerate(dims) if i != 5):
        raise CheckpointError(
            f"checkpoint {path}: not a llama2.c checkpoint (no version magic, and the "
            f"legacy header {dims} has non-positive sizes)"
        )
    config = Config(*dims[:5], abs(dims[5]), dims[6], shared_classifier=dims[5] > 0)
    config.validate(f"checkpoint {path}")
    return _load_v0(path, config, size)


def _size_error(path: Path, version: int, config: Config, expected: int, size: int) -> CheckpointError:
    what = "truncated" if size < expected else "has trailing bytes (padded or not this format)"
    return CheckpointError(
        f"checkpoint {path}: {what}: a v{version} file with {config.describe()} "
        f"must be exactly {expected:,} bytes, found {size:,}"
    )


def _carve(mm: np.ndarray, offset: int, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    n = int(np.prod(shape))
    return mm[offset : offset + n].reshape(shape), offset + n


def _load_v0(path: Path, config: Config, size: int) -> Checkpoint:
    expected = 28 + 4 * _expected_v0_floats(config)
    if size != expected:
        raise _size_error(path, 0, config, expected, size)
    mm = np.memmap(path, dtype="<f4", mode="r", offset=28, shape=((size - 28) // 4,))
    shapes = weight_shapes(config)
    arrays, off = {}, 0
    for name in ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"):
        arrays[name], off = _carve(mm, off, shapes[name])
    off += config.seq_len * config.head_size  # skip the obsolete RoPE tables
    arrays["wcls"] = arrays["token_embedding"] if config.shared_classifier else _carve(mm, off, shapes["wcls"])[0]
    return Checkpoint(path, 0, config, Weights(**arrays), size, _mmap=mm)


def _load_v1(path: Path, config: Config, size: int) -> Checkpoint:
    shapes = weight_shapes(config)
    n = sum(int(np.prod(shapes[k])) for k in _V1_ORDER)
    if not config.shared_classifier:
        n += int(np.prod(shapes["wcls"]))
    expected = HEADER_BYTES + 4 * n
    if size != expected:
        raise _size_error(path, 1, config, expected, size)
    mm = np.memmap(path, dtype="<f4", mode="r", offset=HEADER_BYTES, shape=(n,))
    arrays, off = {}, 0
    for name in _V1_ORDER:
        arrays[name], off = _carve(mm, off, shapes[name])
    arrays["wcls"] = arrays["token_embedding"] if config.shared_classifier else _carve(mm, off, shapes["wcls"])[0]
    return Checkpoint(path, 1, config, Weights(**arrays), size, _mmap=mm)


def _load_v2(path: Path, config: Config, size: int, gs: int) -> Checkpoint:
    if gs <= 0 or config.dim % gs:
        raise CheckpointError(f"checkpoint {path}: v2 group size {gs} must be positive and divide dim {config.dim}")
    shapes = weight_shapes(config)  # every tensor has a factor dim, so groups never straddle tensors
    expected = _v2_bytes(config, gs)
    if size != expected:
        raise _size_error(path, 2, config, expected, size)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    off = HEADER_BYTES
    arrays: dict[str, np.ndarray] = {}
    for name in ("rms_att", "rms_ffn", "rms_final"):
        n = int(np.prod(shapes[name]))
        arrays[name] = raw[off : off + 4 * n].view("<f4").reshape(shapes[name])
        off += 4 * n
    # Dequantize to float32 (Q8_0: value = int8 * scale of its group of gs consecutive values).
    names = list(_Q_ORDER) + ([] if config.shared_classifier else ["wcls"])
    for name in names:
        shape = shapes[name]
        parts = []
        per = int(np.prod(shape)) // _layers(name, config)
        for _ in range(_layers(name, config)):
            q = raw[off : off + per].view(np.int8)
            off += per
            s = raw[off : off + 4 * (per // gs)].view("<f4")
            off += 4 * (per // gs)
            parts.append((q.reshape(-1, gs).astype(np.float32) * s[:, None]).reshape(-1))
        arrays[name] = np.concatenate(parts).reshape(shape)
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    return Checkpoint(path, 2, config, Weights(**arrays), size, group_size=gs, _mmap=raw)


# ----------------------------------------------------------------------------------------------
# Writing (tests, `llama2py synth`, conversions)


def quantize_q80(w: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 as llama2.c's exporter does it: per group of gs values, scale = max|w| / 127."""
    g = np.asarray(w, dtype=np.float32).reshape(-1, gs)
    scale = np.abs(g).max(axis=1) / 127.0
    safe = np.where(scale == 0, 1.0, scale)
    q = np.round(g / safe[:, None]).astype(np.int8)
    return q.reshape(-1), scale.astype(np.float32)


def default_group_size(dim: int) -> int:
    gs = 64
    while dim % gs:
        gs //= 2
    return gs


def header_bytes(config: Config, version: int, group_size: Optional[int] = None) -> bytes:
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


def write_checkpoint(
    path: str | os.PathLike,
    config: Config,
    weights: Weights,
    version: int = 0,
    group_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> int:
    """Write weights in llama2.c format `version`; return the bytes written.

    `progress(n)` is called with the byte count of each chunk written (for a progress bar)."""
    if version not in (0, 1, 2):
        raise ValueError(f"version must be 0, 1 or 2, got {version}")
    config.validate("config")
    shapes = weight_shapes(config)
    t = weights.tensors()
    for name, shape in shapes.items():
        if tuple(t[name].shape) != shape:
            raise ValueError(f"weight {name} has shape {t[name].shape}, config needs {shape}")
    if version == 2:
        group_size = group_size or default_group_size(config.dim)
        if config.dim % group_size:
            raise ValueError(f"group size {group_size} must divide dim {config.dim}")
    written = 0

    def put(f, arr: np.ndarray) -> None:
        nonlocal written
        data = np.ascontiguousarray(arr, dtype="<f4" if arr.dtype != np.int8 else np.int8)
        flat = data.reshape(-1)
        step = 1 << 22
        for i in range(0, flat.size, step):
            chunk = flat[i : i + step].tobytes()
            f.write(chunk)
            written += len(chunk)
            if progress:
                progress(len(chunk))

    with open(path, "wb") as f:
        head = header_bytes(config, version, group_size)
        f.write(head)
        written += len(head)
        if version == 0:
            for name in (
                "token_embedding",
                "rms_att",
                "wq",
                "wk",
                "wv",
                "wo",
                "rms_ffn",
                "w1",
                "w2",
                "w3",
                "rms_final",
            ):
                put(f, t[name])
            put(f, np.zeros(config.seq_len * config.head_size, np.float32))  # obsolete RoPE tables
            if not config.shared_classifier:
                put(f, t["wcls"])
        elif version == 1:
            for name in _V1_ORDER:
                put(f, t[name])
            if not config.shared_classifier:
                put(f, t["wcls"])
        else:
            for name in ("rms_att", "rms_ffn", "rms_final"):
                put(f, t[name])
            names = list(_Q_ORDER) + ([] if config.shared_classifier else ["wcls"])
            for name in names:
                arr = t[name]
                for part in [arr] if _layers(name, config) == 1 else list(arr):
                    q, s = quantize_q80(part, group_size)
                    put(f, q)
                    put(f, s)
    return written


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
