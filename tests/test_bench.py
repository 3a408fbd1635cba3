"""`llama2py bench`: every option end to end on a tiny synthetic checkpoint, the documented JSON,
the spread and load warnings (timings injected through the clock seam, never slept), rows for
unusable devices and batches, --vs-run against fake llama2.c programs, and bad flags."""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, cpu_built, write_tokenizer

import llama2py.bench.cli as bench_cli
from llama2py.bench import host, measure, reference, report
from llama2py.checkpoint import Config
from llama2py.cli import main
from llama2py.errors import DeviceError, Llama2pyError
from llama2py.synth import write_synthetic
from llama2py.threads import max_threads

TINY = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32)
DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
FAST = ["--steps", "3", "--repeat", "2", "--quiet"]


# the backend users run when it is built, else the numpy spec
DEVICE = "cpu" if cpu_built() else "numpy"


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.bin"
    write_synthetic(p, TINY, 0, seed=0)
    return p


def _tokenizer(path: Path, vocab: int) -> Path:
    """A minimal llama2.c tokenizer file: <unk>, BOS, EOS, then one-letter pieces."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [bytes([33 + i % 90]) * (1 + i // 90) for i in range(vocab - 3)]
    return write_tokenizer(path, pieces, [float(-i) for i in range(len(pieces))])


def _fake_run(tmp_path: Path, name: str, rates: list[str]) -> tuple[Path, Path]:
    """A stand-in for llama2.c's run that logs its arguments and reports the next of `rates`
    (cycling) as its achieved tok/s."""
    log = tmp_path / f"{name}_args.txt"
    count = tmp_path / f"{name}_count"
    script = tmp_path / name
    cases = " ".join(rates)
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
        f"set -- {cases}; i=$((n % $# + 1)); eval rate=\\${{$i}}\n"
        "echo 'Once upon a time, there was a fake run.'\n"
        'echo "achieved tok/s: $rate" >&2\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code of argparse's exit (bad flags)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _bench_json(tmp_path, args: list[str], capsys) -> tuple[dict, str, str]:
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out)]) == 0
    cap = capsys.readouterr()
    return json.loads(out.read_text()), cap.out, cap.err


def _documented_fields(doc: dict) -> set[str]:
    """Every key of the JSON document below the top level, the top level included."""
    names = set(doc) | set(doc["host"]) | set(doc["settings"]) | set(doc["checkpoint"])
    names |= set(doc["checkpoint"]["config"])
    for r in doc["results"]:
        names |= set(r)
    if doc["vs_run"]:
        names |= set(doc["vs_run"])
        for e in doc["vs_run"]["programs"]:
            names |= set(e)
    return names


def test_table_and_documented_json(tiny, tmp_path, capsys):
    script, _ = _fake_run(tmp_path, "runomp", ["123.0"])
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    args = [str(tiny), "--device", f"{DEVICE},numpy", "--batch", "1,3", *FAST]
    doc, text, _ = _bench_json(
        tmp_path, [*args, "--vs-run", str(script), "--vs-device", "numpy", "-z", str(tok)], capsys
    )
    assert re.search(rf"^{DEVICE}\s+\S+\s+1\s", text, re.M) and re.search(r"^numpy\s+-\s+3\s", text, re.M)
    assert "decode tok/s" in text and "spread" in text and "load average" in text and "kernels:" in text
    assert "kernel by kernel" in text
    assert {"schema", "date", "checkpoint", "host", "settings", "results", "vs_run", "warnings"} <= set(doc)
    assert doc["host"]["cpu_model"] and doc["host"]["cpu_count"] == os.cpu_count()
    assert doc["settings"]["prompt_len"] == 16 and doc["settings"]["steps"] == 3
    assert doc["settings"]["positions"] == [16, 19]
    assert doc["checkpoint"]["config"]["dim"] == 32
    rows = doc["results"]
    assert [(r["device"], r["batch"], r["status"]) for r in rows] == [
        (DEVICE, 1, "ok"),
        (DEVICE, 3, "ok"),
        ("numpy", 1, "ok"),
        ("numpy", 3, "ok"),
    ][: len(rows)] and len(rows) == (2 if DEVICE == "numpy" else 4)
    for r in rows:
        assert r["weight_type"] == "f32" and r["weight_bytes"] == TINY.weight_bytes()
        assert len(r["decode_tok_s_runs"]) == 2 and len(r["prefill_tok_s_runs"]) == 2
        assert r["decode_tok_s_min"] <= r["decode_tok_s"] <= r["decode_tok_s_max"]
        assert r["decode_tok_s"] == pytest.approx(r["batch"] * r["decode_steps_per_s"])
        assert r["decode_tok_s"] == pytest.approx(r["batch"] * 3 / r["decode_s"])
        assert r["prefill_tok_s"] == pytest.approx(r["batch"] * 16 / r["prefill_s"])
        spread = (r["decode_tok_s_max"] - r["decode_tok_s_min"]) / r["decode_tok_s"]
        assert r["decode_tok_s_spread"] == pytest.approx(spread)
        assert r["weight_bandwidth_gb_s"] == pytest.approx(r["weight_bytes"] * r["decode_steps_per_s"] / 1e9)
        assert r["peak_rss_bytes"] > 0 and r["backend_memory_bytes"] > 0
    programs = doc["vs_run"]["programs"]
    assert [e["program"] for e in programs] == ["runomp", "llama2py"]
    assert programs[0]["tok_s"] == 123.0 and programs[0]["ratio"] == pytest.approx(programs[1]["tok_s"] / 123.0)
    # every field the JSON carries is documented, in a doc that must exist
    assert DOC.exists(), "docs/PERFORMANCE.md documents the JSON fields"
    doc_text = DOC.read_text()
    missing = sorted(name for name in _documented_fields(doc) if f"`{name}`" not in doc_text)
    assert not missing, f"not documented in docs/PERFORMANCE.md: {missing}"


@pytest.mark.parametrize(
    "extra, check",
    [
        (["--batch", "1,2"], lambda d: [r["batch"] for r in d["results"]] == [1, 2]),
        (
            ["--threads", "1,2"],
            lambda d: [r["threads"] for r in d["results"]] == ([1, 2] if DEVICE == "cpu" else [None]),
        ),
        (
            ["-t", "0,1.0", "--top-p", "0.8"],
            lambda d: [(r["temperature"], r["top_p"]) for r in d["results"]] == [(0.0, 0.8), (1.0, 0.8)],
        ),
        (
            ["--temperature", "0.7", "-p", "0.5"],
            lambda d: [(r["temperature"], r["top_p"]) for r in d["results"]] == [(0.7, 0.5)],
        ),
        (
            ["-t", "1e-300"],  # float32 makes it 0: greedy, and the row says so
            lambda d: [r["temperature"] for r in d["results"]] == [0.0],
        ),
        (
            ["--prompt-len", "5", "--steps", "4"],
            lambda d: d["settings"]["positions"] == [5, 9] and d["results"][0]["prefill_tokens"] == 5,
        ),
        (
            ["--positions", "0:6"],
            lambda d: (
                d["settings"]["positions"] == [0, 6]
                and d["results"][0]["prefill_tok_s"] is None
                and d["results"][0]["decode_start"] == 0
                and d["results"][0]["decode_steps"] == 6
            ),
        ),
        (
            ["--positions", "10:14"],
            lambda d: d["results"][0]["decode_start"] == 10 and d["results"][0]["prefill_tokens"] == 10,
        ),
        (["--repeat", "3"], lambda d: len(d["results"][0]["decode_tok_s_runs"]) == 3),
        (
            ["--weights", "q8_0,f32"],  # a float file quantized at load time, then as it is
            lambda d: (
                [(r["weights"], r["weight_type"]) for r in d["results"]] == [("q8_0", "q8_0"), ("f32", "f32")]
                and d["settings"]["weights"] == ["q8_0", "f32"]
                and d["results"][0]["weight_bytes"] == TINY.weight_bytes("q8_0", 32)
            ),
        ),
        (
            ["--no-profile"],
            lambda d: d["results"][0]["profile"] is None and "no-profile" in d["results"][0]["profile_note"],
        ),
        (
            ["--positions", "0:40"],  # past the context of 32: shortened, with a warning
            lambda d: d["settings"]["positions"] == [0, 32] and any("context" in w for w in d["warnings"]),
        ),
    ],
)
def test_every_option_end_to_end(tiny, tmp_path, capsys, extra, check):
    base = [str(tiny), "--device", DEVICE, "--batch", "1", "--repeat", "2", "--quiet"]
    if "--positions" not in extra and "--steps" not in extra:
        base += ["--steps", "3"]
    doc, _, _ = _bench_json(tmp_path, [*base, *extra], capsys)
    assert all(r["status"] == "ok" for r in doc["results"]), doc["results"]
    assert check(doc), json.dumps(doc["results"] + [doc["settings"]], indent=1)[:3000]


def test_shape_instead_of_a_checkpoint(tmp_path, capsys):
    doc, text, _ = _bench_json(
        tmp_path,
        ["--shape", "stories260K", "--device", DEVICE, "--batch", "1", "--positions", "0:2", *FAST[2:]],
        capsys,
    )
    assert doc["checkpoint"]["shape"] == "stories260K" and doc["checkpoint"]["config"]["dim"] == 64
    assert doc["checkpoint"]["path"] is None  # not the temporary file's name: it is gone
    assert "checkpoint: random weights of the stories260K shape" in text
    assert doc["results"][0]["status"] == "ok"


def _clock(first: float, growth: float = 0.0):
    """A clock whose k-th timed interval (two consecutive calls: start, end) lasts
    first + growth * k seconds."""
    calls = 0
    now = 0.0

    def clock() -> float:
        nonlocal calls, now
        if calls % 2:  # the end of interval calls // 2
            now += first + growth * (calls // 2)
        calls += 1
        return now

    return clock


def test_steady_runs_no_spread_warning(tiny, monkeypatch):
    monkeypatch.setattr(host, "load_average", lambda: 0.0)
    settings = measure.Settings(devices=["numpy"], batches=[1], steps=3, repeat=3)
    rep = measure.bench(tiny, settings, clock=_clock(0.5))
    r = rep["results"][0]
    assert r["decode_tok_s_spread"] == 0.0 and r["prefill_tok_s_spread"] == 0.0 and not r["noisy"]
    assert r["decode_tok_s"] == pytest.approx(3 / 0.5) and r["prefill_tok_s"] == pytest.approx(16 / 0.5)
    assert rep["warnings"] == []


def test_runs_that_disagree_warn(tiny, tmp_path, monkeypatch, capsys):
    """Every interval 20% longer than the one before: the two runs differ by more than 15%, a warning
    on stderr and in the JSON."""
    monkeypatch.setattr(host, "load_average", lambda: 0.0)
    monkeypatch.setattr(bench_cli, "bench", functools.partial(measure.bench, clock=_clock(1.0, 0.2)))
    doc, text, err = _bench_json(tmp_path, [str(tiny), "--device", "numpy", "--batch", "1", *FAST], capsys)
    r = doc["results"][0]
    # intervals: load, warm-up prefill and decode, then prefill 1.6 s, decode 1.8 s, prefill 2.0 s, decode 2.2 s
    assert r["decode_tok_s_runs"] == pytest.approx([3 / 1.8, 3 / 2.2])
    assert r["noisy"] and r["decode_tok_s_spread"] == pytest.approx((3 / 1.8 - 3 / 2.2) / (3 / 2.0))
    assert any("decode runs differ by" in w for w in doc["warnings"])
    assert re.search(r"^llama2py bench: warning: numpy batch 1 greedy: decode runs differ by \d+\.\d%", err, re.M)
    assert "%!" in text  # the table marks the noisy figure


def test_just_inside_the_limit_does_not_warn():
    row = measure.empty_row("cpu", 1, "ok")
    for spread, noisy in ((0.149, False), (0.151, True)):
        row.update(decode_tok_s_spread=spread, decode_tok_s_min=1.0, decode_tok_s_max=2.0)
        assert bool(measure.spread_warnings(row)) is noisy
    assert measure.summarize([90.0, 100.0, 110.0]) == {"median": 100.0, "min": 90.0, "max": 110.0, "spread": 0.2}


@pytest.mark.parametrize("load, warned", [(0.1, False), (2.5, True)])
def test_load_average_printed_and_warned(tiny, tmp_path, monkeypatch, capsys, load, warned):
    monkeypatch.setattr(host, "load_average", lambda: load)
    out = tmp_path / "b.json"
    assert main(["bench", str(tiny), "--device", "numpy", "--batch", "1", "--steps", "2", "--repeat", "1",
                 "--json", str(out)]) == 0  # fmt: skip
    cap = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert f"load average {load:.2f}" in cap.out
    assert cap.err.count(f"load average {load:.2f}") == 1  # a progress line, or the warning instead
    assert doc["host"]["load_average"] == load
    busy = [w for w in doc["warnings"] if "busy machine" in w]
    assert bool(busy) is warned
    assert ("timings on a busy machine are not comparable" in cap.err) is warned
    assert cap.err.count("busy machine") == int(warned)  # once, at the start


def test_profile_breakdown_shares(tiny):
    """A backend with profile() gets time and share per key; shares add up to 1. Each row's
    profile is of a step sampled as that row samples (a greedy float32 step reads less)."""
    from llama2py.backends import create_backend
    from llama2py.backends.numpy_backend import NumpyBackend

    calls = []

    class Profiled(NumpyBackend):
        def profile(self, tokens, pos, temperature, top_p):
            self.forward(tokens, pos)
            calls.append((temperature, top_p))
            return {"matmul": (3.0 if temperature == 0 else 5.0) / 1e3, "rope": 0.0, "attention": 0.001}

    def make(device, config, weights, max_batch=1, threads=None):
        if device == "numpy":
            return Profiled(config, weights, max_batch, threads)
        return create_backend(device, config, weights, max_batch, threads)

    settings = measure.Settings(["numpy"], [1], temperatures=[0.0, 1.0], top_p=0.7, steps=3, repeat=1)
    rep = measure.bench(tiny, settings, make_backend=make)
    assert calls == [(0.0, 0.7), (1.0, 0.7)]
    text = report.render(rep)
    for row, ms, share in zip(rep["results"], (3.0, 5.0), (75, 83)):
        prof = row["profile"]
        assert list(prof) == ["matmul", "rope", "attention"] and prof["rope"]["seconds"] == 0.0  # the JSON keeps it
        assert prof["matmul"]["share"] == pytest.approx(ms / (ms + 1))
        assert sum(v["share"] for v in prof.values()) == pytest.approx(1.0)
        line = f"  {measure.row_label(row)}: total {ms + 1:.3f} ms = matmul {ms:.3f} ms ({share}%), attention 1.000 ms"
        assert f"{line} ({100 - share}%)" in text.splitlines()
    # a category with no time of its own is left out of the lines and named once, with the reason
    assert "rope 0.000" not in text
    assert text.count("rope") == 1 and re.search(r"^  rope: left out, not timed separately", text, re.M)


@pytest.mark.parametrize("temperatures", [[0.0], [0.0, 1.0]])
def test_warm_up_takes_the_calls_the_backend_needs(tiny, temperatures):
    """A backend whose first 3 calls of each kind are slow (the cpu backend's adaptive team times
    both choices first) says warmup_calls = 3: the warm-up takes them, every timed run is settled,
    decode included when a run makes a single step."""
    from llama2py.backends.numpy_backend import NumpyBackend

    now = [0.0]
    calls = {"prefill": 0, "step": 0}

    def tick(kind: str) -> None:
        calls[kind] += 1
        now[0] += 2.0 if calls[kind] <= 3 else 1.0

    class Settling(NumpyBackend):
        warmup_calls = 3

        def prefill(self, *a, **k):
            tick("prefill")
            return super().prefill(*a, **k)

        def step(self, *a, **k):
            tick("step")
            return super().step(*a, **k)

    settings = measure.Settings(["numpy"], [1], temperatures=temperatures, steps=1, repeat=2, profile=False)
    rep = measure.bench(tiny, settings, make_backend=lambda d, c, w, **k: Settling(c, w, **k), clock=lambda: now[0])
    for r in rep["results"]:
        assert r["prefill_tok_s_runs"] == [16.0, 16.0] and r["decode_tok_s_runs"] == [1.0, 1.0], r


def test_cpu_backend_warm_up_covers_its_adaptive_team(tiny):
    if not cpu_built():
        pytest.skip("the cpu extension is not built")
    from llama2py.backends import create_backend
    from llama2py.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny)
    for threads in (1, 2):  # threads given: no chooser
        assert create_backend("cpu", ck.config, ck.weights, 1, threads).warmup_calls == 1
    adaptive = create_backend("cpu", ck.config, ck.weights, 1, None)
    if adaptive._model.threads < 2:
        pytest.skip("one OpenMP thread here: nothing to choose")
    assert adaptive.warmup_calls == 3  # untimed first call, the team timed, one thread timed


def test_one_is_singular(tiny):
    rep = measure.bench(tiny, measure.Settings(["numpy"], [1], steps=1, repeat=1, profile=False))
    rep["vs_run"] = {"repeat": 1, "steps": 1, "device": "numpy", "programs": []}
    text = report.render(rep)
    assert "(1 step); median of 1 run after a warm-up" in text and "median of 1 round, -n 1" in text
    assert measure.row_label({"device": "cpu", "threads": 1, "batch": 2}) == "cpu 1 thread batch 2"
    assert measure.row_label({"device": "cpu", "threads": 4}) == "cpu 4 threads"


def test_sampling_written_alike_in_table_and_labels(tiny):
    from llama2py.backends.numpy_backend import NumpyBackend

    class Profiled(NumpyBackend):
        def profile(self, tokens, pos, temperature, top_p):
            return {"matmul": 0.001}

    settings = measure.Settings(["numpy"], [1], temperatures=[0.0, 1.0], top_p=0.8, steps=1, repeat=1)
    rep = measure.bench(tiny, settings, make_backend=lambda d, c, w, **k: Profiled(c, w, **k))
    text = report.render(rep)
    assert re.search(r"^numpy\s+-\s+1\s+f32\s+-t 1 -p 0\.8\s", text, re.M)
    assert re.search(r"^  numpy batch 1 -t 1 -p 0\.8: ", text, re.M)  # the profile line's label
    assert re.search(r"^numpy\s+-\s+1\s+f32\s+greedy\s", text, re.M) and "  numpy batch 1 greedy: " in text


def test_default_threads_shown_as_auto(tiny):
    """No --threads: the cpu backend picks 1 thread or all cores per call, so the table says auto
    (not all); the JSON keeps null."""
    from llama2py.backends.numpy_backend import NumpyBackend

    settings = measure.Settings(["cpu"], [1], threads=[None, 2], steps=1, repeat=1, profile=False)
    rep = measure.bench(tiny, settings, make_backend=lambda d, c, w, **k: NumpyBackend(c, w, **k))
    assert [r["threads"] for r in rep["results"]] == [None, 2]
    text = report.render(rep)
    assert re.search(r"^cpu\s+auto\s+1\s", text, re.M) and re.search(r"^cpu\s+2\s+1\s", text, re.M)


def test_weight_type_read_from_the_backend(tiny):
    """A backend that holds int8 weights says so (weight_type, group_size): the row shows it and
    counts the bytes Config.weight_bytes gives for it."""
    from llama2py.backends.numpy_backend import NumpyBackend

    class Int8(NumpyBackend):
        weight_type = "q8_0"
        group_size = 16

    rep = measure.bench(
        tiny, measure.Settings(["numpy"], [1], steps=2, repeat=1), make_backend=lambda d, c, w, **k: Int8(c, w, **k)
    )
    r = rep["results"][0]
    assert r["weight_type"] == "q8_0" and r["weight_bytes"] == TINY.weight_bytes("q8_0", 16)
    assert r["weight_bytes"] < TINY.weight_bytes()
    assert re.search(r"^numpy\s+-\s+1\s+q8_0\s+greedy", report.render(rep), re.M)


def test_weight_types_side_by_side(tiny, monkeypatch):
    """--weights measures each type from one file: rows and labels name the type asked for, and
    each row's "vs b1" divides by the batch-1 row of its own weights (the clock makes the float32
    rows twice as slow: paired with the other type's row, 2.00x would read 1.00x or 4.00x)."""
    calls = {"n": 0}
    per_type = {"f32": 2.0, "q8_0": 1.0}
    current = {"t": "f32"}

    def clock():
        calls["n"] += 1
        return calls["n"] * per_type[current["t"]]

    real = measure.bench_backend

    def tracked(path, device, threads, batch, settings, p_len, steps, make_backend, clk, weights):
        current["t"] = weights
        return real(path, device, threads, batch, settings, p_len, steps, make_backend, clk, weights)

    monkeypatch.setattr(measure, "bench_backend", tracked)
    settings = measure.Settings([DEVICE], [1, 2], steps=2, repeat=2, weights=["f32", "q8_0"], profile=False)
    rep = measure.bench(tiny, settings, clock=clock)
    rows = rep["results"]
    assert [(r["weights"], r["batch"]) for r in rows] == [("f32", 1), ("f32", 2), ("q8_0", 1), ("q8_0", 2)]
    assert [r["weight_type"] for r in rows] == ["f32", "f32", "q8_0", "q8_0"]
    text = report.render(rep)
    for w in ("f32", "q8_0"):
        b1, b2 = (r for r in rows if r["weights"] == w)
        assert b1["decode_tok_s"] != rows[0 if w == "q8_0" else 2]["decode_tok_s"]  # the types differ
        want = f"{b2['decode_tok_s'] / b1['decode_tok_s']:.2f}x"
        line = next(x for x in text.splitlines() if re.match(rf"{DEVICE}\s+\S+\s+2\s+{w}\s", x))
        assert want in line.split(), (want, line)
    assert measure.row_label(rows[2]) == f"{DEVICE} q8_0 batch 1 greedy"


