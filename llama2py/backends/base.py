"""The one backend interface every implementation (numpy, cpu, cuda) provides.

A backend owns its copy of the weights, its KV cache and its buffers, and never hands device
arrays to callers: inputs and outputs are host numpy arrays. It runs B sequences (B <= max_batch)
at one shared position; sequence b always uses KV cache slot b. The generation loop lives in
llama2py.generate and is written once against this interface.

Validation lives here, once: the public forward / prefill / step / set_seeds / profile check every
argument (token ids as int32 in range, batch size, positions, logits mode, temperature and top_p in
float32, forced ids) and then call the backend's _forward / _prefill / _step / _set_seeds /
_profile with arguments that are known to be good. Backends do not validate again. The
constructor checks that the KV cache and buffers fit the memory that is available before a
backend allocates anything.

A backend holds one generation's state (KV cache, generators, buffers): it is not thread-safe.
Use one model per thread (each Llama.load has its own backend); batch sequences instead of threads.
"""

from __future__ import annotations

import math
import numbers
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np

from ..checkpoint import WEIGHT_TYPES, Config, Weights, q8_group_size
from ..errors import CLOSED, CheckpointError, ClosedError, NonFiniteError, ResourceError
from ..sampler import SEED_MAX
from ..threads import max_threads, usable_cores

PROFILE_KEYS = ("embedding", "rmsnorm", "matmul", "rope", "attention", "swiglu", "residual", "classifier", "sampling")
LOGITS_MODES = ("last", "all", "none")
_F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: below it logits / t overflows


