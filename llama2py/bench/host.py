"""Facts about the machine a benchmark ran on: CPU model and kernel level, GPU, load, memory.

Everything here reads the machine (/proc on Linux, platform elsewhere); nothing echoes the
benchmark's own settings back.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Optional

import numpy as np

from .. import __version__
from ..backends.base import available_memory

BUSY_LOAD = 0.3  # 1-minute load average above which timings are not comparable


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> tuple[Optional[str], Optional[str]]:
    """The kernel level the C++ extension dispatches to (`_cpu.isa()`) and the best this CPU runs
    (LLAMA2PY_ISA may force a lower one); None, None when it cannot load (loaded as the cpu
    backend loads it)."""
    from ..backends.cpu import _load_extension
    from ..errors import Llama2pyError

    try:
        ext = _load_extension()
    except (Llama2pyError, ImportError):
        return None, None
    return str(ext.isa()), str(ext.isa_levels()[-1])


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages(path: str = THP_SETTING) -> Optional[str]:
    """Linux's transparent huge page mode (always, madvise or never: the bracketed word of
    THP_SETTING), None where there is none. The cpu backend advises its KV caches and packed
    weights as huge pages, which `never` refuses (docs/PERFORMANCE.md, huge pages)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def load_average() -> Optional[float]:
    """The 1-minute load average, None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): CuPy importable and at least one GPU visible."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising on import
        return False, f"CuPy not importable ({e.__class__.__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"no usable CUDA device ({e})"
    return (n > 0), ("" if n > 0 else "no CUDA device visible")


def gpu_name() -> Optional[str]:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def default_devices() -> list[str]:
    """cpu, plus cuda when usable."""
    return ["cpu"] + (["cuda"] if cuda_status()[0] else [])


def host_info() -> dict:
    """The machine as the benchmark found it at the start (the JSON's `host`)."""
    isa, best = cpu_isa()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": isa,
        "cpu_isa_best": best,
        "huge_pages": huge_pages(),
        "load_average": load_average(),
        "mem_available_bytes": mem_available(),
        "gpu": None,  # filled in when cuda ran
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "llama2py": __version__,
    }


mem_available = available_memory  # MemAvailable in bytes, None where unknown (one reader: base.py)


def _status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> Optional[int]:
    """Peak resident set size in bytes since the last reset_peak_rss (VmHWM), else since start."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
    except Exception:
        return None
