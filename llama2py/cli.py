"""Command line: `python -m llama2py [CHECKPOINT] [run's flags]` and the subcommands.

    llama2py [CHECKPOINT] [-t T] [-p P] [-s SEED] [-n STEPS] [-i PROMPT] [-z TOKENIZER] [-m MODE] [-y SYS]
    llama2py [CHECKPOINT] --prompts-file FILE | --num-samples N [--max-batch M] [run's flags]
    llama2py info FILE          llama2py download NAME
    llama2py synth ...          llama2py bench CHECKPOINT ...

Errors print one line on stderr and exit non-zero; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import difflib
import errno
import importlib
import os
import shlex
import sys
from typing import Optional

from . import __version__
from .argtypes import float_in, int_at_least, temperature
from .checkpoint import WEIGHT_TYPES
from .errors import Llama2pyError, PromptError, UsageError
from .interrupts import exit_status, terminations_interrupt
from .sampler import SEED_BITS, SEED_MAX, nth_seed
from .threads import max_threads, usable_cores

# subcommand -> (module, help); each module has add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "info": ("llama2py.info", "describe a checkpoint (format, config, parameters, bytes)"),
    "download": ("llama2py.download", "fetch stories15M/42M/110M/260K and tokenizers into the model store; --list"),
    "synth": ("llama2py.synth", "write a random-weight checkpoint of a given shape"),
    "quantize": ("llama2py.quantize", "write a v0/v1 checkpoint as v2 (Q8_0), as llama2.c's export does"),
    "bench": ("llama2py.bench", "tokens/s per backend and batch size, kernel by kernel"),
    "convert": ("llama2py.convert", "a Hugging Face/Meta Llama or a tokenizer.model into llama2.c files"),
}

EPILOG = f"""subcommands (llama2py SUBCOMMAND --help for each):
{chr(10).join(f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items())}

examples:
  llama2py                                   # stories15M (downloaded on first use), a random story
  llama2py stories15M.bin -t 0 -n 64         # greedy, 64 positions
  llama2py stories260K.bin -z tok512.bin -t 0.8 -p 0.95 -s 7 -i "Once upon a time, Lily"
  llama2py model.bin -m chat -y "You are a helpful assistant."
  llama2py model.bin --prompts-file prompts.txt -t 0.8 -s 7   # one story per line, batched
  llama2py model.bin --num-samples 8 -i "Once upon a time" -s 42  # 8 stories, seeds 42..49
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's exit code 2, one line (the main command's usage is 9)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _print_message(self, message, file=None):
        # argparse drops a write that fails, so `--help | true` exited 0 with the help lost: a
        # reader gone is 141 here too, as for every other output (README)
        if message:
            file = file or sys.stderr
            try:
                file.write(message)
                file.flush()
            except OSError as e:
                with contextlib.suppress(OSError):  # (nothing left to flush at exit)
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, file.fileno())
                    os.close(null)
                if isinstance(e, BrokenPipeError):
                    sys.exit(141)
                with contextlib.suppress(OSError):
                    print(f"{self.prog}: error: cannot write its output ({e.strerror or e})", file=sys.stderr)
                sys.exit(1)


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="llama2py",
        description="Run llama2.c checkpoints: the same story as llama2.c's run, on C++ (cpu) or CUDA kernels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="llama2.c .bin checkpoint (default: stories15M from the model store, downloaded on first use)",
    )
    p.add_argument(
        "-t",
        dest="temperature",
        type=temperature("-t temperature"),
        default=1.0,
        help="temperature, 0 = greedy (default 1.0)",
    )
    p.add_argument(
        "-p",
        dest="top_p",
        type=float_in(0.0, 1.0, "-p top_p"),
        default=0.9,
        help="top-p (nucleus) sampling in [0,1]; 0 or 1 = off (default 0.9)",
    )
    p.add_argument(
        "-s",
        dest="seed",
        type=int_at_least(0, "-s seed", SEED_MAX),
        default=0,
        help=f"random seed, 1..2**{SEED_BITS}-1; 0 = the current time, as in run (default: the current time)",
    )
    p.add_argument(
        "-n",
        dest="steps",
        type=int_at_least(0, "-n steps"),
        default=256,
        help="positions to run, 0 = the whole context (default 256)",
    )
    p.add_argument("-i", dest="prompt", default=None, help="input prompt")
    p.add_argument(
        "-z",
        dest="tokenizer",
        default=None,
        help="tokenizer file (default: PREFIX_tok{vocab}.bin where the checkpoint's name starts with PREFIX, "
        "else tok{vocab}.bin or tokenizer.bin; beside the checkpoint, else in the model store)",
    )
    p.add_argument("-m", dest="mode", choices=("generate", "chat"), default="generate", help="mode (default generate)")
    p.add_argument("-y", dest="system", default=None, help="system prompt in chat mode")
    p.add_argument(
        "--prompts-file",
        dest="prompts_file",
        default=None,
        metavar="FILE",
        help="batched generation: one prompt per line (blank lines skipped; - reads them from stdin), "
        "each told as run would with -n positions; story i uses seed+i",
    )
    p.add_argument(
        "--num-samples",
        dest="num_samples",
        type=int_at_least(1, "--num-samples"),
        default=None,
        metavar="N",
        help="batched generation: N stories of the prompt (-i), or of each line of "
        "--prompts-file, with seeds seed, seed+1, ...",
    )
    p.add_argument(
        "--max-batch",
        dest="max_batch",
        type=int_at_least(1, "--max-batch"),
        default=None,
        metavar="M",
        help="with --prompts-file/--num-samples: at most M sequences at once (default: all)",
    )
    p.add_argument(
        "--context",
        type=int_at_least(1, "--context"),
        default=None,
        metavar="N",
        help="use at most N positions of the model's context (caps the KV cache's memory; default: the "
        "positions -n reaches, the whole seq_len in chat mode)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "numpy"),
        default="auto",
        help="backend: auto = cuda when usable, else cpu (default auto)",
    )
    p.add_argument(
        "--threads",
        type=int_at_least(1, "--threads", max_threads()),
        default=None,
        help=f"CPU threads, at most {max_threads()} here (default: each call on all cores or on one thread, "
        "whichever has been faster lately)",
    )
    p.add_argument(
        "--weights",
        choices=WEIGHT_TYPES,
        default=None,
        help="weights in memory: f32 or q8_0 (int8, runq's arithmetic on the cpu); "
        "default: the file's (a v2 file int8, others float32)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="say which device runs and why (default: only when a GPU is unusable)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"llama2py {__version__}")
    return p


