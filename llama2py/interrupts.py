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


@contextlib.contextmanager
def terminations_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt(signum) like Ctrl-C. Only in the
    main thread, and only for a signal that still has its default action (a program's own handler,
    or an ignored SIGHUP under nohup, is left alone); nested blocks leave the outer one's handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(int(signum))

    taken = [s for s in TERMINATIONS if signal.getsignal(s) == signal.SIG_DFL]
    for s in taken:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, signal.SIG_DFL)


_ENDING = False  # set by the command's entry point: an interrupt there ends the process


def interrupts_end_the_process() -> None:
    """Called by the command's entry point (not by main() called in-process): from the first
    interrupt on, the process is only unwinding, and more of them are ignored."""
    global _ENDING
    _ENDING = True


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal a KeyboardInterrupt stands for: 130 for Ctrl-C, 143 for SIGTERM, 129 for
    SIGHUP (after a blank line on stderr, so the shell's prompt starts on a line of its own). In
    the command's process, further interrupts are ignored from here: a held Ctrl-C key printed
    tracebacks from the unwinding (this very print, or the interpreter's shutdown)."""
    if _ENDING and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, *TERMINATIONS):
            signal.signal(s, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # (stderr closed or gone with the terminal)
        print("", file=sys.stderr)
    return 128 + (e.args[0] if e.args and isinstance(e.args[0], int) else int(signal.SIGINT))
