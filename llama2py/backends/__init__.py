"""Backends behind one interface (base.Backend): numpy (the spec), cpu (C++), cuda (CuPy)."""

from __future__ import annotations

from typing import Optional

from ..checkpoint import Config, Weights
from ..errors import DeviceError
from .base import Backend

DEVICES = ("auto", "cpu", "cuda", "numpy")


def create_backend(
    device: str,
    config: Config,
    weights: Weights,
    max_batch: int = 1,
    threads: Optional[int] = None,
    notes: Optional[list] = None,
) -> Backend:
    """Make the backend for `device`. With "auto": cuda when usable, else cpu. `notes` gets what
    the user should know (the reason for a fallback to the cpu; that cuda runs int8 weights as
    float32): the CLI prints it on stderr, the library never prints."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend(config, weights, max_batch, threads)
    if device in ("cuda", "auto"):
        try:
            from .cuda import CudaBackend

            backend = CudaBackend(config, weights, max_batch, threads)
            if weights.weight_type != "f32" and notes is not None:
                notes.append(
                    "the cuda backend runs int8 (Q8_0) weights as float32, dequantized at load: the text "
                    'can differ from runq\'s; the cpu backend (--device cpu, device="cpu") keeps them int8'
                )
            return backend
        except (DeviceError, ImportError) as e:
            if device == "cuda":
                raise e if isinstance(e, DeviceError) else DeviceError(f"cuda backend unavailable: {e}")
            if notes is not None:
                notes.append(f"cuda not usable ({e}); using the cpu backend")
    from .cpu import CpuBackend

    backend = CpuBackend(config, weights, max_batch, threads)
    if notes is not None and backend.forked_one_thread and threads != 1:
        notes.append(
            "this process was forked after llama2py's cpu threads had started, and OpenMP cannot start them "
            "again here: the cpu backend runs on one thread (start worker processes with multiprocessing's "
            "'spawn' or 'forkserver' method, or load the model only after forking, for more)"
        )
    return backend
