"""`llama2py bench`: load time, prefill and decode tokens/s, memory, a per-kernel breakdown and the
effective weight bandwidth, per backend and batch size; optionally against llama2.c's `run`.

docs/PERFORMANCE.md documents the method and every JSON field. The functions here measure and
return data; only run() prints (the report is the command's output).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import __version__
from .argtypes import int_at_least
from .backends import create_backend
from .backends.base import PROFILE_KEYS
from .checkpoint import Config, load_checkpoint
from .errors import DeviceError, Llama2pyError

SCHEMA = 1
BOS = 1


# -- the host ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def greedy_decode_tok_s(backend, batch: int, steps: int) -> float:
    """Aggregate tok/s of a greedy decode of `steps` positions for `batch` sequences from position 0,
    counted like run's figure: positions after the first over the seconds since it ended."""
    tok, _ = backend.step(np.ones(batch, np.int32), 0, 0.0, 0.9)
    t0 = time.perf_counter()
    for pos in range(1, steps):
        tok, _ = backend.step(tok, pos, 0.0, 0.9)
    return batch * (steps - 1) / (time.perf_counter() - t0)


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): CuPy importable and at least one GPU visible."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising on import
        return False, f"CuPy not importable ({e.__class__.__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"no usable CUDA device ({e})"
    return (n > 0), ("" if n > 0 else "no CUDA device visible")


def gpu_name() -> Optional[str]:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def default_devices() -> list[str]:
    """cpu, plus cuda when usable."""
    return ["cpu"] + (["cuda"] if cuda_status()[0] else [])


def host_info(threads: Optional[int]) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads if threads is not None else os.cpu_count(),
        "threads_requested": threads,
        "gpu": None,  # filled in when cuda ran
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "llama2py": __version__,
    }


def mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> Optional[int]:
    """Peak resident set size in bytes since the last reset_peak_rss (VmHWM), else since start."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
    except Exception:
        return None


# -- sizes -------------------------------------------------------------------------------------------
def weight_bytes(config: Config) -> int:
    """Float32 weight bytes one decode step reads: every layer matrix and norm, the final norm and
    the classifier (the token embedding only contributes B rows, so it counts only when it is
    the shared classifier)."""
    counts = config.param_counts()
    read = sum(counts.values()) - counts["token_embedding"]
    if config.shared_classifier:
        read += counts["token_embedding"]
    return 4 * read


def estimate_bytes(config: Config, batch: int, prompt_len: int) -> int:
    """Rough host memory a backend needs: weights, KV cache and the largest activations."""
    c = config
    weights = c.weight_bytes()
    kv = c.kv_cache_bytes(batch)
    act = (
        4 * batch * prompt_len * (3 * c.hidden_dim + 6 * c.dim + 3 * c.n_heads * prompt_len) + 8 * batch * c.vocab_size
    )
    return weights + kv + act


# -- measuring one device and batch ------------------------------------------------------------------
def fit_lengths(seq_len: int, steps: int, prompt_len: Optional[int]) -> tuple[int, int]:
    """(prompt_len, steps) so that prefill then decode stay inside the context."""
    p = prompt_len if prompt_len is not None else max(1, min(seq_len // 2, 128))
    steps = max(1, min(steps, seq_len - 1))
    p = max(1, min(p, seq_len - steps))
    return p, steps


def _median(xs: list[float]) -> Optional[float]:
    return float(statistics.median(xs)) if xs else None


def _row(device: str, batch: Optional[int], status: str, reason: Optional[str] = None) -> dict:
    return {
        "device": device,
        "batch": batch,
        "status": status,
        "reason": reason,
        "backend": None,
        "load_s": None,
        "prefill_tokens": None,
        "prefill_s": None,
        "prefill_tok_s": None,
        "decode_steps": None,
        "decode_s": None,
        "decode_tok_s": None,
        "decode_tok_s_runs": [],
        "decode_steps_per_s": None,
        "weight_bytes": None,
        "weight_bandwidth_gb_s": None,
        "peak_rss_bytes": None,
        "backend_memory_bytes": None,
        "device_memory_bytes": None,
        "profile": None,
        "profile_total_s": None,
        "profile_note": None,
    }


def bench_one(
    path: str | os.PathLike,
    device: str,
    batch: int,
    steps: int,
    prompt_len: int,
    repeat: int,
    threads: Optional[int],
    make_backend: Optional[Callable] = None,
) -> dict:
    """Measure one (device, batch). Raises what the backend raises (the caller turns it into a row)."""
    make_backend = make_backend or create_backend
    row = _row(device, batch, "ok")
    gc.collect()
    reset_peak_rss()
    t0 = time.perf_counter()
    ck = load_checkpoint(path)
    c = ck.config
    backend = make_backend(device, c, ck.weights, max_batch=batch, threads=threads)
    row["load_s"] = time.perf_counter() - t0
    try:
        row["backend"] = backend.describe()
        rng = np.random.default_rng(0)
        # never BOS (1): any other id is as good a prompt as a real one for timing
        prompt = (
            rng.integers(3, c.vocab_size, size=(batch, prompt_len), dtype=np.int32)
            if c.vocab_size > 3
            else np.zeros((batch, prompt_len), np.int32)
        )

        def one_run(n_steps: int) -> tuple[float, float]:
            t = time.perf_counter()
            logits = backend.prefill(prompt, 0, logits="last")
            t_prefill = time.perf_counter() - t
            tok = np.ascontiguousarray(np.argmax(logits, axis=-1).astype(np.int32))
            t = time.perf_counter()
            for i in range(n_steps):
                tok, _ = backend.step(tok, prompt_len + i, 0.0, 1.0)
            return t_prefill, time.perf_counter() - t

        backend.set_seeds(list(range(batch)))
        one_run(min(steps, 4))  # warm-up: first-touch of the weights, JIT compiles, graph capture
        prefills, decodes = [], []
        for _ in range(repeat):
            tp, td = one_run(steps)
            prefills.append(tp)
            decodes.append(td)
        row["prefill_tokens"] = batch * prompt_len
        row["prefill_s"] = _median(prefills)
        row["prefill_tok_s"] = batch * prompt_len / row["prefill_s"] if row["prefill_s"] else None
        row["decode_steps"] = steps
        row["decode_s"] = _median(decodes)
        row["decode_tok_s_runs"] = [batch * steps / d for d in decodes if d > 0]
        row["decode_tok_s"] = batch * steps / row["decode_s"] if row["decode_s"] else None
        row["decode_steps_per_s"] = steps / row["decode_s"] if row["decode_s"] else None
        row["weight_bytes"] = weight_bytes(c)
        if row["decode_steps_per_s"]:
            row["weight_bandwidth_gb_s"] = row["weight_bytes"] * row["decode_steps_per_s"] / 1e9

        # one decode step, kernel by kernel (median per key over `repeat` profiles)
        try:
            tok = np.full(batch, 3 % c.vocab_size, np.int32)
            pos = prompt_len + steps // 2
            profs = [backend.profile(tok, pos) for _ in range(max(1, repeat))]
            keys = [k for k in PROFILE_KEYS if any(k in p for p in profs)]
            keys += sorted({k for p in profs for k in p} - set(keys))
            med = {k: _median([float(p.get(k, 0.0)) for p in profs]) for k in keys}
            total = sum(med.values())
            row["profile"] = {k: {"seconds": v, "share": (v / total if total > 0 else 0.0)} for k, v in med.items()}
            row["profile_total_s"] = total
        except NotImplementedError as e:
            row["profile_note"] = f"unavailable: {e}"
        row["peak_rss_bytes"] = peak_rss()
        row["backend_memory_bytes"] = backend.memory_bytes()
        if device == "cuda":
            row["device_memory_bytes"] = backend.memory_bytes()
    finally:
        backend.close()
        backend = None  # drop the weights and buffers before the next row
        gc.collect()
    return row


def bench(
    path: str | os.PathLike,
    devices: list[str],
    batches: list[int],
    steps: int,
    prompt_len: Optional[int] = None,
    repeat: int = 3,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
    raise_errors: bool = False,
    make_backend: Optional[Callable] = None,
) -> dict:
    """The whole report as a dict (the JSON document). Unusable devices and batches that do not
    fit become rows with status and reason; nothing here prints. make_backend: create_backend's
    signature (tests inject backends)."""
    make_backend = make_backend or create_backend
    ck = load_checkpoint(path)
    c = ck.config
    p_len, steps = fit_lengths(c.seq_len, steps, prompt_len)
    report = {
        "schema": SCHEMA,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": {
            "path": str(path),
            "version": ck.version,
            "config": {
                "dim": c.dim,
                "hidden_dim": c.hidden_dim,
                "n_layers": c.n_layers,
                "n_heads": c.n_heads,
                "n_kv_heads": c.n_kv_heads,
                "vocab_size": c.vocab_size,
                "seq_len": c.seq_len,
                "shared_classifier": c.shared_classifier,
            },
            "parameters": ck.n_params,
            "file_bytes": ck.file_bytes,
            "weight_bytes": weight_bytes(c),
        },
        "host": host_info(threads),
        "settings": {
            "devices": devices,
            "batches": batches,
            "prompt_len": p_len,
            "steps": steps,
            "repeat": repeat,
            "threads": threads,
        },
        "results": [],
        "vs_run": None,
    }
    del ck
    for device in devices:
        dead: Optional[str] = None
        for batch in batches:
            if dead is not None:
                break
            if progress:
                progress(f"{device} batch {batch}")
            need, avail = estimate_bytes(c, batch, p_len), mem_available()
            if device != "cuda" and avail is not None and need > 0.9 * avail:
                report["results"].append(
                    _row(
                        device,
                        batch,
                        "skipped",
                        f"needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available",
                    )
                )
                continue
            try:
                row = bench_one(path, device, batch, steps, p_len, repeat, threads, make_backend)
            except (DeviceError, ImportError) as e:
                if raise_errors:
                    raise
                reason = str(e)
                if isinstance(e, ImportError):
                    reason = f"{device} backend not available ({e}); build it with `pip install -e .`"
                if batch == batches[0]:  # the device itself is unusable: one row says why
                    dead = reason
                    report["results"].append(_row(device, None, "unavailable", reason))
                else:  # e.g. cuda refusing a batch whose KV cache does not fit
                    report["results"].append(_row(device, batch, "skipped", reason))
                continue
            except (MemoryError, ValueError, RuntimeError, OSError, Llama2pyError) as e:
                if raise_errors:
                    raise
                report["results"].append(_row(device, batch, "error", f"{e.__class__.__name__}: {e}"))
                continue
            except Exception as e:  # e.g. cupy's OutOfMemoryError: report the row, keep the table
                if raise_errors or "memory" not in type(e).__name__.lower():
                    raise
                report["results"].append(_row(device, batch, "skipped", f"{e.__class__.__name__}: {e}"))
                continue
            report["results"].append(row)
            if device == "cuda" and report["host"]["gpu"] is None:
                report["host"]["gpu"] = gpu_name()
    return report


# -- llama2.c's run, side by side --------------------------------------------------------------------
_ACHIEVED = re.compile(r"achieved tok/s:\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)")


def run_binary_once(
    binary: str, checkpoint: str, tokenizer: str, steps: int, threads: Optional[int], timeout: float = 600.0
) -> float:
    """Run llama2.c's `run` greedily and return its `achieved tok/s`."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [binary, str(checkpoint), "-t", "0", "-n", str(steps), "-z", str(tokenizer)]
    try:
        r = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise Llama2pyError(f"--vs-run {binary}: no such program (pass the path of llama2.c's compiled `run`)")
    except PermissionError:
        raise Llama2pyError(f"--vs-run {binary}: not executable (chmod +x it)")
    except subprocess.TimeoutExpired:
        raise Llama2pyError(f"--vs-run {binary}: still running after {timeout:.0f} s: {' '.join(cmd)}")
    out = r.stderr.decode(errors="replace") + "\n" + r.stdout.decode(errors="replace")
    m = _ACHIEVED.search(out)
    if r.returncode != 0 or not m:
        tail = out.strip()[-300:]
        raise Llama2pyError(
            f"--vs-run: `{' '.join(cmd)}` exited {r.returncode} without an "
            f"'achieved tok/s' line; its output ends: {tail!r}"
        )
    return float(m.group(1))