def _gpu_expected() -> bool:
    """Whether the user set up for a GPU (CuPy installed, e.g. through the [cuda] extra): only
    then is a fallback from --device auto to the cpu worth a line by default."""
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def _report_device(model, args) -> None:
    """Quiet by default: a cuda model's notes, or one short line where a GPU was expected and is not
    usable; with --verbose the device, why, threads, load time and the checkpoint and tokenizer files."""
    verbose = getattr(args, "verbose", False)
    cores, threads = usable_cores(), getattr(args, "threads", None)
    if threads and threads > cores and model.device == "cpu":
        print(
            f"llama2py: warning: --threads {threads} on {cores} core{'s' * (cores > 1)}: a thread without a core of its "
            f"own holds the others up at every layer; expect it far slower than --threads {cores} or the default",
            file=sys.stderr,
        )
    if verbose:
        for note in model.notes:
            print(f"llama2py: {note}", file=sys.stderr)
        threads = f", {args.threads} threads" if args.threads else ""
        print(
            f"llama2py: device: {model.backend.describe()}{threads}, loaded in {model.load_seconds:.2f} s",
            file=sys.stderr,
        )
        print(f"llama2py: checkpoint: {model.checkpoint.path}", file=sys.stderr)
        print(f"llama2py: tokenizer: {model.tokenizer.path}", file=sys.stderr)
    elif model.device == "cuda":  # its notes say how it runs the weights (int8 as float32)
        for note in model.notes:
            print(f"llama2py: {note}", file=sys.stderr)
    elif model.notes and _gpu_expected():
        print(f"llama2py: GPU not usable, running on {model.device} (--verbose says why)", file=sys.stderr)


