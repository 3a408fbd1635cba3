"""The report of `llama2py bench`: the text table, the JSON file and the PNG plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

from .._extension import isa_label
from ..errors import Llama2pyError, count
from ..files import PathLike, atomic_output
from .measure import NO_PROFILE, SPREAD_LIMIT, row_label, sampling_label


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _isa(host: dict) -> str:
    level = host.get("cpu_isa")
    return isa_label(level, host.get("cpu_isa_best")) if level else "not built"


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _spread(row: dict, fig: str) -> str:
    """The spread of a figure's runs in % of the median; '!' marks one above SPREAD_LIMIT."""
    s = row.get(f"{fig}_spread")
    if s is None:
        return "-"
    return f"{100 * s:.0f}%" + ("!" if s > SPREAD_LIMIT else "")


def _sampling(temperature: Optional[float], top_p: Optional[float]) -> str:
    if temperature is None:
        return "-"
    return sampling_label(temperature, top_p)


def _vs_batch1(row: dict, rows: list[dict]) -> str:
    """decode tok/s over the batch-1 row of the same device, threads, weights and sampling."""
    base = next(
        (
            r
            for r in rows
            if r["status"] == "ok"
            and r["batch"] == 1
            and all(r.get(k) == row.get(k) for k in ("device", "threads", "weights", "temperature"))
        ),
        None,
    )
    if base is None or not base["decode_tok_s"] or not row["decode_tok_s"]:
        return "-"
    return f"{row['decode_tok_s'] / base['decode_tok_s']:.2f}x"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Columns: the first `left` left-aligned, the rest right-aligned; short rows (a status and a
    reason) run on after the left columns."""
    # a short row counts for its left columns only; with no full row at all, the head alone
    widths = [
        max([len(head[i])] + [len(x[i]) for x in rows if len(x) == len(head) or i < left]) for i in range(len(head))
    ]

    def line(cells) -> str:
        return "  ".join(t.ljust(w) if i < left else t.rjust(w) for i, (t, w) in enumerate(zip(cells, widths)))

    out = [line(head)]
    for x in rows:
        out.append(line(x) if len(x) == len(head) else line(x[:left]) + "  " + "  ".join(x[left:]))
    return out


def checkpoint_label(ck: dict) -> str:
    """The checkpoint as the report names it: its path, or for --shape the random weights (their
    temporary file is gone when the report is read)."""
    return ck["path"] or f"random weights of the {ck['shape']} shape (--shape)"


def header_lines(report: dict) -> list[str]:
    h, s, ck = report["host"], report["settings"], report["checkpoint"]
    c = ck["config"]
    load = h.get("load_average")
    p0, p1 = s["positions"]
    return (
        [
            f"llama2py bench  {report['date']}",
            f"checkpoint: {checkpoint_label(ck)} (v{ck['version']}, dim {c['dim']}, hidden {c['hidden_dim']}, "
            f"{c['n_layers']} layers, {c['n_heads']}/{c['n_kv_heads']} heads, vocab {c['vocab_size']}, "
            f"seq_len {c['seq_len']}; {ck['parameters']:,} params)",
            f"cpu: {h['cpu_model']} ({h['cpu_count']} logical cores), kernels: {_isa(h)}, "
            + (f"huge pages: {h['huge_pages']}, " if h.get("huge_pages") else "")
            + f"load average {_fmt(load, '.2f')} at the start"
            + (f"; gpu: {h['gpu']}" if h["gpu"] else ""),
        ]
        + (
            [
                f"context: {count(s['context'], 'position')} per sequence (--context; the checkpoint's seq_len is {c['seq_len']})"
            ]
            if s.get("context") is not None
            else []
        )
        + [
            f"prefill: {s['prompt_len']} positions per sequence; decode: positions {p0}..{p1 - 1} "
            f"({count(s['steps'], 'step')}); median of {count(s['repeat'], 'run')} after a warm-up, "
            "spread = (max - min) / median",
        ]
    )


def render(report: dict) -> str:
    lines = header_lines(report) + [""]
    head = (
        "device",
        "threads",
        "batch",
        "weights",
        "sampling",
        "load s",
        "prefill tok/s",
        "spread",
        "decode tok/s",
        "spread",
        "vs b1",
        "steps/s",
        "weights GB/s",
        "peak RSS MiB",
        "dev MiB",
    )
    results = report["results"]
    rows, notes = [], []
    for r in results:
        # no count given: the cpu backend picks one thread or all cores per call
        auto = "auto" if r["device"] == "cpu" else "-"
        left = (r["device"], _fmt(r["threads"], "d", auto), _fmt(r["batch"], "d"))
        if r["status"] != "ok":  # the weight type asked for ("-": the file's), then the status
            rows.append(left + (r.get("weights") or "-", r["status"]))
            notes.append(f"  {row_label(r)}: {r['reason']}")
            continue
        rows.append(
            left
            + (
                r["weight_type"] or "-",
                _sampling(r["temperature"], r["top_p"]),
                _fmt(r["load_s"], ".2f"),
                _fmt(r["prefill_tok_s"]),
                _spread(r, "prefill_tok_s"),
                _fmt(r["decode_tok_s"]),
                _spread(r, "decode_tok_s"),
                _vs_batch1(r, results),
                _fmt(r["decode_steps_per_s"]),
                _fmt(r["weight_bandwidth_gb_s"], ".2f"),
                _mib(r["peak_rss_bytes"]),
                _mib(r["device_memory_bytes"]),
            )
        )
    lines += _table(head, rows, left=4) + notes
    prof_lines = []
    untimed: dict[str, None] = {}  # categories left out of some row (an ordered set)
    unavailable = set()  # backends without a profile: said once, not per temperature
    for r in results:
        if r["status"] != "ok" or r["profile_note"] == NO_PROFILE:
            continue
        label = row_label(r)
        if not r["profile"]:
            key = (r["device"], r["threads"], r.get("weights"), r["batch"])
            if key in unavailable:
                continue
            unavailable.add(key)
            label = row_label(dict(r, temperature=None))
        if r["profile"]:
            parts = []
            for k, v in r["profile"].items():
                if v["seconds"] == 0:  # the backend gave it no time of its own: a fused category
                    untimed[k] = None
                    continue
                parts.append(f"{k} {v['seconds'] * 1e3:.3f} ms ({100 * v['share']:.0f}%)")
            prof_lines.append(f"  {label}: total {r['profile_total_s'] * 1e3:.3f} ms = " + ", ".join(parts))
        else:
            prof_lines.append(f"  {label}: {r['profile_note']}")
    if untimed:
        prof_lines.append(
            f"  {', '.join(untimed)}: left out, not timed separately (they run inside other kernels, "
            "the matmuls on cpu and cuda, and are counted there)"
        )
    if prof_lines:
        lines += ["", "one decode step, kernel by kernel:"] + prof_lines
    v = report.get("vs_run")
    if v:
        lines += [
            "",
            f"vs llama2.c (alternating in one loop, median of {count(v['repeat'], 'round')}, -n {v['steps']}, "
            f"llama2py on {v['device']} at batch 1, {v.get('weights', 'f32')} weights):",
        ]
        vhead = ("program", "sampling", "tok/s", "min", "max", "spread", "llama2py / it")
        vrows = [
            (
                e["program"],
                _sampling(e["temperature"], e["top_p"]),
                _fmt(e["tok_s"]),
                _fmt(e["tok_s_min"]),
                _fmt(e["tok_s_max"]),
                _spread(e, "tok_s"),
                _fmt(e["ratio"], ".2f"),
            )
            for e in v["programs"]
        ]
        lines += ["  " + x for x in _table(vhead, vrows, left=2)]
        lines += [f"  {e['program']}: {e['command']}" for e in v["programs"] if e["binary"]]
    return "\n".join(lines)


def write_file(path: PathLike, data: bytes) -> None:
    """Write data to a temporary name in path's folder, renamed over path when complete."""
    with atomic_output(path) as f:
        f.write(data)