def vs_run(
    binary: str,
    checkpoint: str,
    tokenizer: Optional[str],
    steps: int,
    repeat: int,
    threads: Optional[int],
    device: str = "cpu",
    progress: Optional[Callable[[str], None]] = None,
) -> dict:
    """Alternate llama2.c's run and llama2py's greedy run (Llama.run, batch 1) `repeat` times after
    one warm-up each; both report run's own tok/s figure. Returns medians and the ratio."""
    from .model import Llama, find_tokenizer

    ck_path = Path(checkpoint)
    if tokenizer is None:
        tokenizer = str(find_tokenizer(ck_path, load_checkpoint(ck_path).config.vocab_size))
    model = Llama.load(ck_path, tokenizer=tokenizer, device=device, threads=threads)
    run_s, ours = [], []
    if progress:
        progress("vs run: warm-up")
    run_binary_once(binary, checkpoint, tokenizer, min(steps, 16), threads)
    model.run("", steps=min(steps, 16), temperature=0.0)
    for i in range(repeat):
        if progress:
            progress(f"vs run: round {i + 1}/{repeat}")
        run_s.append(run_binary_once(binary, checkpoint, tokenizer, steps, threads))
        ours.append(model.run("", steps=steps, temperature=0.0).tok_per_s)
    rm, om = _median(run_s), _median(ours)
    return {
        "binary": str(binary),
        "tokenizer": str(tokenizer),
        "device": model.device,
        "steps": steps,
        "threads": threads,
        "repeat": repeat,
        "command": f"{binary} {checkpoint} -t 0 -n {steps} -z {tokenizer}",
        "run_tok_s_runs": run_s,
        "llama2py_tok_s_runs": ours,
        "run_tok_s": rm,
        "llama2py_tok_s": om,
        "ratio": (om / rm) if rm else None,
    }


