"""`llama2py bench`: load time, prefill and decode tokens/s with their spread, memory, a
per-kernel breakdown and the effective weight bandwidth, per backend, thread count, batch size and
sampling; optionally alternating with llama2.c's run programs.

One module per job: host (the machine), measure (timing backends), reference (llama2.c's
programs), report (table, JSON, plot), cli (arguments). docs/PERFORMANCE.md documents the method
and every JSON field.
"""

from .cli import add_arguments, run

__all__ = ["add_arguments", "run"]
