"""Model download against a local HTTP server on 127.0.0.1: fresh, resumed, Range ignored,
checksum mismatch, connection lost, unreachable, already present, a server that streams forever,
two processes at once; the model store, the offline message, the default model and the CLI hook."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llama2py import download as dl
from llama2py.checkpoint import MODEL_SHAPES
from llama2py.errors import DownloadError

DATA = os.urandom(5000 + 123)  # a few KB, not a multiple of anything
TOKDATA = os.urandom(777)
# the real small models (conftest's convention), read before the fixtures below override the variable
REAL_MODELS = os.environ.get("LLAMA2PY_MODELS") or str(Path(__file__).resolve().parents[2] / "shared" / "models")


class Handler(BaseHTTPRequestHandler):
    """Serves server.files[path]; honours Range unless server.ignore_range; may cut the body short."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/redirect/"):  # like huggingface.co/.../resolve -> CDN
            self.send_response(302)
            self.send_header("Location", "/m/" + self.path.split("/", 2)[2])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        if srv.endless:  # no Content-Length: the body, then junk until the client hangs up
            self.end_headers()
            try:
                self.wfile.write(chunk)
                for _ in range(10_000):  # bounded, so a client without a size cap gets a wrong file
                    self.wfile.write(b"j" * 1024)
            except OSError:
                pass
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if srv.gate is not None:  # half the body, then wait for the test to let the rest go
            half = len(chunk) // 2
            self.wfile.write(chunk[:half])
            self.wfile.flush()
            srv.gate.wait(60)
            self.wfile.write(chunk[half:])
            return
        if srv.cut_after is not None:  # promise the whole body, send part of it, hang up
            self.wfile.write(chunk[: srv.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files = {"/m/test.bin": DATA, "/m/tok.bin": TOKDATA}
    srv.requests = []
    srv.ignore_range = False
    srv.cut_after = None
    srv.endless = False
    srv.gate = None
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}/m"
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No proxies, no mirror override, models folder in tmp, registry entries for the test bytes."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(dl.URL_ENV, raising=False)
    monkeypatch.setenv(dl.MODELS_ENV, str(tmp_path / "models"))
    monkeypatch.setitem(
        dl.REGISTRY,
        "testmodel",
        dl.KnownFile(
            "testmodel",
            "test.bin",
            "http://127.0.0.1:9/unused/test.bin",
            len(DATA),
            hashlib.sha256(DATA).hexdigest(),
            "checkpoint",
            "test bytes",
            tokenizer="testtok",
        ),
    )
    monkeypatch.setitem(
        dl.REGISTRY,
        "testtok",
        dl.KnownFile(
            "testtok",
            "tok.bin",
            "http://127.0.0.1:9/unused/tok.bin",
            len(TOKDATA),
            hashlib.sha256(TOKDATA).hexdigest(),
            "tokenizer",
            "test tokenizer bytes",
        ),
    )


def url(server, name="test.bin"):
    return f"{server.base}/{name}"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


def test_fresh_download_checks_sha(server, tmp_path):
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path == tmp_path / "test.bin"
    assert path.read_bytes() == DATA
    assert not (tmp_path / "test.bin.part").exists()
    assert not (tmp_path / "test.bin.lock").exists()  # the lock file goes with the download
    assert server.requests == [("/m/test.bin", None)]


def test_resume_partial_part_with_range(server, tmp_path):
    (tmp_path / "test.bin.part").write_bytes(DATA[:1234])
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == [("/m/test.bin", "bytes=1234-")]


def test_resume_through_a_redirect_keeps_range(server, tmp_path):
    (tmp_path / "test.bin.part").write_bytes(DATA[:99])
    redirecting = server.base.replace("/m", "/redirect") + "/test.bin"
    path = dl.download("testmodel", tmp_path, url=redirecting, progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == [("/redirect/test.bin", "bytes=99-"), ("/m/test.bin", "bytes=99-")]


def test_server_ignoring_range_restarts(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "test.bin.part").write_bytes(DATA[:1234])
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA  # not the 1234 bytes twice
    assert server.requests == [("/m/test.bin", "bytes=1234-")]


def test_connection_lost_keeps_part_then_resumes(server, tmp_path):
    server.cut_after = 2000
    with pytest.raises(DownloadError) as err:
        dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert "resume" in str(err.value) and str(tmp_path / "test.bin.part") in str(err.value)
    assert (tmp_path / "test.bin.part").read_bytes() == DATA[:2000]
    assert not (tmp_path / "test.bin").exists()
    server.cut_after = None
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA
    assert server.requests[-1] == ("/m/test.bin", "bytes=2000-")


def test_checksum_mismatch_deletes_part(server, tmp_path, monkeypatch):
    server.files["/m/test.bin"] = bytes(len(DATA))  # right size, wrong bytes
    with pytest.raises(DownloadError) as err:
        dl.download("testmodel", tmp_path, url=url(server), progress=False)
    msg = str(err.value)
    assert dl.REGISTRY["testmodel"].sha256 in msg  # expected
    assert hashlib.sha256(bytes(len(DATA))).hexdigest() in msg  # actual
    assert not (tmp_path / "test.bin").exists()
    assert not (tmp_path / "test.bin.part").exists()
    assert not (tmp_path / "test.bin.lock").exists()  # a failed download removes it too


def test_size_mismatch_without_sha(server, tmp_path, monkeypatch):
    monkeypatch.setitem(dl.REGISTRY, "testmodel", replace(dl.REGISTRY["testmodel"], sha256=None, size=len(DATA) + 1))
    with pytest.raises(DownloadError, match="expected 5,124"):
        dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert not (tmp_path / "test.bin").exists()


def test_bad_resumed_part_is_fetched_again_from_start(server, tmp_path):
    (tmp_path / "test.bin.part").write_bytes(b"x" * 1000)  # not a prefix of DATA
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA
    assert server.requests == [("/m/test.bin", "bytes=1000-"), ("/m/test.bin", None)]


def test_complete_part_is_not_refetched(server, tmp_path):
    (tmp_path / "test.bin.part").write_bytes(DATA)
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA and server.requests == []


def test_unreachable_url_names_url_and_destination(tmp_path):
    bad = f"http://127.0.0.1:{closed_port()}/m/test.bin"
    with pytest.raises(DownloadError) as err:
        dl.download("testmodel", tmp_path, url=bad, progress=False)
    msg = str(err.value)
    assert bad in msg and str(tmp_path / "test.bin") in msg
    entry = dl.lookup("testmodel")
    assert f"by hand ({entry.size:,} bytes, sha256 {entry.sha256}) and put it at" in msg
    assert "not the published one" not in msg and not (tmp_path / "test.bin").exists()
    # a wrong file already there: passed over, and said so, here and in --list (checked once)
    (tmp_path / "test.bin").write_bytes(b"z" * len(DATA))
    assert "not checked yet" in dl.list_store(tmp_path).split("test.bin")[1].splitlines()[0]
    with pytest.raises(DownloadError, match=r"\(the file there now is not the published one\)$"):
        dl.download("testmodel", tmp_path, url=bad, progress=False)
    assert "NOT the published file" in dl.list_store(tmp_path).split("test.bin")[1].splitlines()[0]


def test_http_404_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download("testmodel", tmp_path, url=url(server, "missing.bin"), progress=False)


def test_failed_download_leaves_no_folder_it_made(server, tmp_path):
    """--dir new/store that does not exist yet: a download that fails takes the folders it made
    with it (the file's own message, no `or pass a ... path`: download has nothing else to take)."""
    store = tmp_path / "new" / "store"
    with pytest.raises(DownloadError) as err:
        dl.download("testmodel", store, url=url(server, "missing.bin"), progress=False)
    assert not (tmp_path / "new").exists()
    assert "or pass" not in str(err.value) and str(store / "test.bin") in str(err.value)
    assert str(err.value).endswith(f"({store} does not exist: create it first)")  # where the advice points
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    with pytest.raises(DownloadError) as err:
        dl.download("testmodel", tmp_path / "kept", url=url(server, "missing.bin"), progress=False)
    assert (tmp_path / "kept").is_dir() and "create it first" not in str(err.value)


def test_already_present_is_not_downloaded(server, tmp_path):
    (tmp_path / "test.bin").write_bytes(DATA)
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path == tmp_path / "test.bin" and server.requests == []


def test_corrupt_existing_file_is_replaced_only_by_a_verified_one(server, tmp_path):
    (tmp_path / "test.bin").write_bytes(b"y" * len(DATA))
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA


def test_mirror_env_and_filename_lookup(server, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.URL_ENV, server.base + "/")
    path = dl.download("TEST.BIN", progress=False)  # a file name, any case; default folder
    assert path == tmp_path / "models" / "test.bin" and path.read_bytes() == DATA


def test_unknown_name():
    with pytest.raises(DownloadError, match="stories15M"):
        dl.download("stories7B", progress=False)


def test_progress_bar_goes_to_stderr_only(server, tmp_path, capsys):
    dl.download("testmodel", tmp_path, url=url(server), progress=True)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "platform,env,expected",
    [
        ("linux", {"XDG_CACHE_HOME": "/xdg"}, Path("/xdg/llama2py")),
        ("linux", {"XDG_CACHE_HOME": ""}, Path.home() / ".cache" / "llama2py"),
        ("linux", {"XDG_CACHE_HOME": "relative"}, Path.home() / ".cache" / "llama2py"),  # XDG: ignore relative
        ("darwin", {}, Path.home() / "Library" / "Caches" / "llama2py"),
        ("win32", {"LOCALAPPDATA": "/lad"}, Path("/lad") / "llama2py"),
    ],
)
def test_user_cache_dir(monkeypatch, platform, env, expected):
    monkeypatch.setattr(dl.sys, "platform", platform)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dl.user_cache_dir() == expected


def test_default_models_dir_is_the_store_whatever_the_cwd(monkeypatch, tmp_path):
    monkeypatch.setenv(dl.MODELS_ENV, str(tmp_path / "x"))
    assert dl.default_models_dir() == tmp_path / "x"
    monkeypatch.delenv(dl.MODELS_ENV)
    monkeypatch.setattr(dl.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for cwd in (tmp_path, Path(dl.__file__).resolve().parent.parent):  # a source checkout's root too
        monkeypatch.chdir(cwd)
        assert dl.default_models_dir() == tmp_path / "cache" / "llama2py"


def test_ensure_default_model_downloads_then_reuses(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    monkeypatch.setenv(dl.URL_ENV, server.base)
    ckpt, tok = dl.ensure_default_model(tmp_path, progress=False)
    assert ckpt.read_bytes() == DATA and tok.read_bytes() == TOKDATA
    n = len(server.requests)
    assert dl.ensure_default_model(tmp_path, progress=False) == (ckpt, tok)
    assert len(server.requests) == n


def test_ensure_default_model_offline_names_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    entries = [dl.REGISTRY["testmodel"], dl.REGISTRY["testtok"]]
    with pytest.raises(DownloadError) as err:
        dl.ensure_default_model(tmp_path, allow_download=False)
    msg = str(err.value)
    for e in entries:  # every file: URL, size, sha256, the exact destination
        assert e.url in msg and f"{e.size:,} bytes" in msg and e.sha256 in msg
        assert str(tmp_path / e.filename) in msg
    assert dl.MODELS_ENV in msg and dl.URL_ENV in msg and "create" not in msg  # the store exists
    with pytest.raises(DownloadError, match=f"put it in place \\(create {tmp_path / 'new'} first\\):"):
        dl.ensure_default_model(tmp_path / "new", allow_download=False)
    # and with downloads allowed but no network: one message, both files, the mirror's URLs
    monkeypatch.setenv(dl.URL_ENV, f"http://127.0.0.1:{closed_port()}/m")
    with pytest.raises(DownloadError) as err:
        dl.ensure_default_model(tmp_path, progress=False)
    msg = str(err.value)
    assert "could not be downloaded" in msg and "Connection refused" in msg
    for e in entries:
        assert f"/m/{e.filename}" in msg and e.sha256 in msg and str(tmp_path / e.filename) in msg


@pytest.mark.parametrize("allow_download", [False, True])
def test_store_that_is_a_file_is_one_line(tmp_path, monkeypatch, allow_download):
    """A store path naming a file: no "put it at STORE/stories15M.bin" instructions (impossible),
    one line saying so, nothing created."""
    store = tmp_path / "store"
    store.write_bytes(b"x")
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    with pytest.raises(DownloadError) as err:
        dl.ensure_default_model(store, allow_download=allow_download, progress=False)
    assert str(err.value) == (
        f"no checkpoint was given and the model store {store} is not a folder: point ${dl.MODELS_ENV} at a "
        "folder, or pass a checkpoint path (and -z TOKENIZER)"
    )
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_ensure_default_model_offline_names_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "tok.bin").write_bytes(TOKDATA)
    with pytest.raises(DownloadError) as err:
        dl.ensure_default_model(tmp_path, allow_download=False)
    assert "test.bin" in str(err.value) and "tok.bin" not in str(err.value)


def test_offline_message_says_why_a_present_file_was_passed_over(tmp_path, monkeypatch):
    """A file in the store that is not the published one (a different export, a synthetic model
    of the same shape): the message says so, instead of only asking to download it."""
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    monkeypatch.setenv(dl.URL_ENV, f"http://127.0.0.1:{closed_port()}/m")
    (tmp_path / "test.bin").write_bytes(b"z" * len(DATA))  # right size, wrong bytes
    (tmp_path / "tok.bin").write_bytes(TOKDATA)
    with pytest.raises(DownloadError) as err:
        dl.ensure_default_model(tmp_path, progress=False)
    msg = str(err.value)
    assert "the file there is not the published one" in msg and "sha256" in msg, msg
    assert str(tmp_path / "test.bin") in msg and "tok.bin" not in msg


def test_preexisting_file_is_trusted_only_after_its_sha256(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "testmodel")
    monkeypatch.setenv(dl.URL_ENV, server.base)
    (tmp_path / "test.bin").write_bytes(b"z" * len(DATA))  # right size, wrong bytes
    (tmp_path / "tok.bin").write_bytes(TOKDATA)  # right bytes
    hashed = []
    real = dl._sha256_of
    monkeypatch.setattr(dl, "_sha256_of", lambda p: hashed.append(Path(p).name) or real(p))
    ckpt, tok = dl.ensure_default_model(tmp_path, progress=False)
    assert ckpt.read_bytes() == DATA and tok.read_bytes() == TOKDATA  # the bad one was replaced
    assert [r[0] for r in server.requests] == ["/m/test.bin"]
    assert "tok.bin" in hashed
    # checked once: the next runs only stat the files
    hashed.clear()
    assert dl.ensure_default_model(tmp_path, progress=False) == (ckpt, tok)
    assert hashed == [] and len(server.requests) == 1
    # a file changed in place (new mtime) is hashed again
    os.utime(tok, ns=(0, 0))
    assert dl.is_trusted(tok, "testtok") and hashed == ["tok.bin"]
    assert "sha256 checked" in dl.list_store(tmp_path)
    # a file put in place of a checked one with the same size and mtime (cp -p, rsync -t, tar) is
    # checked anew: a right one after a wrong one is trusted, a wrong one after a right one is not
    mtime = tok.stat().st_mtime_ns
    for data, trusted in ((b"y" * len(TOKDATA), False), (TOKDATA, True), (b"x" * len(TOKDATA), False)):
        time.sleep(0.01)  # (a later ctime)
        tok.write_bytes(data)
        os.utime(tok, ns=(mtime, mtime))
        assert dl.is_trusted(tok, "testtok") is trusted
    tok.write_bytes(TOKDATA)
    # a damaged record (here nested past Python's recursion limit) is no record: hashed again
    (tmp_path / dl.VERIFIED_JSON).write_text("[" * 100_000 + "]" * 100_000)
    hashed.clear()
    assert dl.is_trusted(tok, "testtok") and hashed == ["tok.bin"]


def test_download_stops_at_the_published_size(server, tmp_path):
    server.endless = True  # DATA, then junk for as long as the client reads
    path = dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert path.read_bytes() == DATA


def test_download_of_a_longer_file_stops_and_fails_its_check(server, tmp_path):
    server.files["/m/test.bin"] = os.urandom(len(DATA) * 3)
    with pytest.raises(DownloadError, match="sha256"):
        dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert not (tmp_path / "test.bin").exists() and not (tmp_path / "test.bin.part").exists()


_CHILD = """
import sys
from llama2py import download as dl
entry = dl.KnownFile("testmodel", "test.bin", sys.argv[1], int(sys.argv[2]), sys.argv[3], "checkpoint", "t")
print(dl.download(entry, sys.argv[4], progress=sys.argv[5] == "1"))
"""


def test_two_processes_downloading_one_file_wait_for_each_other(server, tmp_path):
    server.gate = threading.Event()  # the server sends half the file, then waits for the test
    args = [url(server), str(len(DATA)), hashlib.sha256(DATA).hexdigest(), str(tmp_path)]
    env = dict(os.environ, no_proxy="127.0.0.1,localhost")

    def child(progress: str) -> subprocess.Popen:
        argv = [sys.executable, "-c", _CHILD, *args, progress]
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = child("0")
    deadline = time.monotonic() + 60
    while not server.requests and time.monotonic() < deadline:  # the first one is downloading
        time.sleep(0.01)
    second = child("1")
    said = []
    reader = threading.Thread(target=lambda: said.append(second.stderr.readline()), daemon=True)
    reader.start()
    while not said and len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.gate.set()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    reader.join(5)
    assert said and "waiting for another download of test.bin" in said[0], (said, server.requests)
    for p, (out, err) in zip((first, second), outs):
        assert p.returncode == 0, err
        assert out.strip() == str(tmp_path / "test.bin")
    assert (tmp_path / "test.bin").read_bytes() == DATA
    assert len(server.requests) == 1  # the second one found the file in place once the lock was free
    assert not (tmp_path / "test.bin.part").exists()
    assert not (tmp_path / "test.bin.lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock: Windows keeps its lock files")
def test_a_waiter_whose_lock_file_was_removed_locks_the_current_one(tmp_path, monkeypatch):
    import fcntl

    dest = tmp_path / "test.bin"
    lock = tmp_path / "test.bin.lock"
    old = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(old, fcntl.LOCK_EX)  # another download holds the lock
    entered, leave = threading.Event(), threading.Event()

    def waiter():
        with dl._lock(dest, progress=False):
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=waiter, daemon=True)
    real_flock, waiting = fcntl.flock, threading.Event()

    def flock(fd, op):  # the waiter's blocking call: it has opened the old file by now
        if op == fcntl.LOCK_EX and threading.current_thread() is thread:
            waiting.set()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    thread.start()
    assert waiting.wait(10) and not entered.is_set()
    # the holder finishes as _lock does: removes the name, then lets go; a third process has
    # already created a new lock file under the name meanwhile
    os.unlink(lock)
    third = os.open(lock, os.O_RDWR | os.O_CREAT)
    real_flock(old, fcntl.LOCK_UN)
    os.close(old)
    assert entered.wait(10), "the waiter never got a lock"
    try:  # it holds the current file's lock, not the removed file's
        with pytest.raises(BlockingIOError):
            real_flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        leave.set()
        thread.join(10)
    real_flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once it is done
    os.close(third)
    assert not lock.exists()  # and it removed the name on the way out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock")
def test_an_interrupt_while_taking_the_lock_leaves_it_free(tmp_path, monkeypatch):
    """Ctrl-C between taking the lock and the download: the lock file is closed, so the next
    download (in this long-lived process, or another) does not wait forever."""
    dest = tmp_path / "test.bin"

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl.os.path, "samestat", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with dl._lock(dest, progress=False):
            pass
    monkeypatch.undo()
    done = threading.Event()

    def again():
        with dl._lock(dest, progress=False):
            done.set()

    threading.Thread(target=again, daemon=True).start()
    assert done.wait(10), "the lock stayed held after the interrupt"


def test_cli_hook(server, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="llama2py download")
    dl.add_arguments(parser)
    assert "stories110M" in parser.format_help()
    args = parser.parse_args(["testmodel", "testtok", "--dir", str(tmp_path), "--url", server.base, "--quiet"])
    assert dl.run(args) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "test.bin"), str(tmp_path / "tok.bin")]
    assert (tmp_path / "tok.bin").read_bytes() == TOKDATA


