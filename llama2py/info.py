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
    """Bytes the cpu backend adds here to a model of this checkpoint: the packed int8 copy of a
    Q8_0 one (VNNI CPUs) and the classifier sketch of a float32 one (greedy steps); 0 for none."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError):
        return 0, 0
    c = ck.config
    if ck.group_size:
        args = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, ck.group_size)
        return ext.packed_q8_bytes(*args), 0
    return 0, ext.sketch_bytes(c.dim, c.vocab_size)


def cpu_kernel_level() -> str:
    """The instruction-set level the cpu backend runs here (LLAMA2PY_ISA may force a lower one)."""
    from .backends.cpu import _load_extension
    from .errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError) as e:
        return f"unavailable ({e})"
    return f"{ext.isa()} (this CPU supports: {', '.join(ext.isa_levels())})"
