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
    packed, sketch = cpu_extra_bytes(ck)
    if packed:
        print(f"cpu int8:    products packed for VNNI at load: +{packed:,} bytes")
    if sketch:
        print(f"cpu greedy:  int8 sketch of the classifier for greedy steps: +{sketch:,} bytes")
    return 0


def cpu_extra_bytes(ck) -> tuple[int, int]:
    """(packed int8 copy, greedy sketch) bytes the cpu backend adds here to a model of this file."""
    from .backends.cpu import _load_extension, extra_bytes
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError):
        return 0, 0
    return extra_bytes(ext, ck.config, ck.group_size)


def cpu_kernel_level() -> str:
    """The instruction-set level the cpu backend runs here (LLAMA2PY_ISA may force a lower one)."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError) as e:
        return f"unavailable ({e})"
    return f"{ext.isa()} (this CPU supports: {', '.join(ext.isa_levels())})"
