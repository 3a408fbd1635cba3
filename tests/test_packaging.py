"""The sdist: built without warnings, it holds every file the tests and the docs need, its license
metadata is the SPDX form, and a few tests run from the unpacked tree."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REQUIRE_CPU_ENV

ROOT = Path(__file__).resolve().parents[1]

# what the tests and the docs need: every file under these folders (by pattern) must be in the sdist
NEEDED = {
    "tests": "*.py",
    "docs": "*.md",
    "csrc": "*.*",
    "llama2py": "*.py",
    "llama2py/backends/cuda_kernels": "*.*",
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
    assert "Copyright (c) 2026 the llama2py authors" in (root / "LICENSE").read_text()
    # docs link each other and the README: every relative link resolves inside the sdist
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "models").glob("*.md"))]
    links = 0
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # a URL or an anchor
                continue
            links += 1
            if not (doc.parent / target.split("#")[0]).exists():
                missing.append(f"{doc.relative_to(root)} -> {target}")
    assert links >= 5 and not missing, f"links that do not resolve in the sdist: {missing}"


def test_sdist_license_metadata(sdist):
    root, _ = sdist
    info = (root / "PKG-INFO").read_text()
    assert "License-Expression: MIT" in info
    assert "License-File: LICENSE" in info
    assert "Classifier: License ::" not in info  # superseded by the expression


def test_a_few_tests_run_from_the_unpacked_sdist(sdist):
    root, _ = sdist
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_CPU_ENV}
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
            "tests/test_tokenizer.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def _fake_install(tmp_path: Path) -> tuple[Path, Path]:
    """A source tree without a built extension (src/) and an installed copy of this version that
    has one (site/, with dist-info metadata listing it), as `pip install .` leaves them."""
    import llama2py
    from llama2py import _extension

    built = Path(importlib.import_module("llama2py._cpu").__file__)
    src, site = tmp_path / "src", tmp_path / "site"
    pkg = Path(llama2py.__file__).parent
    for f in pkg.rglob("*.py"):
        dest = src / "llama2py" / f.relative_to(pkg)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    (src / "setup.py").write_text("# marker of a source tree\n")
    (src / "csrc" / "cpu").mkdir(parents=True)
    (site / "llama2py").mkdir(parents=True)
    (site / "llama2py" / built.name).write_bytes(built.read_bytes())
    info = site / f"llama2py-{llama2py.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llama2py\nVersion: {llama2py.__version__}\n")
    (info / "RECORD").write_text(f"llama2py/{built.name},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    assert _extension.NAME == "llama2py._cpu"
    return src, site


def test_python_m_in_a_source_tree_uses_the_installed_extension(stories260k, tmp_path):
    from conftest import require_device

    require_device("cpu")
    ckpt, tok = stories260k
    src, site = _fake_install(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # after the current directory, as site-packages is
    # `python -m llama2py ...`, minus an editable install's import hook (it would find this
    # checkout's extension by itself): only the source tree and the "installed" copy remain
    run_m = (
        "import runpy, sys; "
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]; "
        "sys.argv[0] = 'llama2py'; runpy.run_module('llama2py', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-c", run_m, str(ckpt), "-z", str(tok), "-t", "0", "-n", "12", "--device", "cpu"]
    proc = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon a time")
    # without an installed build: the error says what happened and what to run
    for f in (site / "llama2py").iterdir():
        f.unlink()
    proc = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"imported from the source tree {src}" in proc.stderr
    assert "`llama2py`" in proc.stderr and "pip install -e ." in proc.stderr and "--device numpy" in proc.stderr


def _annotations(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    yield a.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def test_annotations_evaluate_on_every_supported_python():
    """Python 3.9 (requires-python) cannot evaluate `X | Y`: typing.get_type_hints on Llama.load or
    Tokenizer.encode raised TypeError there (pydantic, typeguard, Sphinx call it). No annotation of
    the package uses the operator, and those of the public API evaluate."""
    import ast
    import typing

    offenders = []
    for path in sorted((ROOT / "llama2py").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for ann in _annotations(tree):
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)):
                offenders.append(f"{path.relative_to(ROOT)}:{ann.lineno}: {ast.unparse(ann)}")
    assert not offenders, "\n".join(offenders)

    import llama2py
    from llama2py import batch, checkpoint, tokenizer

    for obj in (llama2py.Llama, tokenizer.Tokenizer, checkpoint.Config, batch.BatchStats):
        for name, member in vars(obj).items():
            member = getattr(member, "__func__", member)
            if callable(member) and not name.startswith("__") or name == "__init__":
                typing.get_type_hints(member)
    typing.get_type_hints(checkpoint.load_checkpoint)


def test_import_is_light_and_every_name_resolves():
    """`import llama2py` does not load numpy (so the command can catch a Ctrl-C while it loads);
    the public names, and submodules as attributes (`llama2py.errors.PromptError`, as docs/BATCH.md
    writes it), resolve on first use; dir() lists the names for tab completion."""
    code = (
        "import sys, llama2py\n"
        "light = 'numpy' not in sys.modules\n"
        "names = [getattr(llama2py, n).__name__ for n in llama2py.__all__]\n"
        "print(light, llama2py.errors.PromptError.__name__, set(llama2py.__all__) <= set(dir(llama2py)), *names)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "PromptError", "True", "Config", "Llama", "Llama2pyError", "Tokenizer",
                                "load_checkpoint"], r.stdout  # fmt: skip