def json_text(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def write_json(report: dict, path: PathLike) -> None:
    write_file(path, json_text(report).encode())


PLOT_EXTRA = "pip install matplotlib (the plot extra)"


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Llama2pyError(f"--plot needs matplotlib, which is an optional extra: {PLOT_EXTRA}")


def plot(report: dict, out: PathLike) -> None:
    """A PNG bar chart of decode tok/s by batch size (groups) and configuration (bars), error bars
    from min to max of the runs."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["results"] if r["status"] == "ok"]
    configs = list(dict.fromkeys(row_label(dict(r, batch=None)) for r in ok))
    batches = report["settings"]["batches"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(batches) * max(1, len(configs))), 4.0))
    width = 0.8 / max(1, len(configs))
    for i, name in enumerate(configs):
        vals, lows, highs = [], [], []
        for b in batches:
            r = next((r for r in ok if r["batch"] == b and row_label(dict(r, batch=None)) == name), None)
            val = (r["decode_tok_s"] or 0.0) if r else 0.0
            vals.append(val)
            lows.append(val - (r["decode_tok_s_min"] or val) if r else 0.0)
            highs.append((r["decode_tok_s_max"] or val) - val if r else 0.0)
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(batches))]
        bars = ax.bar(xs, vals, width, label=name, yerr=[lows, highs], capsize=3)
        for x, val, bar in zip(xs, vals, bars):
            ax.annotate(f"{val:.0f}" if val else "n/a", (x, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("decode tokens/s (all sequences)")
    h = report["host"]
    ck = report["checkpoint"]
    title = f"{Path(ck['path']).name if ck['path'] else checkpoint_label(ck)}: {h['cpu_model']}"
    if h.get("gpu"):
        title += f", {h['gpu']}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_file(out, png.getvalue())
