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
import sys
from collections.abc import Iterator
from typing import Callable, Optional

import numpy as np
import numpy.random  # noqa: F401  (imported up front: a Ctrl-C during a lazy import is lost)

from .argtypes import int_at_least, model_shape_name
from .checkpoint import (
    MAX_SEQ_LEN,
    MODEL_SHAPES,
    ChunkSource,
    Config,
    check_group_size,
    runq_group_note,
    weight_shapes,
    write_checkpoint,
)
from .errors import UsageError, usage_check
from .files import PathLike, add_group_size_argument, add_progress_arguments, progress_bar

BOS = 1
BOS_SCALE = 0.01
CHUNK_FLOATS = 1 << 21  # 8 MiB of float32 per generated chunk

# A fixed id per tensor for seeding (never reorder: it would change every synthetic file).
_TENSOR_ID = {
    name: i
    for i, name in enumerate(
        ("token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls")
    )
}


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


def synthetic_source(config: Config, seed: int = 0) -> ChunkSource:
    """The random weights as a chunk source for write_checkpoint: per layer (layer -1: a tensor
    that is not per layer), chunks of whole rows of at most CHUNK_FLOATS values."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    def chunks(name: str) -> Iterator[np.ndarray]:
        shape = weight_shapes(config)[name]
        if name in ("token_embedding", "rms_final", "wcls"):
            yield from _part_chunks(config, name, -1, shape, seed)
            return
        for layer in range(config.n_layers):
            yield from _part_chunks(config, name, layer, shape[1:], seed)

    return chunks


def write_synthetic(
    path: PathLike,
    config: Config,
    version: int = 0,
    seed: int = 0,
    group_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> int:
    """Write a random-weight checkpoint with write_checkpoint; return the bytes written.

    Memory: one chunk of CHUNK_FLOATS floats at a time, also for v2 (the writer quantizes the
    chunks of a layer as one tensor)."""
    return write_checkpoint(path, config, synthetic_source(config, seed), version, group_size, progress)


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
        type=model_shape_name,
        default=None,
        metavar="NAME",
        help=f"start from this model's shape ({', '.join(MODEL_SHAPES)}, any case; otherwise give every field below)",
    )
    for flag, field in FREE_FIELDS:
        name = f"--{flag.replace('_', '-')}"
        top = MAX_SEQ_LEN if field == "seq_len" else None  # the context a checkpoint may hold
        p.add_argument(
            name,
            dest=flag,
            type=int_at_least(1, name, top),
            default=None,
            help=field + (" (default: --heads, or the --shape's)" if field == "n_kv_heads" else ""),
        )
    p.add_argument(
        "--unshared-classifier",
        action="store_true",
        help="store a separate classifier instead of reusing the token embedding (llama2-7B has one anyway)",
    )
    p.add_argument(
        "--seed", type=int_at_least(0, "--seed"), default=0, help="random seed (default 0); same seed, same bytes"
    )
    p.add_argument(
        "--version", type=int, choices=(0, 1, 2), default=0, help="file format: 0 legacy fp32 (default), 1 fp32, 2 Q8_0"
    )
    add_group_size_argument(p)
    add_progress_arguments(p)


def config_from_args(args) -> Config:
    base = MODEL_SHAPES[args.shape] if args.shape else None
    values = {f: getattr(base, f) for _, f in FREE_FIELDS} if base else {}
    missing = []
    for flag, field in FREE_FIELDS:
        v = getattr(args, flag)
        if v is not None:
            values[field] = v
        elif field == "n_kv_heads" and not base:  # as llama2.c's ModelArgs: no grouped-query attention unless asked
            if "n_heads" in values:
                values[field] = values["n_heads"]
        elif field not in values:
            missing.append(f"--{flag.replace('_', '-')}")
    if missing:
        raise UsageError(
            f"no --shape given, so these are needed: {' '.join(missing)} (or pick --shape {'|'.join(MODEL_SHAPES)})"
        )
    shared = (base.shared_classifier if base else True) and not args.unshared_classifier
    config = Config(**values, shared_classifier=shared)
    usage_check(config.validate, "synth")  # a shape the flags asked for
    return config


def run(args) -> int:
    config = config_from_args(args)
    if args.group_size is not None and args.version != 2:
        raise UsageError(f"--group-size is for v2 (Q8_0) files; add --version 2 (got --version {args.version})")
    group_size = None  # the v2 file's: the flag's (a usage error where it does not fit) or the default
    if args.version == 2:
        group_size = (
            check_group_size(config, None)
            if args.group_size is None
            else usage_check(check_group_size, config, args.group_size)
        )
    with progress_bar(os.path.basename(args.out), args.progress) as progress:
        n = write_synthetic(args.out, config, args.version, args.seed, group_size, progress)
    kind = f"llama2.c v{args.version}" + (f" (Q8_0, group {group_size})" if group_size else "")
    print(f"wrote {args.out}: {n:,} bytes, {kind}, {config.describe()}, seed {args.seed}")
    note = runq_group_note(config, group_size, "`--group-size {g}`") if group_size else ""
    if note:  # as quantize says it
        print(f"llama2py synth: note: {note}", file=sys.stderr)
    return 0
