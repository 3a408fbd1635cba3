"""The Python API: Llama.load(...) then .run / .stream / .logits, and the batched .generate /
.text_completion (Meta's Llama 2 semantics, llama2py.batch)."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .backends import create_backend
from .backends.base import Backend
from .checkpoint import Checkpoint, Config, convert_weights, load_checkpoint
from .errors import PromptError, TokenizerError
from .generate import RunStats, check_prompt, run_loop
from .sampler import resolve_seed
from .tokenizer import BOS, Tokenizer


@dataclass
class RunResult:
    text: str  # what run prints (without the final newline)
    tokens: list[int]  # prompt tokens (with BOS) followed by the generated ones
    tok_per_s: float  # run's figure: positions after the first call / seconds since then
    stats: RunStats


def find_tokenizer(checkpoint: Path, vocab_size: int) -> Path:
    """The tokenizer to use when none is given: tok{vocab}.bin or tokenizer.bin beside the
    checkpoint, then in the models folder (llama2.c's naming)."""
    from .download import default_models_dir  # local import: download is optional machinery

    names = ([f"tok{vocab_size}.bin"] if vocab_size != 32000 else []) + ["tokenizer.bin"]
    folders = [checkpoint.parent, default_models_dir()]
    for folder in folders:
        for name in names:
            if (folder / name).exists():
                return folder / name
    raise TokenizerError(
        f"no tokenizer given and none of {', '.join(names)} found beside {checkpoint} or in "
        f"{folders[-1]}; pass one with -z (the Llama 2 tokenizer.bin: `llama2py download tokenizer`)"
    )


def validate_sampling(temperature: float, top_p: float, steps: int) -> None:
    if not temperature >= 0.0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


class Llama:
    """A loaded checkpoint, its tokenizer and a backend ready to run it."""

    def __init__(
        self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: Backend, load_seconds: float, notes: list[str]
    ):
        self.checkpoint = checkpoint
        self.config: Config = checkpoint.config
        self.tokenizer = tokenizer
        self.backend = backend
        self.device = backend.name
        self.load_seconds = load_seconds
        self.notes = notes  # e.g. why device="auto" fell back to the cpu

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        tokenizer: Optional[str | os.PathLike] = None,
        device: str = "cpu",
        threads: Optional[int] = None,
        max_batch_size: int = 1,
        weights: Optional[str] = None,
    ) -> Llama:
        """weights: "f32" or "q8_0" (int8, runq's arithmetic), or None for the file's own type (a v2
        file int8, others float32); a float file is quantized at load time as llama2.c's export
        would (group size 64, halved until it divides dim)."""
        t0 = time.perf_counter()
        ck = load_checkpoint(checkpoint)
        ck.weights = convert_weights(ck.weights, ck.config, weights)
        tok_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(ck.path, ck.config.vocab_size)
        tok = Tokenizer(tok_path, ck.config.vocab_size)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        notes: list[str] = []
        backend = create_backend(device, ck.config, ck.weights, max_batch_size, threads, notes)
        return cls(ck, tok, backend, time.perf_counter() - t0, notes)

    # -- run's semantics --------------------------------------------------------------------------
    def _start(
        self,
        prompt: str | bytes,
        steps: int,
        temperature: float,
        top_p: float,
        seed: Optional[int],
        stats: Optional[RunStats] = None,
    ):
        """Validate eagerly (so errors surface before any output), then return the piece iterator."""
        validate_sampling(temperature, top_p, steps)
        tokens = self.tokenizer.encode(prompt, bos=True)
        check_prompt(tokens, self.config.seq_len)
        stats = stats if stats is not None else RunStats()
        pieces = run_loop(self.backend, self.tokenizer, tokens, steps, temperature, top_p, resolve_seed(seed), stats)
        return pieces, stats

    def stream_bytes(
        self,
        prompt: str | bytes = "",
        steps: int = 256,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
        stats: Optional[RunStats] = None,
    ) -> Iterator[bytes]:
        """The raw bytes run prints, piece by piece (the CLI writes these as they come)."""
        pieces, _ = self._start(prompt, steps, temperature, top_p, seed, stats)
        return pieces

    def stream(
        self,
        prompt: str = "",
        steps: int = 256,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
    ) -> Iterator[str]:
        """Yield the story as text pieces while it is generated (whole UTF-8 characters only).
        Bad arguments raise here, before anything is generated."""
        pieces, _ = self._start(prompt, steps, temperature, top_p, seed)
        return _utf8_pieces(pieces)

    def run(
        self,
        prompt: str = "",
        steps: int = 256,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
    ) -> RunResult:
        """Tell a story as llama2.c's run would: returns its text, token ids and tok/s."""
        pieces, stats = self._start(prompt, steps, temperature, top_p, seed)
        text = b"".join(pieces).decode("utf-8", errors="replace")
        return RunResult(text, stats.tokens, stats.tok_per_s, stats)

    # -- batched generation, Meta's Llama 2 generate() / text_completion() (llama2py.batch) -------------
    def generate(
        self,
        prompt_tokens: list[list[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
        seed: Optional[int] = None,
        stats=None,
    ) -> tuple[list[list[int]], Optional[list[list[float]]]]:
        """Complete a batch of token prompts (each starting with BOS) at shared positions.

        Returns (tokens, logprobs): per sequence the generated tokens (prompt + generated with echo),
        at most max_gen_len of them, ending before the first EOS/BOS it generated; with logprobs the
        log-softmax of the raw logits at each returned token (the first prompt token has none: 0.0,
        as in Meta's code). Sequence b samples with seed + b (seed None or 0: the current time), so
        it equals that prompt generated alone with seed + b. stats: an optional batch.BatchStats
        to fill with timings."""
        from . import batch

        validate_sampling(temperature, top_p, 0)
        if max_gen_len < 0:
            raise ValueError(f"max_gen_len must be >= 0, got {max_gen_len}")
        prompts = [list(map(int, p)) for p in prompt_tokens]
        batch.check_batch(prompts, self.backend.max_batch, self.config.seq_len, self.config.vocab_size)
        base = resolve_seed(seed)
        seeds = [(base + b) & 0xFFFFFFFFFFFFFFFF for b in range(len(prompts))]
        return batch.generate(self.backend, prompts, max_gen_len, temperature, top_p, seeds, logprobs, echo, stats)

    def text_completion(
        self,
        prompts: list[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
        seed: Optional[int] = None,
        stats=None,
    ) -> list[dict]:
        """Complete a batch of text prompts: a dict per prompt with "generation" (text) and, with
        logprobs, "tokens" (each token's text piece) and "logprobs". max_gen_len None means
        seq_len - 1 (Meta's default). Prompts are encoded as run does (BOS + dummy-prefix space).

        The generation is decoded following its prompt, so prompt + generation reads as run prints
        it (a leading space is kept; Meta's sentencepiece decode drops it). With echo it starts with
        the prompt text. "tokens" are the pieces in the same way, so "".join(tokens) == generation
        (BOS and EOS pieces are "")."""
        if isinstance(prompts, str):
            raise TypeError("text_completion takes a list of prompts; wrap a single prompt in [ ]")
        if max_gen_len is None:
            max_gen_len = self.config.seq_len - 1
        prompt_tokens = [self.tokenizer.encode(p, bos=True) for p in prompts]
        toks, lps = self.generate(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats)
        out = []
        for prompt, t in zip(prompt_tokens, toks):
            prev = BOS if echo else prompt[-1]
            pieces = []
            for tok in t:
                pieces.append(self.tokenizer.decode([tok], prev=prev))
                prev = tok
            gen = self.tokenizer.decode(t, prev=BOS if echo else prompt[-1])
            out.append({"generation": gen, "tokens": pieces} if logprobs else {"generation": gen})
        if logprobs:
            for d, p in zip(out, lps):
                d["logprobs"] = p
        return out

    # -- inspection ---------------------------------------------------------------------------------
    def logits(self, token_ids) -> np.ndarray:
        """Logits (len, vocab) float32 for a token sequence starting at position 0."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise PromptError("logits() needs at least one token")
        check_prompt(list(ids), self.config.seq_len)
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise PromptError(f"token ids must be in 0..{self.config.vocab_size - 1}")
        return self.backend.prefill(ids.astype(np.int32)[None, :], 0, logits="all")[0]


def _utf8_pieces(pieces: Iterator[bytes]) -> Iterator[str]:
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for b in pieces:
        s = dec.decode(b)
        if s:
            yield s
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
