"""Checks shared by the Hugging Face and Meta converters: what llama2.c's format fixes implicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..checkpoint import Config, weight_shapes
from ..errors import ConvertError
from ..input_files import parse_json

ROPE_THETA = 10000.0  # llama2.c's RoPE base (docs/FORMAT.md, "Forward pass"); not stored in the file
NORM_EPS = 1e-5  # llama2.c's rmsnorm epsilon (docs/FORMAT.md, "Forward pass"); not stored either
BLOCK_VALUES = 1 << 22  # values per block read (16 MiB as float32): the converter's working memory


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from `path` (a model's config), or a one-line ConvertError naming the file."""
    try:
        value = parse_json(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConvertError(f"{path}: cannot read it ({e.strerror or e})")
    except ValueError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})")
    if not isinstance(value, dict):
        raise ConvertError(f"{path}: not {what} (expected a JSON object)")
    return value


def check_rope_theta(value, where: str) -> None:
    """A different RoPE base changes every attention score: refuse (the file cannot say so)."""
    if not isinstance(value, (int, float)) or float(value) != ROPE_THETA:
        raise ConvertError(
            f"{where} = {value!r}: llama2.c's RoPE base is fixed at 10000 and the file cannot store another; "
            "this model (e.g. Code Llama, Llama 3) cannot be converted"
        )


def norm_eps_note(value, where: str) -> Optional[str]:
    """A warning, not a refusal: llama2.c always adds 1e-5 inside RMSNorm's square root. With
    another epsilon (OpenLLaMA and the first Llama 2 chat configs use 1e-6) each norm's output
    changes by the factor sqrt((ms + 1e-5) / (ms + eps)) for an input of mean square ms: under 0.5%
    where ms > 1e-3, 4% at ms = 1e-4. Refusing would lock out usable models (OpenLLaMA); the logits
    are not the original's, so say so."""
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConvertError(f"{where} = {value!r}: must be a positive number")
    if abs(float(value) - NORM_EPS) > 1e-12:
        return (
            f"warning: {where} = {value:g} but llama2.c's RMSNorm always uses 1e-5; "
            "the converted model runs, with logits slightly different from the original's"
        )
    return None


def source_shapes(config: Config, names: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """The shape each source tensor must have: weight_shapes(config) per layer, under the source's
    names (`names` maps llama2.c names to the source's, with {i} for the layer)."""
    out = {}
    for name, shape in weight_shapes(config).items():
        if name == "wcls" and config.shared_classifier:
            continue
        if "{i}" in names[name]:
            for i in range(config.n_layers):
                out[names[name].format(i=i)] = shape[1:]
        else:
            out[names[name]] = shape
    return out
