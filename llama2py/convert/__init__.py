"""`llama2py convert SRC OUT`: Llama models from Hugging Face or Meta, and sentencepiece tokenizers,
into llama2.c files, streamed in blocks of rows (memory: a few blocks, whatever the model's size).

    SRC = a Hugging Face Llama directory (config.json + *.safetensors)  -> checkpoint (v1, or v2 with --quantize q8_0)
        = a Meta directory (params.json + consolidated.*.pth; needs torch) -> checkpoint
        = a sentencepiece tokenizer.model                                  -> tokenizer.bin
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional

from ..argtypes import int_at_least
from ..checkpoint import MAX_SEQ_LEN, Config, check_group_size, identify_file, runq_group_note, write_checkpoint
from ..errors import ConvertError, UsageError
from ..files import PathLike, add_progress_arguments, atomic_output, check_output_path, progress_bar

QUANTIZE_VERSIONS = {None: 1, "q8_0": 2}  # --quantize -> llama2.c file version


def detect_source(src: Path) -> str:
    """'hf', 'meta' or 'tokenizer', or a ConvertError saying what SRC must be."""
    if src.is_dir():
        if (src / "config.json").is_file():
            return "hf"
        if (src / "params.json").is_file():
            return "meta"
        raise ConvertError(
            f"{src}: neither config.json (Hugging Face) nor params.json (Meta) in this folder; "
            "pass the model's directory"
        )
    if src.exists() and not src.is_file():
        raise ConvertError(
            f"{src}: not a file or a folder (a device, a pipe or a socket); pass a model's directory or a tokenizer.model"
        )
    if src.is_file():
        if src.suffix == ".model" or identify_file(src) == "sentencepiece":  # (or a link named otherwise)
            return "tokenizer"
        if src.suffix == ".safetensors" or src.name == "config.json":
            raise ConvertError(f"{src}: pass the directory that holds config.json and the .safetensors files")
        raise ConvertError(
            f"{src}: not a model directory or a sentencepiece .model file; "
            "pass a Hugging Face or Meta Llama directory, or a tokenizer.model"
        )
    raise ConvertError(f"{src}: no such file or directory")


def open_model(src: Path, seq_len: Optional[int] = None, note: Callable[[str], None] = lambda s: None):
    """The checked source (HfSource or MetaSource) of a model directory: .config and .chunks(name)."""
    kind = detect_source(src)
    if kind == "hf":
        from .hf import HfSource

        return HfSource(src, seq_len, note)
    if kind == "meta":
        from .meta import MetaSource

        return MetaSource(src, seq_len, note)
    raise ConvertError(f"{src}: a tokenizer, not a model")


def convert(
    src: PathLike,
    out: PathLike,
    quantize: Optional[str] = None,
    seq_len: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    note: Callable[[str], None] = lambda s: None,
) -> Optional[Config]:
    """Convert SRC into OUT; return the model's Config (None for a tokenizer). `note(message)`
    receives warnings (e.g. an rms_norm_eps llama2.c does not use); `progress(written, total)`
    the writer's progress in bytes."""
    src = Path(src)
    kind = detect_source(src)
    if quantize not in QUANTIZE_VERSIONS:
        raise ConvertError(f"--quantize {quantize}: the only quantization is q8_0")
    check_output_path(out, (src,))  # before reading anything (as given: a trailing / names a folder)
    out = Path(out)
    if kind == "tokenizer":
        if quantize or seq_len:
            raise UsageError("--quantize and --seq-len apply to models, not to a tokenizer")
        from .tokenizer_export import tokenizer_bytes

        data = tokenizer_bytes(src)
        with atomic_output(out, (src,)) as f:
            f.write(data)
        return None
    source = open_model(src, seq_len, note)
    version = QUANTIZE_VERSIONS[quantize]
    write_checkpoint(out, source.config, source.chunks, version, None, progress, inputs=tuple(source.input_files))
    if version == 2:
        message = runq_group_note(source.config, check_group_size(source.config, None))  # the group it got
        if message:
            note(message)
    return source.config


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Hugging Face Llama directory, Meta Llama directory, or a sentencepiece tokenizer.model")
    p.add_argument("out", help="the llama2.c checkpoint (.bin) or tokenizer.bin to write")
    p.add_argument(
        "--quantize", choices=("q8_0",), default=None, help="write a v2 file with int8 weights (Q8_0), about 1/4 size"
    )
    p.add_argument(
        "--seq-len",
        type=int_at_least(1, "--seq-len", MAX_SEQ_LEN),
        default=None,
        help="context length to record (default: config.json's max_position_embeddings, else 2048; for Meta "
        "params.json's max_seq_len, else 4096)",
    )
    add_progress_arguments(p)


def run(args) -> int:
    import sys

    with progress_bar(Path(args.out).name, args.progress) as progress:
        config = convert(
            args.src,
            args.out,
            args.quantize,
            args.seq_len,
            progress,
            note=lambda message: print(f"llama2py: {message}", file=sys.stderr),
        )
    if config is None:
        print(f"wrote {args.out}: llama2.c tokenizer")
    else:
        kind = "v2 (Q8_0)" if args.quantize else "v1 (fp32)"
        print(f"wrote {args.out}: llama2.c {kind}, {config.describe()}, {config.n_params:,} parameters")
    return 0
