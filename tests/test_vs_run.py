"""Byte-for-byte against a live llama2.c `run`, when a developer points LLAMA2PY_RUN_BINARY at one.

An extra beside tests/test_golden.py, which compares with run's recorded output on every CI run:
this one tries other flags against the binary itself. llama2.c is not part of this project (nor
fetched by it); the test skips without the binary."""

import os
import subprocess

import pytest
from conftest import HOST_DEVICES, cli, first_difference, require_device

CASES = [
    ["-t", "1", "-p", "0.9", "-s", "42", "-n", "256"],
    ["-t", "0.8", "-p", "0.95", "-s", "7", "-i", "Once upon a time, Lily"],
    ["-t", "1", "-p", "0", "-s", "5", "-n", "300"],
    ["-t", "1.3", "-p", "0.5", "-s", "123", "-n", "512"],
    ["-t", "0", "-n", "64", "-i", "Lily"],
    ["-t", "1", "-s", "3", "-i", 'The dragon said: "héllo ✓"'],
]


@pytest.fixture
def run_binary():
    path = os.environ.get("LLAMA2PY_RUN_BINARY")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("set LLAMA2PY_RUN_BINARY to llama2.c's compiled `run` to compare with it")
    return path


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("flags", CASES, ids=lambda f: " ".join(f))
def test_same_story_as_run(run_binary, stories260k, device, flags):
    require_device(device)
    model_path, tok = stories260k
    want = subprocess.run([run_binary, model_path, "-z", tok, *flags], capture_output=True, timeout=120)
    got = cli(model_path, "-z", tok, "--device", device, *flags)
    assert want.returncode == 0, want.stderr.decode(errors="replace")
    assert got.returncode == 0, got.stderr.decode(errors="replace")
    assert len(want.stdout) > 20, f"run printed too little to compare: {want.stdout!r}"
    assert got.stdout == want.stdout, first_difference(got.stdout, want.stdout)
