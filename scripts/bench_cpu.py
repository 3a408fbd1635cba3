#!/usr/bin/env python
"""Benchmark of the cpu backend: greedy decode tok/s at batch 1 and batch N, prefill tok/s.

Uses a random checkpoint of stories15M's shape (same arithmetic as the real one) written to
--checkpoint if it does not exist. Each figure is the median of --repeats runs; runs alternate
between configurations because these machines are shared and noisy.

    python scripts/bench_cpu.py --threads 2 --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from llama2py.backends.cpu import CpuBackend
from llama2py.bench import greedy_decode_tok_s
from llama2py.checkpoint import Config, load_checkpoint, random_weights, write_checkpoint

STORIES15M = Config(
    dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256, shared_classifier=True
)


def prefill_tok_s(backend: CpuBackend, batch: int, T: int) -> float:
    tokens = np.random.default_rng(0).integers(3, backend.config.vocab_size, (batch, T)).astype(np.int32)
    t0 = time.perf_counter()
    backend.prefill(tokens, 0, "last")
    return batch * T / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="/tmp/llama2py_bench_stories15M_random.bin")
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: OpenMP's)")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also print one decode step's kernel breakdown")
    args = ap.parse_args()

    if not os.path.exists(args.checkpoint):
        write_checkpoint(args.checkpoint, STORIES15M, random_weights(STORIES15M, 0), 0)
    ck = load_checkpoint(args.checkpoint)
    c = ck.config
    steps = min(args.steps, c.seq_len)
    b1 = CpuBackend(c, ck.weights, 1, args.threads)
    bN = CpuBackend(c, ck.weights, args.batch, args.threads)
    rows = {
        "decode batch 1": [],
        f"decode batch {args.batch}": [],
        "prefill 1 x 128": [],
        f"prefill {args.batch} x 8": [],
    }
    for _ in range(args.repeats):  # alternate configurations
        rows["decode batch 1"].append(greedy_decode_tok_s(b1, 1, steps))
        rows[f"decode batch {args.batch}"].append(greedy_decode_tok_s(bN, args.batch, steps))
        rows["prefill 1 x 128"].append(prefill_tok_s(b1, 1, min(128, c.seq_len)))
        rows[f"prefill {args.batch} x 8"].append(prefill_tok_s(bN, args.batch, min(8, c.seq_len)))

    print(f"checkpoint: {args.checkpoint} ({c.describe()})")
    print(f"backend:    {b1.describe()}, {steps} greedy steps, median of {args.repeats}")
    print(f"{'run':<20} {'median tok/s':>13} {'min':>9} {'max':>9}")
    for name, v in rows.items():
        print(f"{name:<20} {statistics.median(v):>13.1f} {min(v):>9.1f} {max(v):>9.1f}")
    ratio = statistics.median(rows[f"decode batch {args.batch}"]) / statistics.median(rows["decode batch 1"])
    print(f"batch {args.batch} / batch 1 aggregate decode: {ratio:.1f}x")
    if args.profile:
        prof = b1.profile(np.ones(1, np.int32), steps // 2)
        total = sum(prof.values())
        print("one decode step (batch 1, mid-context):")
        for k, v in prof.items():
            print(f"  {k:<11} {v * 1e6:9.1f} us  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
