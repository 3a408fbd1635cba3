"""Byte-for-byte against llama2.c's own `run`, when a developer points LLAMA2PY_RUN_BINARY at one.

llama2.c is not part of this project (nor fetched by it); the test skips without the binary."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST_DEVICES, require_device

ROOT = Path(__file__).resolve().parents[1]
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
    ck, tok = stories260k
    want = subprocess.run([run_binary, ck, "-z", tok, *flags], capture_output=True, timeout=120)
    got = subprocess.run(
        [sys.executable, "-m", "llama2py", ck, "-z", tok, "--device", device, *flags],
        capture_output=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert want.returncode == 0 and got.returncode == 0, got.stderr.decode()
    assert len(want.stdout) > 20 and got.stdout == want.stdout
