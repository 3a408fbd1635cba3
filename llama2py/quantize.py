"""`llama2py quantize IN.bin OUT.bin [--group-size N]`: a v0/v1 (float32) checkpoint as v2 (Q8_0).

The result is what llama2.c's export writes for the same weights (docs/FORMAT.md, version 2): the
group size it picks (64, halved until it divides dim) unless one is asked for, each layer of each
matrix quantized on its own, the norms kept in float32. The input is read through short-lived
memory maps of at most BLOCK_FLOATS values, so a 7B model is quantized without being loaded
(resident memory: a couple of blocks plus the writer's few MiB); the output appears complete,
under its name, or not at all.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .checkpoint import (
    Checkpoint,
    ChunkSource,
    check_group_size,
    float_tensor_offsets,
    load_checkpoint,
    runq_group_note,
    weight_shapes,
    write_checkpoint,
)
from .errors import CheckpointError, usage_check
from .files import PathLike, add_group_size_argument, add_progress_arguments, progress_bar

BLOCK_FLOATS = 1 << 22  # 16 MiB of float32 mapped at a time


def mapped_source(ck: Checkpoint) -> ChunkSource:
    """A v0/v1 file's tensors as chunks, each a fresh memory map of at most BLOCK_FLOATS values:
    a chunk's pages leave the process's memory once the writer is done with it."""
    offsets = float_tensor_offsets(ck.config, ck.version)
    shapes = weight_shapes(ck.config)

    def chunks(name: str) -> Iterator[np.ndarray]:
        numel = math.prod(shapes[name])
        for start in range(0, numel, BLOCK_FLOATS):
            count = min(BLOCK_FLOATS, numel - start)
            yield np.memmap(ck.path, dtype="<f4", mode="r", offset=offsets[name] + 4 * start, shape=(count,))

    return chunks


def open_float_checkpoint(path: PathLike) -> Checkpoint:
    """The input of quantize: a valid v0 or v1 checkpoint."""
    ck = load_checkpoint(path)
    if ck.version == 2:
        raise CheckpointError(
            f"checkpoint {path}: is already v2 (Q8_0, group {ck.group_size}); quantize reads v0/v1 float32 files"
        )
    return ck


def quantize_checkpoint(
    src: PathLike,
    dst: PathLike,
    group_size: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> int:
    """Write the v0/v1 checkpoint src as the v2 file dst; return its size in bytes."""
    return _write_v2(open_float_checkpoint(src), dst, group_size, progress)


def _write_v2(
    ck: Checkpoint,
    dst: PathLike,
    group_size: Optional[int],
    progress: Optional[Callable[[int, int], None]],
) -> int:
    """The opened input ck as the v2 file dst. write_checkpoint checks the group size and the output
    path (never ck's file, as it was found: a known name may be the model store's copy), once, before
    it writes a byte."""
    return write_checkpoint(dst, ck.config, mapped_source(ck), 2, group_size, progress, inputs=(ck.path,))


# -- CLI ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a v0/v1 (float32) llama2.c checkpoint as v2 (Q8_0 int8 weights, float32 scales per "
        "group), as llama2.c's export does. The output is written to a temporary name and renamed."
    )
    p.add_argument("input", help="v0 or v1 llama2.c checkpoint (.bin)")
    p.add_argument("output", help="the v2 file to write (not the input)")
    add_group_size_argument(p)
    add_progress_arguments(p)


def run(args) -> int:
    ck = open_float_checkpoint(args.input)
    # the group the file gets: the flag's, checked against this model's dim (a bad flag: exit 2), or
    # the export's rule (an odd dim is the file's problem: exit 1)
    if args.group_size is not None:
        group_size = usage_check(check_group_size, ck.config, args.group_size)
    else:
        group_size = check_group_size(ck.config, None)
    with progress_bar(Path(args.output).name, args.progress) as progress:  # no bar before the checks
        n = _write_v2(ck, args.output, group_size, progress)
    print(
        f"wrote {args.output}: {n:,} bytes, llama2.c v2 (Q8_0, group {group_size}), "
        f"from {args.input} (v{ck.version}, {ck.file_bytes:,} bytes), {ck.config.describe()}"
    )
    note = runq_group_note(ck.config, group_size)
    if note:
        print(f"llama2py quantize: note: {note}", file=sys.stderr)
    return 0
