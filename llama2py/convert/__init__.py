"""`llama2py convert SRC OUT`: Llama models from Hugging Face or Meta, and sentencepiece tokenizers,
into llama2.c files, tensor by tensor (memory: about one tensor plus the writer's buffers).

    SRC = a Hugging Face Llama directory (config.json + *.safetensors)  -> checkpoint (v1, or v2 with --quantize q8_0)
        = a Meta directory (params.json + consolidated.*.pth; needs torch) -> checkpoint
        = a sentencepiece tokenizer.model                                  -> tokenizer.bin
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..checkpoint import Config
from ..errors import ConvertError

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
    if src.is_file():
        if src.suffix == ".model":
            return "tokenizer"
        if src.suffix == ".safetensors" or src.name == "config.json":
            raise ConvertError(f"{src}: pass the directory that holds config.json and the .safetensors files")
        raise ConvertError(
            f"{src}: not a model directory or a sentencepiece .model file; "
            "pass a Hugging Face or Meta Llama directory, or a tokenizer.model"
        )
    raise ConvertError(f"{src}: no such file or directory")


def check_output(out: Path) -> None:
    """Refuse an output we could not write, before reading a single tensor."""
    if out.is_dir():
        raise ConvertError(f"output {out}: is a directory; give a file name such as {out / 'model.bin'}")
    parent = out.parent
    if not parent.is_dir():
        raise ConvertError(f"output {out}: folder {parent} does not exist (or is not a folder); create it first")
    try:  # os.access says yes to root on a read-only file system: try it
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConvertError(f"output {out}: cannot write in {parent} ({e.strerror or e})")


def check_not_input(out: Path, inputs: list[Path]) -> None:
    """Renaming the finished output over one of its own inputs would destroy the model."""
    for path in inputs:
        if out.exists() and path.exists() and os.path.samefile(out, path):
            raise ConvertError(f"output {out}: is the input file {path}; write to another file")


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
    src: str | os.PathLike,
    out: str | os.PathLike,
    quantize: Optional[str] = None,
    seq_len: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    note: Callable[[str], None] = lambda s: None,
) -> Optional[Config]:
    """Convert SRC into OUT; return the model's Config (None for a tokenizer). `note(message)`
    receives warnings (e.g. an rms_norm_eps llama2.c does not use); `progress(written, total)`
    the writer's progress in bytes."""
    src, out = Path(src), Path(out)
    kind = detect_source(src)
    if quantize not in QUANTIZE_VERSIONS:
        raise ConvertError(f"--quantize {quantize}: the only quantization is q8_0")
    check_output(out)
    if kind == "tokenizer":
        if quantize or seq_len:
            raise ConvertError("--quantize and --seq-len apply to models, not to a tokenizer")
        from .tokenizer_export import tokenizer_bytes

        check_not_input(out, [src])

        data = tokenizer_bytes(src)
        with _atomic_output(out) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return None
    source = open_model(src, seq_len, note)
    check_not_input(out, source.input_files)
    _write_checkpoint(out, source.config, source.chunks, QUANTIZE_VERSIONS[quantize], progress)
    return source.config


# -- TEMPORARY adapters until branch `format` lands one streaming write_checkpoint(path, config,
# source, version, group_size, progress) and an atomic-output helper: delete after that merge. --
def _atomic_output(out: Path):
    import contextlib

    @contextlib.contextmanager
    def ctx():
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield tmp  # the path to write; renamed over `out` when the block completes
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    return ctx()


def _write_checkpoint(out: Path, config: Config, chunks, version: int, progress) -> None:
    import numpy as np

    from ..checkpoint import Weights, header_bytes, weight_shapes, write_checkpoint

    arrays = {}
    for name, shape in weight_shapes(config).items():
        if name == "wcls" and config.shared_classifier:
            continue
        arrays[name] = np.concatenate([c.reshape(-1) for c in chunks(name)]).reshape(shape)
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding"]
    weights = Weights(**arrays)
    total = len(header_bytes(config, version, 64)) + (
        config.weight_bytes("f32") if version == 1 else config.weight_bytes("q8_0", _group_size(config))
    )
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    with _atomic_output(out) as tmp:
        write_checkpoint(tmp, config, weights, version, None, step)


def _group_size(config: Config) -> int:
    from ..checkpoint import default_group_size

    return default_group_size(config.dim)


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="Hugging Face Llama directory, Meta Llama directory, or a sentencepiece tokenizer.model")
    p.add_argument("out", help="the llama2.c checkpoint (.bin) or tokenizer.bin to write")
    p.add_argument(
        "--quantize", choices=("q8_0",), default=None, help="write a v2 file with int8 weights (Q8_0), about 1/4 size"
    )
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        default=None,
        help="context length to record (default: config.json's max_position_embeddings; 4096 for Meta)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seq-len must be a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--seq-len must be a positive integer, got {value}")
    return value


def run(args) -> int:
    bar = None
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="B", unit_scale=True, desc="convert", file=sys.stderr)
            bar.update(done - bar.n)

    try:
        config = convert(
            args.src,
            args.out,
            args.quantize,
            args.seq_len,
            progress,
            note=lambda message: print(f"llama2py: {message}", file=sys.stderr),
        )
    finally:
        if bar is not None:
            bar.close()
    if config is None:
        print(f"wrote {args.out}: llama2.c tokenizer")
    else:
        kind = "v2 (Q8_0)" if args.quantize else "v1 (fp32)"
        print(f"wrote {args.out}: llama2.c {kind}, {config.describe()}, {config.n_params:,} parameters")
    return 0
