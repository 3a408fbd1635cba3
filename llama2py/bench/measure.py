"""Timing backends: prefill, greedy or sampled decode, a kernel-by-kernel profile, memory.

Every figure is taken `repeat` times after a warm-up and reported as median, min, max and spread
((max - min) / median); a spread above SPREAD_LIMIT marks the row noisy and adds a warning. All
timings go through one clock function (a seam: tests inject their own). Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import statistics
import time
from typing import Callable, Optional

import numpy as np

from ..backends import create_backend
from ..backends.base import PROFILE_KEYS
from ..checkpoint import Config, load_checkpoint, q8_group_size
from ..errors import DeviceError, Llama2pyError, count
from ..files import PathLike
from ..model import load_weights
from .host import BUSY_LOAD, gpu_name, host_info, mem_available, peak_rss, reset_peak_rss

SCHEMA = 2
SPREAD_LIMIT = 0.15  # runs of one figure further apart than this (of the median) are not trusted
Clock = Callable[[], float]
NO_PROFILE = "not measured (--no-profile)"


@dataclasses.dataclass
class Settings:
    """What to measure: every device x threads (cpu only) x weights x batch x temperature combination."""

    devices: list[str]
    batches: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 64])
    threads: list[Optional[int]] = dataclasses.field(default_factory=lambda: [None])  # None: auto (1 or all cores)
    temperatures: list[float] = dataclasses.field(default_factory=lambda: [0.0])  # 0: greedy
    weights: list[Optional[str]] = dataclasses.field(default_factory=lambda: [None])  # None: the file's own type
    top_p: float = 0.9
    prompt_len: Optional[int] = None  # prefill positions before the decode; None: min(seq_len/2, 128)
    steps: Optional[int] = None  # decode steps per timed run; None: DEFAULT_STEPS, shortened to fit
    context: Optional[int] = None  # positions the backends hold (caps seq_len and the KV cache); None: seq_len
    repeat: int = 3
    profile: bool = True


def summarize(values: list[float]) -> dict:
    """median, min, max and spread = (max - min) / median of one figure's runs (None when empty)."""
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None}
    med = float(statistics.median(values))
    lo, hi = float(min(values)), float(max(values))
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med > 0 else None}


DEFAULT_STEPS = 64


