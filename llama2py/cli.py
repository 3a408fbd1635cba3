"""Command line: `python -m llama2py [CHECKPOINT] [run's flags]` and the subcommands.

    llama2py [CHECKPOINT] [-t T] [-p P] [-s SEED] [-n STEPS] [-i PROMPT] [-z TOKENIZER] [-m MODE] [-y SYS]
    llama2py info FILE          llama2py download NAME
    llama2py synth ...          llama2py bench CHECKPOINT ...

Errors print one line on stderr and exit non-zero; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from . import __version__
from .errors import Llama2pyError

# subcommand -> (module, help); each module has add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "info": ("llama2py.cli", "describe a checkpoint (format, config, parameters, bytes)"),
    "download": ("llama2py.download", "fetch stories15M/42M/110M/260K and tokenizers into models/"),
    "synth": ("llama2py.synth", "write a random-weight checkpoint of a given shape"),
    "bench": ("llama2py.bench", "tokens/s per backend and batch size, kernel by kernel"),
}

EPILOG = f"""subcommands (llama2py SUBCOMMAND --help for each):
{chr(10).join(f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items())}

examples:
  llama2py                                   # stories15M (downloaded on first use), a random story
  llama2py models/stories15M.bin -t 0 -n 64  # greedy, 64 positions
  llama2py stories260K.bin -z tok512.bin -t 0.8 -p 0.95 -s 7 -i "Once upon a time, Lily"
  llama2py model.bin -m chat -y "You are a helpful assistant."
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code 2 and usage line, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _float_range(lo: float, hi: Optional[float], name: str):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}")
        if not (v >= lo and (hi is None or v <= hi)):
            raise argparse.ArgumentTypeError(
                f"{name} must be in [{lo}, {hi}], got {s}" if hi is not None else f"{name} must be >= {lo}, got {s}")
        return v
    return parse


def _int_min(lo: int, name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be >= {lo}, got {s}")
        return v
    return parse


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llama2py", description="Run llama2.c checkpoints: the same story as llama2.c's run, "
                "on C++ (cpu) or CUDA kernels.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="llama2.c .bin checkpoint (default: models/stories15M.bin, "
                   "downloaded on first use)")
    p.add_argument("-t", dest="temperature", type=_float_range(0.0, None, "-t temperature"), default=1.0,
                   help="temperature, 0 = greedy (default 1.0)")
    p.add_argument("-p", dest="top_p", type=_float_range(0.0, 1.0, "-p top_p"), default=0.9,
                   help="top-p (nucleus) sampling in [0,1]; 0 or 1 = off (default 0.9)")
    p.add_argument("-s", dest="seed", type=_int_min(0, "-s seed"), default=0,
                   help="random seed (default: the current time)")
    p.add_argument("-n", dest="steps", type=_int_min(0, "-n steps"), default=256,
                   help="positions to run, 0 = the whole context (default 256)")
    p.add_argument("-i", dest="prompt", default=None, help="input prompt")
    p.add_argument("-z", dest="tokenizer", default=None,
                   help="tokenizer file (default: tok{vocab}.bin or tokenizer.bin beside the checkpoint or in models/)")
    p.add_argument("-m", dest="mode", choices=("generate", "chat"), default="generate", help="mode (default generate)")
    p.add_argument("-y", dest="system", default=None, help="system prompt in chat mode")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "numpy"), default="auto",
                   help="backend: auto = cuda when usable, else cpu (default auto)")
    p.add_argument("--threads", type=_int_min(1, "--threads"), default=None,
                   help="CPU threads (default: all cores)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"llama2py {__version__}")
    return p


def _load(args):
    from .model import Llama
    checkpoint, tokenizer = args.checkpoint, args.tokenizer
    if checkpoint is None:
        from .download import ensure_default_model
        checkpoint, default_tok = ensure_default_model(progress=sys.stderr.isatty())
        tokenizer = tokenizer or default_tok
    model = Llama.load(checkpoint, tokenizer=tokenizer, device=args.device, threads=args.threads)
    for note in model.notes:
        print(f"llama2py: {note}", file=sys.stderr)
    return model


def cmd_run(args) -> int:
    from .generate import RunStats, chat_loop
    from .sampler import resolve_seed
    model = _load(args)
    out = sys.stdout.buffer
    if args.mode == "chat":
        def read_user(prompt_text: str) -> Optional[str]:
            out.write(prompt_text.encode())
            out.flush()
            line = sys.stdin.readline()
            return None if line == "" else line.rstrip("\n")
        system = args.system
        if system is None:
            system = read_user("Enter system prompt (optional): ") or ""
        pieces = chat_loop(model.backend, model.tokenizer, args.steps, args.temperature, args.top_p,
                           resolve_seed(args.seed), read_user, system, args.prompt)
        for b in pieces:
            out.write(b)
            out.flush()
        out.write(b"\n")
        out.flush()
        return 0
    stats = RunStats()
    for b in model.stream_bytes(args.prompt or "", args.steps, args.temperature, args.top_p, args.seed, stats):
        if b:
            out.write(b)
            out.flush()
    out.write(b"\n")
    out.flush()
    if stats.positions > 1:
        print(f"achieved tok/s: {stats.tok_per_s:f}", file=sys.stderr)
    return 0


# -- info -------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="llama2.c checkpoint (.bin)")


def run(args) -> int:
    from .checkpoint import load_checkpoint
    print(load_checkpoint(args.file).describe())
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        name = argv[0]
        module_name, help_ = SUBCOMMANDS[name]
        module = importlib.import_module(module_name)
        p = _Parser(prog=f"llama2py {name}", description=help_)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        args = p.parse_args(argv[1:])
        return _guarded(lambda: module.run(args), args.debug)
    args = run_parser().parse_args(argv)
    return _guarded(lambda: cmd_run(args), args.debug)


def _guarded(fn, debug: bool) -> int:
    try:
        return fn()
    except (Llama2pyError, ValueError, OSError) as e:
        if debug:
            raise
        if isinstance(e, BrokenPipeError):
            return 141
        print(f"llama2py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


def main(argv: Optional[list[str]] = None) -> int:
    return _dispatch(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
