"""`llama2py info FILE`: describe a checkpoint (format, config, parameter count, bytes).

A subcommand module as cli.SUBCOMMANDS expects: add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="llama2.c checkpoint (.bin)")


def run(args: argparse.Namespace) -> int:
    from ._extension import isa_label
    from .backends.cpu import _load_extension, extra_bytes
    from .checkpoint import load_checkpoint
    from .errors import Llama2pyError

    ck = load_checkpoint(args.file)
    print(ck.describe())
    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError) as e:
        print(f"cpu kernels: unavailable ({e})")
        return 0
    # the level the cpu backend runs here (LLAMA2PY_ISA may force a lower one), and what its Model
    # adds to weights of this file there
    print(f"cpu kernels: {isa_label(ext.isa(), ext.isa_levels()[-1])}; this CPU supports {', '.join(ext.isa_levels())}")
    packed, sketch, copy = extra_bytes(ext, ck.config, ck.group_size)
    if packed:
        print(f"cpu int8:    products packed for VNNI at load: +{packed:,} bytes")
    if sketch:
        print(f"cpu greedy:  int8 sketch of the classifier for greedy steps: +{sketch:,} bytes")
    if copy:
        print(f"cpu float32: matrices copied onto huge pages at load (the file's pages then leave): +{copy:,} bytes")
    return 0