def test_vs_run_loads_the_first_weight_type(tiny, tmp_path, capsys):
    script, _ = _fake_run(tmp_path, "runq", ["50"])
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    doc, text, _ = _bench_json(
        tmp_path,
        [str(tiny), "--device", "numpy", "--batch", "1", *FAST, "--weights", "q8_0,f32", "--vs-run", str(script),
         "--vs-device", "numpy", "-z", str(tok)],
        capsys,
    )  # fmt: skip
    ours = doc["vs_run"]["programs"][-1]
    assert ours["program"] == "llama2py" and ours["command"].endswith("on numpy, q8_0 weights")  # what ran
    assert doc["vs_run"]["weights"] == "q8_0" and "llama2py on numpy at batch 1, q8_0 weights):" in text


def _dequantizing(device, config, weights, **kw):
    """A backend that runs int8 weights as float32, as the cuda backend does."""
    from llama2py.backends.numpy_backend import NumpyBackend

    return NumpyBackend(config, weights.dequantized(), **kw)


def test_weight_type_a_backend_cannot_hold_is_skipped(tiny, capsys):
    """A q8_0 row on a backend that dequantizes would time float32 under a q8_0 label: skipped with
    the reason instead; the table's failed rows name the type asked for."""
    settings = measure.Settings(["numpy"], [1], steps=2, repeat=1, weights=["f32", "q8_0"], profile=False)
    rep = measure.bench(tiny, settings, make_backend=_dequantizing)
    rows = rep["results"]
    assert [(r["weights"], r["status"]) for r in rows] == [("f32", "ok"), ("q8_0", "skipped")]
    assert rows[1]["reason"] == "the numpy backend runs q8_0 weights as f32 (--weights f32 measures that)"
    text = report.render(rep)
    assert re.search(r"^numpy\s+-\s+1\s+q8_0\s+skipped$", text, re.M), text