def _positions(steps: int, prompts) -> Optional[int]:
    """The most positions a story of -n steps reaches (None: the whole context). run stops at
    position steps, a prompt longer than that included, so the KV cache needs no more; a prompt
    counts as its bytes + 2 tokens (BOS and the dummy prefix; each byte is at most one token), so
    the prompt-length check refuses exactly what it refused with the whole context."""
    if steps <= 0:
        return None
    # bytes, not characters: --prompts-file gives str (its undecodable bytes as surrogate escapes)
    sizes = (len(p.encode("utf-8", "surrogateescape")) if isinstance(p, str) else len(p) for p in prompts)
    return max([steps, *(n + 2 for n in sizes)])


def _load(args, max_batch_size=1, positions: Optional[int] = None):
    """Load the model for up to max_batch_size sequences of at most `positions` positions (the
    KV cache's length unless --context says otherwise; None: the checkpoint's seq_len)."""
    from .download import ensure_default_model
    from .model import Llama

    checkpoint, tokenizer = args.checkpoint, args.tokenizer
    if checkpoint is None:
        checkpoint, default_tok = ensure_default_model(progress=sys.stderr.isatty())
        tokenizer = tokenizer or default_tok
    model = Llama.load(
        checkpoint,
        tokenizer=tokenizer,
        device=args.device,
        threads=args.threads,
        max_batch_size=max_batch_size,
        weights=getattr(args, "weights", None),
        context=args.context if args.context is not None else positions,
    )
    if args.context is None and positions is not None:  # a cap from -n: "more than seq_len" is no news
        said = f"context {model.checkpoint.config.cap_note(positions)}"  # Llama.load's note, word for word
        model.notes[:] = [n for n in model.notes if n != said]
    _report_device(model, args)
    if getattr(args, "verbose", False) and model.config.seq_len < model.checkpoint.config.seq_len:
        how = "--context" if args.context is not None else "-n; --context N sets it"
        print(f"llama2py: KV cache for {model.config.seq_len} positions ({how})", file=sys.stderr)
    return model


def _prompt_bytes(prompt: Optional[str]) -> bytes:
    """-i as the bytes the shell passed (run takes argv bytes: invalid UTF-8 is no error)."""
    return os.fsencode(prompt) if prompt else b""


LINE_LIMIT = 1 << 20  # bytes of one chat line read at most (longer lines are split, as run's fgets)


def _seed(args) -> int:
    """-s as run takes it: none (or 0) is the current time in seconds, so that a story matches run's."""
    from .sampler import resolve_seed

    return resolve_seed(args.seed, clock=True)


def cmd_run(args) -> int:
    from .generate import RunStats, chat_loop

    if args.system is not None and args.mode != "chat":
        raise UsageError("-y (system prompt) only applies with -m chat")
    if args.prompts_file is not None or args.num_samples is not None:
        return cmd_batch(args)
    if args.max_batch is not None:
        raise UsageError("--max-batch only applies with --prompts-file or --num-samples")
    # a chat's turns arrive later: its cache spans the whole context
    model = _load(args, positions=None if args.mode == "chat" else _positions(args.steps, [_prompt_bytes(args.prompt)]))
    out = sys.stdout.buffer
    if args.mode == "chat":
        stdin = getattr(sys.stdin, "buffer", None)  # None when stdin is closed (<&-)

        def read_user(prompt_text: str) -> Optional[str]:
            out.write(prompt_text.encode())
            out.flush()
            # Bytes as they come (run reads raw bytes; not-UTF-8 input is no error): surrogate
            # escapes carry undecodable bytes through to the tokenizer unchanged. At most LINE_LIMIT
            # bytes per read, so a line without end cannot exhaust memory.
            try:
                line = stdin.readline(LINE_LIMIT) if stdin is not None else b""
            except OSError as e:  # (stdin opened for writing only, a directory, a device error)
                raise PromptError(
                    f"-m chat reads its turns from standard input, which cannot be read ({e.strerror or e})"
                )
            if line == b"":
                return None
            return line.rstrip(b"\n").decode("utf-8", errors="surrogateescape")

        cut: list[tuple[int, int]] = []  # (tokens fed, turn's tokens) where -n ended a user turn
        system = args.system
        if system is None:
            system = read_user("Enter system prompt (optional): ") or ""
        pieces = chat_loop(
            model.backend,
            model.tokenizer,
            args.steps,
            args.temperature,
            args.top_p,
            _seed(args),
            read_user,
            system,
            args.prompt,
            lambda fed, n: cut.append((fed, n)),
        )
        with model._call():  # the chat drives the backend itself: one call, as Llama's own are
            for b in pieces:
                out.write(b)
                out.flush()
        out.write(b"\n")
        out.flush()
        for fed, n in cut:  # run stops there silently
            print(
                f"llama2py: warning: the chat reached -n {args.steps} positions {fed} tokens into a {n}-token "
                "user turn, before its answer; raise -n (0 = the whole context)",
                file=sys.stderr,
            )
        return 0
    stats = RunStats()
    for b in model.stream_bytes(
        _prompt_bytes(args.prompt), args.steps, args.temperature, args.top_p, _seed(args), stats
    ):
        if b:
            out.write(b)
            out.flush()
    out.write(b"\n")
    out.flush()
    if stats.positions > 1:
        print(f"achieved tok/s: {stats.tok_per_s:f}", file=sys.stderr)
    return 0


