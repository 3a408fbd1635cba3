"""Writing output files safely: every writer in the package goes through `atomic_output`.

A reader may have the destination memory-mapped (a running model). Rewriting that file in place
(open(path, "wb")) truncates the pages under it and the reader dies with SIGBUS. So a file is
written to a temporary name in the destination folder, flushed to disk, and renamed over the
target only when complete: the old inode lives on for whoever maps it, and an interrupted or
failed write (an exception, Ctrl-C) leaves neither a half-written target nor the temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

from .argtypes import int_at_least
from .errors import OutputError
from .interrupts import terminations_interrupt

try:
    import fcntl
except ImportError:  # Windows: no flock, no cleanup of stale temporaries
    fcntl = None

PathLike = Union[str, os.PathLike]


def check_output_path(path: PathLike, inputs: tuple[PathLike, ...] = (), size: Optional[int] = None) -> Path:
    """Refuse, before any work, an output that cannot be written or would overwrite an input;
    return the file to write (a symbolic link's target: the link stays a link). size: the bytes
    the output will take, refused where the folder reports less room (None: not known)."""
    text = os.fspath(path)
    if not text:  # Path("") is ".", the current folder, which the messages below would name
        raise OutputError("the output path is empty; give the name of a file to write")
    given = Path(path)
    # Path() drops a trailing separator or "." (cdir/ or cdir/. would become a file named cdir)
    if (text.endswith(("/", os.sep)) or os.path.basename(text) in (".", "..")) and not given.is_dir():
        raise OutputError(f"output {text}: names a folder, not a file; give the name of a file to write")
    path, name = given, str(given)
    if given.is_symlink():
        try:
            given.stat()
        except OSError as e:  # a dangling link is fine (its target is created); a loop is not
            if e.errno == errno.ELOOP:
                raise OutputError(f"output {given}: a symbolic link that loops; give a file name") from None
        path = Path(os.path.realpath(given))
        name = f"{given} (a link to {path})"
    for source in inputs:  # first: whatever else is wrong, the input is never the output
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise OutputError(f"output {name}: is the input file {source}; write to another file")
    if path.is_dir():
        raise OutputError(f"output {name}: is a directory; give the name of a file to write (in it or elsewhere)")
    if path.exists() and not path.is_file():
        # a device or a pipe: renaming a file over it would replace it (as root, /dev/null too)
        raise OutputError(f"output {name}: is not a regular file ({_kind(path)}); give a file name")
    # the rename would replace it all the same; no write bit at all: read-only for root too
    if path.is_file() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise OutputError(f"output {name}: exists and is read-only; make it writable or remove it to replace it")
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"output {name}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise OutputError(f"output {name}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output {name}: folder {folder} is not writable; choose another folder")
    if size is not None:
        # 0 free: a file system that does not say (sysfs, some network mounts); a full disk is
        # still one line, from the ENOSPC of the write (atomic_output)
        free = shutil.disk_usage(folder).free
        if 0 < free < size:
            raise OutputError(
                f"output {name}: needs {size / 2**20:,.1f} MiB but {folder} has {free / 2**20:,.1f} MiB free; "
                "free some space or choose another folder"
            )
    return path


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _create_exclusive(path: Path) -> int:
    """A new file for writing (never an existing one), with the permissions open() would give it."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: tuple[PathLike, ...] = (), size: Optional[int] = None) -> Iterator[BinaryIO]:
    """`with atomic_output(path) as f: f.write(...)`: path gets the bytes only if the block ends
    normally; on any exception (KeyboardInterrupt included) the temporary file is removed. A
    symbolic link gets its target written; a full disk is an OutputError naming the file.

    `inputs`: files the output must not be (also through another path or a link). `size`: the
    bytes the block will write, when known (checked against the free space first)."""
    path = check_output_path(path, inputs, size)
    with terminations_interrupt():
        yield from _write_then_rename(path)
    _remove_stale_temporaries(path)


def _temporary_name(path: Path) -> str:
    """A new hidden name beside path: .STEM.PID.TOKEN.tmp (_TEMPORARY recognizes it)."""
    return f".{_temporary_stem(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


_STEM_BYTES = 255 - 25  # a file name's limit (NAME_MAX) less ".", ".PID" (up to 10 digits), ".TOKEN.tmp"


def _temporary_stem(path: Path) -> str:
    """path's name in its temporary names: the name itself, or where that would make them longer
    than a file name may be, its first bytes and a hash of the whole name."""
    name = os.fsencode(path.name)
    if len(name) <= _STEM_BYTES:
        return path.name
    digest = hashlib.sha256(name).hexdigest()[:16]
    return name[: _STEM_BYTES - 17].decode("utf-8", "ignore") + "~" + digest  # (a cut character dropped)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9]{1,10}\.[0-9a-f]{8}\.tmp")  # _temporary_name's names


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` that a writer killed outright (SIGKILL, a crash) left behind,
    removed once `path` has been written again. A writer holds an exclusive flock on its file until
    the rename, and the kernel drops it when the writer dies: a file whose lock can be taken has no
    writer (a process in another PID namespace or, through NFS's locks, on another host included).
    Best effort, and only where flock exists (POSIX)."""
    if fcntl is None:
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = _TEMPORARY.fullmatch(entry.name)
            if not match or match["name"] != _temporary_stem(path):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:  # (a link by that name: not one of ours)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a writer at work
                held, named = os.fstat(fd), os.lstat(entry.path)
                if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):  # (still the file locked)
                    os.unlink(entry.path)
            except OSError:
                pass
            finally:
                os.close(fd)


def _write_then_rename(path: Path) -> Iterator[BinaryIO]:
    lock = -1
    tmp: Optional[Path] = None  # (until the first name is chosen: nothing to remove)
    try:
        for _ in range(8):
            # The name is set before the file exists, so an interrupt at any point can still
            # remove it; a new one each time (a name once removed by another writer is not reused).
            tmp = path.parent / _temporary_name(path)
            try:
                fd = _create_exclusive(tmp)
            except FileExistsError:
                raise  # another writer's file by that name: not ours to remove
            except OSError as e:
                raise OutputError(
                    f"output {path}: cannot create a file in {path.parent} ({e.strerror}); choose another folder"
                )
            if fcntl is None:
                break
            lock = os.dup(fd)  # held until the rename: _remove_stale_temporaries leaves the file alone
            with contextlib.suppress(OSError):  # (waits only while another writer's cleanup looks at it)
                fcntl.flock(lock, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                break
            # another writer of `path`, finishing, took the file for a dead writer's before we held
            # the lock and removed it: make another
            os.close(lock)
            os.close(fd)
            lock = -1
        else:
            raise OutputError(
                f"output {path}: other processes writing it keep removing its temporary file; write it once"
            )
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise
            raise OutputError(
                f"output {path}: {e.strerror or 'no space left'} in {path.parent}; free some space or choose another folder"
            ) from None
        with contextlib.suppress(OSError):  # a replaced file keeps its permissions
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            if path.parent.is_dir():
                raise
            raise OutputError(
                f"output {path}: the folder {path.parent} was removed or moved while the file was written; "
                "nothing was written there"
            ) from None
    except FileExistsError:
        raise
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    finally:
        if lock >= 0:
            os.close(lock)
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """--progress / --no-progress for a writing subcommand; neither: a bar only on a terminal."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar on stderr (default: only on a terminal)",
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_group_size_argument(parser: argparse.ArgumentParser) -> None:
    """--group-size for a subcommand that writes v2 files (checkpoint.check_group_size checks it)."""
    parser.add_argument(
        "--group-size",
        type=int_at_least(1, "--group-size"),
        default=None,
        help="v2 values per scale; must divide dim (default: 64, halved until it divides dim, as llama2.c's export)",
    )


def progress_bar(desc: str, enabled: Optional[bool] = None) -> contextlib.AbstractContextManager:
    """A byte progress bar on stderr for the writers' `progress(done, total)` callback. The bar
    appears at the first call, with the total it brings: a writer's checks run before it writes a
    byte, so a refusal prints its one line and no bar.

    enabled None: only when stderr is a terminal. Yields the callback (None when disabled)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return contextlib.nullcontext(None)
    return _tqdm_callback(desc)


# tqdm's settings for a bar counting bytes: "iB" after its K/M/G prefixes, the divisor being 1024,
# so these are KiB, MiB, GiB (files written here, downloads)
BYTES_BAR = dict(unit="iB", unit_scale=True, unit_divisor=1024)  # (file= at the call: stderr may be swapped)


@contextlib.contextmanager
def _tqdm_callback(desc: str) -> Iterator[Callable[[int, int], None]]:
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        bar = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(tqdm(total=total, desc=desc, file=sys.stderr, **BYTES_BAR))
            bar.update(done - bar.n)

        yield update
