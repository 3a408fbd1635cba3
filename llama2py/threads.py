"""The OpenMP thread wait policy of the cpu backend, set before libgomp loads.

Threads that wait at a barrier spin for a short while, then sleep. libgomp's default spins about
300,000 times, which on a busy machine burns the core a descheduled team mate needs: a decode step
then waits for the scheduler at every barrier. libgomp reads its environment once, when it loads
(when llama2py._cpu is first imported), so this runs on `import llama2py` and again before the
extension loads; it changes nothing when the user has chosen (OMP_WAIT_POLICY or GOMP_SPINCOUNT
set). A libgomp that another module loaded earlier keeps its own settings.
"""

from __future__ import annotations

import os

THREAD_WAIT_DEFAULTS = {"GOMP_SPINCOUNT": "20000"}


def set_thread_wait_defaults() -> None:
    if "OMP_WAIT_POLICY" in os.environ:
        return
    for name, value in THREAD_WAIT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def usable_cores() -> int:
    """The logical cores this process may run on: its CPU affinity (taskset, a container's cpuset),
    which is also what OpenMP's default team counts; the machine's count where there is none."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most CPU threads a model may ask for: each gets its own buffers, so absurd counts would
    exhaust memory without speeding anything up (the default uses at most every core)."""
    return max(64, 4 * (os.cpu_count() or 1))
