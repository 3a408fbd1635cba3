"""llama2.c's compiled `run` programs (run, runomp, runq, ...) side by side with llama2py.

All programs and llama2py take turns in one loop, round after round, so a busy moment of the
machine hits them alike; each reports run's own `achieved tok/s` figure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from ..errors import Llama2pyError
from .measure import SPREAD_LIMIT, summarize

_ACHIEVED = re.compile(r"achieved tok/s:\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)")
SEED = 42  # sampled comparisons: run and llama2py tell the same story, so they do the same work


def run_command(
    binary: str, checkpoint: str, tokenizer: str, steps: int, temperature: float, top_p: float
) -> list[str]:
    cmd = [str(binary), str(checkpoint), "-t", f"{temperature:g}", "-n", str(steps), "-z", str(tokenizer)]
    if temperature > 0:
        cmd += ["-p", f"{top_p:g}", "-s", str(SEED)]
    return cmd


def _no_program(binary: str) -> Llama2pyError:
    return Llama2pyError(f"--vs-run {binary}: no such program (pass the path of llama2.c's compiled `run`)")


def _not_executable(binary: str) -> Llama2pyError:
    return Llama2pyError(f"--vs-run {binary}: not executable (chmod +x it)")


def check_programs(binaries: list[str]) -> None:
    """Refuse, before any work, a program that is not there or cannot run (found as the OS would
    run it: a path, or a bare name on $PATH)."""
    for binary in binaries:
        if shutil.which(binary) is not None:
            continue
        if os.path.dirname(binary):  # a path: there or not, runnable or not
            raise _not_executable(binary) if Path(binary).is_file() else _no_program(binary)
        if Path(binary).is_file():  # a bare name is looked up on $PATH, never in the current folder
            raise Llama2pyError(f"--vs-run {binary}: not on PATH; to run the one in this folder give ./{binary}")
        raise _no_program(binary)


def run_binary_once(cmd: list[str], threads: Optional[int], timeout: float = 600.0) -> float:
    """Run one of llama2.c's programs and return its `achieved tok/s`."""
    binary = cmd[0]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        r = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise _no_program(binary)
    except PermissionError:
        raise _not_executable(binary)
    except subprocess.TimeoutExpired:
        raise Llama2pyError(f"--vs-run {binary}: still running after {timeout:.0f} s: {' '.join(cmd)}")
    out = r.stderr.decode(errors="replace") + "\n" + r.stdout.decode(errors="replace")
    m = _ACHIEVED.search(out)
    if r.returncode != 0 or not m:
        tail = " ".join(out.split())[-200:]
        raise Llama2pyError(
            f"--vs-run: `{' '.join(cmd)}` exited {r.returncode} without an "
            f"'achieved tok/s' line; its output ends: {tail!r}"
        )
    return float(m.group(1))


def _entry(program: str, binary: Optional[str], command: str, temperature: float, top_p: float) -> dict:
    return {
        "program": program,
        "binary": binary,
        "command": command,
        "temperature": temperature,
        "top_p": top_p,
        "tok_s_runs": [],
        "tok_s": None,
        "tok_s_min": None,
        "tok_s_max": None,
        "tok_s_spread": None,
        "noisy": False,
        "ratio": None,
    }


def vs_run(
    binaries: list[str],
    checkpoint: str,
    tokenizer: Optional[str],
    steps: int,
    repeat: int,
    threads: Optional[int],
    temperatures: list[float],
    top_p: float = 0.9,
    device: str = "cpu",
    progress: Optional[Callable[[str], None]] = None,
    weights: Optional[str] = None,
    context: Optional[int] = None,
) -> dict:
    """Every binary and llama2py's batch-1 run (Llama.run) at every temperature, alternating in
    one loop `repeat` times after one warm-up each; llama2py loads its weights as `weights` (None:
    the file's own type) and at most `context` positions (the programs cannot cap theirs). Returns
    one entry per (program, temperature) with median, min, max, spread, and ratio = llama2py /
    program at that temperature."""
    from ..model import Llama

    check_programs(binaries)  # a missing program says so, not whatever the tokenizer search finds
    ck_path = Path(checkpoint)
    model = Llama.load(ck_path, tokenizer=tokenizer, device=device, threads=threads, weights=weights, context=context)
    tokenizer = str(model.tokenizer.path)  # -z, or the one Llama.load found (the programs get it too)
    checkpoint = str(model.checkpoint.path)  # as found (a known name may be the model store's copy)
    held = model.backend.weight_type  # what runs (cuda runs int8 as float32)
    entries: list[tuple[dict, Callable[[int], float]]] = []
    for temperature in temperatures:
        for binary in binaries:
            cmd = run_command(binary, checkpoint, tokenizer, steps, temperature, top_p)
            entry = _entry(Path(binary).name, str(binary), " ".join(cmd), temperature, top_p)
            entries.append(
                (
                    entry,
                    lambda n, b=binary, t=temperature: run_binary_once(
                        run_command(b, checkpoint, tokenizer, n, t, top_p), threads
                    ),
                )
            )
        entry = _entry(
            "llama2py",
            None,
            f"Llama.run(steps={steps}, temperature={temperature:g}, top_p={top_p:g}, seed={SEED}) on {model.device}, "
            f"{held} weights",
            temperature,
            top_p,
        )
        entries.append(
            (entry, lambda n, t=temperature: model.run("", steps=n, temperature=t, top_p=top_p, seed=SEED).tok_per_s)
        )
    if progress:
        progress("vs run: warm-up")
    warm = min(steps, 16)
    for _, measure in entries:
        try:
            measure(warm)
        except Llama2pyError as e:  # (its command line says -n {warm}: not the steps asked for)
            raise Llama2pyError(f"{e} (in the warm-up run of {warm} steps)") from e
    for i in range(repeat):
        if progress:
            progress(f"vs run: round {i + 1}/{repeat}")
        for entry, measure in entries:
            entry["tok_s_runs"].append(measure(steps))
    for entry, _ in entries:
        s = summarize(entry["tok_s_runs"])
        entry["tok_s"], entry["tok_s_min"], entry["tok_s_max"] = s["median"], s["min"], s["max"]
        entry["tok_s_spread"] = s["spread"]
        entry["noisy"] = s["spread"] is not None and s["spread"] > SPREAD_LIMIT
    ours = {e["temperature"]: e["tok_s"] for e, _ in entries if e["binary"] is None}
    for entry, _ in entries:
        if entry["tok_s"] and entry["binary"] is not None:
            entry["ratio"] = ours[entry["temperature"]] / entry["tok_s"]
    return {
        "tokenizer": str(tokenizer),
        "device": model.device,
        "weights": held,
        "steps": steps,
        "threads": threads,
        "repeat": repeat,
        "seed": SEED,
        "programs": [e for e, _ in entries],
    }


def vs_run_warnings(result: dict) -> list[str]:
    """One warning per program whose rounds disagree by more than SPREAD_LIMIT."""
    return [
        f"vs run, {e['program']} -t {e['temperature']:g}: runs differ by {100 * e['tok_s_spread']:.1f}% of the "
        f"median ({e['tok_s_min']:.1f} to {e['tok_s_max']:.1f} tok/s; limit {100 * SPREAD_LIMIT:.0f}%): "
        "do not trust this comparison, rerun on a quiet machine"
        for e in result["programs"]
        if e["noisy"]
    ]
