"""The arguments of `llama2py bench` and the command itself: measure, print the table, write the
JSON and the plot, print warnings on stderr."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from ..argtypes import float_in, int_at_least, model_shape_name, temperature
from ..checkpoint import MODEL_SHAPES, WEIGHT_TYPES, checkpoint_bytes, load_checkpoint, model_shape
from ..errors import Llama2pyError
from ..files import check_output_path
from ..threads import max_threads
from .host import default_devices, host_info
from .measure import DEFAULT_STEPS, Settings, bench, load_warning
from .reference import check_programs, vs_run, vs_run_warnings
from .report import PLOT_EXTRA, check_matplotlib, json_text, plot, render, write_json

DEVICES = ("cpu", "cuda", "numpy")


def _list_of(parse_one, name: str):
    """A comma-separated list of values, each parsed by parse_one; duplicates dropped, empty items
    refused (`1,,2` is more likely a typo than a wish for 1,2)."""

    def parse(s: str) -> list:
        items = [x.strip() for x in s.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{name} takes a comma-separated list without empty items, got {s!r}")
        return list(dict.fromkeys(parse_one(x) for x in items))

    return parse


def _device(s: str) -> str:
    if s not in DEVICES:
        raise argparse.ArgumentTypeError(f"--device takes a comma-separated list of cpu, cuda, numpy; got {s!r}")
    return s


def _positions(s: str) -> tuple[int, int]:
    """START:END -> decode positions START..END-1 (the prefill fills 0..START-1)."""
    start, sep, end = s.partition(":")
    try:
        first, stop = int(start), int(end)
    except ValueError:
        first, stop = -1, -1
    if not sep or first < 0 or stop <= first:
        raise argparse.ArgumentTypeError(f"--positions must be START:END with 0 <= START < END, got {s!r}")
    return first, stop


def _weights(s: str) -> str:
    if s not in WEIGHT_TYPES:
        raise argparse.ArgumentTypeError(
            f"--weights takes a comma-separated list of {', '.join(WEIGHT_TYPES)}; got {s!r}"
        )
    return s


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Measure load time, prefill and decode tokens/s (median, min, max, spread), peak memory, "
        "a per-kernel breakdown of one decode step and the effective weight bandwidth, per "
        "backend, thread count, batch size and sampling; optionally against llama2.c's run "
        "programs. Use a synthetic checkpoint (--shape, or `llama2py synth`) when the real one "
        "is not at hand: random weights cost the same arithmetic."
    )
    p.add_argument("checkpoint", nargs="?", default=None, help="llama2.c .bin checkpoint (or give --shape)")
    p.add_argument(
        "--shape",
        type=model_shape_name,
        default=None,
        metavar="NAME",
        help=f"instead of a checkpoint: random weights of this shape ({', '.join(MODEL_SHAPES)}), "
        "written to a temporary file (in $TMPDIR) for the run",
    )
    p.add_argument(
        "--device",
        type=_list_of(_device, "--device"),
        default=None,
        metavar="DEVICE[,DEVICE...]",
        help="comma-separated backends: cpu, cuda, numpy (default: cpu, plus cuda when usable)",
    )
    p.add_argument(
        "--batch",
        type=_list_of(int_at_least(1, "--batch"), "--batch"),
        default=[1, 8, 64],
        metavar="B[,B...]",
        help="comma-separated batch sizes (default 1,8,64)",
    )
    p.add_argument(
        "--threads",
        type=_list_of(int_at_least(1, "--threads", max_threads()), "--threads"),
        default=[None],
        metavar="N[,N...]",
        help=f"comma-separated CPU thread counts, each measured, at most {max_threads()} here (default: auto, each "
        "call on one thread or all cores, whichever the cpu backend times faster)",
    )
    p.add_argument(
        "--weights",
        type=_list_of(_weights, "--weights"),
        default=[None],
        metavar="TYPE[,TYPE...]",
        help="comma-separated weight types in memory, each measured: f32, q8_0 (int8, quantized at load "
        "time from a float file); default: the file's own (a v2 file int8, others float32)",
    )
    p.add_argument(
        "-t",
        "--temperature",
        type=_list_of(temperature("--temperature", zero_if_greedy=True), "--temperature"),  # (a row names what ran)
        default=[0.0],
        metavar="T[,T...]",
        help="comma-separated temperatures, 0 = greedy; each is a row (default 0)",
    )
    p.add_argument(
        "-p",
        "--top-p",
        type=float_in(0.0, 1.0, "--top-p"),
        default=0.9,
        help="top-p of sampled decoding (default 0.9, as run)",
    )
    p.add_argument(
        "--steps",
        type=int_at_least(1, "--steps"),
        default=None,
        help=f"decode steps per timed run (default {DEFAULT_STEPS}, fewer where the context is shorter)",
    )
    p.add_argument(
        "--prompt-len",
        type=int_at_least(0, "--prompt-len"),
        default=None,
        help="prefill positions per sequence before the decode, 0 = none (default min(seq_len/2, 128))",
    )
    p.add_argument(
        "--positions",
        type=_positions,
        default=None,
        metavar="START:END",
        help="decode positions START..END-1 after a prefill of START positions (instead of --prompt-len "
        "and --steps; 0:256 is run's -n 256)",
    )
    p.add_argument(
        "--context",
        type=int_at_least(1, "--context"),
        default=None,
        metavar="N",
        help="at most N positions per sequence (caps the checkpoint's seq_len and so the KV cache, as the main "
        "command's --context; default: seq_len)",
    )
    p.add_argument(
        "--repeat",
        type=int_at_least(1, "--repeat"),
        default=3,
        help="timed runs per figure after a warm-up; median, min, max and spread are reported (default 3)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the kernel-by-kernel profile of a decode step")
    p.add_argument(
        "--json",
        dest="json_out",
        default=None,
        help="also write the report as JSON to this file; - writes it to stdout (the table then goes to stderr)",
    )
    p.add_argument(
        "--plot", default=None, help=f"also write a PNG bar chart of decode tok/s (needs matplotlib: {PLOT_EXTRA})"
    )
    p.add_argument(
        "--vs-run",
        type=_list_of(str, "--vs-run"),
        default=None,
        metavar="PATH[,PATH...]",
        help="llama2.c's compiled programs (run, runomp, runq, ...): time them and llama2py's batch-1 run "
        "(with the first --weights) alternately in one loop, at every --temperature",
    )
    p.add_argument("--vs-device", choices=DEVICES, default="cpu", help="llama2py backend for --vs-run (default cpu)")
    p.add_argument(
        "-z",
        "--tokenizer",
        default=None,
        help="tokenizer for --vs-run (default: the one the main command finds, beside the checkpoint or in the model store)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (warnings still)")


def _usage_error(msg: str) -> int:
    print(f"llama2py bench: error: {msg}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _checkpoint_path(args) -> Iterator[str]:
    """The checkpoint given, or a temporary random-weight file of --shape."""
    if args.shape is None:
        yield args.checkpoint
        return
    from ..synth import write_synthetic

    config = model_shape(args.shape)
    with tempfile.TemporaryDirectory(prefix="llama2py_bench_") as folder:
        need, free = checkpoint_bytes(config, 0), shutil.disk_usage(folder).free
        if need > 0.9 * free:
            raise Llama2pyError(
                f"--shape {args.shape}: the random checkpoint needs {need / 2**30:.1f} GiB in {folder}, "
                f"{free / 2**30:.1f} GiB are free; set TMPDIR to a bigger folder or write one with `llama2py synth`"
            )
        path = Path(folder) / f"{args.shape}.bin"
        write_synthetic(path, config, version=0, seed=0)
        yield str(path)


def settings_from_args(args) -> tuple[Optional[Settings], Optional[str]]:
    """(Settings, None), or (None, the message) for flags that do not go together."""
    if (args.checkpoint is None) == (args.shape is None):
        return None, "give a checkpoint or --shape NAME (one of the two)"
    prompt_len, steps = args.prompt_len, args.steps
    if args.positions is not None:
        if prompt_len is not None or steps is not None:
            return None, "--positions START:END replaces --prompt-len and --steps; give one or the other"
        prompt_len, steps = args.positions[0], args.positions[1] - args.positions[0]
    return (
        Settings(
            devices=args.device or default_devices(),
            batches=args.batch,
            threads=args.threads,
            temperatures=args.temperature,
            weights=args.weights,
            top_p=args.top_p,
            prompt_len=prompt_len,
            steps=steps,
            context=args.context,
            repeat=args.repeat,
            profile=not args.no_profile,
        ),
        None,
    )


def run(args) -> int:
    settings, problem = settings_from_args(args)
    if problem:
        return _usage_error(problem)
    # fail before minutes of measuring, not after
    json_stdout = args.json_out == "-"
    if args.plot == "-":
        return _usage_error("--plot -: give a file name for the PNG (only --json can go to stdout)")
    from ..download import in_store  # the checkpoint as load_checkpoint will find it (never an output)

    inputs = (in_store(args.checkpoint, "checkpoint") or args.checkpoint,) if args.checkpoint else ()
    outputs = [check_output_path(out, inputs) for out in (None if json_stdout else args.json_out, args.plot) if out]
    if len(outputs) == 2 and os.path.abspath(outputs[0]) == os.path.abspath(outputs[1]):
        return _usage_error(f"--json and --plot name the same file ({args.json_out}): the chart would replace the JSON")
    if args.plot:
        check_matplotlib()
    if args.vs_run:
        check_programs(args.vs_run)
        tokenizer = args.tokenizer and (in_store(args.tokenizer, "tokenizer") or args.tokenizer)  # (as Llama.load)
        if tokenizer is not None and not os.path.isfile(tokenizer):
            return _usage_error(f"-z {args.tokenizer}: no such file (the tokenizer --vs-run gives the programs)")
    elif args.tokenizer is not None or args.vs_device != "cpu":
        return _usage_error("-z/--tokenizer and --vs-device go with --vs-run (the comparison with llama2.c's programs)")
    text = sys.stderr if json_stdout else sys.stdout  # with --json -, stdout holds the JSON alone

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    host = host_info()
    load = host["load_average"]
    with _checkpoint_path(args) as path:
        load_checkpoint(path)  # a file that is no checkpoint: its error alone, before the load's warning
        busy = load_warning(load)
        if busy:  # the warning names the load itself
            print(f"llama2py bench: warning: {busy}", file=sys.stderr, flush=True)
        elif not args.quiet:
            print(f"bench: load average {'-' if load is None else f'{load:.2f}'}", file=sys.stderr)
        report = bench(path, settings, progress=progress, raise_errors=getattr(args, "debug", False), host=host)
        if args.shape:  # the temporary file is deleted below: the report names the shape instead
            report["checkpoint"].update(path=None, shape=args.shape)
        vs_error = None
        if args.vs_run:
            try:
                report["vs_run"] = vs_run(
                    args.vs_run,
                    path,
                    args.tokenizer,
                    report["settings"]["steps"],
                    args.repeat,
                    args.threads[0],
                    settings.temperatures,
                    settings.top_p,
                    args.vs_device,
                    progress,
                    settings.weights[0],
                    settings.context,
                )
                report["warnings"] += vs_run_warnings(report["vs_run"])
            except Llama2pyError as e:  # the rows measured so far are still printed and written
                vs_error = f"--vs-run failed, no comparison: {e}"
                report["warnings"].append(vs_error)  # (the JSON's record; printed as the error below)
    print(render(report), file=text)
    for w in report["warnings"]:
        if w not in (busy, vs_error):  # printed at the start / as the error at the end
            print(f"llama2py bench: warning: {w}", file=sys.stderr)
    if json_stdout:
        sys.stdout.write(json_text(report))
    elif args.json_out:
        write_json(report, args.json_out)
        print(f"\nJSON: {args.json_out}", file=text)
    if args.plot:
        plot(report, args.plot)
        print(f"plot: {args.plot}", file=text)
    if vs_error:
        print(f"llama2py bench: error: {vs_error} (the rows above were measured)", file=sys.stderr)
        return 1
    if not any(r["status"] == "ok" for r in report["results"]):
        # the table says why for each row; a script must not take this for a measurement
        print("llama2py bench: error: nothing could be measured (each row above says why)", file=sys.stderr)
        return 1
    return 0