def test_device_error_on_a_later_weight_type_is_that_row_only(tiny):
    """Only the device's first measurement decides that the device is unusable: a DeviceError on the
    second weight type's first batch skips that row, and the device goes on."""

    def make(device, config, weights, **kw):
        if weights.weight_type == "q8_0" and kw["max_batch"] == 1:
            raise DeviceError("refused")
        from llama2py.backends.numpy_backend import NumpyBackend

        return NumpyBackend(config, weights, **kw)

    settings = measure.Settings(["numpy"], [1, 2], steps=2, repeat=1, weights=["f32", "q8_0"], profile=False)
    rows = measure.bench(tiny, settings, make_backend=make)["results"]
    assert [(r["weights"], r["batch"], r["status"]) for r in rows] == [
        ("f32", 1, "ok"),
        ("f32", 2, "ok"),
        ("q8_0", 1, "skipped"),
        ("q8_0", 2, "ok"),
    ]


def test_memory_estimate_counts_the_weight_type(tiny, monkeypatch):
    """Enough memory for the int8 weights but not the float32 ones: only the f32 row is skipped."""
    q8 = measure.estimate_bytes(TINY, 1, 16, "q8_0", 32)
    f32 = measure.estimate_bytes(TINY, 1, 16)
    assert q8 < f32 and f32 - q8 == TINY.weight_bytes() - TINY.weight_bytes("q8_0", 32)
    monkeypatch.setattr(measure, "mem_available", lambda: int((q8 + f32) / 2 / 0.9))
    settings = measure.Settings(["numpy"], [1], steps=2, repeat=1, weights=["f32", "q8_0"], profile=False)
    rows = measure.bench(tiny, settings)["results"]
    assert [(r["weights"], r["status"]) for r in rows] == [("f32", "skipped"), ("q8_0", "ok")]
    assert all(r["weights"] for r in rows)