# -- batched generation (--prompts-file / --num-samples) --------------------------------------------
PROMPTS_FILE_LIMIT = 256 << 20  # bytes: a prompts file larger than this is refused, not read
PROMPTS_FILE_LINES = 1_000_000  # past this a prompts file is refused: memory grows with its prompts
SUMMARY_LINES = 64  # per-sequence tok/s lines on stderr after a batched run; the others are counted


def read_prompts_file(path: str) -> tuple[array.array, list[str]]:
    """(line numbers, prompts): each line's (trailing newline and CR stripped, blank lines skipped).
    A path names a regular file (a FIFO or /dev/zero would block or never end), read up to its
    size; "-" reads stdin until it ends, refused past PROMPTS_FILE_LIMIT bytes."""
    from .input_files import read_regular_file

    if path == "-":
        if sys.stdin is None:
            raise PromptError("--prompts-file -: stdin is closed; pipe the prompts in or give a file")
        data = sys.stdin.buffer.read(PROMPTS_FILE_LIMIT + 1)
        if len(data) > PROMPTS_FILE_LIMIT:
            raise PromptError(f"--prompts-file -: more than {PROMPTS_FILE_LIMIT >> 20} MiB on stdin; use fewer prompts")
    else:
        data = read_regular_file(
            path,
            "--prompts-file",
            PromptError,
            " (cannot read it)",
            limit=PROMPTS_FILE_LIMIT,
            too_big_hint="; split it",
        )
    n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
    if n_lines > PROMPTS_FILE_LINES:
        raise PromptError(
            f"--prompts-file {path}: {n_lines:,} lines, more than the {PROMPTS_FILE_LINES:,} one run takes; "
            "split the file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"--prompts-file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8")
    del data
    numbers, prompts = array.array("q"), []  # compact: up to PROMPTS_FILE_LINES of them
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            numbers.append(n)
            prompts.append(line)
    if not prompts:
        raise PromptError(f"--prompts-file {path}: no prompts in it (one prompt per line)")
    return numbers, prompts


def _prompt_name(i: int, line: int) -> str:
    """'prompt 3', with the file's line where blank lines make the two numbers differ."""
    return f"prompt {i + 1}" + (f", line {line}" if line != i + 1 else "")


def _seq_name(args, i: int, j: int, n_samples: int, line: int) -> str:
    """The name of sequence (prompt i, sample j) in its header and in the tok/s summary."""
    if args.prompts_file is not None:
        return _prompt_name(i, line) + (f", sample {j + 1}" if n_samples > 1 else "")
    return f"sample {j + 1}"


def cmd_batch(args) -> int:
    """Stories for many prompts (and/or seeds) at once, each equal to run's story for its prompt and
    seed (up to an EOS, where a batched story ends), printed under a header, then tok/s on stderr."""
    from .batch import BatchStats, run_batch
    from .generate import resolve_steps
    from .model import encode_prompt

    if args.mode == "chat":
        raise UsageError("--prompts-file/--num-samples generate stories; they do not work with -m chat")
    if args.prompts_file is not None:
        if args.prompt is not None:
            raise UsageError("give prompts either with -i or with --prompts-file, not both")
        lines, texts = read_prompts_file(args.prompts_file)
    else:
        lines, texts = array.array("q", [1]), [_prompt_bytes(args.prompt)]
    n_samples = args.num_samples or 1
    n_seqs = len(texts) * n_samples  # sequence s: prompt s // n_samples, sample s % n_samples (never listed)
    limit = min(args.max_batch or n_seqs, n_seqs)

    # the backend refuses a batch that does not fit the memory before allocating it, naming the
    # --max-batch that fits (backends.base.check_memory)
    model = _load(args, max_batch_size=limit, positions=_positions(args.steps, texts))
    c = model.config
    steps = resolve_steps(args.steps, c.seq_len)
    # each distinct prompt encoded once (refused before encoding when it cannot fit); every error
    # comes before the first story. Kept as one int32 array (4 bytes a token, not a Python list)
    flat, starts = array.array("i"), array.array("q", [0])
    for i, (n, t) in enumerate(zip(lines, texts)):
        flat.extend(encode_prompt(model.tokenizer, t, c.seq_len, _prompt_name(i, n) + ("," if n != i + 1 else "")))
        starts.append(len(flat))
    del texts

    def prompt(i: int) -> list[int]:
        return flat[starts[i] : starts[i + 1]].tolist()

    def seq(s: int) -> tuple[int, int]:
        return divmod(s, n_samples)

    base = _seed(args)
    out = sys.stdout.buffer
    tok = model.tokenizer
    total_tokens, total_s, per_seq = 0, 0.0, []
    for a in range(0, n_seqs, limit):
        idx = range(a, min(a + limit, n_seqs))
        seeds = [nth_seed(base, b) for b in idx]
        stats = BatchStats()
        finished: dict[int, list[int]] = {}  # row -> its tokens, until every earlier row is printed
        printed = [0]  # rows of this chunk printed so far (in order)

        def print_ready(r: int, t: list[int], idx=idx, seeds=seeds, finished=finished, printed=printed) -> None:
            """Print each story as soon as it and all before it are finished."""
            finished[r] = t
            while printed[0] in finished:
                q = printed[0]
                i, j = seq(idx[q])
                toks = finished.pop(q)
                out.write(f"--- {_seq_name(args, i, j, n_samples, lines[i])} (seed {seeds[q]}) ---\n".encode())
                out.write(b"".join(tok.printable_bytes(toks[u], toks[u + 1]) for u in range(len(toks) - 1)) + b"\n")
                out.flush()
                printed[0] += 1

        # run feeds positions 0..steps-1, so a story holds tokens 0..steps (prompt included)
        with model._call():  # one call, as Llama's own are (it drives the backend itself)
            run_batch(
                model.backend,
                [prompt(seq(b)[0]) for b in idx],
                [steps + 1] * len(idx),
                args.temperature,
                args.top_p,
                seeds,
                stats=stats,
                on_done=print_ready,
            )
        for r, b in enumerate(idx[: max(0, SUMMARY_LINES - len(per_seq))]):
            i, j = seq(b)
            per_seq.append((_seq_name(args, i, j, n_samples, lines[i]), stats.seq_tok_per_s(r), stats.generated[r]))
        total_tokens += stats.total_generated
        total_s += stats.decode_s
    agg = total_tokens / total_s if total_s > 0 else 0.0
    print(f"achieved tok/s: {agg:f} (aggregate over {n_seqs} sequences, batches of up to {limit})", file=sys.stderr)
    for name, rate, n in per_seq:
        print(f"  {name}: {rate:f} tok/s ({n} tokens)", file=sys.stderr)
    more = n_seqs - len(per_seq)
    if more:
        print(f"  ({more:,} more sequence{'s' if more > 1 else ''}: the aggregate above counts them)", file=sys.stderr)
    return 0


def _dispatch(argv: list[str]) -> int:
    if sys.stderr is None:  # started with stderr closed (`2>&-`): print(file=None) would write to stdout
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    if sys.stdout is None:  # started with stdout closed (`>&-`): every command writes there
        print("llama2py: error: standard output is closed; redirect it to a file or /dev/null", file=sys.stderr)
        return 1
    if argv and argv[0] in SUBCOMMANDS:
        name = argv[0]
        module_name, help_ = SUBCOMMANDS[name]
        module = importlib.import_module(module_name)
        p = _Parser(prog=f"llama2py {name}", description=help_)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        args = p.parse_args(argv[1:])
        return _guarded(lambda: module.run(args), args.debug, f"llama2py {name}")
    parser = run_parser()
    lead = 0  # flags before the first word: `llama2py --debug info x.bin` means `llama2py info x.bin --debug`
    while lead < len(argv) and argv[lead] in ("--debug", "--verbose", "-h", "--help"):
        lead += 1
    if 0 < lead < len(argv) and argv[lead] in SUBCOMMANDS and not os.path.lexists(argv[lead]):
        flags = argv[:lead]
        if "--verbose" in flags:
            parser.error(f"--verbose is a flag of the story command, not of `llama2py {argv[lead]}`")
        flags = ["--help"] if {"-h", "--help"} & set(flags) else flags
        return _dispatch(argv[lead : lead + 1] + flags + argv[lead + 1 :])  # (before any `--`)
    word = argv[lead] if lead < len(argv) else ""
    if word and not word.startswith("-") and not set("./\\") & set(word) and not os.path.lexists(word):
        if word == "run":  # llama2.c's program name, or a habit from other tools
            parser.error("'run' is not a command: the story command is llama2py itself (llama2py CHECKPOINT [flags])")
        # `llama2py infoo x.bin` would say "unrecognized arguments: x.bin": name the likely typo
        # (not for a missing file such as synth.bin: that is a missing checkpoint, said as such)
        near = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.7)
        if near:
            parser.error(f"{word!r} is neither a command nor a file; did you mean `llama2py {near[0]}`?")
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{_extra_word_hint(args, extra)}")
    return _guarded(lambda: cmd_run(args), args.debug)


