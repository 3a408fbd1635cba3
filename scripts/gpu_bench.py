#!/usr/bin/env python
"""Speed of the cuda backend (and the cpu backend beside it), for scripts/gpu_check.sh.

Random weights of the real shapes (the same arithmetic as the trained checkpoints), greedy decode
from position 0, tok/s as run reports it: (positions - 1) / seconds since the end of the first step,
times the batch for aggregate figures. Every configuration is warmed up first (NVRTC compile and
CUDA-graph capture stay out of the figures) and timed --repeats times; the median is reported.

    python scripts/gpu_bench.py --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama2py.bench import greedy_decode_tok_s  # noqa: E402
from llama2py.checkpoint import Config, random_weights  # noqa: E402

SHAPES = {
    "stories15M": Config(
        dim=288,
        hidden_dim=768,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        vocab_size=32000,
        seq_len=256,
        shared_classifier=True,
    ),
    "stories110M": Config(
        dim=768,
        hidden_dim=2048,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        vocab_size=32000,
        seq_len=1024,
        shared_classifier=True,
    ),
}


def bench(make, name: str, shape: str, batch: int, steps: int, repeats: int, results: list) -> None:
    c = SHAPES[shape]
    try:
        t0 = time.perf_counter()
        backend = make(c, random_weights(c, seed=0), batch)
        load_s = time.perf_counter() - t0
        greedy_decode_tok_s(backend, batch, min(steps, 8))  # warm-up: compile, capture
        runs = [greedy_decode_tok_s(backend, batch, steps) for _ in range(repeats)]
        tok_s = statistics.median(runs)
        row = {
            "backend": name,
            "shape": shape,
            "batch": batch,
            "steps": steps,
            "tok_s": tok_s,
            "us_per_step": 1e6 * batch / tok_s,
            "runs": runs,
            "load_s": load_s,
            "describe": backend.describe(),
        }
        if name.startswith("cuda"):
            prof = backend.profile(np.ones(batch, np.int32), steps // 2)
            row["profile_us"] = {k: round(v * 1e6, 1) for k, v in prof.items()}
            row["memory_mib"] = backend.memory_bytes() / 2**20
        backend.close()
    except Exception as e:  # report and go on: one failure must not hide the other figures
        row = {"backend": name, "shape": shape, "batch": batch, "steps": steps, "error": f"{type(e).__name__}: {e}"}
    results.append(row)
    print(json.dumps(row), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--big-batch", type=int, default=256)
    ap.add_argument("--no-cpu", action="store_true", help="skip the cpu backend comparison")
    args = ap.parse_args()

    from llama2py.backends.cuda import CudaBackend

    results: list = []
    bench(CudaBackend, "cuda", "stories15M", 1, args.steps, args.repeats, results)
    bench(CudaBackend, "cuda", "stories110M", 1, args.steps, args.repeats, results)
    bench(CudaBackend, "cuda", "stories15M", args.big_batch, args.steps, args.repeats, results)
    if not args.no_cpu:

        def cpu(c, w, b):
            from llama2py.backends.cpu import CpuBackend

            return CpuBackend(c, w, b)

        bench(cpu, "cpu", "stories15M", 1, args.steps, 1, results)

    gpu = "?"
    try:
        import cupy

        gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
    except Exception:
        pass
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": gpu, "results": results}, indent=1))
    print(f"\nGPU: {gpu}")
    print(f"{'backend':10} {'shape':12} {'batch':>5} {'tok/s':>12} {'us/step':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:10} {r['shape']:12} {r['batch']:>5} ERROR {r['error'][:80]}")
        else:
            print(f"{r['backend']:10} {r['shape']:12} {r['batch']:>5} {r['tok_s']:>12,.0f} {r['us_per_step']:>9.1f}")
    for r in results:
        if "profile_us" in r:
            print(
                f"profile {r['backend']} {r['shape']} B={r['batch']} (us, unfused launches): "
                + " ".join(f"{k}={v}" for k, v in r["profile_us"].items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
