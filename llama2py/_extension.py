"""Finding the C++ extension llama2py._cpu, also when a source tree shadows the installed package.

`python -m llama2py` run in the repository root imports ./llama2py (the current directory comes
first on sys.path), which has no built extension after a plain `pip install .`: the extension is
in the installed copy in site-packages. When that copy is the same version, its extension is
loaded from there; otherwise the error says exactly what happened and what to run.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

from . import __version__
from .errors import DeviceError

NAME = "llama2py._cpu"
PACKAGE_DIR = Path(__file__).resolve().parent


def source_tree() -> Optional[Path]:
    """The repository root when this package is imported from a source checkout, else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "setup.py").is_file() and (root / "csrc" / "cpu").is_dir() else None


def installed_extension() -> Optional[Path]:
    """The extension file of an installed llama2py of this version outside this folder, if any.
    Every distribution is looked at: the source tree's own llama2py.egg-info (left by a build)
    comes first on sys.path and lists no extension."""
    try:
        from importlib import metadata

        dists = list(metadata.distributions(name="llama2py"))
    except Exception:  # broken metadata
        return None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for dist in dists:
        if dist.version != __version__:
            continue
        for f in dist.files or ():
            parts = Path(str(f)).parts
            if (
                len(parts) == 2
                and parts[0] == "llama2py"
                and parts[1].startswith("_cpu.")
                and parts[1].endswith(suffixes)
            ):
                path = Path(str(dist.locate_file(f))).resolve()
                if path.is_file() and path.parent != PACKAGE_DIR:
                    return path
    return None


def _load_from(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(NAME, None)
        raise
    return module


def isa_label(level: str, best: Optional[str]) -> str:
    """The kernel level in use (`_cpu.isa()`), and the best this CPU runs (`_cpu.isa_levels()[-1]`)
    where a lower one was forced (LLAMA2PY_ISA): a figure taken there must not pass for the
    machine's best."""
    return level if best in (None, level) else f"{level} (forced; best here: {best})"


def load_cpu_extension() -> ModuleType:
    """llama2py._cpu, or DeviceError saying why not and what to run."""
    try:
        return importlib.import_module(NAME)
    except ImportError as e:
        if "LLAMA2PY_ISA" in str(e):  # a bad LLAMA2PY_ISA stops the import: say that, not "not built"
            raise DeviceError(f"{e} (unset LLAMA2PY_ISA to use the best level)") from None
        error = e
    root = source_tree()
    if root is not None:
        other = installed_extension()
        if other is not None:
            try:
                return _load_from(other)
            except ImportError as e:
                error = e
        raise DeviceError(
            f"llama2py was imported from the source tree {root} (running `python -m llama2py` in the "
            f"repository root imports that folder, not the installed package), and its C++ extension "
            f"is not built there ({error}). Run the installed command `llama2py` (or `python -m llama2py` "
            f"from another folder), or build in place with `pip install -e .`; the slow reference "
            f"backend needs no build: --device numpy (device='numpy' in Python)"
        ) from None
    raise DeviceError(
        f"the cpu backend's C++ extension llama2py._cpu is not built or does not load ({error}); "
        f"reinstall llama2py (`pip install .` or `pip install -e .` in its source folder; needs a "
        f"C++17 compiler with OpenMP), or use the slow reference backend: --device numpy "
        f"(device='numpy' in Python)"
    ) from None
