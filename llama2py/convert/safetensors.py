"""A reader for .safetensors files that needs neither PyTorch nor the `safetensors` package.

Why our own parser rather than `safetensors.safe_open(..., framework="np")`: that interface cannot
return bfloat16 (what most Llama releases are stored in), so bf16 would need this parser anyway,
and one code path for float32/float16/bfloat16 is simpler to trust than two. The format is small:
an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} (offsets
relative to the end of the header), then the raw little-endian tensor bytes. Every header is checked
against the file size when the file is opened, so a truncated shard is refused before any output
is written. Tensors are read in blocks of rows with positioned reads (not a memory map, whose
touched pages would count towards the process's memory until the whole file is unmapped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConvertError
from ..files import PathLike
from ..input_files import parse_json

# dtype names in the header -> how the bytes are read (bf16 as uint16, widened below)
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
_MAX_HEADER = 100 << 20  # the header of a 70B model is well under 1 MiB; larger means garbage


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32: they are the high half of a float32."""
    wide = raw.astype(np.uint32)
    wide <<= 16  # in place: one temporary, not two
    return wide.view(np.float32)


class SafetensorsFile:
    """One .safetensors file: its tensor table, validated against the file size on open."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if n < 2 or n > _MAX_HEADER or 8 + n > size:
                    raise ConvertError(
                        f"{self.path}: not a safetensors file or truncated (header length {n}, file {size:,} bytes)"
                    )
                header = f.read(n)
        except OSError as e:
            raise ConvertError(f"{self.path}: cannot read it ({e.strerror or e})")
        try:
            table = parse_json(header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ConvertError(f"{self.path}: the safetensors header is not valid JSON; the file is damaged")
        if not isinstance(table, dict):
            raise ConvertError(f"{self.path}: the safetensors header is not a JSON object; the file is damaged")
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in table.items():
            if name == "__metadata__":
                continue
            self.tensors[name] = self._entry(name, entry, base, size)
        # the format lays tensors out one after another: two that share bytes mean a damaged (or
        # crafted) header, whose weights would be read twice
        spans = sorted((t.start, t.end, n) for n, t in self.tensors.items() if t.end > t.start)
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                raise ConvertError(
                    f"{self.path}: tensors {first} and {second} overlap in the file; the header is damaged"
                )

    def _entry(self, name: str, entry, base: int, size: int) -> TensorInfo:
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)) and begin <= end
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ConvertError(f"{self.path}: tensor {name}: malformed header entry {entry!r}; the file is damaged")
        if dtype not in DTYPES:
            raise ConvertError(
                f"{self.path}: tensor {name} has dtype {dtype}; llama2py converts F32, F16, BF16 and F64 "
                "weights (an already-quantized model cannot be converted: use the original weights)"
            )
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
            raise ConvertError(
                f"{self.path}: tensor {name}: {end - begin} bytes do not hold a {dtype} tensor of shape {list(shape)}"
            )
        if base + end > size:
            raise ConvertError(
                f"{self.path}: truncated: tensor {name} ends at byte {base + end:,} but the file has "
                f"{size:,} bytes; download it again"
            )
        return TensorInfo(dtype, shape, base + begin, base + end)

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as a new float32 array of its shape."""
        info = self.tensors[name]
        rows = info.shape[0] if info.shape else 1
        return self.read_rows(name, 0, rows).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (along the first axis) of tensor `name` as a new float32 array:
        what a converter streams, so its memory is one block, not one tensor."""
        info = self.tensors[name]
        dtype = DTYPES[info.dtype]
        row_values = math.prod(info.shape[1:])
        raw = np.empty((stop - start) * row_values, dtype)
        try:
            with open(self.path, "rb") as f:
                f.seek(info.start + start * row_values * dtype.itemsize)
                got = f.readinto(memoryview(raw).cast("B"))
        except OSError as e:
            raise ConvertError(f"{self.path}: cannot read tensor {name} ({e.strerror or e})")
        if got != raw.nbytes:
            raise ConvertError(f"{self.path}: truncated while reading tensor {name}; download it again")
        if info.dtype == "BF16":
            out = bf16_to_f32(raw)
        else:
            out = raw.astype(np.float32, copy=False)
        return out.reshape((stop - start, *info.shape[1:]))
