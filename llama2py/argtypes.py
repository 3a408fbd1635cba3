"""argparse value types shared by the CLI and its subcommands: range errors name the flag (and
exit 2, as every bad flag does)."""

from __future__ import annotations

import argparse
import math
from typing import Optional


def int_at_least(lo: int, name: str, hi: Optional[int] = None):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {s}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {s}")
        return v

    return parse


def float_in(lo: float, hi: Optional[float], name: str):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}")
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {s}")
        if not (v >= lo and (hi is None or v <= hi)):
            raise argparse.ArgumentTypeError(
                f"{name} must be in [{lo}, {hi}], got {s}" if hi is not None else f"{name} must be >= {lo}, got {s}"
            )
        return v

    return parse


def temperature(name: str, zero_if_greedy: bool = False):
    """A temperature the kernels take (float32; see backends.base.check_sampling); zero_if_greedy:
    one that float32 rounds to 0 (1e-300), which decodes greedily, comes back as 0."""
    finite = float_in(0.0, None, name)

    def parse(s: str) -> float:
        from .backends.base import check_sampling

        v = finite(s)
        try:
            used = check_sampling(v, 0.5)[0]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{name}: {e}")
        return 0.0 if zero_if_greedy and used == 0.0 else v

    return parse


def model_shape_name(s: str) -> str:
    """--shape: a known model shape in any case, as its MODEL_SHAPES key (stories15m -> stories15M)."""
    from .checkpoint import MODEL_SHAPES, shape_name  # local: argtypes stays import-light

    try:
        return shape_name(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be one of {', '.join(MODEL_SHAPES)}, got {s!r}") from None