def _extra_word_hint(args, extra: list[str]) -> str:
    """What one word too many after the checkpoint most likely was: a tokenizer file given without
    -z (`llama2py model.bin tok.bin`), or a prompt without -i."""
    if len(extra) != 1 or not args.checkpoint or extra[0].startswith("-"):
        return ""
    word = extra[0]
    if args.tokenizer is None and os.path.isfile(word):
        from .checkpoint import identify_file

        if identify_file(word) == "tokenizer":
            return f"; a tokenizer goes after -z (llama2py {shlex.quote(args.checkpoint)} -z {shlex.quote(word)})"
    if args.prompt is None and not os.path.exists(word):
        return f"; a prompt goes after -i (llama2py {shlex.quote(args.checkpoint)} -i {shlex.quote(word)})"
    return ""


ERROR_CHARS = 2000  # an error message is at most this many characters (no dumped arrays); one line
# unless it is one of ours laid out in lines


def _guarded(fn, debug: bool, prog: str = "llama2py") -> int:
    """fn(), with its errors as one line on stderr, 'PROG: error: ...' as argparse says its own."""
    try:
        return fn()
    except (Llama2pyError, ValueError, OSError, MemoryError) as e:
        if debug:
            raise
        if isinstance(e, BrokenPipeError):
            return 141
        if isinstance(e, MemoryError):
            msg = (
                f"out of memory ({e or 'MemoryError'}); use a smaller batch (--max-batch), a shorter "
                "context (--context N) or a smaller model"
            )
        elif isinstance(e, OSError) and e.filename is None and e.errno == errno.ENOSPC:
            # (files are written through atomic_output, whose ENOSPC is an OutputError naming the file)
            msg = "cannot write to standard output: no space left on the device it goes to; free some or redirect it"
        elif isinstance(e, Llama2pyError) and "\n" in str(e):
            msg = str(e).strip()  # our own layout (the offline message lists one file per line)
        else:
            msg = " ".join(str(e).split())  # one line, whatever a foreign message held
        if len(msg) > ERROR_CHARS:
            msg = msg[: ERROR_CHARS - 3] + "..."
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


def main(argv: Optional[list[str]] = None) -> int:
    """The command line: argv (default sys.argv[1:]) -> exit status. SIGTERM and SIGHUP interrupt it
    like Ctrl-C (llama2py.interrupts), so temporary files and folders are removed on the way out."""
    try:
        with terminations_interrupt():
            return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt as e:  # at any point: loading a subcommand, parsing, running it
        return exit_status(e)


if __name__ == "__main__":
    sys.exit(main())
