"""Known llama2.c checkpoints and tokenizers, and fetching them on first use.

With no CHECKPOINT the CLI runs stories15M with the Llama 2 tokenizer from the models folder
(`default_models_dir()`), downloading both from their published addresses the first time:
streamed to NAME.part, resumed with an HTTP Range request after an interruption, checked against
the published size and sha256, then renamed into place. A file that is already there and checks
out is never fetched again.

Library functions here never print (except the progress bar on stderr when progress=True) and never
exit; every failure is a DownloadError whose message names the URL to fetch by hand and the path
to put the file at.

Environment:
    LLAMA2PY_MODELS     the models folder (default: models/ of a source checkout, else ./models)
    LLAMA2PY_MODEL_URL  base URL of a mirror that holds the files by name (NAME.bin appended)
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import DownloadError

__all__ = [
    "KnownFile",
    "REGISTRY",
    "DEFAULT_MODEL",
    "lookup",
    "default_models_dir",
    "resolve_url",
    "download",
    "ensure_default_model",
    "verify_file",
    "add_arguments",
    "run",
    "epilog",
]

MODELS_ENV = "LLAMA2PY_MODELS"
URL_ENV = "LLAMA2PY_MODEL_URL"

_TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main"
_LLAMA2C = "https://raw.githubusercontent.com/karpathy/llama2.c/master"

CHUNK = 1 << 20  # bytes read per socket read while streaming
TIMEOUT_S = 30.0  # socket timeout (per read, not for the whole download)


@dataclass(frozen=True)
class KnownFile:
    """A published file: where it lives, what it must look like once downloaded.

    size and sha256 are the published file's; sha256 None means no trustworthy checksum was
    found and only the size is verified (see models/README.md).
    """

    name: str  # registry key: "stories15M", "tokenizer", ...
    filename: str  # file name in the models folder
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


def default_models_dir() -> Path:
    """$LLAMA2PY_MODELS if set; else models/ next to the package in a source checkout; else ./models."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent / "models"
    if checkout.is_dir():
        return checkout
    return Path.cwd() / "models"


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


def _by_hand(entry: KnownFile, dest: Path) -> str:
    other = "a checkpoint path" if entry.kind == "checkpoint" else "a tokenizer path"
    return f"fetch it by hand and put it at {dest}, or pass {other}"


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
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            file=sys.stderr,
            leave=True,
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


def _fetch(entry: KnownFile, url: str, dest: Path, part: Path, progress: bool) -> None:
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
            return _fetch(entry, url, dest, part, progress)
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
                    f"cannot write {part} ({e.strerror or e}): choose a writable folder with ${MODELS_ENV} or --dir"
                ) from e
            with out:
                expected = int(length) if length and length.isdigit() else None
                received = 0
                while True:
                    try:
                        block = response.read(CHUNK)
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
        finally:
            bar.close()


def _content_range_start(value: Optional[str]) -> Optional[int]:
    # "bytes 100-999/1000"
    if not value or not value.startswith("bytes "):
        return None
    first = value[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


def download(
    name: Union[str, KnownFile],
    dest_dir: Union[str, Path, None] = None,
    url: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Fetch a known file into dest_dir (default_models_dir()) and return its path.

    An existing file that matches the published size and sha256 is returned as is. Otherwise the
    file is streamed to FILENAME.part (resuming an existing .part with a Range request), checked,
    and renamed into place; the old file, if any, is replaced only by a verified one. A .part that
    fails the check is deleted and, if it was a resumed one, fetched once more from the start.
    Raises DownloadError naming the URL and the destination.
    """
    entry = lookup(name)
    src = resolve_url(entry, url)
    folder = Path(dest_dir).expanduser() if dest_dir is not None else default_models_dir()
    dest = folder / entry.filename
    part = dest.with_name(dest.name + ".part")

    if dest.is_file() and verify_file(dest, entry) is None:
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the models folder {folder} ({e.strerror or e}): choose another with ${MODELS_ENV} or --dir"
        ) from e

    for attempt in (1, 2):
        resumed = part.exists() and part.stat().st_size > 0
        _fetch(entry, src, dest, part, progress)
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
    return dest


def _present(entry: KnownFile, path: Path) -> bool:
    # A file at a registry name is either one we renamed into place after its sha256 check, or
    # one the user put there: check the (cheap) size on every run, not the sha256.
    return path.is_file() and (entry.size is None or path.stat().st_size == entry.size)


def ensure_default_model(
    models_dir: Union[str, Path, None] = None, allow_download: bool = True, progress: bool = True
) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) paths of the default model (stories15M + tokenizer.bin).

    Files already in models_dir (default_models_dir()) with the right size are used as they are;
    missing ones are downloaded unless allow_download is False, in which case the DownloadError
    says what to fetch and where to put it.
    """
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    model = REGISTRY[DEFAULT_MODEL]
    paths = []
    for entry in (model, REGISTRY[model.tokenizer]):
        path = folder / entry.filename
        if not _present(entry, path):
            if not allow_download:
                raise DownloadError(
                    f"no checkpoint was given and the default {entry.filename} is not at {path}. "
                    f"Download it from {resolve_url(entry)} and put it there, run "
                    f"`llama2py download {model.name}`, or pass a checkpoint path"
                )
            path = download(entry, folder, progress=progress)
        paths.append(path)
    return paths[0], paths[1]


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
    lines.append(f"files go to ${MODELS_ENV} if set, else {default_models_dir()};")
    lines.append(f"set ${URL_ENV} to a mirror's base URL to download from it instead")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """Add NAME..., --dir, --url and --quiet to an argparse (sub)parser."""
    import argparse

    parser.add_argument("names", nargs="+", metavar="NAME", help=f"what to fetch: {', '.join(REGISTRY)}, or all")
    parser.add_argument(
        "--dir", metavar="DIR", default=None, help="folder to put the files in (default: the models folder)"
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        default=None,
        help="fetch from URL instead of the published address; with several "
        "NAMEs or a URL ending in /, URL is a base the file name is appended to",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if parser.epilog is None:
        parser.epilog = epilog()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args) -> int:
    """Download each NAME and print its path. DownloadError propagates for the CLI to print."""
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
        path = download(entry, getattr(args, "dir", None), url=src, progress=not getattr(args, "quiet", False))
        print(path)
    return 0
