"""Signals that end a command: Ctrl-C (SIGINT, Python's KeyboardInterrupt), and SIGTERM (`kill`, a
job scheduler, `timeout`) and SIGHUP (a closed terminal), which terminations_interrupt() turns into
the same KeyboardInterrupt so that temporary files and folders are removed on the way out. The
command line exits 128 + the signal (130, 143, 129), as a shell reports a process the signal killed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

# The signals whose default action (end the process at once) would leave temporary files behind.
TERMINATIONS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

_ENDING = False  # set by the command's entry point: an interrupt there ends the process


def interrupts_end_the_process() -> None:
    """Called by the command's entry point (not by main() called in-process): from the first
    interrupt on, the process is only unwinding (removing what it was writing), and more of them
    are ignored: a held Ctrl-C key sends one every few milliseconds, which cut the cleanup short
    and printed tracebacks from it."""
    global _ENDING
    _ENDING = True


def _ignore_further() -> None:
    for s in (signal.SIGINT, *TERMINATIONS):
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def terminations_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt(signum) like Ctrl-C. Only in the
    main thread, and only for a signal that still has its default action (a program's own handler,
    or an ignored SIGHUP under nohup, is left alone); nested blocks leave the outer one's handler.
    In the command's process (interrupts_end_the_process) Ctrl-C is taken too, and the first
    interrupt ignores the rest."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if _ENDING:
            _ignore_further()
        raise KeyboardInterrupt(int(signum))

    taken = [s for s in TERMINATIONS if signal.getsignal(s) == signal.SIG_DFL]
    if _ENDING and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    for s in taken:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s in taken:
            if signal.getsignal(s) is interrupt:  # (left ignored where an interrupt ended the command)
                signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal a KeyboardInterrupt stands for: 130 for Ctrl-C, 143 for SIGTERM, 129 for
    SIGHUP (after a blank line on stderr, so the shell's prompt starts on a line of its own). In
    the command's process further interrupts are ignored (also where this one did not come
    through terminations_interrupt's handler)."""
    if _ENDING and threading.current_thread() is threading.main_thread():
        _ignore_further()
    with contextlib.suppress(Exception):  # (stderr closed or gone with the terminal)
        print("", file=sys.stderr)
    return 128 + (e.args[0] if e.args and isinstance(e.args[0], int) else int(signal.SIGINT))
