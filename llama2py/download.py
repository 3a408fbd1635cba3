"""Known llama2.c checkpoints and tokenizers, the per-user model store, and fetching on first use.

With no CHECKPOINT the CLI runs stories15M with the Llama 2 tokenizer from the model store
(`default_models_dir()`: $LLAMA2PY_MODELS, else the platform's user cache folder, whatever the
current directory), downloading both from their published addresses the first time: streamed to
NAME.part (never past the published size), resumed with an HTTP Range request after an
interruption, checked against the published size and sha256, then renamed into place. One lock
file per destination (NAME.lock, removed when the download ends where the file system locks; see
_lock) makes concurrent downloads of one file wait for each other.

A file found in the store is trusted only after its sha256 was checked once; the check is
remembered in the folder's .verified.json, keyed by size and mtime, so later runs only stat it.

Library functions here never print (except the progress bar and a "waiting for" line on stderr
when progress=True) and never exit; every failure is a DownloadError whose message names the URL
to fetch by hand and the path to put the file at.

Environment:
    LLAMA2PY_MODELS     the model store (default: user_cache_dir())
    LLAMA2PY_MODEL_URL  base URL of a mirror that holds the files by name (NAME.bin appended)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import DownloadError
from .files import BYTES_BAR
from .input_files import parse_json

__all__ = [
    "KnownFile",
    "REGISTRY",
    "DEFAULT_MODEL",
    "lookup",
    "default_models_dir",
    "user_cache_dir",
    "is_trusted",
    "missing_message",
    "resolve_url",
    "download",
    "ensure_default_model",
    "verify_file",
    "add_arguments",
    "list_store",
    "run",
    "epilog",
]

MODELS_ENV = "LLAMA2PY_MODELS"
URL_ENV = "LLAMA2PY_MODEL_URL"

_TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main"
_LLAMA2C = "https://raw.githubusercontent.com/karpathy/llama2.c/master"

CHUNK = 1 << 20  # bytes read per socket read while streaming
TIMEOUT_S = 30.0  # socket timeout (per read, not for the whole download)
UNKNOWN_SIZE_CAP = 64 << 30  # bytes: the most a download of a file without a published size may take
VERIFIED_JSON = ".verified.json"  # in the store: {filename: {"size", "mtime_ns", "sha256"}}


@dataclass(frozen=True)
class KnownFile:
    """A published file: where it lives, what it must look like once downloaded.

    size and sha256 are the published file's; sha256 None means no trustworthy checksum was
    found and only the size is verified (see models/README.md).
    """

    name: str  # registry key: "stories15M", "tokenizer", ...
    filename: str  # file name in the model store
    url: str  # published address
    size: Optional[int]  # bytes
    sha256: Optional[str]  # lowercase hex, or None: size-only check
    kind: str  # "checkpoint" or "tokenizer"
    description: str
    tokenizer: Optional[str] = None  # checkpoints: registry key of the tokenizer they need


# Sizes and checksums: models/README.md says where each one comes from. The checkpoint sizes also
# follow from their headers (docs/FORMAT.md), which tests/test_download.py re-derives.
REGISTRY = {
    e.name: e
    for e in (
        KnownFile(
            "stories15M",
            "stories15M.bin",
            f"{_TINYLLAMAS}/stories15M.bin",
            60_816_028,
            "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a",
            "checkpoint",
            "TinyStories 15M: dim 288, hidden 768, 6 layers, 6 heads, vocab 32000, seq 256",
            tokenizer="tokenizer",
        ),
        KnownFile(
            "stories42M",
            "stories42M.bin",
            f"{_TINYLLAMAS}/stories42M.bin",
            167_020_572,
            "9f65a1000e17d0bc167dd6332e0ce5119a0222a3d920cead5bce413bfab2ee7b",
            "checkpoint",
            "TinyStories 42M: dim 512, hidden 1376, 8 layers, 8 heads, vocab 32000, seq 1024",
            tokenizer="tokenizer",
        ),
        KnownFile(
            "stories110M",
            "stories110M.bin",
            f"{_TINYLLAMAS}/stories110M.bin",
            438_381_596,
            "515267168726a1ed1317a64a408492e6af3b67c1f71c5bd98c01d9d721803a24",
            "checkpoint",
            "TinyStories 110M: dim 768, hidden 2048, 12 layers, 12 heads, vocab 32000, seq 1024",
            tokenizer="tokenizer",
        ),
        KnownFile(
            "stories260K",
            "stories260K.bin",
            f"{_TINYLLAMAS}/stories260K/stories260K.bin",
            1_056_540,
            "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
            "checkpoint",
            "TinyStories 260K: dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads, vocab 512, seq 512",
            tokenizer="tok512",
        ),
        KnownFile(
            "tokenizer",
            "tokenizer.bin",
            f"{_LLAMA2C}/tokenizer.bin",
            433_869,
            "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361",
            "tokenizer",
            "Llama 2 sentencepiece vocabulary (32000), for stories15M/42M/110M",
        ),
        KnownFile(
            "tok512",
            "tok512.bin",
            f"{_TINYLLAMAS}/stories260K/tok512.bin",
            6_227,
            "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
            "tokenizer",
            "512-token vocabulary of stories260K",
        ),
    )
}

DEFAULT_MODEL = "stories15M"


# How `llama2py download` picks another folder (the main command has only the variable).
STORE_CHOICES = f"${MODELS_ENV} or --dir"


def lookup(name: Union[str, KnownFile]) -> KnownFile:
    """The registry entry for a key ("stories15M") or file name ("stories15M.bin"), any case."""
    if isinstance(name, KnownFile):
        return name
    wanted = str(name).strip().lower()
    for entry in REGISTRY.values():
        if wanted in (entry.name.lower(), entry.filename.lower()):
            return entry
    raise DownloadError(
        f"unknown model {name!r}: the known names are {', '.join(REGISTRY)} "
        f"(for any other checkpoint, download it yourself and pass its path)"
    )


def user_cache_dir() -> Path:
    """The platform's per-user cache folder for llama2py: $XDG_CACHE_HOME/llama2py or
    ~/.cache/llama2py on Linux, ~/Library/Caches/llama2py on macOS, %LOCALAPPDATA%\\llama2py on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / "llama2py"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama2py"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "llama2py"


