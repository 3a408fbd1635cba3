"""`llama2py info FILE`: describe a checkpoint (format, config, parameter count, bytes).

A subcommand module as cli.SUBCOMMANDS expects: add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="llama2.c checkpoint (.bin)")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(args.file)
    print(ck.describe())
    print(f"cpu kernels: {cpu_kernel_level()}")
    packed = packed_copy_bytes(ck)
    if packed:
        print(f"cpu int8:    products packed for VNNI at load: +{packed:,} bytes")
    return 0


def packed_copy_bytes(ck) -> int:
    """Bytes of the packed int8 copy the cpu backend makes of this Q8_0 checkpoint here (0: none)."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    if not ck.group_size:
        return 0
    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError):
        return 0
    c = ck.config
    return ext.packed_q8_bytes(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, ck.group_size)


def cpu_kernel_level() -> str:
    """The instruction-set level the cpu backend runs here (LLAMA2PY_ISA may force a lower one)."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError) as e:
        return f"unavailable ({e})"
    return f"{ext.isa()} (this CPU supports: {', '.join(ext.isa_levels())})"
