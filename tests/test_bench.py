"""`llama2py bench`: the table and the documented JSON on a tiny synthetic checkpoint, the plot,
rows for unusable devices and batches, and --vs-run against a fake llama2.c `run`."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from conftest import write_tokenizer

import llama2py.bench as bench
from llama2py.checkpoint import Config
from llama2py.cli import main
from llama2py.errors import DeviceError
from llama2py.synth import write_synthetic

TINY = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32)

ROW_FIELDS = {
    "device",
    "batch",
    "status",
    "reason",
    "backend",
    "load_s",
    "prefill_tokens",
    "prefill_s",
    "prefill_tok_s",
    "decode_steps",
    "decode_s",
    "decode_tok_s",
    "decode_tok_s_runs",
    "decode_steps_per_s",
    "weight_bytes",
    "weight_bandwidth_gb_s",
    "peak_rss_bytes",
    "backend_memory_bytes",
    "device_memory_bytes",
    "profile",
    "profile_total_s",
    "profile_note",
}
DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.bin"
    write_synthetic(p, TINY, 0, seed=0)
    return p


def _tokenizer(path: Path, vocab: int) -> Path:
    """A minimal llama2.c tokenizer file: <unk>, BOS, EOS, then one-letter pieces."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [bytes([33 + i % 90]) * (1 + i // 90) for i in range(vocab - 3)]
    return write_tokenizer(path, pieces, [float(-i) for i in range(len(pieces))])


