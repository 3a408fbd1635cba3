"""`python -m llama2py` and the `llama2py` command (pyproject.toml's entry point): the program is
imported inside the interrupt handling, so a Ctrl-C (or SIGTERM, SIGHUP) that lands while numpy and
the extension load exits 128 + the signal like one that lands later, without a traceback."""

import sys


def main() -> int:
    from .interrupts import exit_status, interrupts_end_the_process, terminations_interrupt

    interrupts_end_the_process()
    # Reports name paths, which an ASCII stdout (PYTHONIOENCODING=ascii, some locales) cannot
    # encode: escaped there, as on stderr, instead of failing (stories are bytes: never affected).
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        with terminations_interrupt():
            from .cli import main as run

            return run()
    except KeyboardInterrupt as e:
        return exit_status(e)


if __name__ == "__main__":
    sys.exit(main())
