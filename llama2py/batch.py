"""Batched generation with the semantics of Meta's Llama 2 `generate()` / `text_completion()`.

Written once against the backend interface (llama2py.backends.base), so every backend runs the
same loop:

* B prompts (token lists, each starting with BOS as `run` encodes them) share positions: token b,i
  sits at position i in KV-cache slot b. The shortest prompt's prefix, all but its last token, is
  prefilled in one `backend.prefill` call (matrix-matrix over B x T); from there the batch advances
  one position per `backend.step`. While a sequence is still inside its own (longer) prompt, its
  next token is forced (forced[b] >= 0), which does not advance its generator, so sequence b
  samples exactly as it would alone.
* Sequence b samples with generator seed seeds[b] (the public API uses seed + b), so it equals the
  same prompt generated alone with that seed, and for B = 1 it equals `run`'s story.
* A sequence stops at its own stop token (EOS 2, and BOS 1 as in `run`), only among the tokens it
  generated (a prompt is never cut). Output ends before the stop token. The loop ends as soon as
  every sequence is done; trailing finished slots are dropped from the step batch (in power-of-two
  sizes, so a backend that captures per batch size captures only a few).
* Log-probabilities are those of the raw logits (log-softmax, no temperature) at the returned
  token. The first token of a sequence (BOS) has no predecessor, so it has no log-probability:
  as in Meta's code its entry is 0.0 (only visible with echo).
* Stop strings (llama2py.stops) end a sequence through the stop_at callback, which sees each
  sampled token; the caller decodes and matches, this loop only cuts.

Nothing here prints or exits; errors are llama2py.errors.PromptError or ValueError.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .backends.base import Backend, as_token_ids, check_bool, check_int, check_sampling, check_seed
from .errors import PromptError, too_long
from .sampler import log_softmax_rows
from .tokenizer import BOS, EOS

STOP_TOKENS = (EOS, BOS)

# Upper bound on the float32 logits one prefill call returns with logits="all" (echo+logprobs):
# the prefix is prefilled in chunks of positions so that B x T x vocab stays below this.
_ALL_LOGITS_BYTES = 256 << 20


@dataclass
class BatchStats:
    """Timing of one batched generation.

    decode_s counts from the end of the prefill (the start of the step loop) to the end of the
    loop. `generated[b]` is the number of tokens sequence b sampled (its stop token included: it
    cost a step too); `finish_s[b]` is when, within the decode phase, it was done."""

    batch_size: int = 0
    prompt_lens: list[int] = field(default_factory=list)
    prefill_positions: int = 0
    prefill_s: float = 0.0
    steps: int = 0  # backend.step calls
    step_rows: int = 0  # sum of the batch sizes those calls ran (after trimming)
    decode_s: float = 0.0
    generated: list[int] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)
    seed: int = 0  # Llama's methods: the seed of sequence 0 (b: seed + b), a fresh one where none was given

    @property
    def total_generated(self) -> int:
        return int(sum(self.generated))

    @property
    def tok_per_s(self) -> float:
        """Aggregate decode throughput: sampled tokens of all sequences per second."""
        return self.total_generated / self.decode_s if self.decode_s > 0 else 0.0

    def seq_tok_per_s(self, b: int) -> float:
        """Sequence b's own rate: its sampled tokens over the time until it was done."""
        s = self.finish_s[b]
        return self.generated[b] / s if s > 0 else 0.0


@dataclass
class BatchResult:
    """Per sequence, the kept tokens from position 0 (prompt included) and their log-probs."""

    tokens: list[list[int]]
    logprobs: Optional[list[list[float]]]
    prompt_lens: list[int]
    stopped: list[bool]  # True where generation ended at a stop token
    stats: BatchStats


def check_batch(
    prompt_tokens: Sequence[Sequence[int]], max_batch: int, seq_len: int, vocab_size: int
) -> list[list[int]]:
    """Refuse a batch that the backend cannot run, with a message that says what to change;
    return the prompts as lists of Python ints (ids are integers: floats and bools are refused)."""
    if isinstance(prompt_tokens, (str, bytes)) or not hasattr(prompt_tokens, "__len__"):
        raise TypeError("prompts must be a list of token-id lists; encode text with the tokenizer first")
    if isinstance(prompt_tokens, (dict, set, frozenset)):  # no order, or keys for prompts
        raise TypeError(f"prompts must be a list of token-id lists, got a {type(prompt_tokens).__name__}")
    n = len(prompt_tokens)
    if n == 0:
        raise PromptError("no prompts given: a batch needs at least one prompt")
    if any(isinstance(p, (int, np.integer)) for p in prompt_tokens):  # one prompt, not wrapped
        raise TypeError(
            "prompts must be a list of token-id lists, one list per prompt, got a flat list of ids; "
            "for one prompt pass [ids]"
        )
    if n > max_batch:
        raise PromptError(
            f"a batch of {n} prompts, but the model was loaded with max_batch_size={max_batch}; "
            f"load it with max_batch_size={n} (or more), or split the prompts"
        )
    prompts = []
    for b, p in enumerate(prompt_tokens):
        try:
            ids = as_token_ids(p, vocab_size, f"prompt {b}")
        except (TypeError, ValueError) as e:
            raise PromptError(f"{e} (the vocabulary is 0..{vocab_size - 1})") from None
        if ids.ndim != 1:
            raise PromptError(f"prompt {b} must be a flat list of token ids, got shape {ids.shape}")
        if ids.size == 0:
            raise PromptError(f"prompt {b} is empty: every prompt needs at least one token (BOS, 1)")
        if ids.size > seq_len:
            raise too_long(f"prompt {b} is {ids.size} tokens", seq_len)
        prompts.append(ids.tolist())
    return prompts