def _v0_size(dim, hidden, layers, heads, kv_heads, vocab, seq):
    kv_dim = dim * kv_heads // heads
    n = (
        vocab * dim
        + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden)
        + dim
        + seq * (dim // heads)
    )
    return 28 + 4 * n


def test_registry_is_consistent():
    for name in ("stories15M", "stories42M", "stories110M", "stories260K"):
        c = MODEL_SHAPES[name]
        shape = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len)
        entry = dl.REGISTRY[name]
        assert entry.size == _v0_size(*shape), name  # the header fixes the file size
        assert entry.tokenizer in dl.REGISTRY
    for entry in dl.REGISTRY.values():
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.url.startswith("https://") or entry.name.startswith("test")


def test_registry_matches_shared_copies():
    """The recorded sizes and checksums of the small files match the copies in $LLAMA2PY_MODELS."""
    folder = REAL_MODELS
    checked = 0
    for name in ("stories260K", "tok512", "tokenizer"):
        p = Path(folder) / dl.REGISTRY[name].filename
        if p.is_file():
            assert dl.verify_file(p, name) is None
            checked += 1
    if not checked:
        pytest.skip(f"no copies of the small models in {folder}")


def test_range_past_the_end_restarts_then_reports_the_short_file(server, tmp_path):
    server.files["/m/test.bin"] = DATA[:500]  # the server's file is shorter than published
    (tmp_path / "test.bin.part").write_bytes(DATA[:1000])
    with pytest.raises(DownloadError, match="has 500 bytes, expected 5,123"):
        dl.download("testmodel", tmp_path, url=url(server), progress=False)
    assert server.requests[0] == ("/m/test.bin", "bytes=1000-")  # answered 416
    assert ("/m/test.bin", None) in server.requests
    assert not (tmp_path / "test.bin.part").exists() and not (tmp_path / "test.bin").exists()