def fit_lengths(seq_len: int, steps: Optional[int], prompt_len: Optional[int]) -> tuple[int, int]:
    """(prompt_len, steps) so that prefill then decode stay inside the context; prompt_len 0 means
    no prefill (decode from position 0). None for either: its default (min(seq_len / 2, 128)
    positions, DEFAULT_STEPS steps), which gives way to what was asked for; two defaults share a
    short context (32 positions: 16 and 16)."""
    p = prompt_len if prompt_len is not None else max(1, min(seq_len // 2, 128))
    if steps is None:
        p = min(p, seq_len - 1)
        return p, max(1, min(DEFAULT_STEPS, seq_len - p))
    steps = max(1, min(steps, seq_len))
    p = max(0, min(p, seq_len - steps))
    return p, steps


def estimate_bytes(
    config: Config, batch: int, prompt_len: int, weight_type: str = "f32", group_size: Optional[int] = None
) -> int:
    """Rough host memory a backend needs: the weights as weight_type, KV cache and the largest
    activations."""
    c = config
    act = (
        4 * batch * prompt_len * (3 * c.hidden_dim + 6 * c.dim + 3 * c.n_heads * prompt_len) + 8 * batch * c.vocab_size
    )
    return c.weight_bytes(weight_type, group_size) + c.kv_cache_bytes(batch) + act


def weight_bytes_of(config: Config, backend, group_size: Optional[int]) -> tuple[str, Optional[int]]:
    """(weight type, bytes of the weights it holds) of a backend."""
    weight_type = str(backend.weight_type)
    try:
        return weight_type, config.weight_bytes(weight_type, getattr(backend, "group_size", None) or group_size)
    except ValueError:  # a weight type Config does not know (yet)
        return weight_type, None


def sampling_label(temperature: float, top_p: float) -> str:
    """'greedy', or the flags that sample so: '-t 1 -p 0.9'."""
    return "greedy" if temperature == 0 else f"-t {temperature:g} -p {top_p:g}"


def row_label(row: dict) -> str:
    parts = [row["device"]]
    if row.get("threads") is not None:
        parts.append(count(row["threads"], "thread"))
    if row.get("weights") is not None:  # asked for (--weights); the file's own type is not named
        parts.append(row["weights"])
    if row.get("batch") is not None:
        parts.append(f"batch {row['batch']}")
    if row.get("temperature") is not None:
        parts.append(sampling_label(row["temperature"], row["top_p"]))
    return " ".join(parts)


_FIGURES = ("prefill_tok_s", "decode_tok_s")


def empty_row(
    device: str,
    batch: Optional[int],
    status: str,
    reason: Optional[str] = None,
    threads: Optional[int] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    weights: Optional[str] = None,
) -> dict:
    row = {
        "device": device,
        "threads": threads,
        "weights": weights,  # the weight type asked for (None: the file's); weight_type: what ran
        "batch": batch,
        "temperature": temperature,
        "top_p": top_p,
        "status": status,
        "reason": reason,
        "backend": None,
        "weight_type": None,
        "load_s": None,
        "prefill_tokens": None,
        "prefill_s": None,
        "decode_start": None,
        "decode_steps": None,
        "decode_s": None,
        "decode_steps_per_s": None,
        "noisy": False,
        "weight_bytes": None,
        "weight_bandwidth_gb_s": None,
        "peak_rss_bytes": None,
        "backend_memory_bytes": None,
        "device_memory_bytes": None,
        "profile": None,
        "profile_total_s": None,
        "profile_note": None,
    }
    for fig in _FIGURES:
        row.update({fig: None, f"{fig}_min": None, f"{fig}_max": None, f"{fig}_runs": [], f"{fig}_spread": None})
    return row


def _put_figure(row: dict, fig: str, work: float, seconds: list[float]) -> None:
    """work / seconds of every run into row[fig + '_runs'] and, from the median, shortest and
    longest run: row[fig] = work / median seconds, row[fig + '_min'|'_max'|'_spread']."""
    seconds = [s for s in seconds if s > 0]
    if not seconds:
        return
    med = float(statistics.median(seconds))
    row[fig], row[f"{fig}_min"], row[f"{fig}_max"] = work / med, work / max(seconds), work / min(seconds)
    row[f"{fig}_runs"] = [work / s for s in seconds]
    row[f"{fig}_spread"] = (row[f"{fig}_max"] - row[f"{fig}_min"]) / row[fig]


def _profile(
    backend, config: Config, batch: int, pos: int, repeat: int, temperature: float, top_p: float
) -> tuple[Optional[dict], float, Optional[str]]:
    """One decode step with this sampling, kernel by kernel, through backend.profile (median per
    key over `repeat` calls): ({key: {seconds, share}}, total seconds, note)."""
    tok = np.full(batch, 3 % config.vocab_size, np.int32)
    try:
        profs = [backend.profile(tok, pos, temperature, top_p) for _ in range(max(1, repeat))]
    except NotImplementedError as e:
        return None, 0.0, f"unavailable: {e}"
    keys = [k for k in PROFILE_KEYS if any(k in p for p in profs)]
    keys += sorted({k for p in profs for k in p} - set(keys))
    med = {k: float(statistics.median(float(p.get(k, 0.0)) for p in profs)) for k in keys}
    total = sum(med.values())
    return {k: {"seconds": v, "share": (v / total if total > 0 else 0.0)} for k, v in med.items()}, total, None


def bench_backend(
    path: PathLike,
    device: str,
    threads: Optional[int],
    batch: int,
    settings: Settings,
    prompt_len: int,
    steps: int,
    make_backend: Callable = create_backend,
    clock: Clock = time.perf_counter,
    weights: Optional[str] = None,
) -> list[dict]:
    """Load the checkpoint (its weights as `weights`, as Llama.load does: None keeps the file's
    type), make one backend for (device, threads, batch) and measure every temperature on it, the
    temperatures alternating round by round. One row per temperature. Raises what the backend
    raises (bench() turns it into a row)."""
    gc.collect()
    reset_peak_rss()
    t0 = clock()
    ck = load_weights(path, weights)  # load-time quantization counts as loading
    c = ck.config.capped(settings.context)
    backend = make_backend(device, c, ck.weights, max_batch=batch, threads=threads)
    load_s = clock() - t0
    try:
        held = backend.weight_type
        if weights is not None and held != weights:  # a row would time the other type under this label
            return [
                empty_row(
                    device,
                    batch,
                    "skipped",
                    f"the {device} backend runs {weights} weights as {held} (--weights {held} measures that)",
                    threads,
                    weights=weights,
                )
            ]
        rng = np.random.default_rng(0)
        # never BOS (1): any other id is as good a prompt as a real one for timing
        low = 3 if c.vocab_size > 3 else 0
        prompt = rng.integers(low, c.vocab_size, size=(batch, max(1, prompt_len)), dtype=np.int32)

        def one_run(n_steps: int, temperature: float) -> tuple[Optional[float], float]:
            backend.set_seeds(list(range(1, batch + 1)))  # the same stories every run; never seed 0 (a zero state)
            t_prefill = None
            if prompt_len > 0:
                t = clock()
                logits = backend.prefill(prompt, 0, logits="last")
                t_prefill = clock() - t
                tok = np.ascontiguousarray(np.argmax(logits, axis=-1).astype(np.int32))
            else:
                tok = np.ascontiguousarray(prompt[:, 0])
            t = clock()
            for i in range(n_steps):
                tok, _ = backend.step(tok, prompt_len + i, temperature, settings.top_p)
            return t_prefill, clock() - t

        # warm-up: first touch of the weights, JIT, graph capture, and the calls of each kind the
        # backend needs before its timings settle (every run makes one prefill and >= 1 step)
        calls = max(1, backend.warmup_calls)
        for _ in range(-(-calls // len(settings.temperatures))):
            for temperature in settings.temperatures:
                one_run(min(steps, 4), temperature)
        prefills: dict[float, list[float]] = {t: [] for t in settings.temperatures}
        decodes: dict[float, list[float]] = {t: [] for t in settings.temperatures}
        for _ in range(settings.repeat):
            for temperature in settings.temperatures:
                tp, td = one_run(steps, temperature)
                if tp is not None:
                    prefills[temperature].append(tp)
                decodes[temperature].append(td)

        shared = empty_row(device, batch, "ok", threads=threads, top_p=settings.top_p, weights=weights)
        shared["backend"] = backend.describe()
        shared["load_s"] = load_s
        shared["weight_type"], shared["weight_bytes"] = weight_bytes_of(c, backend, ck.weights.group_size)
        if not settings.profile:
            shared["profile_note"] = NO_PROFILE
        shared["peak_rss_bytes"] = peak_rss()
        shared["backend_memory_bytes"] = backend.memory_bytes()
        if device == "cuda":
            shared["device_memory_bytes"] = backend.memory_bytes()
        rows = []
        for temperature in settings.temperatures:
            row = dict(shared, temperature=temperature)
            if settings.profile:  # the step this row times: a greedy one may read less (the sketch)
                row["profile"], row["profile_total_s"], row["profile_note"] = _profile(
                    backend, c, batch, prompt_len + steps // 2, settings.repeat, temperature, settings.top_p
                )
                if row["profile"] is None:
                    row["profile_total_s"] = None
            if prompt_len > 0:
                row["prefill_tokens"] = batch * prompt_len
                row["prefill_s"] = float(statistics.median(prefills[temperature]))  # sec. of one call
                _put_figure(row, "prefill_tok_s", batch * prompt_len, prefills[temperature])
            row["decode_start"] = prompt_len
            row["decode_steps"] = steps
            row["decode_s"] = float(statistics.median(decodes[temperature]))
            _put_figure(row, "decode_tok_s", batch * steps, decodes[temperature])
            if row["decode_tok_s"]:
                row["decode_steps_per_s"] = row["decode_tok_s"] / batch
                if row["weight_bytes"]:
                    row["weight_bandwidth_gb_s"] = row["weight_bytes"] * row["decode_steps_per_s"] / 1e9
            rows.append(row)
        return rows
    finally:
        backend.close()
        backend = None  # drop the weights and buffers before the next row
        gc.collect()


def spread_warnings(row: dict) -> list[str]:
    """One warning per figure whose runs disagree by more than SPREAD_LIMIT."""
    out = []
    for fig, name in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
        spread = row.get(f"{fig}_spread")
        if spread is not None and spread > SPREAD_LIMIT:
            out.append(
                f"{row_label(row)}: {name} runs differ by {100 * spread:.1f}% of the median "
                f"({row[f'{fig}_min']:.1f} to {row[f'{fig}_max']:.1f} tok/s; limit {100 * SPREAD_LIMIT:.0f}%): "
                "do not trust this figure, rerun on a quiet machine"
            )
    return out


def load_warning(load: Optional[float]) -> Optional[str]:
    if load is not None and load > BUSY_LOAD:
        return f"load average {load:.2f} at the start (above {BUSY_LOAD}): timings on a busy machine are not comparable"
    return None


def checkpoint_info(path: PathLike, ck) -> dict:
    c = ck.config
    return {
        "path": str(path),
        "shape": None,
        "version": ck.version,
        "group_size": ck.group_size,
        "config": dataclasses.asdict(c),
        "parameters": ck.n_params,
        "file_bytes": ck.file_bytes,
        "weight_bytes": c.weight_bytes(),
    }


def _failure_row(
    e: Exception, device: str, batch: int, threads: Optional[int], weights: Optional[str], first: bool
) -> tuple[dict, bool]:
    """(the row that reports a failed measurement, whether the device as a whole is unusable)."""
    if isinstance(e, (DeviceError, ImportError)):
        reason = str(e)
        if isinstance(e, ImportError):
            reason = f"{device} backend not available ({e}); build it with `pip install -e .`"
        if first:  # the device itself is unusable: one row says why
            return empty_row(device, None, "unavailable", reason, threads), True
        # e.g. cuda refusing a big batch
        return empty_row(device, batch, "skipped", reason, threads, weights=weights), False
    if isinstance(e, (MemoryError, ValueError, RuntimeError, OSError, Llama2pyError)):
        return empty_row(device, batch, "error", f"{e.__class__.__name__}: {e}", threads, weights=weights), False
    return empty_row(device, batch, "skipped", f"{e.__class__.__name__}: {e}", threads, weights=weights), False


def bench(
    path: PathLike,
    settings: Settings,
    progress: Optional[Callable[[str], None]] = None,
    raise_errors: bool = False,
    make_backend: Optional[Callable] = None,
    clock: Clock = time.perf_counter,
    host: Optional[dict] = None,
) -> dict:
    """The whole report as a dict (the JSON document). Unusable devices and batches that do not
    fit become rows with status and reason; nothing here prints. make_backend: create_backend's
    signature (tests inject backends); clock: the time source of every figure; host: host_info()
    when the caller already took it."""
    make_backend = make_backend or create_backend
    ck = load_checkpoint(path)
    c = ck.config.capped(settings.context)
    p_len, steps = fit_lengths(c.seq_len, settings.steps, settings.prompt_len)
    host = host or host_info()
    report = {
        "schema": SCHEMA,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": checkpoint_info(path, ck),
        "host": host,
        "settings": {
            "devices": list(settings.devices),
            "batches": list(settings.batches),
            "threads": list(settings.threads),
            "temperatures": list(settings.temperatures),
            "weights": list(settings.weights),
            "context": c.seq_len if settings.context is not None else None,
            "top_p": settings.top_p,
            "prompt_len": p_len,
            "steps": steps,
            "positions": [p_len, p_len + steps],
            "repeat": settings.repeat,
            "spread_limit": SPREAD_LIMIT,
        },
        "results": [],
        "vs_run": None,
        "warnings": [],
    }
    busy = load_warning(host["load_average"])
    if busy:
        report["warnings"].append(busy)
    note = ck.config.cap_note(settings.context)
    if note:  # as Llama.load's note
        report["warnings"].append(f"--context {note}")
    if settings.steps not in (None, steps) or settings.prompt_len not in (None, p_len):
        report["warnings"].append(
            f"positions {p_len}..{p_len + steps - 1} ran: what was asked does not fit the context of {c.seq_len}"
        )
    own = (ck.weights.weight_type, ck.weights.group_size)  # the file's weights, for the memory estimate
    del ck
    for device in settings.devices:
        _bench_device(report, path, c, own, device, settings, p_len, steps, progress, raise_errors, make_backend, clock)
    return report


def _bench_device(
    report, path, config, own, device, settings, p_len, steps, progress, raise_errors, make_backend, clock
):
    """Every (threads, weights, batch) of one device into report["results"]; stops at an unusable
    device."""
    first = True
    refused: dict[Optional[str], str] = {}  # weight types this device runs as another: why (known after one load)
    for threads in settings.threads if device == "cpu" else [None]:
        for weights, batch in ((w, b) for w in settings.weights for b in settings.batches):
            if progress:
                progress(row_label({"device": device, "threads": threads, "weights": weights, "batch": batch}))
            if weights in refused:  # every batch size alike: no load, quantization and upload again
                report["results"].append(
                    empty_row(device, batch, "skipped", refused[weights], threads, weights=weights)
                )
                continue
            weight_type = weights or own[0]
            group_size = None if weight_type == "f32" else q8_group_size(own[1], config.dim)
            need, avail = estimate_bytes(config, batch, p_len, weight_type, group_size), mem_available()
            if device != "cuda" and avail is not None and need > 0.9 * avail:
                reason = f"needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
                report["results"].append(empty_row(device, batch, "skipped", reason, threads, weights=weights))
                continue
            try:
                rows = bench_backend(path, device, threads, batch, settings, p_len, steps, make_backend, clock, weights)
            except Exception as e:
                expected = isinstance(
                    e, (DeviceError, ImportError, MemoryError, ValueError, RuntimeError, OSError, Llama2pyError)
                )
                if raise_errors or not (expected or "memory" in type(e).__name__.lower()):
                    raise  # a bug, not a failed measurement (cupy's OutOfMemoryError is one of those)
                row, dead = _failure_row(e, device, batch, threads, weights, first)
                report["results"].append(row)
                if dead:
                    return
                first = False
                continue
            first = False
            if rows[0]["status"] == "skipped":  # bench_backend's only skip: a weight type it would not hold
                refused[weights] = rows[0]["reason"]
            for row in rows:
                warnings = spread_warnings(row)
                row["noisy"] = bool(warnings)
                report["results"].append(row)
                report["warnings"] += warnings
            if device == "cuda" and report["host"]["gpu"] is None:
                report["host"]["gpu"] = gpu_name()
