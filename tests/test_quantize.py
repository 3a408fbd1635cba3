"""`llama2py quantize`: v0/v1 in, the v2 file llama2.c's export would write out; every bad input is
one line, exit 1 (2 for bad flags), with nothing half-written left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, assert_one_line_error, cli, cpu_built, rel_err, write_tokenizer

import llama2py.quantize as quantize
from llama2py.backends.numpy_backend import NumpyBackend
from llama2py.checkpoint import (
    Config,
    Weights,
    checkpoint_bytes,
    float_tensor_offsets,
    header_bytes,
    load_checkpoint,
    model_shape,
    random_weights,
    write_checkpoint,
)
from llama2py.cli import main
from llama2py.errors import CheckpointError, OutputError
from llama2py.files import atomic_output


def _cli(*args: str) -> subprocess.CompletedProcess:
    return cli("quantize", *args, text=True)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("group_size", [None, 2])
def test_quantize_equals_writing_v2(tmp_path, capsys, shape, version, group_size):
    """The output is byte for byte the v2 file of the same weights, and runs close to the original."""
    c = SHAPES[shape]
    w = random_weights(c, 11)
    src, out, ref = tmp_path / "in.bin", tmp_path / "out.bin", tmp_path / "ref.bin"
    write_checkpoint(src, c, w, version)
    write_checkpoint(ref, c, w, 2, group_size)
    args = ["quantize", str(src), str(out), "--no-progress"] + (["--group-size", str(group_size)] if group_size else [])
    assert main(args) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin", "ref.bin"]  # no temporary left
    ck, orig = load_checkpoint(out), load_checkpoint(src)
    assert ck.version == 2 and ck.config == c
    tokens = np.array([[1, 5, 9, 3]], np.int32)
    want = NumpyBackend(c, orig.weights).prefill(tokens, 0, "all")
    err = rel_err(NumpyBackend(c, ck.weights).prefill(tokens, 0, "all"), want)
    assert err < 0.05, f"v2 logits differ from the float32 input's by {err:.3g} relative"


def test_real_stories260k(stories260k, tmp_path):
    """karpathy's stories260K: group 64 (from dim alone, as llama2.c's export), the size it implies."""
    out = tmp_path / "s.bin"
    r = _cli(str(stories260k[0]), str(out))
    assert r.returncode == 0, r.stderr
    # not a terminal and no --progress: no bar; only the note on runq and hidden_dim 172
    assert r.stderr.startswith("llama2py quantize: note: group size 64") and r.stderr.count("\n") == 1
    ck = load_checkpoint(out)
    assert ck.group_size == 64 and ck.file_bytes == 278_608
    assert "group 64" in r.stdout


def test_progress_when_asked(tmp_path, make_checkpoint):
    r = _cli(str(make_checkpoint("wide")), str(tmp_path / "p.bin"), "--progress")
    assert r.returncode == 0 and "100%" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "make_args,code,needles",
    [
        (lambda src, d: [src, str(d / "x.bin"), "--group-size", "5"], 2, ["group size 5 does not divide dim 48"]),
        (lambda src, d: [src, str(d / "x.bin"), "--group-size", "0"], 2, ["--group-size must be >= 1"]),
        (lambda src, d: [src], 2, ["output"]),
        (lambda src, d: [src, src], 1, ["is the input file"]),
        (lambda src, d: [src, str(d / "sub" / ".." / "in.bin")], 1, ["is the input file"]),
        (lambda src, d: [src, str(d / "link.bin")], 1, ["is the input file"]),
        (lambda src, d: [src, str(d / "hard.bin")], 1, ["is the input file"]),
        (lambda src, d: [src, str(d / "sub")], 1, ["is a directory"]),
        (lambda src, d: [src, ""], 1, ["the output path is empty"]),  # not "output .: is a directory"
        (lambda src, d: [src, str(d / "newdir") + "/"], 1, ["names a folder, not a file"]),  # never a file
        (lambda src, d: [src, str(d / "newdir") + "/."], 1, ["names a folder, not a file"]),
        (lambda src, d: [src, str(d / "missing" / "x.bin")], 1, ["does not exist"]),
        (lambda src, d: [src, str(d / "in.bin" / "x.bin")], 1, ["is not a folder"]),
        (lambda src, d: [str(d / "v2.bin"), str(d / "x.bin")], 1, ["already v2"]),
        (lambda src, d: [str(d / "nope.bin"), str(d / "x.bin")], 1, ["no such file"]),
        (lambda src, d: [str(d / "short.bin"), str(d / "x.bin")], 1, ["truncated"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, make_args, code, needles):
    c = SHAPES["mha_shared"]
    w = random_weights(c, 1)
    src = tmp_path / "in.bin"
    write_checkpoint(src, c, w, 0)
    write_checkpoint(tmp_path / "v2.bin", c, w, 2)
    (tmp_path / "short.bin").write_bytes(src.read_bytes()[:-8])
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.bin")
    os.link(src, tmp_path / "hard.bin")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    # --progress: every check runs before the first byte, so a refusal shows no bar either
    assert_one_line_error(_cli(*make_args(str(src), tmp_path), "--progress"), *needles, rc=code)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # the input untouched, no output, no temporary file
    assert os.listdir(tmp_path / "sub") == [] and not (tmp_path / "newdir").exists()


def _with_value(config: Config, name: str, index: tuple, value: float) -> Weights:
    """random weights of config with one value replaced (the shared classifier kept shared)."""
    w = {k: np.array(v) for k, v in random_weights(config, 1).tensors().items()}
    w[name][index] = value
    if config.shared_classifier:
        w["wcls"] = w["token_embedding"]
    return Weights(**w)


NON_FINITE = [
    ("token_embedding", (3, 5), np.nan, "token_embedding holds nan"),
    ("w2", (1, 4, 7), np.inf, "w2 layer 1 holds inf"),
    ("wq", (0, 0, 0), -np.inf, "wq layer 0 holds -inf"),
]


@pytest.mark.parametrize("name, index, value, said", NON_FINITE)
def test_non_finite_weights_are_not_quantized(tmp_path, name, index, value, said):
    """int8 cannot hold NaN or Inf: quantize, a v2 write and load-time quantization refuse, naming
    the tensor and layer, instead of writing NaN scales (whose file llama2py then refuses to load)
    or telling a garbage story with exit 0 (--weights q8_0 on the cpu); no numpy warning, no output."""
    from llama2py.model import Llama

    c = SHAPES["mha_shared"]
    src = tmp_path / "in.bin"
    write_checkpoint(src, c, _with_value(c, name, index, value), 0)
    r = _cli(str(src), str(tmp_path / "out.bin"))
    err = assert_one_line_error(r, f"{src}: {said}: int8 (Q8_0) cannot store NaN or Inf", rc=1)
    assert "Warning" not in err and sorted(os.listdir(tmp_path)) == ["in.bin"]
    with pytest.raises(CheckpointError, match=f"^x.bin: {said}: "):
        write_checkpoint(tmp_path / "v2.bin", c, _with_value(c, name, index, value), 2, inputs=("x.bin",))
    assert sorted(os.listdir(tmp_path)) == ["in.bin"]
    with pytest.raises(CheckpointError, match=f"^checkpoint {src}: {said}: "):
        Llama.load(src, tokenizer=None, device="numpy", weights="q8_0")
    tok = tmp_path / "tok.bin"
    write_tokenizer(tok, [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [bytes([65 + i]) for i in range(c.vocab_size - 3)])
    r = cli(src, "-z", tok, "-n", "4", "--weights", "q8_0", "--device", "cpu" if cpu_built() else "numpy", text=True)
    assert "Warning" not in assert_one_line_error(r, f"checkpoint {src}: {said}", rc=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the next test covers the refusal")
def test_unwritable_folder(tmp_path, make_checkpoint):
    src = make_checkpoint("odd_tiny")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_one_line_error(_cli(str(src), str(ro / "x.bin")), "not writable", rc=1)
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_folder_that_refuses_the_temporary_file(tmp_path, monkeypatch, make_checkpoint, capsys):
    """Whatever stops the temporary file (permissions, a read-only mount, quota) is one line."""
    import llama2py.files

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    src = make_checkpoint("odd_tiny")
    monkeypatch.setattr(llama2py.files, "_create_exclusive", refuse)
    assert main(["quantize", str(src), str(tmp_path / "x.bin")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create a file in" in err and "Permission denied" in err
    assert not (tmp_path / "x.bin").exists()


def test_memory_stays_at_a_few_blocks(tmp_path, monkeypatch):
    """The input is never loaded: Python/numpy allocations stay far below the model's size while a
    ~60 MB v0 file (32 MB of token embedding in one tensor) is quantized."""
    c = Config(dim=256, hidden_dim=768, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=32000, seq_len=64)
    src = tmp_path / "big.bin"
    from llama2py.synth import write_synthetic

    write_synthetic(src, c, 0, seed=1)
    monkeypatch.setattr(quantize, "BLOCK_FLOATS", 1 << 20)
    tracemalloc.start()
    try:
        quantize.quantize_checkpoint(src, tmp_path / "q.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert src.stat().st_size > 55e6
    assert peak < 24e6, (
        f"peak traced memory {peak / 1e6:.1f} MB while quantizing a {src.stat().st_size / 1e6:.0f} MB file"
    )
    ref = tmp_path / "ref.bin"
    write_checkpoint(ref, c, load_checkpoint(src).weights, 2)
    assert (tmp_path / "q.bin").read_bytes() == ref.read_bytes()


def test_interrupted_quantize_leaves_nothing(tmp_path, monkeypatch, make_checkpoint):
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize.quantize_checkpoint(make_checkpoint("wide"), tmp_path / "x.bin", progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide_v0_s0.bin"]


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are told by flock, POSIX only")
def test_atomic_output_removes_what_a_killed_writer_left(tmp_path):
    """A writer killed outright (SIGKILL) cannot remove its temporary file; the next successful
    write of the same target removes it. A writer at work holds a lock on its file (whatever its
    pid: another PID namespace or host): kept; so are other targets' files and other names."""
    import fcntl

    target = tmp_path / "t.bin"
    stale = tmp_path / ".t.bin.4242.0123abcd.tmp"  # no lock: its writer is gone
    working = tmp_path / ".t.bin.12.89abcdef.tmp"
    other = tmp_path / ".u.bin.4242.0123abcd.tmp"  # another target's
    odd = [tmp_path / n for n in (".t.bin.4242.notmine.tmp", ".t.bin.\u00b2.0123abcd.tmp", ".t.bin.tmp")]
    for p in (stale, working, other, *odd):
        p.write_bytes(b"half")
    (tmp_path / ".t.bin.7.76543210.tmp").symlink_to(other)  # a link by that name: not followed
    with open(working, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with atomic_output(target) as f:
            f.write(b"new")
            # the writer's own temporary is locked meanwhile: a second writer's cleanup keeps it
            with atomic_output(tmp_path / "t.bin") as g:
                g.write(b"newer")
            ours = [n for n in os.listdir(tmp_path) if n.startswith(f".t.bin.{os.getpid()}.")]
            assert len(ours) == 1, ours  # the outer writer's, still there for its rename
        names = sorted(os.listdir(tmp_path))
    assert names == sorted([target.name, working.name, other.name, ".t.bin.7.76543210.tmp", *(p.name for p in odd)])
    assert target.read_bytes() == b"new" and other.read_bytes() == b"half"


_RACE = """
import multiprocessing as mp, sys
from llama2py.files import atomic_output
def write(i):
    failed = []
    for k in range(150):
        try:
            with atomic_output(sys.argv[1]) as f:
                f.write(bytes([i]) * 1000)
        except Exception as e:
            failed.append(repr(e))
    return failed
if __name__ == "__main__":
    with mp.get_context("spawn").Pool(4) as pool:
        failed = sum(pool.map(write, range(4)), [])
    print(len(failed), failed[:1])
"""


@pytest.mark.skipif(os.name != "posix", reason="the cleanup of dead writers' files needs flock (POSIX)")
def test_a_writer_whose_file_another_writers_cleanup_removed_makes_a_new_one(tmp_path, monkeypatch):
    """The race the concurrent test samples, step by step: two finishing writers' cleanups open a
    live writer's new temporary file before it is locked; the first removes it; the writer makes
    another, which the second cleanup (late, holding the old file) must not remove by its name."""
    import fcntl

    import llama2py.files as files

    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    create, made, late = files._create_exclusive, [], []

    def racing_create(path):
        fd = create(path)
        made.append(path)
        if len(made) == 1:
            first = os.open(path, os.O_RDONLY)
            late.append(os.open(path, os.O_RDONLY))
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)  # the first cleanup
            os.close(first)
        return fd

    monkeypatch.setattr(files, "_create_exclusive", racing_create)
    with files.atomic_output(target) as f:
        fcntl.flock(late[0], fcntl.LOCK_EX | files.fcntl.LOCK_NB)  # the second cleanup, on the old file
        if os.path.exists(made[0]):
            os.unlink(made[0])
        os.close(late[0])
        f.write(b"new")
    assert target.read_bytes() == b"new" and len(made) == 2 and made[0] != made[1]
    assert os.listdir(tmp_path) == ["x.bin"]


