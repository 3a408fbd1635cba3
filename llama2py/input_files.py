"""Reading the files a user names (checkpoint, tokenizer, prompts): regular files only, never
more than their size, and every failure a one-line error that names the file and its role."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Optional, Union

from .errors import Llama2pyError
from .files import PathLike

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def as_path(path: PathLike, what: str) -> Path:
    """path as a Path; anything else (an open file, bytes, None) is a TypeError naming `what`, and an
    empty path a ValueError (Path("") is ".", the current folder, which the messages would name)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError(f"{what} path is empty; give the file's path")
    return Path(path)


def regular_file_size(path: PathLike, what: str, error: type[Llama2pyError], missing_hint: str = "") -> int:
    """Size in bytes of `path`, which must be an existing regular file (checked with stat, before
    anything opens it: opening a FIFO blocks, reading /dev/zero never ends). `what` names the
    file's role in messages ("checkpoint", "tokenizer", "--prompts-file")."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file{missing_hint}") from None
    except OSError as e:
        raise error(f"{what} {path}: cannot access it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{what} {path}: is {kind}, expected a regular file")
    return st.st_size


def read_regular_file(
    path: PathLike,
    what: str,
    error: type[Llama2pyError],
    missing_hint: str = "",
    limit: Optional[int] = None,
    first: Optional[int] = None,
    too_big_hint: str = "",
) -> bytes:
    """The bytes of a regular file, at most its stat size (a longer file than `limit` is an error,
    what to do in too_big_hint, rather than a read without end); with `first`, only its first bytes
    (a header)."""
    size = regular_file_size(path, what, error, missing_hint)
    if limit is not None and size > limit:
        raise error(f"{what} {path}: {size:,} bytes, more than the {limit:,} it may have{too_big_hint}")
    try:
        with open(Path(path), "rb") as f:
            return f.read(size if first is None else min(size, first))
    except OSError as e:
        raise error(f"{what} {path}: cannot read it ({e.strerror or e}); check that it is readable") from None


def parse_json(text: Union[str, bytes]) -> object:
    """json.loads, with nesting too deep for Python's parser (a RecursionError) a ValueError like
    any other invalid document, so every reader's `except ValueError` covers hostile files."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
