"""`llama2py info FILE`: describe a checkpoint (format, config, parameter count, bytes).

A subcommand module as cli.SUBCOMMANDS expects: add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="llama2.c checkpoint (.bin)")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    print(load_checkpoint(args.file).describe())
    print(f"cpu kernels: {cpu_kernel_level()}")
    return 0


def cpu_kernel_level() -> str:
    """The instruction-set level the cpu backend runs here (LLAMA2PY_ISA may force a lower one)."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError) as e:
        return f"unavailable ({e})"
    return f"{ext.isa()} (this CPU supports: {', '.join(ext.isa_levels())})"
