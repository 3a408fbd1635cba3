"""llama2py: run llama2.c checkpoints from Python on C++ (CPU) and CUDA kernels."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .threads import set_thread_wait_defaults  # noqa: E402

set_thread_wait_defaults()  # before anything loads libgomp (llama2py.threads)

if TYPE_CHECKING:  # type checkers see the names; at run time each is imported on first use
    from .checkpoint import Config, load_checkpoint
    from .errors import Llama2pyError
    from .model import Llama
    from .tokenizer import Tokenizer

# Imported on first use: `import llama2py` stays light (no numpy), so the command line can catch a
# Ctrl-C while numpy and the extension load, and Llama pulls in the backends only when asked for.
_LAZY = {
    "Config": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Llama2pyError": "errors",
    "Llama": "model",
    "Tokenizer": "tokenizer",
}


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule: llama2py.errors.PromptError
    raise AttributeError(f"module 'llama2py' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


__all__ = ["Config", "Llama", "Llama2pyError", "Tokenizer", "load_checkpoint"]