def total_len(prompt_lens: Sequence[int], max_gen_len: int, seq_len: int) -> int:
    """Meta's rule: the batch's token length, min(seq_len, max_gen_len + longest prompt)."""
    return min(seq_len, max_gen_len + max(prompt_lens))


def _bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n, at most cap (the step batch after dropping finished tail slots)."""
    p = 1
    while p < n:
        p *= 2
    return min(p, cap)


def run_batch(
    backend: Backend,
    prompt_tokens: Sequence[Sequence[int]],
    ends: Sequence[int],
    temperature: float,
    top_p: float,
    seeds: Sequence[int],
    logprobs: bool = False,
    prompt_logprobs: bool = False,
    stop_tokens: Sequence[int] = STOP_TOKENS,
    stats: Optional[BatchStats] = None,
    stop_at: Optional[Callable[[int, int], Optional[int]]] = None,
    on_done: Optional[Callable[[int, list[int]], None]] = None,
) -> BatchResult:
    """The batched loop. Sequence b keeps token indices 0..ends[b]-1 at most (cut earlier at a
    generated stop token); positions ends[b]-1 and later are never fed for it. ends[b] may be up to
    seq_len + 1 (the last position's logits give one more token, as `run` does).

    logprobs: also return log-probs of the generated tokens; prompt_logprobs: of the prompt tokens
    too (needs the prefill's logits for every position). Every argument is checked here, once.

    stop_at(b, token) is called with each token sequence b samples (stop tokens excepted), in
    order; it returns None to go on, or how many of b's generated tokens to keep (stop strings,
    llama2py.stops): b then ends there. on_done(b, tokens) is called once per sequence as soon as
    it is finished, with its kept tokens (the CLI prints each story then)."""
    c = backend.config
    prompt_tokens = check_batch(prompt_tokens, backend.max_batch, c.seq_len, c.vocab_size)
    temperature, top_p = check_sampling(temperature, top_p)
    B = len(prompt_tokens)
    if len(ends) != B or len(seeds) != B:
        raise ValueError(f"{B} prompts need {B} ends and {B} seeds, got {len(ends)} and {len(seeds)}")
    ends = [check_int("ends[b]", e, 1, c.seq_len + 1) for e in ends]
    seeds = [check_seed("seeds[b]", s) for s in seeds]
    return _run_batch(
        backend,
        prompt_tokens,
        ends,
        temperature,
        top_p,
        seeds,
        logprobs,
        prompt_logprobs,
        stop_tokens,
        stats,
        stop_at,
        on_done,
    )


def _run_batch(
    backend: Backend,
    prompt_tokens: Sequence[Sequence[int]],
    ends: list[int],
    temperature: float,
    top_p: float,
    seeds: list[int],
    logprobs: bool,
    prompt_logprobs: bool,
    stop_tokens: Sequence[int],
    stats: Optional[BatchStats],
    stop_at: Optional[Callable[[int, int], Optional[int]]] = None,
    on_done: Optional[Callable[[int, list[int]], None]] = None,
) -> BatchResult:
    """run_batch with arguments already checked."""
    c = backend.config
    B = len(prompt_tokens)
    lens = np.array([len(p) for p in prompt_tokens], np.int64)
    end = np.array(ends, np.int64)
    L = int(max(end.max(), lens.max()))
    tokens = np.zeros((B, L), np.int32)  # (B, L); 0 is a valid id for unused cells
    for b, p in enumerate(prompt_tokens):
        tokens[b, : len(p)] = p
    # (B, L) float32, as steps return them: a prompt token's value must not depend on whether the
    # prefill (float64, log_softmax_rows) or a forcing step (float32) produced it, which the batch decides
    lp = np.zeros((B, L), np.float32) if logprobs else None
    stats = stats if stats is not None else BatchStats()
    stats.batch_size, stats.prompt_lens = B, [int(n) for n in lens]
    generated = np.zeros(B, np.int64)
    finish_s = np.zeros(B, np.float64)
    stop_set = np.array(sorted(set(int(t) for t in stop_tokens)), np.int32)

    backend.set_seeds([int(s) for s in seeds])
    # Positions 0..k-1 only fill the cache (and, for prompt log-probs, give the logits of tokens
    # 1..k); the step at position k predicts token k+1, the first one that may be sampled.
    min_len = int(lens.min())
    k = min(min_len - 1, int(end.max()) - 1)
    t0 = time.perf_counter()
    if k > 0:
        if logprobs and prompt_logprobs:
            chunk = max(1, _ALL_LOGITS_BYTES // (B * c.vocab_size * 4))
            for a in range(0, k, chunk):
                e = min(k, a + chunk)
                out = backend.prefill(tokens[:, a:e], a, logits="all")  # (B, e-a, vocab)
                lp[:, a + 1 : e + 1] = log_softmax_rows(out, tokens[:, a + 1 : e + 1])
        else:
            backend.prefill(tokens[:, :k], 0, logits="none")
    t1 = time.perf_counter()
    stats.prefill_positions, stats.prefill_s = max(k, 0), t1 - t0

    stopped = np.zeros(B, bool)
    cut = end.copy()  # exclusive end of the kept tokens
    done = end <= k + 1  # nothing left to produce
    if on_done is not None:
        for b in np.nonzero(done)[0]:
            on_done(int(b), tokens[b, : cut[b]].tolist())
    forced = np.full(B, -1, np.int32)
    pos = k
    while pos < L - 1 and not done.all():
        active = np.nonzero(~done)[0]
        Bp = _bucket(int(active[-1]) + 1, B)
        nxt_idx = pos + 1
        f = forced[:Bp]
        f[:] = -1
        in_prompt = nxt_idx < lens[:Bp]
        f[in_prompt] = tokens[:Bp][in_prompt, nxt_idx]
        f[done[:Bp]] = 0  # finished slots: no sampling, no generator draw
        any_forced = bool(in_prompt.any() or done[:Bp].any())  # else all -1: no forced array to check
        nxt, lps = backend.step(
            tokens[:Bp, pos], pos, temperature, top_p, f if any_forced else None, want_logprobs=logprobs
        )
        now = time.perf_counter() - t1
        stats.steps += 1
        stats.step_rows += Bp
        live = ~done[:Bp]
        tokens[:Bp][live, nxt_idx] = nxt[live]
        if logprobs:
            lp[:Bp][live, nxt_idx] = lps[live]
        sampled = live & ~in_prompt
        generated[:Bp] += sampled
        hit = sampled & np.isin(nxt, stop_set)
        stopped[:Bp] |= hit
        cut[:Bp] = np.where(hit, nxt_idx, cut[:Bp])
        if stop_at is not None:
            for b in np.nonzero(sampled & ~hit)[0]:
                keep = stop_at(int(b), int(nxt[b]))
                if keep is not None:  # a stop string: b keeps `keep` generated tokens
                    hit[b] = stopped[b] = True
                    cut[b] = lens[b] + keep
        finished = live & (hit | (nxt_idx + 1 >= end[:Bp]))
        finish_s[:Bp][finished] = now
        done[:Bp] |= finished
        if on_done is not None:
            for b in np.nonzero(finished)[0]:
                on_done(int(b), tokens[b, : cut[b]].tolist())
        pos += 1
    stats.decode_s = time.perf_counter() - t1
    stats.generated, stats.finish_s = generated.tolist(), finish_s.tolist()

    out_tokens = [tokens[b, : cut[b]].tolist() for b in range(B)]
    out_lp = [lp[b, : cut[b]].tolist() for b in range(B)] if logprobs else None
    return BatchResult(out_tokens, out_lp, [int(n) for n in lens], stopped.tolist(), stats)


def generate(
    backend: Backend,
    prompt_tokens: Sequence[Sequence[int]],
    max_gen_len: int,
    temperature: float,
    top_p: float,
    seeds: Sequence[int],
    logprobs: bool = False,
    echo: bool = False,
    stats: Optional[BatchStats] = None,
    stop_at: Optional[Callable[[int, int], Optional[int]]] = None,
) -> tuple[list[list[int]], Optional[list[list[float]]]]:
    """Meta's generate(): returns (tokens, logprobs) per sequence, the generated tokens only (or,
    with echo, prompt + generated), cut at max_gen_len and before the stop token. Every argument
    is checked here, once."""
    max_gen_len = check_int("max_gen_len", max_gen_len, 0)
    logprobs, echo = check_bool("logprobs", logprobs), check_bool("echo", echo)
    c = backend.config
    prompt_tokens = check_batch(prompt_tokens, backend.max_batch, c.seq_len, c.vocab_size)
    temperature, top_p = check_sampling(temperature, top_p)
    if top_p <= 0.0:  # Meta's sample_top_p keeps only the most likely token (run's -p 0: no top-p)
        temperature = 0.0
    B = len(prompt_tokens)
    if len(seeds) != B:
        raise ValueError(f"{B} prompts need {B} seeds, got {len(seeds)}")
    seeds = [check_seed("seeds[b]", s) for s in seeds]
    lens = [len(p) for p in prompt_tokens]
    tl = total_len(lens, max_gen_len, c.seq_len)
    ends = [min(n + max_gen_len, tl) for n in lens]
    res = _run_batch(
        backend, prompt_tokens, ends, temperature, top_p, seeds, logprobs, echo, STOP_TOKENS, stats, stop_at
    )
    starts = [0 if echo else n for n in lens]
    toks = [t[s:] for t, s in zip(res.tokens, starts)]
    lps = [p[s:] for p, s in zip(res.logprobs, starts)] if logprobs else None
    return toks, lps