# -- output ------------------------------------------------------------------------------------------
def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def render(report: dict) -> str:
    h, s, ck = report["host"], report["settings"], report["checkpoint"]
    c = ck["config"]
    lines = [
        f"llama2py bench  {report['date']}",
        f"checkpoint: {ck['path']} (v{ck['version']}, dim {c['dim']}, hidden {c['hidden_dim']}, "
        f"{c['n_layers']} layers, {c['n_heads']}/{c['n_kv_heads']} heads, vocab {c['vocab_size']}, "
        f"seq_len {c['seq_len']}; {ck['parameters']:,} params, {ck['weight_bytes'] / 2**20:.1f} MiB of fp32 "
        f"weights read per step)",
        f"cpu: {h['cpu_model']} ({h['cpu_count']} logical cores), threads: {h['threads']}"
        + ("" if h["threads_requested"] else " (default: all cores)")
        + (f"; gpu: {h['gpu']}" if h["gpu"] else ""),
        f"prefill: {s['prompt_len']} positions per sequence; decode: {s['steps']} greedy steps, "
        f"median of {s['repeat']} after a warm-up",
        "",
    ]
    head = (
        "device",
        "batch",
        "load s",
        "prefill tok/s",
        "decode tok/s",
        "steps/s",
        "weights GB/s",
        "peak RSS MiB",
        "dev MiB",
    )
    rows = []
    notes = []
    for r in report["results"]:
        if r["status"] != "ok":
            rows.append((r["device"], "-" if r["batch"] is None else str(r["batch"]), r["status"]))
            notes.append(f"{r['device']}" + (f" batch {r['batch']}" if r["batch"] else "") + f": {r['reason']}")
            continue
        rows.append(
            (
                r["device"],
                str(r["batch"]),
                _fmt(r["load_s"], ".2f"),
                _fmt(r["prefill_tok_s"]),
                _fmt(r["decode_tok_s"]),
                _fmt(r["decode_steps_per_s"]),
                _fmt(r["weight_bandwidth_gb_s"], ".2f"),
                _mib(r["peak_rss_bytes"]),
                _mib(r["device_memory_bytes"]),
            )
        )
    widths = [max(len(head[i]), *(len(x[i]) for x in rows if len(x) > i)) for i in range(len(head))]
    lines.append("  ".join(t.rjust(w) if i > 1 else t.ljust(w) for i, (t, w) in enumerate(zip(head, widths))))
    for x in rows:
        if len(x) == 3:
            lines.append("  ".join((x[0].ljust(widths[0]), x[1].ljust(widths[1]), x[2])))
        else:
            lines.append("  ".join(t.rjust(w) if i > 1 else t.ljust(w) for i, (t, w) in enumerate(zip(x, widths))))
    for n in notes:
        lines.append(f"  {n}")
    prof_lines = []
    for r in report["results"]:
        if r["status"] != "ok":
            continue
        label = f"{r['device']} batch {r['batch']}"
        if r["profile"]:
            parts = [f"{k} {v['seconds'] * 1e3:.3f} ms ({100 * v['share']:.0f}%)" for k, v in r["profile"].items()]
            prof_lines.append(f"  {label}: total {r['profile_total_s'] * 1e3:.3f} ms = " + ", ".join(parts))
        else:
            prof_lines.append(f"  {label}: {r['profile_note']}")
    if prof_lines:
        lines += ["", "one decode step, kernel by kernel:"] + prof_lines
    v = report.get("vs_run")
    if v:
        lines += [
            "",
            f"vs llama2.c run ({v['command']}; alternating, median of {v['repeat']}):",
            f"  run       {v['run_tok_s']:.1f} tok/s   runs: " + ", ".join(f"{x:.1f}" for x in v["run_tok_s_runs"]),
            f"  llama2py  {v['llama2py_tok_s']:.1f} tok/s   runs: "
            + ", ".join(f"{x:.1f}" for x in v["llama2py_tok_s_runs"])
            + f"   ({v['device']} backend, batch 1)",
            f"  ratio llama2py / run: {_fmt(v['ratio'], '.2f')}",
        ]
    return "\n".join(lines)


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Llama2pyError("--plot needs matplotlib, which is an optional extra: pip install matplotlib")