def test_table_and_documented_json(tiny, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(
        [
            "bench",
            str(tiny),
            "--device",
            "numpy",
            "--batch",
            "1,3",
            "--steps",
            "4",
            "--repeat",
            "2",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert re.search(r"^numpy\s+1\s", text, re.M) and re.search(r"^numpy\s+3\s", text, re.M)
    assert "decode tok/s" in text and "threads:" in text and "cpu:" in text
    assert "kernel by kernel" in text
    doc = json.loads(out.read_text())
    assert {"schema", "date", "checkpoint", "host", "settings", "results", "vs_run"} <= set(doc)
    assert {"cpu_model", "cpu_count", "threads", "gpu"} <= set(doc["host"]) and doc["host"]["cpu_model"]
    assert doc["settings"]["prompt_len"] == 16 and doc["settings"]["steps"] == 4
    assert doc["checkpoint"]["config"]["dim"] == 32
    rows = doc["results"]
    assert [(r["device"], r["batch"], r["status"]) for r in rows] == [("numpy", 1, "ok"), ("numpy", 3, "ok")]
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["load_s"] >= 0
        assert len(r["decode_tok_s_runs"]) == 2
        assert r["decode_tok_s"] == pytest.approx(r["batch"] * r["decode_steps_per_s"])
        assert r["weight_bandwidth_gb_s"] == pytest.approx(r["weight_bytes"] * r["decode_steps_per_s"] / 1e9)
        assert r["peak_rss_bytes"] > 0 and r["backend_memory_bytes"] > 0
    # every field the JSON carries is documented
    if DOC.exists():
        doc_text = DOC.read_text()
        for name in ROW_FIELDS | set(doc) | set(doc["host"]) | set(doc["settings"]):
            assert f"`{name}`" in doc_text, f"{name} is not documented in docs/PERFORMANCE.md"


def test_profile_breakdown_shares(tiny):
    """A backend with profile() gets time and share per key; shares add up to 1."""
    from llama2py.backends import create_backend
    from llama2py.backends.numpy_backend import NumpyBackend

    class Profiled(NumpyBackend):
        def profile(self, tokens, pos):
            self.forward(tokens, pos)
            return {"matmul": 0.003, "attention": 0.001}

    def make(device, config, weights, max_batch=1, threads=None):
        return (
            Profiled(config, weights, max_batch, threads)
            if device == "numpy"
            else create_backend(device, config, weights, max_batch, threads)
        )

    rep = bench.bench(tiny, ["numpy"], [1], steps=3, repeat=1, make_backend=make)
    prof = rep["results"][0]["profile"]
    assert list(prof) == ["matmul", "attention"]
    assert prof["matmul"]["share"] == pytest.approx(0.75)
    assert sum(v["share"] for v in prof.values()) == pytest.approx(1.0)
    assert "matmul 3.000 ms (75%)" in bench.render(rep)


def test_unusable_device_is_a_row(tiny, capsys, monkeypatch):
    from llama2py.backends import create_backend

    def make(device, *a, **k):
        if device == "cuda":
            raise DeviceError("cuda backend unavailable: no CuPy here")
        return create_backend(device, *a, **k)

    monkeypatch.setattr(bench, "create_backend", make)
    rep = bench.bench(tiny, ["cuda", "numpy"], [1, 2], steps=2, repeat=1)
    rows = [(r["device"], r["batch"], r["status"]) for r in rep["results"]]
    assert rows == [("cuda", None, "unavailable"), ("numpy", 1, "ok"), ("numpy", 2, "ok")]
    assert "no CuPy" in rep["results"][0]["reason"]
    text = bench.render(rep)
    assert re.search(r"^cuda\s+-\s+unavailable", text, re.M) and "no CuPy here" in text


def test_cli_real_unusable_device_does_not_crash(tiny, capsys):
    if bench.cuda_status()[0]:
        pytest.skip("cuda is usable on this machine")
    assert (
        main(["bench", str(tiny), "--device", "cuda,numpy", "--batch", "1", "--steps", "2", "--repeat", "1", "--quiet"])
        == 0
    )
    assert re.search(r"^cuda\s+-\s+unavailable", capsys.readouterr().out, re.M)


def test_batch_too_big_for_memory_is_reported(tiny, monkeypatch):
    monkeypatch.setattr(bench, "mem_available", lambda: 10_000)  # 10 kB "available"
    rep = bench.bench(tiny, ["numpy"], [1], steps=2, repeat=1)
    r = rep["results"][0]
    assert r["status"] == "skipped" and "GiB available" in r["reason"]


def test_lengths_fit_the_context():
    assert bench.fit_lengths(256, 64, None) == (128, 64)
    assert bench.fit_lengths(1024, 64, None) == (128, 64)
    assert bench.fit_lengths(32, 100, None) == (1, 31)
    assert bench.fit_lengths(32, 20, None) == (12, 20)


def test_plot_is_png(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install matplotlib)")
    png = tmp_path / "b.png"
    assert (
        main(
            [
                "bench",
                str(tiny),
                "--device",
                "numpy",
                "--batch",
                "1,2",
                "--steps",
                "2",
                "--repeat",
                "1",
                "--plot",
                str(png),
                "--quiet",
            ]
        )
        == 0
    )
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_without_matplotlib_says_how(tiny, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["bench", str(tiny), "--device", "numpy", "--plot", "x.png"]) == 1
    assert "pip install matplotlib" in capsys.readouterr().err


def _fake_run(tmp_path: Path, rate: str = "123.0") -> tuple[Path, Path]:
    log = tmp_path / "run_args.txt"
    script = tmp_path / "run"
    script.write_text(
        f"#!/bin/sh\necho \"$@\" >> {log}\necho 'Once upon a time, there was a fake run.'\n"
        f"echo 'achieved tok/s: {rate}' >&2\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def test_vs_run_with_fake_binary(tiny, tmp_path, capsys):
    script, log = _fake_run(tmp_path)
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    out = tmp_path / "v.json"
    assert (
        main(
            [
                "bench",
                str(tiny),
                "--device",
                "numpy",
                "--batch",
                "1",
                "--steps",
                "6",
                "--repeat",
                "3",
                "--vs-run",
                str(script),
                "--vs-device",
                "numpy",
                "-z",
                str(tok),
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "vs llama2.c run" in text and "123.0 tok/s" in text and "ratio llama2py / run" in text
    v = json.loads(out.read_text())["vs_run"]
    assert v["run_tok_s"] == 123.0 and v["run_tok_s_runs"] == [123.0] * 3
    assert len(v["llama2py_tok_s_runs"]) == 3 and v["llama2py_tok_s"] > 0
    assert v["ratio"] == pytest.approx(v["llama2py_tok_s"] / 123.0)
    calls = log.read_text().splitlines()
    assert len(calls) == 4  # warm-up + 3 alternating rounds
    assert calls[-1] == f"{tiny} -t 0 -n 6 -z {tok}"


def test_vs_run_tokenizer_found_beside_checkpoint(tiny, tmp_path):
    script, _ = _fake_run(tmp_path, "1e2")
    _tokenizer(tiny.parent / "tok64.bin", 64)  # llama2.c's naming: tok{vocab}.bin
    v = bench.vs_run(str(script), str(tiny), None, steps=4, repeat=1, threads=None, device="numpy")
    assert v["run_tok_s"] == 100.0 and v["tokenizer"].endswith("tok64.bin")


def test_vs_run_broken_binary_is_a_clear_error(tiny, tmp_path, capsys):
    tok = _tokenizer(tmp_path / "tok64.bin", 64)
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
    bad.chmod(0o755)
    for binary, msg in ((bad, "exited 3"), (tmp_path / "missing", "no such program")):
        assert (
            main(
                [
                    "bench",
                    str(tiny),
                    "--device",
                    "numpy",
                    "--batch",
                    "1",
                    "--steps",
                    "2",
                    "--repeat",
                    "1",
                    "--vs-run",
                    str(binary),
                    "--vs-device",
                    "numpy",
                    "-z",
                    str(tok),
                    "--quiet",
                ]
            )
            == 1
        )
        assert msg in capsys.readouterr().err


def test_host_info_names_cpu_and_threads():
    h = bench.host_info(2)
    assert h["cpu_model"] and h["threads"] == 2
    assert bench.host_info(None)["threads"] == os.cpu_count()
