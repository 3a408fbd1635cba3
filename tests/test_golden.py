"""The CLI against llama2.c's `run`, byte for byte, on every CI run: run's exact stdout for 8 cases
on stories260K (sampled, top-p, plain multinomial, prompts, UTF-8, the whole context, chat with
stdin) lies in the golden folder ($LLAMA2PY_GOLDEN, else $LLAMA2PY_MODELS/../golden; never copied
into this repository). Each case is run as `python -m llama2py ARGV` in the models folder, with its
stdin, on every host backend. stderr (tok/s, the device line) is not compared."""

from __future__ import annotations

import json

import pytest
from conftest import HOST_DEVICES, cli, find_golden, first_difference, golden_dir, load_case, models_dir, require_device

# The cases as the golden folder lists them, read at collection so each case is its own test;
# without the folder, one placeholder that skips saying why.
_FOLDER, _ = find_golden()
_NAMES = [c["name"] for c in json.loads((_FOLDER / "cases.json").read_text("utf-8"))["cases"]] if _FOLDER else []


def test_golden_folder_is_complete():
    """Every case names an output that exists, and the set covers what CI relies on."""
    folder = golden_dir()
    cases = json.loads((folder / "cases.json").read_text("utf-8"))["cases"]
    assert len(cases) >= 8, f"{folder}: {len(cases)} cases, expected 8"
    assert any(c.get("stdin") for c in cases), "a chat case with stdin"
    assert any("-i" in c["argv"] for c in cases), "a case with a prompt"
    for c in cases:
        assert (folder / c["stdout"]).is_file(), f"{c['stdout']} listed in cases.json but missing"


@pytest.mark.parametrize("device", HOST_DEVICES)
@pytest.mark.parametrize("name", _NAMES or ["(no golden folder)"])
def test_same_stdout_as_run(name, device):
    folder = golden_dir()  # skips with the reason when absent
    require_device(device)
    case, want = load_case(name)
    models = (models_dir() or folder / ".." / "models").resolve()
    for arg in case["argv"]:
        if arg.endswith(".bin") and not (models / arg).is_file():
            pytest.skip(f"{arg} not found in the models folder {models} (set $LLAMA2PY_MODELS)")
    stdin = case["stdin"].encode("utf-8") if case.get("stdin") is not None else b""
    r = cli(*case["argv"], "--device", device, stdin=stdin, cwd=models)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout == want, f"{name} on {device}: " + first_difference(r.stdout, want)
