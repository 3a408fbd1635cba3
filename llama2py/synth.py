"""`llama2py synth`: seeded random-weight checkpoints of any shape, for benchmarks and tests.

Real stories15M/42M/110M weights cannot always be downloaded, but a checkpoint of the same shape
with random weights costs exactly the same arithmetic. The file is written tensor by tensor in
chunks of rows (never the whole model in memory), in format v0, v1 or v2 (docs/FORMAT.md).

Every chunk of every tensor gets its own generator, seeded from (seed, tensor, layer, chunk), so
the weights do not depend on the file format: a v0 and a v1 file of one seed hold the same floats,
and the same seed always gives identical bytes.

So that a greedy run never stops early (run stops when it samples BOS, token 1), the classifier
row of BOS is made tiny: with a shared classifier the BOS embedding row is scaled by BOS_SCALE
(it stays a usable, non-zero input embedding), with a separate classifier its BOS row is zero.
Either way BOS's logit is ~0 while the maximum over the other vocab_size - 1 logits is well above.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator
from typing import Callable, Optional

import numpy as np

from .argtypes import int_at_least
from .checkpoint import HEADER_BYTES, Config, header_bytes, quantize_q80, weight_shapes

BOS = 1
BOS_SCALE = 0.01
CHUNK_FLOATS = 1 << 21  # 8 MiB of float32 per generated chunk

# name: (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) of karpathy's models
SHAPES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "stories260K": (64, 172, 5, 8, 4, 512, 512),
    "stories15M": (288, 768, 6, 6, 6, 32000, 256),
    "stories42M": (512, 1376, 8, 8, 8, 32000, 1024),
    "stories110M": (768, 2048, 12, 12, 12, 32000, 1024),
}

# A fixed id per tensor for seeding (never reorder: it would change every synthetic file).
_TENSOR_ID = {
    name: i
    for i, name in enumerate(
        ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls")
    )
}
_LAYERED = ("rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3")
_V0_ORDER = ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final")
_V1_ORDER = ("rms_att", "rms_ffn", "rms_final", "token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")
_Q_ORDER = ("token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3")


def shape_config(name: str, shared_classifier: bool = True) -> Config:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    return Config(*SHAPES[name], shared_classifier=shared_classifier)


def synth_group_size(config: Config) -> int:
    """v2 group size: like llama2.c's exporter (64, halved until it divides dim), but it must also
    divide hidden_dim here (stories260K's 172 needs 4)."""
    gs = 64
    while config.dim % gs or config.hidden_dim % gs:
        gs //= 2
    return gs


def _parts(config: Config, name: str) -> list[tuple[int, tuple[int, ...]]]:
    """(layer, shape) of each separately generated part of a tensor (layer -1: not per layer)."""
    shape = weight_shapes(config)[name]
    if name in _LAYERED:
        return [(layer, shape[1:]) for layer in range(config.n_layers)]
    return [(-1, shape)]


def _part_chunks(config: Config, name: str, layer: int, shape: tuple[int, ...], seed: int) -> Iterator[np.ndarray]:
    """The float32 values of one part as 2-D chunks of whole rows, deterministically."""
    rows, row_len = (1, shape[0]) if len(shape) == 1 else shape
    per = max(1, CHUNK_FLOATS // row_len)
    tid = _TENSOR_ID[name]
    for ci, r0 in enumerate(range(0, rows, per)):
        n = min(per, rows - r0)
        rng = np.random.default_rng([seed, tid, layer + 1, ci])
        if name.startswith("rms"):
            a = np.float32(1.0) + np.float32(0.1) * rng.standard_normal((n, row_len), dtype=np.float32)
        else:
            a = rng.standard_normal((n, row_len), dtype=np.float32)
            if name != "token_embedding":  # keep activations O(1) at any depth
                a *= np.float32(1.0 / math.sqrt(row_len))
        if r0 <= BOS < r0 + n:
            if name == "token_embedding" and config.shared_classifier:
                a[BOS - r0] *= np.float32(BOS_SCALE)
            elif name == "wcls":
                a[BOS - r0] = 0.0
        yield a


def file_bytes(config: Config, version: int = 0, group_size: Optional[int] = None) -> int:
    """The exact size of a checkpoint of this config and version."""
    shapes = weight_shapes(config)
    names = [n for n in shapes if n != "wcls"] + ([] if config.shared_classifier else ["wcls"])
    floats = sum(math.prod(shapes[n]) for n in names)
    if version == 0:
        return 28 + 4 * (floats + config.seq_len * config.head_size)
    if version == 1:
        return HEADER_BYTES + 4 * floats
    gs = group_size or synth_group_size(config)
    n = HEADER_BYTES + 4 * (2 * config.n_layers * config.dim + config.dim)
    for name in list(_Q_ORDER) + ([] if config.shared_classifier else ["wcls"]):
        numel = math.prod(shapes[name])
        n += numel + 4 * (numel // gs)
    return n


def write_synthetic(
    path: str | os.PathLike,
    config: Config,
    version: int = 0,
    seed: int = 0,
    group_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> int:
    """Write a random-weight checkpoint; return the bytes written. progress(n) after each chunk.

    Memory: one chunk of CHUNK_FLOATS floats at a time (v2: one layer's int8 values of a tensor,
    or the token embedding's, plus its scales)."""
    if version not in (0, 1, 2):
        raise ValueError(f"version must be 0, 1 or 2, got {version}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    config.validate("synth")
    if version == 2:
        group_size = group_size or synth_group_size(config)
        if group_size <= 0 or config.dim % group_size or config.hidden_dim % group_size:
            raise ValueError(f"group size {group_size} must divide dim {config.dim} and hidden_dim {config.hidden_dim}")
    written = 0

    def put(f, data: np.ndarray) -> None:
        nonlocal written
        b = data.tobytes()
        f.write(b)
        written += len(b)
        if progress:
            progress(len(b))

    def put_f32(f, name: str) -> None:
        for layer, shape in _parts(config, name):
            for chunk in _part_chunks(config, name, layer, shape, seed):
                put(f, chunk.astype("<f4", copy=False))

    def put_q80(f, name: str) -> None:
        # Each part (a layer, or the whole embedding/classifier) is one quantized tensor: its int8
        # values, then its scales. Groups never straddle rows (group_size divides the row length).
        for layer, shape in _parts(config, name):
            scales = []
            for chunk in _part_chunks(config, name, layer, shape, seed):
                q, s = quantize_q80(chunk, group_size)
                put(f, q)
                scales.append(s)
            put(f, np.concatenate(scales).astype("<f4", copy=False))

    names_tail = [] if config.shared_classifier else ["wcls"]
    with open(path, "wb") as f:
        head = header_bytes(config, version, group_size)
        f.write(head)
        written += len(head)
        if version == 0:
            for name in _V0_ORDER:
                put_f32(f, name)
            rope = config.seq_len * config.head_size  # the obsolete RoPE tables: zeros
            for i in range(0, rope, CHUNK_FLOATS):
                put(f, np.zeros(min(CHUNK_FLOATS, rope - i), "<f4"))
            for name in names_tail:
                put_f32(f, name)
        elif version == 1:
            for name in list(_V1_ORDER) + names_tail:
                put_f32(f, name)
        else:
            for name in ("rms_att", "rms_ffn", "rms_final"):
                put_f32(f, name)
            for name in list(_Q_ORDER) + names_tail:
                put_q80(f, name)
    return written


# -- CLI ---------------------------------------------------------------------------------------------
FREE_FIELDS = (
    ("dim", "dim"),
    ("hidden", "hidden_dim"),
    ("layers", "n_layers"),
    ("heads", "n_heads"),
    ("kv_heads", "n_kv_heads"),
    ("vocab", "vocab_size"),
    ("seq_len", "seq_len"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a seeded random-weight llama2.c checkpoint: a named shape, or a free one "
        "(--shape fills the fields you do not give). Greedy runs of it never stop early."
    )
    p.add_argument("out", help="output .bin path")
    p.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default=None,
        help="start from this model's shape (otherwise give every field below)",
    )
    for flag, field in FREE_FIELDS:
        p.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=int_at_least(1, f"--{flag}"), default=None, help=field
        )
    p.add_argument(
        "--unshared-classifier",
        action="store_true",
        help="store a separate classifier instead of reusing the token embedding",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    p.add_argument(
        "--version", type=int, choices=(0, 1, 2), default=0, help="file format: 0 legacy fp32 (default), 1 fp32, 2 Q8_0"
    )
    p.add_argument(
        "--group-size",
        type=int_at_least(1, "--group-size"),
        default=None,
        help="v2 group size (default: 64 halved until it divides dim and hidden)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args) -> Config:
    values = dict(zip((f for _, f in FREE_FIELDS), SHAPES[args.shape])) if args.shape else {}
    missing = []
    for flag, field in FREE_FIELDS:
        v = getattr(args, flag)
        if v is not None:
            values[field] = v
        elif field not in values:
            missing.append(f"--{flag.replace('_', '-')}")
    if missing:
        raise ValueError(
            f"no --shape given, so these are needed: {' '.join(missing)} (or pick --shape {'|'.join(SHAPES)})"
        )
    config = Config(**values, shared_classifier=not args.unshared_classifier)
    config.validate("synth")
    return config


def run(args) -> int:
    import sys

    from tqdm import tqdm

    config = config_from_args(args)
    total = file_bytes(config, args.version, args.group_size)
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=os.path.basename(args.out),
        disable=args.no_progress,
        leave=True,
    ) as bar:
        n = write_synthetic(args.out, config, args.version, args.seed, args.group_size, bar.update)
    print(f"wrote {args.out}: {n:,} bytes, llama2.c v{args.version}, {config.describe()}, seed {args.seed}")
    return 0