def default_models_dir() -> Path:
    """The model store: $LLAMA2PY_MODELS if set, else user_cache_dir() (never the current directory)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def _require_store_folder(folder: Path, advice: str, context: str = "") -> None:
    """The one refusal of a model store that exists but is not a folder (nothing can go in it)."""
    if folder.exists() and not folder.is_dir():
        raise DownloadError(f"{context}the model store {folder} is not a folder: {advice}")


def in_store(arg: Union[str, os.PathLike, None], kind: str) -> Optional[Path]:
    """The model store's copy of a known file of this kind ("checkpoint" or "tokenizer") named
    without a folder (`stories260K.bin`, `stories260K`, `tok512.bin`, any case) when nothing of that
    name is here; None for anything else (a path is used as given)."""
    if not isinstance(arg, (str, os.PathLike)) or os.path.exists(arg):
        return None
    text = os.fspath(arg)
    if not text or text != text.strip() or os.path.basename(text) != text:
        return None
    try:
        entry = lookup(text)
    except DownloadError:
        return None
    if entry.kind != kind:  # a tokenizer's name given as the checkpoint: the error names what was typed
        return None
    candidate = default_models_dir() / entry.filename
    return candidate if candidate.is_file() else None


def resolve_url(entry: KnownFile, url: Optional[str] = None) -> str:
    """The address to fetch from: url if given, else $LLAMA2PY_MODEL_URL/FILENAME, else the published one."""
    if url:
        return url
    base = os.environ.get(URL_ENV)
    if base:
        return base.rstrip("/") + "/" + entry.filename
    return entry.url


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Union[str, Path], name: Union[str, KnownFile]) -> Optional[str]:
    """None if path has the entry's size (and sha256, where one is known); else what is wrong."""
    entry = lookup(name)
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if entry.size is not None and size != entry.size:
        return f"{path} has {size:,} bytes, expected {entry.size:,}"
    if entry.sha256 is not None:
        actual = _sha256_of(path)
        if actual != entry.sha256:
            return f"{path} has sha256 {actual}, expected {entry.sha256}"
    return None