def test_profile_unavailable_said_per_weight_type(tiny):
    settings = measure.Settings(["numpy"], [1], steps=2, repeat=1, weights=["f32", "q8_0"])
    text = report.render(measure.bench(tiny, settings))
    assert "numpy f32 batch 1: unavailable" in text and "numpy q8_0 batch 1: unavailable" in text


def test_unusable_device_is_a_row(tiny, monkeypatch):
    from llama2py.backends import create_backend

    def make(device, *a, **k):
        if device == "cuda":
            raise DeviceError("cuda backend unavailable: no CuPy here")
        return create_backend(device, *a, **k)

    rep = measure.bench(tiny, measure.Settings(["cuda", "numpy"], [1, 2], steps=2, repeat=1), make_backend=make)
    rows = [(r["device"], r["batch"], r["status"]) for r in rep["results"]]
    assert rows == [("cuda", None, "unavailable"), ("numpy", 1, "ok"), ("numpy", 2, "ok")]
    assert "no CuPy" in rep["results"][0]["reason"]
    text = report.render(rep)
    assert re.search(r"^cuda\s+-\s+-\s+-\s+unavailable", text, re.M) and "no CuPy here" in text


@pytest.mark.parametrize(
    "error, status, batch",
    [(DeviceError("no CuPy here"), "unavailable", "-"), (ValueError("threads=1000 is too many"), "error", "1")],
)
def test_no_row_succeeds_still_a_table(tiny, error, status, batch):
    """Every row failed: the table is its head and the failed rows with their reasons."""

    def make(*a, **k):
        raise error

    rep = measure.bench(tiny, measure.Settings(["numpy"], [1], steps=2, repeat=1), make_backend=make)
    assert [r["status"] for r in rep["results"]] == [status]
    lines = report.render(rep).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("device"))
    assert "decode tok/s" in lines[head]
    assert re.fullmatch(rf"numpy\s+-\s+{batch}\s+-\s+{status}", lines[head + 1])
    assert lines[head + 2].startswith("  numpy") and lines[head + 2].endswith(str(error))