@pytest.mark.parametrize("terminal", [False, True])
def test_cli_bar_only_on_a_terminal(server, tmp_path, capsys, monkeypatch, terminal):
    """`download` drew its bar (carriage-return redraws) into a log file; the writing subcommands
    show theirs only on a terminal, and so does it now."""
    from llama2py.cli import main

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert main(["download", "testmodel", "--dir", str(tmp_path), "--url", url(server)]) == 0
    err = capsys.readouterr().err
    assert ("test.bin" in err) == terminal and ("\r" in err) == terminal, repr(err)


def test_cli_list_and_no_names(tmp_path, capsys):
    from llama2py.cli import main

    (tmp_path / "tok.bin").write_bytes(TOKDATA)
    (tmp_path / "mine.bin").write_bytes(b"12345")
    assert main(["download", "--list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"model store: {tmp_path}" in out
    assert re.search(r"testtok .* tok\.bin +present, sha256 not checked yet", out)
    assert re.search(r"testmodel .* test\.bin +absent", out) and "mine.bin" in out
    with pytest.raises(SystemExit) as exc:
        main(["download"])
    assert exc.value.code == 2 and "--list" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # names with --list: said, not dropped
        main(["download", "--list", "testmodel", "--dir", str(tmp_path)])
    assert exc.value.code == 2 and "it takes no names (got testmodel)" in capsys.readouterr().err


def test_cli_offline_message_names_every_missing_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (dl.MODELS_ENV, dl.URL_ENV)}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), no_proxy="127.0.0.1,localhost")
    env[dl.URL_ENV] = f"http://127.0.0.1:{closed_port()}/m"
    proc = subprocess.run(
        [sys.executable, "-m", "llama2py", "-n", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    store = tmp_path / "cache" / "llama2py"
    for name in ("stories15M", "tokenizer"):
        e = dl.REGISTRY[name]
        assert f"/m/{e.filename}" in proc.stderr and f"{e.size:,} bytes" in proc.stderr
        assert e.sha256 in proc.stderr and str(store / e.filename) in proc.stderr
        # laid out one file per line, its destination on the next: readable, and easy to copy
        url_line = next(line for line in proc.stderr.splitlines() if line.strip().endswith(")") and e.filename in line)
        following = proc.stderr.splitlines()[proc.stderr.splitlines().index(url_line) + 1]
        assert following.strip() == f"-> {store / e.filename}"
    assert dl.MODELS_ENV in proc.stderr and dl.URL_ENV in proc.stderr
    assert proc.stderr.startswith("llama2py: error: ")
    assert not (tmp_path / "models").exists()


def test_cli_model_store_is_shared_by_two_working_directories(server, tmp_path, monkeypatch, capsys):
    from conftest import require_device

    from llama2py.cli import main

    require_device("cpu")
    real = Path(REAL_MODELS)
    if not (real / "stories260K.bin").is_file() or not (real / "tok512.bin").is_file():
        pytest.skip(f"stories260K.bin and tok512.bin not in {real}")
    server.files["/m/stories260K.bin"] = (real / "stories260K.bin").read_bytes()
    server.files["/m/tok512.bin"] = (real / "tok512.bin").read_bytes()
    monkeypatch.setattr(dl, "DEFAULT_MODEL", "stories260K")
    monkeypatch.setenv(dl.URL_ENV, server.base)
    monkeypatch.delenv(dl.MODELS_ENV)
    monkeypatch.setattr(dl.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stories = []
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        assert main(["-t", "0", "-n", "12", "--device", "cpu"]) == 0
        stories.append(capsys.readouterr().out)
        assert list((tmp_path / cwd).iterdir()) == []  # nothing written where we stand
    assert stories[0] == stories[1] and stories[0].startswith("Once upon a time")
    assert sorted(p for p, _ in server.requests) == ["/m/stories260K.bin", "/m/tok512.bin"]  # one download
    assert (tmp_path / "cache" / "llama2py" / "stories260K.bin").is_file()


def test_known_name_without_a_folder_is_the_store_copy(tmp_path, monkeypatch, capsys):
    """`llama2py stories260K.bin -z tok512.bin` (and info, and Llama.load / Tokenizer) after a
    download into the store works from any directory; a file of that name where the user stands,
    or a name with a folder, is used as given."""
    import shutil

    from conftest import require_device

    from llama2py.cli import main

    require_device("cpu")
    real = Path(REAL_MODELS)
    if not (real / "stories260K.bin").is_file() or not (real / "tok512.bin").is_file():
        pytest.skip(f"stories260K.bin and tok512.bin not in {real}")
    store = tmp_path / "store"
    store.mkdir()
    for name in ("stories260K.bin", "tok512.bin"):
        shutil.copy(real / name, store / name)
    monkeypatch.setenv(dl.MODELS_ENV, str(store))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for argv in (["stories260K.bin", "-z", "tok512.bin"], ["stories260K", "--verbose"]):
        assert main([*argv, "-t", "0", "-n", "12", "--device", "cpu"]) == 0, argv
        out = capsys.readouterr()
        assert out.out.startswith("Once upon a time"), argv
    assert f"checkpoint: {store / 'stories260K.bin'}" in out.err and f"tokenizer: {store / 'tok512.bin'}" in out.err
    assert main(["info", "stories260K.bin"]) == 0 and str(store / "stories260K.bin") in capsys.readouterr().out
    from llama2py import Llama, Tokenizer  # the API the same way (README's examples use bare names)

    assert Tokenizer("tok512.bin", 512).path == store / "tok512.bin"
    with Llama.load("stories260K.bin", "tok512.bin", device="cpu") as m:
        assert m.checkpoint.path == store / "stories260K.bin"
    original = (store / "stories260K.bin").read_bytes()  # the store's copy is an input, never an output
    assert main(["quantize", "stories260K.bin", str(store / "stories260K.bin")]) == 1
    assert "is the input file" in capsys.readouterr().err
    argv = ["bench", "stories260K.bin", "--batch", "1", "--repeat", "1", "--json", str(store / "stories260K.bin")]
    assert main(argv) == 1 and "is the input file" in capsys.readouterr().err
    assert (store / "stories260K.bin").read_bytes() == original
    assert main(["tok512.bin", "-n", "12"]) == 1  # a tokenizer's name as the checkpoint: not looked up
    assert "checkpoint tok512.bin: no such file (tok512.bin names a tokenizer" in capsys.readouterr().err
    assert main(["./stories260K.bin", "-n", "12"]) == 1  # a folder given: used as given
    assert "no such file" in capsys.readouterr().err
    (here / "stories260K.bin").write_bytes(b"not a checkpoint")
    assert main(["stories260K.bin", "-n", "12"]) == 1  # the file here wins over the store's
    assert "checkpoint stories260K.bin: only 16 bytes" in capsys.readouterr().err


def test_model_store_that_is_a_file(tmp_path):
    from llama2py.download import download
    from llama2py.errors import DownloadError

    not_a_folder = tmp_path / "store"
    not_a_folder.write_bytes(b"")
    with pytest.raises(DownloadError, match="model store .* is not a folder"):
        download("stories260K", not_a_folder, url="http://127.0.0.1:9/none")


def test_store_advice_names_only_what_the_command_has(tmp_path):
    """A store that cannot be made: `llama2py download` may take --dir, the main command (which
    reaches download through ensure_default_model) only $LLAMA2PY_MODELS."""
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    store = a_file / "store"  # under a file: no one can make it, root included
    with pytest.raises(DownloadError, match=r"choose another with \$LLAMA2PY_MODELS or --dir"):
        dl.download("stories260K", store, url="http://127.0.0.1:9/none")
    with pytest.raises(DownloadError) as e:
        dl.ensure_default_model(store, progress=False)
    assert f"cannot create the model store {store}" in str(e.value) and "--dir" not in str(e.value), str(e.value)


def test_list_of_a_store_that_is_a_file(tmp_path, monkeypatch):
    """`download --list` said a store path that is a file "does not exist yet"."""
    a_file = tmp_path / "store"
    a_file.write_bytes(b"")
    monkeypatch.setenv(dl.MODELS_ENV, str(a_file))
    with pytest.raises(DownloadError, match=rf"model store {re.escape(str(a_file))} is not a folder: point \$"):
        dl.list_store()
    with pytest.raises(DownloadError, match="is not a folder: give --dir a folder"):
        dl.list_store(a_file)