@pytest.mark.skipif(os.name != "posix", reason="the cleanup of dead writers' files needs flock (POSIX)")
def test_concurrent_writers_of_one_file_never_fail(tmp_path):
    """A finishing writer removes what dead writers left (files whose lock it can take); it could
    take a live writer's file in the moment between its creation and its lock, and that writer
    failed at the rename ([Errno 2] ...: 115 of 2,400 writes by 6 processes)."""
    script = tmp_path / "race.py"
    script.write_text(_RACE)
    target = tmp_path / "out" / "x.bin"
    target.parent.mkdir()
    r = subprocess.run([sys.executable, str(script), str(target)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and r.stdout.split()[0] == "0", r.stdout + r.stderr[-2000:]
    assert os.listdir(target.parent) == ["x.bin"] and len(set(target.read_bytes())) == 1


@pytest.mark.parametrize("name", ["a" * 251 + ".bin", "\u00e9" * 125 + "x.bin"])
def test_atomic_output_takes_the_longest_file_names(tmp_path, name):
    """A name at the 255-byte limit (2-byte characters included): its temporary name is shortened
    (the first bytes and a hash), not refused as too long; a killed writer's leftover of that target
    is still found and removed, another long target's kept."""
    from llama2py import files

    target = tmp_path / name
    assert len(os.fsencode(name)) == 255
    stem = files._temporary_stem(target)
    assert stem != name and len(os.fsencode(stem)) <= files._STEM_BYTES
    other_stem = files._temporary_stem(tmp_path / (name[:-4] + ".bix"))
    assert other_stem != stem
    stale, other = tmp_path / f".{stem}.4242.0123abcd.tmp", tmp_path / f".{other_stem}.4242.0123abcd.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    with atomic_output(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    if os.name == "posix":
        assert sorted(os.listdir(tmp_path)) == sorted([name, other.name])


def test_atomic_output_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write(b"new, half")
        raise RuntimeError("fail")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["t.bin"]
    with atomic_output(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["t.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600


def test_output_that_is_not_a_regular_file_is_refused(tmp_path, make_checkpoint):
    """A pipe or a device is never replaced by a renamed file (as root that would turn /dev/null
    into a regular file); a symbolic link gets its target written and stays a link."""
    src = make_checkpoint("odd_tiny")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_line_error(_cli(str(src), str(fifo)), "is not a regular file (a named pipe)", rc=1)
    assert fifo.is_fifo()
    null = Path(os.devnull)
    before = null.stat()
    with pytest.raises(OutputError, match="a character device"), atomic_output(null) as f:
        f.write(b"x")
    assert null.stat().st_rdev == before.st_rdev and null.is_char_device()
    target = tmp_path / "target.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    os.symlink(target.name, link)
    assert _cli(str(src), str(link)).returncode == 0
    assert link.is_symlink() and os.readlink(link) == target.name
    assert load_checkpoint(target).version == 2
    loop = tmp_path / "loop.bin"
    os.symlink(loop.name, loop)  # a link to itself: refused, not replaced by a file
    assert_one_line_error(_cli(str(src), str(loop)), "loop.bin: a symbolic link that loops", rc=1)
    assert loop.is_symlink()
    to_dir = tmp_path / "to_dir"
    os.symlink(tmp_path, to_dir)  # messages name the link and where it leads
    assert_one_line_error(_cli(str(src), str(to_dir)), f"to_dir (a link to {tmp_path}): is a directory", rc=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["link.bin", "loop.bin", "pipe", "target.bin", "to_dir", src.name]
    )


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, make_checkpoint, capsys):
    """Too little room is refused before the first byte when the size is known; a disk that
    fills up meanwhile (ENOSPC from a write) is one line too, and leaves no temporary file."""
    import errno
    import shutil

    import llama2py.files

    src = make_checkpoint("odd_tiny")
    out = tmp_path / "x.bin"
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(llama2py.files.shutil, "disk_usage", lambda p: real._replace(free=100))
    assert main(["quantize", str(src), str(out), "--progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.bin: needs" in err and "MiB free" in err, err
    assert os.listdir(tmp_path) == [src.name]
    monkeypatch.undo()

    with pytest.raises(OutputError, match=r"x\.bin: .*free some space"):
        with atomic_output(out) as f:
            f.write(b"some")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(tmp_path) == [src.name]


def test_note_when_runq_would_read_the_file_differently(tmp_path, capsys):
    """A group size that does not divide hidden_dim: runq drops each w2 row's tail (docs/FORMAT.md),
    so quantize says so on stderr and names a group size that divides both."""
    from llama2py.checkpoint import runq_group_note

    def shape(dim, hidden):
        return Config(dim=dim, hidden_dim=hidden, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=40, seq_len=8)

    c = shape(64, 172)
    assert runq_group_note(shape(288, 768), 32) == ""
    mib = checkpoint_bytes(c, 2, 4) / 2**20
    assert runq_group_note(c, 64) == (
        "group size 64 does not divide hidden_dim 172: llama2.c's runq reads this file with the last 44 values "
        f"of each w2 row dropped (llama2py reads it whole); `llama2py quantize --group-size 4` of the float file makes one both read alike ({mib:,.1f} MiB)"
    )
    assert "--group-size" not in runq_group_note(shape(64, 171), 64)  # only 1 divides both: no advice
    src = tmp_path / "in.bin"
    write_checkpoint(src, c, random_weights(c, 1), 0)
    for group, noted in ((None, True), (4, False)):
        flags = ["--group-size", str(group)] if group else []
        assert main(["quantize", str(src), str(tmp_path / f"q{group}.bin"), *flags]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("wrote ") and ("note: group size 64 does not divide hidden_dim 172" in err) == noted


def test_read_only_output_is_refused(tmp_path, make_checkpoint, capsys):
    """A read-only file is not replaced (the rename would do it all the same)."""
    src = make_checkpoint("odd_tiny")
    out = tmp_path / "keep.bin"
    out.write_bytes(b"precious")
    out.chmod(0o444)  # no write bit: refused for root too (access() says root may write it)
    assert main(["quantize", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keep.bin: exists and is read-only" in err, err
    assert out.read_bytes() == b"precious"
    # a writable file is replaced and keeps its permissions (the temporary file had the umask's)
    out.chmod(0o640)
    assert main(["quantize", str(src), str(out)]) == 0 and out.stat().st_mode & 0o777 == 0o640
    capsys.readouterr()
    # a read-only input given as the output is the input, not a file to make writable
    src.chmod(0o444)
    try:
        assert main(["quantize", str(src), str(src)]) == 1
        assert "is the input file" in capsys.readouterr().err
    finally:
        src.chmod(0o644)


def test_7b_input_is_read_in_mapped_blocks(tmp_path):
    """A Llama 2 7B-shaped v0 file (27 GB, sparse here): offsets past 2**32 are right, and every chunk
    the writer gets is a small memory map, never a loaded tensor. (Quantizing all of it: about 3
    minutes and 67 MB peak RSS here, by hand: `llama2py quantize` with /usr/bin/time -v.)"""
    c = model_shape("llama2-7B")
    src = tmp_path / "7b.bin"
    size = checkpoint_bytes(c, 0)
    offsets = float_tensor_offsets(c, 0)
    with open(src, "wb") as f:
        f.write(header_bytes(c, 0))
        f.truncate(size)
        for where, value in ((offsets["w3"], 1.5), (size - 4, -2.5)):  # w3's first, wcls's last float
            f.seek(where)
            f.write(np.float32(value).tobytes())
    ck = quantize.open_float_checkpoint(src)
    chunks = quantize.mapped_source(ck)
    first = next(iter(chunks("w3")))
    assert isinstance(first, np.memmap) and first.size == quantize.BLOCK_FLOATS and first[0] == 1.5
    *_, last = chunks("wcls")
    assert isinstance(last, np.memmap) and last[-1] == -2.5
    assert offsets["wcls"] > 2**32 and last.offset + last.nbytes == size
