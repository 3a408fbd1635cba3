#!/usr/bin/env python
"""Aggregate decode throughput of batched generation (llama2py.batch) at several batch sizes.

Runs the real batched loop (prefill of the prompts, then one backend.step per position for the
whole batch) on a random checkpoint of stories15M's shape, written to --checkpoint if it does not
exist (same arithmetic as the real weights). Stop tokens are ignored so every sequence decodes the
same number of tokens. Figures are medians of --repeats runs; the batch sizes alternate within
each round because these machines are shared and noisy.

    python scripts/bench_batch.py --device cpu --threads 2            # batch 1, 8, 32
    python scripts/bench_batch.py --device cuda                       # batch 1, 8, 32, 256

aggregate tok/s = tokens decoded by all sequences / seconds of the decode loop (prefill excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama2py.backends import create_backend  # noqa: E402
from llama2py.batch import BatchStats, run_batch  # noqa: E402
from llama2py.bench import cpu_model  # noqa: E402
from llama2py.checkpoint import load_checkpoint, model_shape  # noqa: E402
from llama2py.synth import write_synthetic  # noqa: E402


def one_run(backend, batch: int, prompt_len: int, gen: int, temperature: float, top_p: float, seed: int) -> BatchStats:
    rng = np.random.default_rng(seed)
    vocab = backend.config.vocab_size
    prompts = [[1] + rng.integers(3, vocab, prompt_len - 1).tolist() for _ in range(batch)]
    stats = BatchStats()
    run_batch(
        backend,
        prompts,
        [prompt_len + gen] * batch,
        temperature,
        top_p,
        [seed + b for b in range(batch)],
        stop_tokens=(),
        stats=stats,
    )
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "numpy"))
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; +256 on cuda)")
    ap.add_argument("--gen", type=int, default=64, help="tokens decoded per sequence (default 64)")
    ap.add_argument("--prompt-len", type=int, default=8, help="prompt tokens per sequence, BOS included (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch size; the median is reported")
    ap.add_argument("-t", dest="temperature", type=float, default=1.0, help="temperature (default 1.0, as run)")
    ap.add_argument("-p", dest="top_p", type=float, default=0.9, help="top-p (default 0.9, as run)")
    ap.add_argument(
        "--checkpoint",
        default="/tmp/llama2py_bench_stories15M.bin",
        help="random stories15M-shaped checkpoint (written when missing)",
    )
    ap.add_argument("--json", default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    batches = (
        [int(b) for b in args.batches.split(",")]
        if args.batches
        else [1, 8, 32] + ([256] if args.device == "cuda" else [])
    )
    path = Path(args.checkpoint)
    if not path.exists():
        tmp = path.with_name(path.name + f".{os.getpid()}.part")
        write_synthetic(tmp, model_shape("stories15M"), version=0, seed=0)
        os.replace(tmp, path)
    ck = load_checkpoint(path)
    c = ck.config
    if args.prompt_len + args.gen > c.seq_len + 1:
        ap.error(f"--prompt-len + --gen must be at most seq_len + 1 = {c.seq_len + 1}")
    backend = create_backend(args.device, c, ck.weights, max(batches), args.threads)
    desc = backend.describe()
    one_run(backend, min(batches), args.prompt_len, 4, args.temperature, args.top_p, 1)  # warm-up
    runs: dict[int, list[BatchStats]] = {b: [] for b in batches}
    for r in range(args.repeats):
        for b in batches:
            runs[b].append(one_run(backend, b, args.prompt_len, args.gen, args.temperature, args.top_p, 100 + r))
    rows = []
    for b in batches:
        agg = statistics.median(s.tok_per_s for s in runs[b])
        per_seq = statistics.median(statistics.median(s.seq_tok_per_s(i) for i in range(b)) for s in runs[b])
        prefill = statistics.median(b * s.prefill_positions / s.prefill_s for s in runs[b] if s.prefill_s > 0)
        rows.append(
            {
                "batch": b,
                "aggregate_tok_s": agg,
                "per_sequence_tok_s": per_seq,
                "prefill_tok_s": prefill,
                "all_runs_tok_s": [s.tok_per_s for s in runs[b]],
            }
        )
    base = rows[0]["aggregate_tok_s"] if rows[0]["batch"] == 1 else None
    where = f"{cpu_model()}, {args.threads} threads" if args.device != "cuda" else desc
    print(
        f"# bench_batch: {desc}; {where}; stories15M shape (random weights), prompt {args.prompt_len}, "
        f"{args.gen} decoded tokens per sequence, -t {args.temperature} -p {args.top_p}, "
        f"median of {args.repeats}"
    )
    print(f"{'batch':>6} {'aggregate tok/s':>16} {'per-seq tok/s':>14} {'vs batch 1':>11} {'prefill tok/s':>14}")
    for row in rows:
        ratio = f"{row['aggregate_tok_s'] / base:.2f}x" if base else "-"
        print(
            f"{row['batch']:>6} {row['aggregate_tok_s']:>16.1f} {row['per_sequence_tok_s']:>14.1f} {ratio:>11} "
            f"{row['prefill_tok_s']:>14.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": desc,
                    "machine": where,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "gen": args.gen,
                    "prompt_len": args.prompt_len,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