def test_cli_real_unusable_device_does_not_crash(tiny, capsys):
    if host.cuda_status()[0]:
        pytest.skip("cuda is usable on this machine")
    assert main(["bench", str(tiny), "--device", "cuda,numpy", "--batch", "1", "--steps", "2", "--quiet"]) == 0
    assert re.search(r"^cuda\s+-\s+-\s+-\s+unavailable", capsys.readouterr().out, re.M)


def test_cli_nothing_measured_exits_1(tiny, capsys, monkeypatch):
    """Every row failed (here: no memory for the batch): the table still says why per row, then
    one error line and exit 1, so that a script does not take it for a measurement."""
    monkeypatch.setattr(measure, "mem_available", lambda: 10_000)
    assert main(["bench", str(tiny), "--device", "numpy", "--batch", "1", "--steps", "2", "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"^numpy\s+-\s+1\s+-\s+skipped", out, re.M)
    assert err.strip().splitlines()[-1] == "llama2py bench: error: nothing could be measured (each row above says why)"


def test_batch_too_big_for_memory_is_reported(tiny, monkeypatch):
    monkeypatch.setattr(measure, "mem_available", lambda: 10_000)  # 10 kB "available"
    rep = measure.bench(tiny, measure.Settings(["numpy"], [1], steps=2, repeat=1))
    r = rep["results"][0]
    assert r["status"] == "skipped" and "GiB available" in r["reason"]


def test_context_caps_what_the_backends_hold(tiny, tmp_path, monkeypatch, capsys):
    """A checkpoint with a huge seq_len: its KV cache does not fit, so every row is skipped, though
    the run measures 4 positions; --context N (as the main command's) caps it and the rows run."""
    long = tmp_path / "long.bin"
    c = Config(dim=16, hidden_dim=24, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=64, seq_len=1 << 20)
    write_synthetic(long, c, 0, seed=0)
    need = measure.estimate_bytes(c, 1, 2)
    monkeypatch.setattr(measure, "mem_available", lambda: need // 4)  # a quarter of the full cache
    base = [str(long), "--device", DEVICE, "--batch", "1", "--positions", "2:4", "--repeat", "1", "--quiet"]
    assert main(["bench", *base]) == 1
    assert "skipped" in capsys.readouterr().out
    script, _ = _fake_run(tmp_path, "run", ["50"])  # llama2py's side of --vs-run holds the cap too
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    vs = ["--vs-run", str(script), "--vs-device", "numpy", "-z", str(tok)]
    monkeypatch.setattr("llama2py.backends.base.available_memory", lambda: need // 4)
    doc, text, _ = _bench_json(tmp_path, [*base, "--context", "64", *vs], capsys)
    assert [r["status"] for r in doc["results"]] == ["ok"] and doc["settings"]["context"] == 64
    assert "context: 64 positions per sequence (--context; the checkpoint's seq_len is 1048576)" in text
    assert doc["checkpoint"]["config"]["seq_len"] == 1 << 20  # the file's, as it is
    assert doc["vs_run"]["programs"][-1]["tok_s"] > 0
    # more than seq_len: a cap, said in a warning (as Llama.load's note)
    doc, _, err = _bench_json(
        tmp_path, [str(tiny), "--device", DEVICE, "--batch", "1", *FAST, "--context", "99"], capsys
    )
    assert doc["settings"]["context"] == 32
    assert "--context 99 is more than the checkpoint's seq_len 32: using 32" in err
    with pytest.raises(ValueError, match="context must be an integer >= 1"):
        TINY.capped(0)


def test_lengths_fit_the_context():
    assert measure.fit_lengths(256, 64, None) == (128, 64)
    assert measure.fit_lengths(1024, 64, None) == (128, 64)
    assert measure.fit_lengths(32, 100, None) == (0, 32)
    assert measure.fit_lengths(32, 20, None) == (12, 20)
    assert measure.fit_lengths(32, 8, 0) == (0, 8)


@pytest.mark.parametrize(
    "text,want", [("always [madvise] never\n", "madvise"), ("[never]", "never"), ("always madvise never", None)]
)
def test_huge_page_mode_is_the_bracketed_word(tmp_path, text, want):
    setting = tmp_path / "enabled"
    setting.write_text(text)
    assert host.huge_pages(str(setting)) == want
    assert host.huge_pages(str(tmp_path / "missing")) is None


def test_host_reads_the_machine():
    """host_info takes nothing to echo: it reads the machine."""
    h = host.host_info()
    assert h["cpu_model"] and h["cpu_count"] == os.cpu_count()
    if hasattr(os, "getloadavg"):
        assert h["load_average"] == pytest.approx(os.getloadavg()[0], abs=1.0)
    if Path(host.THP_SETTING).exists():
        assert h["huge_pages"] in ("always", "madvise", "never")
    else:
        assert h["huge_pages"] is None
    if cpu_built():
        import llama2py._cpu as ext

        assert (h["cpu_isa"], h["cpu_isa_best"]) == (ext.isa(), ext.isa_levels()[-1])
        forced = dict(h, cpu_isa="generic")
        assert report._isa(forced) == (
            "generic" if h["cpu_isa_best"] == "generic" else f"generic (forced; best here: {h['cpu_isa_best']})"
        )
    if Path("/proc/self/status").exists():
        assert h["mem_available_bytes"] > 0
        assert host.reset_peak_rss()
        before = host.peak_rss()
        block = np.ones(48 << 20, np.uint8)  # 48 MiB, touched
        assert host.peak_rss() >= before + (40 << 20)
        del block


def test_plot_is_png(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install matplotlib)")
    png = tmp_path / "b.png"
    assert (
        main(["bench", str(tiny), "--device", "numpy", "--batch", "1,2", "-t", "0,1", *FAST, "--plot", str(png)]) == 0
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_plot_without_matplotlib_says_how(tiny, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["bench", str(tiny), "--device", "numpy", "--plot", "x.png"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "pip install matplotlib" in errors[0]


@pytest.mark.parametrize("flag", ["--json", "--plot"])
@pytest.mark.parametrize(
    "where, msg", [("dir", "is a directory"), ("missing/out", "does not exist"), ("tiny.bin", "is the input file")]
)
def test_output_refused_before_measuring(tiny, tmp_path, monkeypatch, capsys, flag, where, msg):
    (tmp_path / "dir").mkdir()
    if flag == "--plot":  # the path is the point here, not matplotlib
        monkeypatch.setattr(bench_cli, "check_matplotlib", lambda: None)

    def measured(*a, **k):
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(bench_cli, "bench", measured)
    rc = main(["bench", str(tiny), "--device", "numpy", "--quiet", flag, str(tmp_path / where)])
    assert_one_line_error((rc, capsys.readouterr().err), msg, rc=1)


def test_json_and_plot_on_one_file_refused(tiny, tmp_path, capsys):
    rc = main(["bench", str(tiny), "--device", "numpy", "--quiet", "--json", str(tmp_path / "r"),
               "--plot", str(tmp_path / "." / "r")])  # fmt: skip
    assert_one_line_error((rc, capsys.readouterr().err), "--json and --plot name the same file", rc=2)


def test_no_profile_said_once_per_backend(tiny):
    """numpy has no profile(): one line for its row, not one per temperature."""
    settings = measure.Settings(["numpy"], [1], temperatures=[0.0, 1.0], steps=2, repeat=1)
    text = report.render(measure.bench(tiny, settings))
    lines = [line for line in text.splitlines() if "per-kernel profile" in line or "unavailable:" in line]
    assert len(lines) == 1 and lines[0].startswith("  numpy batch 1: unavailable"), lines


def test_json_dash_is_stdout(tiny, tmp_path, monkeypatch, capsys):
    """--json -: stdout holds the JSON alone (for a pipe), the table goes to stderr, no file "-"."""
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(tiny), "--device", "numpy", "--batch", "1", *FAST, "--json", "-"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["results"][0]["status"] == "ok" and "decode tok/s" in cap.err
    assert list(tmp_path.iterdir()) == [tiny]
    rc = main(["bench", str(tiny), "--device", "numpy", "--quiet", "--plot", "-"])
    assert_one_line_error((rc, capsys.readouterr().err), "--plot -: give a file name", rc=2)
    assert list(tmp_path.iterdir()) == [tiny]


def test_vs_run_alternates_several_programs(tiny, tmp_path, capsys):
    runomp, log_a = _fake_run(tmp_path, "runomp", ["100"])
    runq, log_b = _fake_run(tmp_path, "runqomp", ["50"])
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    doc, text, _ = _bench_json(
        tmp_path,
        [str(tiny), "--device", "numpy", "--batch", "1", "--steps", "6", "--repeat", "3", "-t", "0,1", "-p", "0.8",
         "--vs-run", f"{runomp},{runq}", "--vs-device", "numpy", "-z", str(tok), "--quiet"],
        capsys,
    )  # fmt: skip
    v = doc["vs_run"]
    assert [(e["program"], e["temperature"]) for e in v["programs"]] == [
        ("runomp", 0.0),
        ("runqomp", 0.0),
        ("llama2py", 0.0),
        ("runomp", 1.0),
        ("runqomp", 1.0),
        ("llama2py", 1.0),
    ]
    for e in v["programs"]:
        assert len(e["tok_s_runs"]) == 3 and e["tok_s"] > 0
    assert v["programs"][1]["tok_s"] == 50.0 and v["programs"][1]["tok_s_runs"] == [50.0] * 3
    assert v["programs"][0]["ratio"] == pytest.approx(v["programs"][2]["tok_s"] / 100.0)
    assert "runqomp" in text and "llama2py / it" in text
    for log in (log_a, log_b):
        calls = log.read_text().splitlines()
        assert len(calls) == 2 * 4  # two temperatures x (warm-up + 3 rounds)
        assert f"{tiny} -t 0 -n 6 -z {tok}" in calls and f"{tiny} -t 1 -n 6 -z {tok} -p 0.8 -s 42" in calls


def test_vs_run_rounds_that_disagree_warn(tiny, tmp_path, capsys):
    script, _ = _fake_run(tmp_path, "run", ["100", "100", "70", "130"])  # warm-up, then 100, 70, 130
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    doc, _, err = _bench_json(
        tmp_path,
        [str(tiny), "--device", "numpy", "--batch", "1", *FAST, "--vs-run", str(script), "--vs-device", "numpy",
         "--repeat", "3", "-z", str(tok)],
        capsys,
    )  # fmt: skip
    run = doc["vs_run"]["programs"][0]
    assert run["tok_s_runs"] == [100.0, 70.0, 130.0] and run["tok_s_spread"] == pytest.approx(0.6) and run["noisy"]
    assert "llama2py bench: warning: vs run, run -t 0: runs differ by 60.0%" in err
    assert any(w.startswith("vs run, run") for w in doc["warnings"])


def test_vs_run_tokenizer_found_beside_checkpoint(tiny, tmp_path):
    script, _ = _fake_run(tmp_path, "run", ["1e2"])
    _tokenizer(tiny.parent / "tok64.bin", 64)  # llama2.c's naming: tok{vocab}.bin
    v = reference.vs_run([str(script)], str(tiny), None, steps=4, repeat=1, threads=None, temperatures=[0.0],
                         device="numpy")  # fmt: skip
    assert v["programs"][0]["tok_s"] == 100.0 and v["tokenizer"].endswith("tok64.bin")


def test_vs_run_broken_binary_is_a_clear_error(tiny, tmp_path, capsys):
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
    bad.chmod(0o755)
    for binary, msg in ((bad, "exited 3"), (tmp_path / "missing", "no such program")):
        rc = main(["bench", str(tiny), "--device", "numpy", "--batch", "1", "--steps", "2", "--repeat", "1",
                   "--vs-run", str(binary), "--vs-device", "numpy", "-z", str(tok), "--quiet"])  # fmt: skip
        assert_one_line_error((rc, capsys.readouterr().err), msg, rc=1)


@pytest.mark.parametrize("name, msg", [("missing", "no such program"), ("plain", "not executable")])
def test_vs_run_program_checked_first(tiny, tmp_path, monkeypatch, capsys, name, msg):
    """A program that cannot run is named before any measuring and before the tokenizer search
    (no -z, none beside the checkpoint)."""
    (tmp_path / "plain").write_text("#!/bin/sh\n")  # not executable

    def measured(*a, **k):
        raise AssertionError("measured before the programs were checked")

    monkeypatch.setattr(bench_cli, "bench", measured)
    rc = main(["bench", str(tiny), "--device", "numpy", "--quiet", "--vs-run", str(tmp_path / name)])
    assert_one_line_error((rc, capsys.readouterr().err), f"--vs-run {tmp_path / name}: {msg}", rc=1)
    with pytest.raises(Llama2pyError, match=msg):  # the library checks too, before the tokenizer
        reference.vs_run([str(tmp_path / name)], str(tiny), None, 2, 1, None, [0.0], device="numpy")


def test_vs_run_that_fails_keeps_the_measured_rows(tiny, tmp_path, capsys):
    """A program that fails after minutes of measuring: the table and the JSON still come out, and
    the error (exit 1) says it was the warm-up run, whose -n is not the steps asked for."""
    script = tmp_path / "failrun"
    script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    out = tmp_path / "bench.json"
    argv = [str(tiny), "--device", "numpy", "--batch", "1", *FAST, "--vs-run", str(script), "-z", str(tok)]
    assert main(["bench", *argv, "--vs-device", "numpy", "--json", str(out)]) == 1
    cap = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["results"][0]["status"] == "ok" and doc["vs_run"] is None
    assert any("--vs-run failed" in w for w in doc["warnings"])
    assert "numpy" in cap.out  # the table
    errors = [line for line in cap.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "exited 3" in errors[0] and "warm-up run of 3 steps" in errors[0], cap.err


def test_vs_run_tokenizer_by_its_store_name(tiny, tmp_path, capsys, monkeypatch):
    """-z tok512.bin with no such file here: the model store's copy, as the main command finds it
    (the up-front check must not refuse what Llama.load would take)."""
    store = tmp_path / "store"
    store.mkdir()
    _tokenizer(store / "tok512.bin", 64)
    monkeypatch.setenv("LLAMA2PY_MODELS", str(store))
    monkeypatch.chdir(tmp_path)
    script, _ = _fake_run(tmp_path, "run", ["50"])
    doc, _, _ = _bench_json(
        tmp_path,
        [str(tiny), "--device", "numpy", "--batch", "1", *FAST, "--vs-run", str(script), "--vs-device", "numpy",
         "-z", "tok512.bin"],
        capsys,
    )  # fmt: skip
    assert doc["vs_run"]["tokenizer"] == str(store / "tok512.bin")


def test_default_lengths_share_a_short_context(tiny, tmp_path, capsys):
    """--context 32 alone: the default prefill (half the context) and decode steps share it, without
    a warning that what was asked does not fit (nothing was asked)."""
    assert measure.fit_lengths(32, None, None) == (16, 16)
    assert measure.fit_lengths(512, None, None) == (128, 64)
    assert measure.fit_lengths(32, 64, None) == (0, 32)  # asked for: the steps win
    assert measure.fit_lengths(32, None, 30) == (30, 2)
    doc, _, _ = _bench_json(tmp_path, [str(tiny), "--device", "numpy", "--batch", "1", "--context", "32",
                                       "--repeat", "1", "--quiet"], capsys)  # fmt: skip
    assert doc["settings"]["positions"] == [16, 32]
    assert not any("does not fit" in w for w in doc["warnings"]), doc["warnings"]


def test_vs_run_bare_name_in_this_folder(tmp_path, monkeypatch):
    """A bare name is looked up on $PATH only (as the OS runs it): one in the current folder is
    pointed out as ./NAME, not called not executable."""
    prog = tmp_path / "run"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Llama2pyError, match=r"--vs-run run: not on PATH; .* give \./run$"):
        reference.check_programs(["run"])
    reference.check_programs(["./run"])  # the path runs
    with pytest.raises(Llama2pyError, match="no such program"):
        reference.check_programs(["nothere"])


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--positions", "5"], "--positions must be START:END"),
        (["--positions", "4:4"], "--positions must be START:END"),
        (["--positions", "0:8", "--steps", "4"], "replaces --prompt-len and --steps"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--batch", "1,x"], "--batch must be an integer"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["-t", "-1"], "--temperature must be >= 0"),
        (["--top-p", "1.5"], "--top-p must be in [0.0, 1.0]"),
        (["--device", "gpu"], "cpu, cuda, numpy"),
        (["--repeat", "0"], "--repeat must be >= 1"),
        (["--shape", "stories7B"], "--shape must be one of"),
        (["--shape", "stories260K"], "a checkpoint or --shape"),
        (["--vs-run", ","], "--vs-run takes a comma-separated list"),
        (["--batch", "1,,2"], "--batch takes a comma-separated list without empty items, got '1,,2'"),
        (["--batch", ""], "--batch takes a comma-separated list without empty items"),
        (["--threads", "1,"], "--threads takes a comma-separated list without empty items"),
        (["-t", " ,0"], "--temperature takes a comma-separated list without empty items"),
        (["-t", "1,1e-40"], "temperature 1e-40 is below float32's smallest normal number"),  # as the main command
        (["--device", "cpu,,numpy"], "--device takes a comma-separated list without empty items"),
        (["--vs-run", "a,,b"], "--vs-run takes a comma-separated list without empty items"),
        (["--context", "0"], "--context must be >= 1"),
        (["--weights", "q4_0"], "--weights takes a comma-separated list of f32, q8_0; got 'q4_0'"),
        (["--weights", "f32,,q8_0"], "--weights takes a comma-separated list without empty items"),
        (["--threads", str(max_threads() + 1)], f"--threads must be in 1..{max_threads()}"),  # as the main command
        (["-z", "tok.bin"], "go with --vs-run"),
        (["--vs-device", "numpy"], "go with --vs-run"),
        (["--vs-run", sys.executable, "-z", "/no/such/tok.bin"], "-z /no/such/tok.bin: no such file"),
    ],
)
def test_bad_flags_are_one_line_errors(tiny, capsys, args, msg):
    assert_one_line_error((_exit_code(["bench", str(tiny), *args]), capsys.readouterr().err), msg, rc=2)


def test_no_checkpoint_is_a_flag_error(capsys):
    assert main(["bench"]) == 2
    assert "give a checkpoint or --shape" in capsys.readouterr().err


def test_shape_that_does_not_fit_the_disk_is_refused(monkeypatch, capsys):
    """--shape llama2-7B would write 27 GB of random weights: refused, before writing, where the
    temporary folder has no room for it."""
    usage = bench_cli.shutil.disk_usage
    monkeypatch.setattr(bench_cli.shutil, "disk_usage", lambda p: usage(p)._replace(free=1 << 30))
    assert main(["bench", "--shape", "llama2-7B", "--device", "numpy", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--shape llama2-7B: the random checkpoint needs" in err and "set TMPDIR" in err


def test_gpu_check_script_uses_valid_flags():
    """scripts/gpu_check.sh calls `llama2py bench`: every call's flags parse and go together."""
    import argparse
    import shlex

    script = (Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh").read_text()
    common = re.search(r'^BENCH="[^"]*llama2py bench (.*)"$', script, re.M)
    assert common, "gpu_check.sh defines BENCH as its `llama2py bench` command"
    calls = [c.rstrip(" \\;") for c in re.findall(r"\$BENCH (.*)$", script, re.M)]
    assert len(calls) >= 2
    for call in calls:
        parser = argparse.ArgumentParser()
        bench_cli.add_arguments(parser)
        argv = shlex.split(common.group(1)) + [a.replace("$OUT", "/tmp") for a in shlex.split(call)]
        settings, problem = bench_cli.settings_from_args(parser.parse_args(argv))
        assert problem is None and settings.repeat >= 1, (call, problem)