class Backend(ABC):
    name: str = "?"
    # calls of each kind (prefill, decode step) before this backend's timings settle: `bench` warms
    # up with that many; a backend that tunes itself on its first calls says more
    warmup_calls: int = 1
    # the weights it computes with: "f32", or "q8_0" where it keeps int8 (cuda dequantizes at load)
    weight_type: str = "f32"

    def __init__(self, config: Config, weights: Weights, max_batch: int = 1, threads: Optional[int] = None):
        max_batch = check_int("max_batch", max_batch, 1)
        if threads is not None:
            threads = check_threads(threads)
        self.config = config
        self.max_batch = max_batch
        self.threads = threads
        self._sampling_key: tuple = ()  # the last (temperature, top_p) given to step() and
        self._sampling = (0.0, 0.0)  # its checked float32 values
        self._closed = False  # calls refused (refuse_calls, close)
        self._released = False  # memory freed (close)
        check_memory(lambda cfg, b: self.host_bytes(cfg, b, threads), config, max_batch, self.memory_hints())

    # -- memory ---------------------------------------------------------------------------------
    def host_bytes(self, config: Config, max_batch: int, threads: Optional[int]) -> dict[str, int]:
        """Host memory this backend will allocate beyond the weights it is given, by item (checked
        against the available memory before anything is allocated). The default: a float32 KV
        cache and activation buffers for max_batch rows; a backend that keeps them elsewhere
        (cuda) overrides it."""
        return host_buffers(config, max_batch, threads)

    def memory_hints(self) -> list[str]:
        """Ways to need less memory beyond a smaller batch or context, for the refusal's message
        (called before the constructor's memory check)."""
        return []

    # -- the model (validated here, computed by the backend) ------------------------------------
    def forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """One position for a batch: tokens (B,) int32 at position pos.

        Writes the KV cache rows at pos for slots 0..B-1; returns logits (B, vocab) float32."""
        t, pos = self.check_tokens(tokens, pos, 1)
        return self._forward(t, pos)

    def prefill(self, tokens: np.ndarray, pos: int, logits: str = "last") -> Optional[np.ndarray]:
        """A run of positions at once: tokens (B, T) int32 at positions pos..pos+T-1.

        Matrix-matrix work rather than T single steps; fills the KV cache exactly as T forward()
        calls would. logits: "last" -> (B, vocab) at the last position, "all" -> (B, T, vocab),
        "none" -> None (only the cache is wanted)."""
        if not isinstance(logits, str) or logits not in LOGITS_MODES:
            raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        t, pos = self.check_tokens(tokens, pos, 2)
        return self._prefill(t, pos, logits)

    def step(
        self,
        tokens: np.ndarray,
        pos: int,
        temperature: float,
        top_p: float,
        forced: Optional[np.ndarray] = None,
        want_logprobs: bool = False,
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """forward() plus sampling in one call (one extension call / graph replay per token).

        tokens (B,) int32 at position pos. Returns next ids (B,) int32 and, with want_logprobs,
        log softmax(logits)[next] (B,) float32 of the raw (untempered) logits. Where forced[b] >= 0
        the next id is forced[b] and slot b's generator is not advanced (prompt tokens); forced
        entries < 0 mean "sample". temperature and top_p are used as float32 (as the kernels and
        run do): a temperature that is 0 in float32 is greedy.

        Raises NonFiniteError when the logits of a sampled token are not finite (NaN or Inf in
        the checkpoint's weights, or activations that overflow float32)."""
        t, pos = self.check_tokens(tokens, pos, 1)
        B = t.shape[0]
        key = (temperature, top_p)
        if type(temperature) is float and type(top_p) is float and key == self._sampling_key:
            temperature, top_p = self._sampling  # the same pair as the last step: already checked
        else:
            temperature, top_p = check_sampling(temperature, top_p)
            self._sampling_key, self._sampling = key, (temperature, top_p)
        f, forced_ids = (None, None) if forced is None else self.check_forced(forced, B)
        nxt, lp = self._step(t, pos, temperature, top_p, f, bool(want_logprobs))
        # Cheap: the logit (and log-prob) of each sampled id, not a scan of every logit. NaN/Inf
        # weights make the whole row non-finite, and then the chosen id's logit is too.
        rows = range(B) if forced_ids is None else [b for b in range(B) if forced_ids[b] < 0]
        if rows:
            ids = nxt.tolist()
            V = self.config.vocab_size
            bad = any(not 0 <= ids[b] < V for b in rows)
            if not bad and lp is not None:
                lps = lp.tolist()
                bad = not all(math.isfinite(lps[b]) for b in rows)
            if not bad:
                chosen = self._chosen_logits(ids, rows)
                bad = chosen is not None and not all(math.isfinite(x) for x in chosen)
            if bad:
                raise non_finite_error(pos, temperature)
        return nxt, lp

    def set_seeds(self, seeds: Sequence[int]) -> None:
        """Reset the run-compatible generator of each slot b to seeds[b] (len(seeds) <= max_batch);
        seeds are integers in 0..2**64-1 (check_seed)."""
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__"):
            raise TypeError(f"seeds must be a sequence of integers, got {type(seeds).__name__}")
        self._check_open()
        if len(seeds) > self.max_batch:
            raise ValueError(f"{len(seeds)} seeds for a backend of max_batch {self.max_batch}")
        self._set_seeds([check_seed("seed", s) for s in seeds])

    def profile(self, tokens: np.ndarray, pos: int, temperature: float = 0.0, top_p: float = 0.9) -> dict[str, float]:
        """Seconds spent per kernel category in one decode step at pos for tokens (B,), sampled
        as step() samples with (temperature, top_p): keys from PROFILE_KEYS (matmul = the layers'
        projections; classifier separate). The step writes the KV cache at pos as step() would;
        the generators are left as they were. For `bench`."""
        t, pos = self.check_tokens(tokens, pos, 1)
        temperature, top_p = check_sampling(temperature, top_p)
        return self._profile(t, pos, temperature, top_p)

    # -- what a backend implements (arguments already validated) --------------------------------
    @abstractmethod
    def _forward(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        """tokens (B,) int32 C-contiguous, in range; pos..pos inside the context."""

    @abstractmethod
    def _prefill(self, tokens: np.ndarray, pos: int, logits: str) -> Optional[np.ndarray]:
        """tokens (B, T) int32 C-contiguous, in range; logits one of LOGITS_MODES."""

    @abstractmethod
    def _step(
        self,
        tokens: np.ndarray,
        pos: int,
        temperature: float,
        top_p: float,
        forced: Optional[np.ndarray],
        want_logprobs: bool,
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """tokens (B,) int32; temperature >= 0 and top_p in [0, 1], both exact float32 values;
        forced None or (B,) int32 C-contiguous with entries < vocab (< 0: sample)."""

    @abstractmethod
    def _set_seeds(self, seeds: list[int]) -> None:
        """seeds: Python ints in 0..2**64-1, len <= max_batch."""

    def _profile(self, tokens: np.ndarray, pos: int, temperature: float, top_p: float) -> dict[str, float]:
        raise NotImplementedError(f"{self.name} backend has no per-kernel profile")

    def _chosen_logits(self, ids: list[int], rows: Sequence[int]) -> Optional[list[float]]:
        """The logit of ids[b] in row b of the last _step's logits, for b in rows (ids in range),
        when the backend has them at little cost (step() refuses non-finite ones); else None."""
        return None

    # -- argument checks (the one home of each) --------------------------------------------------
    def check_tokens(self, tokens, pos, ndim: int) -> tuple[np.ndarray, int]:
        """Token block (B,) or (B, T) and its start position -> (int32 C-contiguous array, int pos).
        Every computing call starts here, so this is also where a closed backend refuses."""
        self._check_open()
        if type(tokens) is np.ndarray and tokens.dtype == np.int32 and 0 < tokens.size <= 64:
            # the per-token case (a few int32 ids): range-checked in Python, no numpy reductions
            ids = tokens.ravel().tolist()
            if min(ids) < 0 or max(ids) >= self.config.vocab_size:
                raise ValueError(f"tokens must be in 0..{self.config.vocab_size - 1}, got {min(ids)}..{max(ids)}")
            t = np.ascontiguousarray(tokens)
        else:
            t = as_token_ids(tokens, self.config.vocab_size, "tokens")
        if t.ndim != ndim:
            raise ValueError(f"tokens must have {ndim} dimension(s), got shape {t.shape}")
        B = t.shape[0]
        T = t.shape[1] if ndim == 2 else 1
        if not 1 <= B <= self.max_batch:
            raise ValueError(f"batch of {B} sequences, this backend was made for 1..{self.max_batch}")
        pos = check_int("pos", pos, 0)
        if T < 1 or pos + T > self.config.seq_len:
            raise ValueError(f"positions {pos}..{pos + T - 1} are outside the context 0..{self.config.seq_len - 1}")
        return t, pos

    def check_forced(self, forced, B: int) -> tuple[np.ndarray, list[int]]:
        """forced (B,) integer ids < vocab, or < 0 for "sample" -> (int32 C-contiguous, as ints)."""
        f = np.asarray(forced)
        if f.dtype == np.bool_ or f.dtype.kind not in "iu":
            raise ValueError(f"forced must hold integer token ids, got dtype {f.dtype}")
        if f.shape != (B,):
            raise ValueError(f"forced must have shape ({B},), got {f.shape}")
        ids = f.tolist()
        if max(ids) >= self.config.vocab_size or min(ids) < -(1 << 31):
            raise ValueError(
                f"forced token ids must be in -2**31..{self.config.vocab_size - 1} (negative: sample), "
                f"got {min(ids)}..{max(ids)}"
            )
        return np.ascontiguousarray(f, np.int32), ids

    # -- reporting ------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.name

    def memory_bytes(self) -> int:
        """Bytes this backend holds for weights, cache and buffers (device memory for cuda)."""
        return 0

    def close(self) -> None:
        """Release the memory now (garbage collection does it too); later calls raise. A stream
        still running on the backend then fails with that error instead of reading freed memory
        (the cpu Model borrows weights that Llama.close() unmaps)."""
        self._closed = True
        if not self._released:
            self._released = True
            self._release()

    def refuse_calls(self) -> None:
        """Later calls raise the closed error; the memory stays until close() (a call running in
        another thread still reads it)."""
        self._closed = True

    def _release(self) -> None:
        """What close() frees: buffers, device memory."""

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(CLOSED)


# -- checks shared with the layers above (model, batch, generate) -------------------------------------
def check_bool(name: str, value) -> bool:
    """A flag given as True or False (numpy's too), never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int(name: str, value, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An integer (Python or numpy; not bool, not float) in [lo, hi] -> int."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"in {lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ValueError(f"{name} must be {span}, got {v}")
    return v


def check_seed(name: str, value) -> int:
    """A seed: an integer in 0..SEED_MAX -> int. Anything else is refused rather than wrapped
    (2**64 would become 0); the one check of every seed the library takes."""
    return check_int(name, value, 0, SEED_MAX)


def as_token_ids(tokens, vocab_size: int, what: str = "token ids") -> np.ndarray:
    """Token ids (any nesting of integers) -> an int32 C-contiguous array, every id in 0..vocab-1.
    Floats, bools, strings and ids outside the vocabulary are refused, never cast."""
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{what} must be integer token ids, got {type(tokens).__name__}; encode text first")
    if tokens is None:
        raise TypeError(f"{what} must be integer token ids, got None")
    try:
        a = np.asarray(tokens)
    except ValueError:  # ragged nesting (numpy's own words name its internals)
        raise ValueError(f"{what} must be a rectangular array of integer ids, got lists of unequal nesting") from None
    if a.dtype == np.bool_ or a.dtype.kind not in "iu":
        if a.dtype == object or a.size:
            raise ValueError(
                f"{what} must be integer ids in 0..{vocab_size - 1}, got {_describe_values(a)}; no silent casts"
            )
        a = a.astype(np.int32)  # an empty list: no ids to check
    if not isinstance(tokens, np.ndarray) and a.size and _holds_bool(tokens):
        raise ValueError(f"{what} must be integer ids in 0..{vocab_size - 1}, got a bool; no silent casts")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{what} must be in 0..{vocab_size - 1}, got {lo}..{hi}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _holds_bool(items) -> bool:
    """Whether a (nested) list of integers holds a bool (numpy makes True an integer 1)."""
    if isinstance(items, (bool, np.bool_)):
        return True
    if isinstance(items, (list, tuple)):
        return any(_holds_bool(x) for x in items)
    return False


def _describe_values(a: np.ndarray) -> str:
    if a.dtype == object:
        none = object()  # (not None as next()'s default: None itself may be the bad value)
        bad = next((x for x in a.reshape(-1) if not isinstance(x, numbers.Integral) or isinstance(x, bool)), none)
        if bad is none:
            return "ids beyond 64 bits"
        return f"{bad!r} ({type(bad).__name__})"
    return f"dtype {a.dtype} (e.g. {a.reshape(-1)[0]!r})"


def check_threads(threads) -> int:
    """A thread count every backend takes: 1..max_threads() (each thread gets its own buffers, so
    an absurd count would only exhaust memory; checked before the memory check blames the context)."""
    threads = check_int("threads", threads, 1)
    if threads > max_threads():
        raise ValueError(
            f"threads={threads} is more than this machine can use: at most {max_threads()} here "
            f"({usable_cores()} usable cores; the default uses every one)"
        )
    return threads


def check_sampling(temperature, top_p) -> tuple[float, float]:
    """temperature >= 0 and top_p in [0, 1], finite, as the float32 values the kernels use.

    A temperature that rounds to 0 in float32 is greedy (as in run, whose temperature is a float).
    A positive one below float32's smallest normal number (1.2e-38) is refused: logits /
    temperature would overflow to Inf and sampling would be noise (run samples noise there)."""
    t = _real("temperature", temperature)
    p = _real("top_p", top_p)
    if not (math.isfinite(t) and t >= 0.0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    t32 = float(np.float32(t)) if t < 3.4e38 else math.inf
    if math.isinf(t32):
        raise ValueError(f"temperature {temperature} does not fit in float32 (max 3.4e38)")
    if 0.0 < t32 < _F32_TINY:
        raise ValueError(
            f"temperature {temperature} is below float32's smallest normal number ({_F32_TINY:.3g}): "
            "logits / temperature would overflow; use 0 for greedy decoding"
        )
    return t32, float(np.float32(p))


def _real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{name} must be a finite number, got an integer of {int(value).bit_length()} bits") from None


def non_finite_error(pos: int, temperature: float) -> NonFiniteError:
    hint = ""
    if 0.0 < temperature < 1e-3:
        hint = f", or the temperature {temperature:g} is so small that logits / temperature overflows (use 0)"
    return NonFiniteError(
        f"the model produced non-finite logits (NaN or Inf) at position {pos}: the checkpoint's "
        f"weights most likely hold NaN/Inf values or values so large that float32 overflows{hint}; "
        "check the file (re-download or re-export it)"
    )


# -- memory ----------------------------------------------------------------------------------------------
def host_buffers(config: Config, max_batch: int, threads: Optional[int]) -> dict[str, int]:
    """What a host backend (cpu, numpy) allocates besides the weights, by item: a float32 KV cache
    and activation buffers for max_batch rows."""
    return {"KV cache": config.kv_cache_bytes(max_batch), "buffers": buffer_bytes(config, max_batch, threads)}


def buffer_bytes(config: Config, max_batch: int, threads: Optional[int]) -> int:
    """Activation and sampling buffers of a host backend, generously: rows = max(max_batch, 64)
    (prefill chunks), per-thread attention scores and per-slot sampling scratch (vocab floats x3)."""
    c = config
    n_threads = threads or usable_cores()  # OpenMP's default team
    rows = max(max_batch, 64)
    per_row = 4 * (8 * c.dim + 2 * c.kv_dim + 2 * c.hidden_dim + c.vocab_size)
    return (
        rows * per_row
        + 4 * n_threads * (rows * c.dim + c.n_heads * c.seq_len)
        + 4 * c.seq_len * c.head_size
        + 16 * max_batch * c.vocab_size
    )


def available_memory() -> Optional[int]:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def check_memory(
    parts_of: Callable[[Config, int], dict[str, int]],
    config: Config,
    max_batch: int,
    hints: Sequence[str] = (),
) -> None:
    """Refuse (ResourceError) what would not fit the available memory. parts_of(config, b): the
    bytes a backend of max_batch b allocates for that config, by item (Backend.host_bytes). The
    message names both figures and what would make it fit, each figure computed: the largest batch
    (max_batch_size / --max-batch), the longest context (context= / --context), both for one
    sequence where neither alone does, then the backend's own hints."""
    parts = parts_of(config, max_batch)
    need = sum(parts.values())
    avail = available_memory()
    if avail is None or need <= avail:
        return

    def fits(context: int, batch: int) -> bool:
        return sum(parts_of(config.capped(context), batch).values()) <= avail

    batch = _largest(lambda b: fits(config.seq_len, b), max_batch - 1)
    context = _largest(lambda t: fits(t, max_batch), config.seq_len - 1)
    fix = []
    if batch:
        fix.append(f"a smaller batch (max_batch_size / --max-batch {batch}{' or less' if batch > 1 else ''})")
    if context:
        fix.append(f"a shorter context (context= / --context {context} or less)")
    if not batch and not context and max_batch > 1:
        one = _largest(lambda t: fits(t, 1), config.seq_len - 1)
        if one:
            fix.append(
                f"one sequence (max_batch_size=1 / --max-batch 1) with a context of {one} or less (context= / --context)"
            )
    fix += hints
    detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v)
    advice = f"; use {' or '.join(fix)}" if fix else "; even one sequence of one position does not fit"
    raise ResourceError(
        f"this model needs {_gib(need)} of memory ({detail} for {max_batch} sequence(s) of "
        f"{config.seq_len} positions) but only {_gib(avail)} is available{advice}"
    )


def check_conversion_memory(
    config: Config, weights: Weights, weight_type: Optional[str], path, also: dict[str, int]
) -> None:
    """Refuse (ResourceError) converting the weights at load time (Llama.load's weights=) into
    arrays that would not fit the available memory beside `also` (what the backend will allocate,
    by item), before converting anything."""
    if weight_type not in WEIGHT_TYPES or weight_type == weights.weight_type:
        return  # nothing to convert (or a bad value, which convert_weights names)
    try:
        group_size = q8_group_size(weights.group_size, config.dim)
    except CheckpointError:
        return  # no group size fits: convert_weights refuses it, naming the file
    converted = config.weight_bytes(weight_type, group_size)
    need = converted + sum(also.values())
    avail = available_memory()
    if avail is None or need <= avail:
        return
    if weight_type == "f32":
        advice = "its own int8 weights (no weights= / --weights)"
    else:
        advice = (
            "its float32 weights (no weights= / --weights), or a v2 file written once with `llama2py quantize "
            "IN.bin OUT.bin`, whose int8 weights are read from the file rather than held in memory"
        )
    if any(also.values()):
        advice += ", or a smaller batch or a shorter context"
    besides = "".join(f", {k} {_gib(v)}" for k, v in also.items() if v)
    raise ResourceError(
        f"checkpoint {path}: its weights as {weight_type} need {_gib(converted)} of memory{besides} "
        + (f"({_gib(need)} in all) " if besides else "")
        + f"but only {_gib(avail)} is available; use {advice}"
    )


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in 1..upper with fits(n), or 0 if none (fits(n) implies fits(m) for m < n)."""
    lo, hi = 0, max(upper, 0)  # lo fits (0: nothing), the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
