"""llama2py: run llama2.c checkpoints from Python on C++ (CPU) and CUDA kernels."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .threads import set_thread_wait_defaults  # noqa: E402

set_thread_wait_defaults()  # before anything loads libgomp (llama2py.threads)

from .checkpoint import Config, load_checkpoint  # noqa: E402
from .errors import Llama2pyError  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

if TYPE_CHECKING:  # type checkers see Llama; at run time it is imported on first use
    from .model import Llama


def __getattr__(name: str):  # Llama pulls in the backends: import it on first use
    if name == "Llama":
        from .model import Llama

        return Llama
    raise AttributeError(name)


__all__ = ["Config", "Llama", "Llama2pyError", "Tokenizer", "load_checkpoint"]
