"""A seeded checkpoint-header fuzzer: every mutated file is a clean error or a normal run.

Valid v0, v1 and v2 files of small shapes get their header fields (sizes, version, the shared
classifier flag, the group size) set to boundary and random values, bits flipped, and bytes cut or
appended. Each outcome must be a llama2py error (Llama2pyError) with a one-line message, or a
backend that loads and runs a few steps. MemAvailable is patched to 2 GiB, so a header that asks
for more is refused by the memory check rather than allocated: the run stays bounded whatever the
header says. A bounded number of cases (a few seconds).
"""

from __future__ import annotations

import random
import struct
from collections import Counter

import numpy as np
import pytest
from conftest import HOST_DEVICES, require_device

from llama2py.backends import base, create_backend
from llama2py.checkpoint import Config, load_checkpoint, random_weights, write_checkpoint
from llama2py.errors import Llama2pyError

CASES = 240
SEED = 20261129
INTERESTING = [0, 1, 2, 3, -1, -2, 7, 8, 16, 255, 256, 4096, 1 << 16, 1 << 20, (1 << 31) - 1, -(1 << 31)]


def _files(tmp_path) -> list[bytes]:
    shapes = [
        Config(dim=16, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=8),
        Config(
            dim=12,
            hidden_dim=20,
            n_layers=1,
            n_heads=2,
            n_kv_heads=2,
            vocab_size=33,
            seq_len=5,
            shared_classifier=False,
        ),
    ]
    out = []
    for i, c in enumerate(shapes):
        for version in (0, 1, 2):
            p = tmp_path / f"seed{i}_v{version}.bin"
            write_checkpoint(p, c, random_weights(c, seed=i), version, group_size=4 if version == 2 else None)
            out.append(p.read_bytes())
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    has_magic = struct.unpack_from("<I", b, 0)[0] == 0x616B3432
    # int fields: v0 has 7 at offset 0; v1/v2 have version at 4, 7 sizes at 8, the group size at 37
    offsets = [4] + [8 + 4 * k for k in range(7)] + [37] if has_magic else [4 * k for k in range(7)]
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.55:
            off = rng.choice(offsets)
            old = struct.unpack_from("<i", b, off)[0]
            value = rng.choice(
                INTERESTING + [old + rng.randint(-3, 3), old * 2, rng.randint(-(1 << 31), (1 << 31) - 1)]
            )
            struct.pack_into("<i", b, off, max(-(1 << 31), min((1 << 31) - 1, value)))
        elif kind < 0.65 and has_magic:
            b[36] = rng.choice([0, 1, 2, 255])  # the shared-classifier flag
        elif kind < 0.85:
            bit = rng.randrange(8 * min(len(b), 44))
            b[bit // 8] ^= 1 << (bit % 8)
        elif kind < 0.93:
            del b[len(b) - rng.randint(1, 64) :]
        else:
            b += bytes(rng.randint(1, 64))
    return bytes(b)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_header_fuzz(tmp_path, monkeypatch, device):
    require_device(device)
    monkeypatch.setattr(base, "available_memory", lambda: 2 << 30)
    rng = random.Random(SEED)
    files = _files(tmp_path)
    outcomes: Counter = Counter()
    path = tmp_path / "fuzzed.bin"
    for case in range(CASES):
        path.write_bytes(_mutate(rng.choice(files), rng))
        try:
            ck = load_checkpoint(path)
            c = ck.config
            backend = create_backend(device, c, ck.weights, max_batch=rng.choice([1, 2]))
            tokens = np.array([rng.randrange(c.vocab_size)], np.int32)
            backend.set_seeds([case + 1])
            for pos in range(min(3, c.seq_len)):
                tokens, _ = backend.step(tokens, pos, rng.choice([0.0, 0.8]), 0.9)
                assert tokens.shape == (1,) and 0 <= tokens[0] < c.vocab_size
            outcomes["ran"] += 1
        except Llama2pyError as e:  # the library's own errors only (a numpy ValueError is a crash here)
            msg = str(e)
            assert msg and "\n" not in msg and len(msg) < 600, f"case {case}: {msg!r}"
            outcomes[type(e).__name__] += 1
    # every case ran or raised one of the clean errors above (anything else fails the test); the
    # fuzzer reaches both sides: files that still load and run, and refused ones
    assert outcomes["ran"] >= 5 and outcomes["CheckpointError"] >= CASES // 3, outcomes
