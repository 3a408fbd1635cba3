"""The sdist: built without warnings, it holds every file the tests and the docs need, its license
metadata is the SPDX form, and a few tests run from the unpacked tree."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what the tests and the docs need: every file under these folders (by pattern) must be in the sdist
NEEDED = {
    "tests": "*.py",
    "docs": "*.md",
    "csrc": "*.*",
    "llama2py": "*.py",
}
NEEDED_FILES = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "llama2py/py.typed"]


def _require_build_tools() -> None:
    if not (ROOT / "setup.py").is_file():
        pytest.skip("not run from a source tree")
    for mod in ("build", "setuptools", "pybind11"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install -e '.[test]' installs it)")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (the build requirement)")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tuple[Path, str]:
    """(unpacked sdist root, the build's output), built from this tree without build isolation."""
    _require_build_tools()
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (archive,) = out.glob("llama2py-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data") if sys.version_info >= (3, 12) else tar.extractall(out)
    (root,) = [p for p in out.iterdir() if p.is_dir()]
    return root, proc.stdout + proc.stderr


def test_sdist_builds_without_warnings(sdist):
    _, log = sdist
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_sdist_holds_what_the_tests_and_docs_need(sdist):
    root, _ = sdist
    missing = [f for f in NEEDED_FILES if not (root / f).is_file()]
    for folder, pattern in NEEDED.items():
        for path in (ROOT / folder).rglob(pattern):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or path.suffix in (".so", ".pyc", ".pyd"):
                continue
            if not (root / rel).is_file():
                missing.append(str(rel))
    assert not missing, f"not in the sdist: {missing}"
    assert (root / "tests" / "conftest.py").is_file()
    # docs link each other and the README: every relative link resolves inside the sdist
    assert "Copyright (c) 2026 the llama2py authors" in (root / "LICENSE").read_text()


def test_sdist_license_metadata(sdist):
    root, _ = sdist
    info = (root / "PKG-INFO").read_text()
    assert "License-Expression: MIT" in info
    assert "License-File: LICENSE" in info
    assert "Classifier: License ::" not in info  # superseded by the expression


def test_a_few_tests_run_from_the_unpacked_sdist(sdist):
    root, _ = sdist
    env = {k: v for k, v in os.environ.items() if k != "LLAMA2PY_REQUIRE_CPU"}
    env["PYTHONPATH"] = str(root)  # the unpacked package, not this tree's
    code = "import llama2py, sys; print(llama2py.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(root)), where.stdout + where.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_sampler.py",
            "tests/test_checkpoint.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