def plot(report: dict, out: str | os.PathLike) -> None:
    """A PNG bar chart of decode tok/s by device (bars) and batch size (groups)."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r["status"] == "ok"]
    devices = list(dict.fromkeys(r["device"] for r in report["results"]))
    batches = report["settings"]["batches"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(batches) * max(1, len(devices))), 4.0))
    width = 0.8 / max(1, len(devices))
    for i, d in enumerate(devices):
        vals = []
        for b in batches:
            r = next((r for r in ok if r["device"] == d and r["batch"] == b), None)
            vals.append(r["decode_tok_s"] if r else 0.0)
        xs = [j + (i - (len(devices) - 1) / 2) * width for j in range(len(batches))]
        bars = ax.bar(xs, vals, width, label=d)
        for x, val, bar in zip(xs, vals, bars):
            ax.annotate(f"{val:.0f}" if val else "n/a", (x, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("decode tokens/s (all sequences)")
    h = report["host"]
    title = f"{Path(report['checkpoint']['path']).name}: {h['cpu_model']}, {h['threads']} threads"
    if h.get("gpu"):
        title += f", {h['gpu']}"
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)


# -- CLI ---------------------------------------------------------------------------------------------
def _int_list(name: str, lo: int = 1):
    def parse(s: str) -> list[int]:
        try:
            vals = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers, got {s!r}")
        if not vals or any(v < lo for v in vals):
            raise argparse.ArgumentTypeError(f"{name} values must be >= {lo}, got {s!r}")
        return vals

    return parse


def _device_list(s: str) -> list[str]:
    vals = [x.strip() for x in s.split(",") if x.strip()]
    bad = [v for v in vals if v not in ("cpu", "cuda", "numpy")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"--device takes a comma-separated list of cpu, cuda, numpy; got {s!r}")
    return list(dict.fromkeys(vals))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Measure load time, prefill and decode tokens/s, peak memory, a per-kernel breakdown "
        "of one decode step and the effective weight bandwidth, per backend and batch size. "
        "Use a synthetic checkpoint (`llama2py synth --shape stories15M`) when the real one is "
        "not at hand: random weights cost the same arithmetic."
    )
    p.add_argument("checkpoint", help="llama2.c .bin checkpoint")
    p.add_argument(
        "--device",
        type=_device_list,
        default=None,
        help="comma-separated backends: cpu, cuda, numpy (default: cpu, plus cuda when usable)",
    )
    p.add_argument(
        "--batch", type=_int_list("--batch"), default=[1, 8, 64], help="comma-separated batch sizes (default 1,8,64)"
    )
    p.add_argument("--steps", type=int_at_least(1, "--steps"), default=64, help="decode steps per run (default 64)")
    p.add_argument(
        "--prompt-len",
        type=int_at_least(1, "--prompt-len"),
        default=None,
        help="prefill positions per sequence (default min(seq_len/2, 128))",
    )
    p.add_argument(
        "--threads", type=int_at_least(1, "--threads"), default=None, help="CPU threads (default: all cores)"
    )
    p.add_argument(
        "--repeat",
        type=int_at_least(1, "--repeat"),
        default=3,
        help="timed runs per measurement after a warm-up; medians are reported (default 3)",
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON to this file")
    p.add_argument("--plot", default=None, help="also write a PNG bar chart of decode tok/s (needs matplotlib)")
    p.add_argument(
        "--vs-run",
        default=None,
        metavar="PATH",
        help="llama2.c's compiled `run`: time it and llama2py's batch-1 greedy run alternately",
    )
    p.add_argument(
        "--vs-device",
        choices=("cpu", "cuda", "numpy"),
        default="cpu",
        help="llama2py backend for --vs-run (default cpu)",
    )
    p.add_argument(
        "-z",
        "--tokenizer",
        default=None,
        help="tokenizer for --vs-run (default: the one found beside the checkpoint or in models/)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    if args.plot:
        check_matplotlib()  # fail before minutes of measuring, not after
    devices = args.device or default_devices()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    report = bench(
        args.checkpoint,
        devices,
        args.batch,
        args.steps,
        args.prompt_len,
        args.repeat,
        args.threads,
        progress=progress,
        raise_errors=getattr(args, "debug", False),
    )
    if args.vs_run:
        report["vs_run"] = vs_run(
            args.vs_run,
            args.checkpoint,
            args.tokenizer,
            report["settings"]["steps"],
            args.repeat,
            args.threads,
            args.vs_device,
            progress,
        )
    print(render(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nJSON: {args.json_out}")
    if args.plot:
        plot(report, args.plot)
        print(f"plot: {args.plot}")
    return 0