def _read_verified(folder: Path) -> dict:
    try:
        data = parse_json((folder / VERIFIED_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_verified(path: Path, sha256: str) -> None:
    """Record that path (at its current size, mtime and ctime) has sha256; best effort (a read-only store
    just means the file is hashed again next time)."""
    try:
        st = path.stat()
        records = _read_verified(path.parent)
        records[path.name] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "sha256": sha256,
        }
        fd, tmp = tempfile.mkstemp(prefix=VERIFIED_JSON + ".", suffix=".tmp", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=1, sort_keys=True)
        os.replace(tmp, path.parent / VERIFIED_JSON)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def is_trusted(path: Union[str, Path], name: Union[str, KnownFile]) -> bool:
    """True if path is the entry's file: right size, and its sha256 the published one. A file's
    sha256 is computed once at a given size and mtime and remembered in .verified.json (a
    mismatch too: `download --list` then says so, and nothing hashes it again)."""
    entry = lookup(name)
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file() or (entry.size is not None and st.st_size != entry.size):
        return False
    if entry.sha256 is None:
        return True
    seen = _remembered_sha256(_read_verified(path.parent), path.name, st)
    if seen is not None:
        return seen == entry.sha256
    actual = _sha256_of(path)
    _remember_verified(path, actual)
    return actual == entry.sha256


def _remembered_sha256(records: dict, name: str, st: os.stat_result) -> Optional[str]:
    """The sha256 .verified.json holds for file `name` at this stat's size, mtime and ctime, else
    None. (ctime: tools that copy a file keep its mtime, `cp -p`, rsync, tar, but every write sets
    ctime to now, so a file put in place of the one checked is never taken for it.)"""
    seen = records.get(name)
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if isinstance(seen, dict) and (seen.get("size"), seen.get("mtime_ns"), seen.get("ctime_ns")) == key:
        sha = seen.get("sha256")
        return sha if isinstance(sha, str) else None
    return None


def _published(entry: KnownFile, unknown: bool = False) -> list[str]:
    """What identifies the published file: its size and sha256 ("size unknown" / "no published
    sha256" in their places with unknown=True, else left out)."""
    size = f"{entry.size:,} bytes" if entry.size is not None else ("size unknown" if unknown else "")
    sha = f"sha256 {entry.sha256}" if entry.sha256 else ("no published sha256" if unknown else "")
    return [fact for fact in (size, sha) if fact]


def _by_hand(entry: KnownFile, dest: Path) -> str:
    facts = _published(entry)
    text = (
        f"fetch it by hand ({', '.join(facts)}) and put it at {dest}"
        if facts
        else f"fetch it by hand and put it at {dest}"
    )
    if dest.is_file() and not is_trusted(dest, entry):  # why the file already there was passed over
        text += " (the file there now is not the published one)"
    return text


def _by_hand_sentence(entry: KnownFile, dest: Path) -> str:
    text = _by_hand(entry, dest)
    return text[0].upper() + text[1:]


class _Progress:
    """tqdm on stderr when available; else a plain one-line counter, only on a terminal."""

    def __init__(self, enabled: bool, total: Optional[int], initial: int, desc: str):
        self._bar = None
        self._plain = False
        self.total, self.done, self.desc = total, initial, desc
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = sys.stderr.isatty()
            self._draw()
            return
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            leave=True,
            file=sys.stderr,
            **BYTES_BAR,
            dynamic_ncols=True,
        )

    def _draw(self, end: str = "") -> None:
        mib = self.done / 2**20
        if self.total:
            text = f"\r{self.desc}: {mib:.1f}/{self.total / 2**20:.1f} MiB {100 * self.done // self.total}%"
        else:
            text = f"\r{self.desc}: {mib:.1f} MiB"
        sys.stderr.write(text + end)
        sys.stderr.flush()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain:
            self._draw()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._plain:
            self._draw("\n")


