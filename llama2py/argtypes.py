"""argparse value types shared by the CLI and its subcommands: range errors name the flag."""

from __future__ import annotations

import argparse
from typing import Optional


def int_at_least(lo: int, name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {s}")
        return v

    return parse


def float_in(lo: float, hi: Optional[float], name: str):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}")
        if not (v >= lo and (hi is None or v <= hi)):
            raise argparse.ArgumentTypeError(
                f"{name} must be in [{lo}, {hi}], got {s}" if hi is not None else f"{name} must be >= {lo}, got {s}"
            )
        return v

    return parse
