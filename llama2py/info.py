"""`llama2py info FILE`: describe a checkpoint (format, config, parameter count, bytes).

A subcommand module as cli.SUBCOMMANDS expects: add_arguments(parser) and run(args) -> exit code."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="llama2.c checkpoint (.bin)")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    print(load_checkpoint(args.file).describe())
    return 0