def _fetch(entry: KnownFile, url: str, dest: Path, part: Path, progress: bool, choose: str = STORE_CHOICES) -> None:
    """Stream url into part, resuming what part already holds. Verifies nothing."""
    offset = part.stat().st_size if part.exists() else 0
    if entry.size is not None and offset > entry.size:  # not a prefix of this file: start over
        part.unlink()
        offset = 0
    if entry.size is not None and offset == entry.size:  # complete already; verify decides
        return

    from . import __version__

    headers = {"User-Agent": f"llama2py/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    failed = f"could not download {entry.filename} from {url}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range past the end: part is stale
            part.unlink()
            return _fetch(entry, url, dest, part, progress, choose)
        raise DownloadError(f"{failed} (HTTP {e.code} {e.reason}). {_by_hand_sentence(entry, dest)}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"{failed} ({reason}). {_by_hand_sentence(entry, dest)}") from e

    with response:
        status = getattr(response, "status", 200)
        if offset and status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start is not None and start != offset:
                raise DownloadError(
                    f"{failed}: asked for bytes from {offset:,} and the server sent them from "
                    f"{start:,}. Delete {part} and try again, or {_by_hand(entry, dest)}"
                )
            mode = "ab"
        else:  # 200: the server ignored Range, start over
            offset = 0
            mode = "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else entry.size
        bar = _Progress(progress, total, offset, entry.filename)
        try:
            try:
                out = open(part, mode)
            except OSError as e:
                raise DownloadError(
                    f"cannot write {part} ({e.strerror or e}): choose a writable folder with {choose}"
                ) from e
            with out:
                expected = int(length) if length and length.isdigit() else None
                # Never write past the published size: a server that streams forever (or a wrong
                # file) must not fill the disk. The sha256 check then decides.
                room = (entry.size if entry.size is not None else UNKNOWN_SIZE_CAP) - offset
                if expected is not None:
                    expected = min(expected, room)
                received = 0
                while True:
                    if received >= room:
                        break
                    try:
                        block = response.read(min(CHUNK, room - received))
                        # http.client returns b"" rather than raising when the server hangs up
                        # before Content-Length bytes: treat that as the lost connection it is.
                        if not block and expected is not None and received < expected:
                            raise ConnectionError(
                                f"the server closed the connection after {received:,} of {expected:,} bytes"
                            )
                    except Exception as e:  # socket timeouts, resets, IncompleteRead
                        out.flush()
                        kept = part.stat().st_size if part.exists() else 0
                        raise DownloadError(
                            f"{failed} (connection lost, {kept:,} bytes kept: {e}). Run the "
                            f"download again to resume from {part}, or {_by_hand(entry, dest)}"
                        ) from e
                    if not block:
                        break
                    received += len(block)
                    try:
                        out.write(block)
                    except OSError as e:
                        raise DownloadError(f"cannot write {part} ({e.strerror or e})") from e
                    bar.update(len(block))
                try:  # (the buffer's last bytes: a full disk says so here, not at the close)
                    out.flush()
                except OSError as e:
                    raise DownloadError(f"cannot write {part} ({e.strerror or e})") from e
        finally:
            bar.close()


def _content_range_start(value: Optional[str]) -> Optional[int]:
    # "bytes 100-999/1000"
    if not value or not value.startswith("bytes "):
        return None
    first = value[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


@contextlib.contextmanager
def _lock(dest: Path, progress: bool, choose: str = STORE_CHOICES) -> Iterator[None]:
    """Hold DEST.lock exclusively: a second process downloading the same file waits here (and then
    finds it in place) instead of writing the same .part. fcntl.flock on POSIX, msvcrt.locking on
    Windows; where neither works (some network filesystems) the download runs unlocked. On POSIX the
    holder removes the lock file before it lets go; a process that was waiting on the removed file
    sees that the name no longer leads to the file it locked and locks the current one instead.
    (Windows keeps the file: an open file cannot be removed there.)"""
    path = dest.with_name(dest.name + ".lock")
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    said = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DownloadError(
                f"cannot create {path} ({e.strerror or e}): choose a writable folder with {choose}"
            ) from e
        locked = False
        try:
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        if progress and not said:
                            print(f"waiting for another download of {dest.name} to finish ...", file=sys.stderr)
                            said = True
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    locked = True
                else:
                    import msvcrt

                    while True:
                        try:
                            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                            break
                        except OSError as e:
                            if e.errno not in (errno.EDEADLK, errno.EACCES):  # not "held by another"
                                raise
            except OSError:  # a filesystem without locks: go on without one
                pass
            if locked:
                try:
                    current = os.path.samestat(os.fstat(fd), os.stat(path))
                except OSError:  # removed by the holder that just let go
                    current = False
                if not current:
                    os.close(fd)
                    fd = -1
        except BaseException:  # interrupted (Ctrl-C): the file never stays open, and locked, behind
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        if fd >= 0:
            break
    try:
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):  # still ours: nobody can lock the name's file meanwhile
                os.unlink(path)
        os.close(fd)  # releases the lock


def download(
    name: Union[str, KnownFile],
    dest_dir: Union[str, Path, None] = None,
    url: Optional[str] = None,
    progress: bool = True,
    choose: str = STORE_CHOICES,
) -> Path:
    """Fetch a known file into dest_dir (default_models_dir()) and return its path. choose: how the
    user picks another folder, for the message when this one cannot be written.

    An existing file that is trusted (is_trusted: size, and sha256 checked once) is returned as is.
    Otherwise, holding DEST.lock, the file is streamed to FILENAME.part (resuming an existing .part
    with a Range request, never past the published size), checked, and renamed into place; the old
    file, if any, is replaced only by a verified one. A .part that fails the check is deleted and,
    if it was a resumed one, fetched once more from the start. Raises DownloadError naming the URL
    and the destination.
    """
    entry = lookup(name)
    src = resolve_url(entry, url)
    folder = Path(dest_dir).expanduser() if dest_dir is not None else default_models_dir()
    dest = folder / entry.filename
    part = dest.with_name(dest.name + ".part")

    if is_trusted(dest, entry):
        return dest
    _require_store_folder(folder, f"choose another with {choose}")
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # (deepest first) removed again on failure
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the model store {folder} ({e.strerror or e}): choose another with {choose}"
        ) from e
    try:
        return _download_into(entry, src, dest, part, progress, choose)
    except BaseException as e:
        for p in made:  # only while empty: a .part kept for resuming keeps its folder
            with contextlib.suppress(OSError):
                p.rmdir()
        if isinstance(e, DownloadError) and made and not folder.exists():  # the advice names a path in it
            raise DownloadError(f"{e} ({folder} does not exist: create it first)") from e
        raise


def _download_into(entry: KnownFile, src: str, dest: Path, part: Path, progress: bool, choose: str) -> Path:
    with _lock(dest, progress, choose):
        if is_trusted(dest, entry):  # another process finished it while we waited
            return dest
        for attempt in (1, 2):
            resumed = part.exists() and part.stat().st_size > 0
            _fetch(entry, src, dest, part, progress, choose)
            problem = verify_file(part, entry)
            if problem is None:
                break
            part.unlink(missing_ok=True)
            if not (resumed and attempt == 1):
                raise DownloadError(
                    f"{entry.filename} downloaded from {src} failed its check: {problem}. The partial "
                    f"file was deleted; try again, or fetch it by hand and put it at {dest}"
                )
        try:
            os.replace(part, dest)
        except OSError as e:
            raise DownloadError(f"cannot move {part} to {dest} ({e.strerror or e})") from e
        if entry.sha256 is not None:
            _remember_verified(dest, entry.sha256)
    return dest


def missing_message(entries: list[KnownFile], folder: Path, cause: Optional[str] = None) -> str:
    """One message naming every missing file: its URL, size, sha256 and the exact path to put it
    at, then the ways to point elsewhere."""
    names = " and ".join(e.filename for e in entries)
    head = f"no checkpoint was given and the default model's {names} "
    if cause is None:
        head += ("is" if len(entries) == 1 else "are") + " not in the model store"
    else:
        head += f"could not be downloaded ({cause})"
    place = "in place" if folder.is_dir() else f"in place (create {folder} first)"
    lines = [head + ". Fetch " + ("it" if len(entries) == 1 else "each") + f" by hand and put it {place}:"]
    for e in entries:
        lines.append(f"  {resolve_url(e)}  ({', '.join(_published(e, unknown=True))})")
        lines.append(f"      -> {folder / e.filename}")
        if (folder / e.filename).exists():  # there, but not the published file: say why it was passed over
            problem = verify_file(folder / e.filename, e)
            if problem:
                lines.append(f"      (the file there is not the published one: {problem}; replace it)")
    lines.append(
        f"or set ${MODELS_ENV} to a folder that holds them, set ${URL_ENV} to a mirror's base URL "
        f"(or `llama2py download NAME --url URL`), or pass a checkpoint path (and -z TOKENIZER)"
    )
    return "\n".join(lines)


def ensure_default_model(
    models_dir: Union[str, Path, None] = None, allow_download: bool = True, progress: bool = True
) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) paths of the default model (stories15M + tokenizer.bin).

    Files already in models_dir (default_models_dir()) that are trusted (is_trusted) are used as
    they are; the others are downloaded unless allow_download is False. When any cannot be had,
    one DownloadError names every missing file with its URL, size, sha256 and destination.
    """
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    _require_store_folder(  # no file can be put "in" it: no instructions to print
        folder,
        f"point ${MODELS_ENV} at a folder, or pass a checkpoint path (and -z TOKENIZER)",
        "no checkpoint was given and ",
    )
    model = REGISTRY[DEFAULT_MODEL]
    entries = [model, REGISTRY[model.tokenizer]]
    missing = [e for e in entries if not is_trusted(folder / e.filename, e)]
    if missing and not allow_download:
        raise DownloadError(missing_message(missing, folder))
    for i, entry in enumerate(missing):
        try:
            download(entry, folder, progress=progress, choose=f"${MODELS_ENV}")  # the main command has no --dir
        except DownloadError as e:
            # the first sentence says what failed; the rest (fetch by hand ...) the message repeats for all
            raise DownloadError(missing_message(missing[i:], folder, cause=str(e).split(". ")[0])) from e
    return folder / model.filename, folder / entries[1].filename


# ---- command line: `llama2py download NAME...` (cli.py builds the parser and calls these) ----


def _human(size: Optional[int]) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def epilog() -> str:
    """The --help text listing the known files."""
    lines = ["known files:"]
    for e in REGISTRY.values():
        check = "" if e.sha256 else "  (no published sha256: size checked only)"
        lines.append(f"  {e.name:<12} {_human(e.size):>9}  {e.filename}{check}")
    lines.append(f"files go to ${MODELS_ENV} if set, else {user_cache_dir()} (the model store);")
    lines.append(f"set ${URL_ENV} to a mirror's base URL to download from it instead")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """Add NAME..., --list, --dir, --url and --quiet to an argparse (sub)parser."""
    import argparse

    parser.add_argument("names", nargs="*", metavar="NAME", help=f"what to fetch: {', '.join(REGISTRY)}, or all")
    parser.add_argument(
        "--list", action="store_true", help="show the model store: which known files are there, checked or not"
    )
    parser.add_argument(
        "--dir", metavar="DIR", default=None, help="folder to put the files in (default: the model store)"
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        default=None,
        help="fetch from URL instead of the published address; with several "
        "NAMEs or a URL ending in /, URL is a base the file name is appended to",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is one only on a terminal)")
    parser.set_defaults(download_parser=parser)
    if parser.epilog is None:
        parser.epilog = epilog()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def list_store(folder: Union[str, Path, None] = None) -> str:
    """What the model store holds: each known file (checked, wrong size, changed, absent) and any
    other checkpoint there. Checks nothing but sizes and the remembered sha256 (never hashes)."""
    given = folder is not None
    folder = Path(folder).expanduser() if given else default_models_dir()
    _require_store_folder(folder, "give --dir a folder" if given else f"point ${MODELS_ENV} at one")
    verified = _read_verified(folder)
    lines = [f"model store: {folder}" + ("" if folder.is_dir() else " (does not exist yet)")]
    known = set()
    for e in REGISTRY.values():
        path = folder / e.filename
        known.add(e.filename)
        if not path.is_file():
            part = path.with_name(path.name + ".part")
            state = f"absent ({part.stat().st_size:,} bytes so far in {part.name})" if part.is_file() else "absent"
        else:
            st = path.stat()
            seen = _remembered_sha256(verified, e.filename, st)
            if e.size is not None and st.st_size != e.size:
                state = f"wrong size: {st.st_size:,} bytes, expected {e.size:,}"
            elif e.sha256 is None:
                state = "present (size checked; no published sha256)"
            elif seen == e.sha256:
                state = "present, sha256 checked"
            elif seen is not None:
                state = (
                    f"present, NOT the published file (its sha256 differs; `llama2py download {e.name}` replaces it)"
                )
            else:
                state = f"present, sha256 not checked yet (`llama2py download {e.name}` checks it)"
        lines.append(f"  {e.name:<12} {_human(e.size):>9}  {e.filename:<16} {state}")
    if folder.is_dir():
        others = sorted(p.name for p in folder.glob("*.bin") if p.name not in known)
        for name in others:
            lines.append(f"  {'(other)':<12} {_human((folder / name).stat().st_size):>9}  {name}")
    return "\n".join(lines)


def run(args) -> int:
    """Download each NAME and print its path, or with --list describe the store. DownloadError
    propagates for the CLI to print."""
    parser = getattr(args, "download_parser", None)

    def usage(message: str) -> int:
        if parser is not None:
            parser.error(message)  # exit 2, as for any bad flag
        raise ValueError(message)

    if getattr(args, "list", False):
        if args.names:  # (it would drop them without a word)
            return usage(f"--list shows the whole store; it takes no names (got {' '.join(args.names)})")
        print(list_store(getattr(args, "dir", None)))
        return 0
    if not args.names:
        return usage(f"name what to download ({', '.join(REGISTRY)}, or all), or pass --list")
    names = []
    for n in args.names:
        for key in REGISTRY if n.strip().lower() == "all" else [lookup(n).name]:
            if key not in names:
                names.append(key)
    url = getattr(args, "url", None)
    base = bool(url) and (url.endswith("/") or len(names) > 1)
    for key in names:
        entry = REGISTRY[key]
        src = (url.rstrip("/") + "/" + entry.filename) if base else url
        # a bar only on a terminal, as the writing subcommands (a log would get its \r redraws)
        bar = not getattr(args, "quiet", False) and sys.stderr.isatty()
        path = download(entry, getattr(args, "dir", None), url=src, progress=bar)
        print(path)
    return 0
