"""The Python API: Llama.load(...) then .run / .stream / .logits, and the batched .generate /
.text_completion (Meta's Llama 2 semantics, llama2py.batch)."""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .backends import create_backend
from .backends.base import Backend, as_token_ids, check_conversion_memory, check_int, check_sampling, host_buffers
from .batch import BatchStats
from .checkpoint import Checkpoint, Config, convert_weights, load_checkpoint
from .errors import CLOSED, BusyError, ClosedError, PromptError, TokenizerError, too_long
from .files import PathLike
from .generate import RunStats, check_prompt, run_loop
from .sampler import nth_seed, resolve_seed
from .stops import StopMatcher, check_stops, cut_stream
from .tokenizer import BOS, Tokenizer

DEFAULT_STEPS = 256  # run's -n


@dataclass
class RunResult:
    text: str  # what run prints (without the final newline)
    tokens: list[int]  # prompt tokens (with BOS) followed by the generated ones
    tok_per_s: float  # run's figure: positions after the first call / seconds since then
    stats: RunStats


def _free(backend: Optional[Backend], checkpoint: Optional[Checkpoint]) -> None:
    """Close the backend and drop the checkpoint's map (unmapped by the last reference: under numpy
    2 closing the mmap itself succeeds even while views of it are alive, which then crash)."""
    if backend is not None:
        backend.close()
    if checkpoint is not None:
        checkpoint.weights = None  # type: ignore[assignment]
        checkpoint._mmap = None


def find_tokenizer(checkpoint: Path, vocab_size: int) -> Path:
    """The tokenizer to use when none is given: PREFIX_tok{vocab}.bin where the checkpoint's name
    starts with PREFIX (aidreams_tok512.bin for aidreams260K.bin: models of one vocabulary size
    can have different vocabularies), then tok{vocab}.bin (vocabularies other than 32000), then
    tokenizer.bin; beside the checkpoint, then in the model store (llama2.c's naming; README's
    Command line section documents this order)."""
    from .download import REGISTRY, default_models_dir  # local import: download is optional machinery

    names = ([f"tok{vocab_size}.bin"] if vocab_size != 32000 else []) + ["tokenizer.bin"]
    folders = [checkpoint.parent, default_models_dir()]
    for folder in folders:
        own = [
            p
            for p in folder.glob(f"?*_tok{vocab_size}.bin")
            if checkpoint.name.startswith(p.name[: -len(f"_tok{vocab_size}.bin")])
        ]
        if own:  # the longest prefix is the closest match (no two share a length)
            return max(own, key=lambda p: len(p.name))
        for name in names:
            if (folder / name).exists():
                return folder / name
    # the tokenizer the registry pairs with this very file; else by vocabulary size, which other
    # models can share with a different vocabulary (aidreams260K and stories260K: 512 each)
    known = next((e.tokenizer for e in REGISTRY.values() if e.filename == checkpoint.name and e.tokenizer), None)
    if known:
        hint = f"`llama2py download {known}`"
    elif vocab_size == 32000:
        hint = "the Llama 2 tokenizer.bin: `llama2py download tokenizer`"
    else:
        hint = f"the {vocab_size}-token tokenizer made with this model"
        if f"tok{vocab_size}" in REGISTRY:
            hint += f"; stories260K's is `llama2py download tok{vocab_size}`"
    raise TokenizerError(
        f"no tokenizer given and none of {checkpoint.stem}_tok{vocab_size}.bin (or another PREFIX_tok{vocab_size}.bin "
        f"where {checkpoint.name} starts with PREFIX), {', '.join(names)} found beside {checkpoint} or in "
        f"{folders[-1]}; pass one with -z ({hint})"
    )


def encode_prompt(tokenizer: Tokenizer, prompt: Union[str, bytes], seq_len: int, what: str = "the prompt") -> list[int]:
    """run's encoding of a prompt (BOS first), refused before encoding when it cannot fit the
    context: a long prompt costs nothing before it is refused."""
    least = tokenizer.min_tokens(prompt)
    if least > seq_len:
        raise too_long(
            f"{what} is {len(prompt):,} {'character(s)' if isinstance(prompt, str) else 'byte(s)'}, at least "
            f"{least:,} tokens",
            seq_len,
        )
    tokens = tokenizer.encode(prompt, bos=True)
    check_prompt(tokens, seq_len, what)
    return tokens


def load_weights(
    checkpoint: PathLike,
    weights: Optional[str] = None,
    also: Optional[Callable[[Config], dict[str, int]]] = None,
) -> Checkpoint:
    """load_checkpoint, with its weights as `weights` (convert_weights: None keeps the file's
    type); a converted copy that would not fit the available memory, together with what also(config)
    names (the backend's allocations, by item), is refused before it is made."""
    ck = load_checkpoint(checkpoint)
    check_conversion_memory(ck.config, ck.weights, weights, ck.path, also(ck.config) if also else {})
    ck.weights = convert_weights(ck.weights, ck.config, weights, ck.path)
    return ck


class Llama:
    """A loaded checkpoint, its tokenizer and a backend ready to run it.

    Use it as a context manager (or call close()) to free device memory and the mapped file
    before the object is garbage-collected."""

    def __init__(
        self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: Backend, load_seconds: float, notes: list[str]
    ):
        self.checkpoint = checkpoint
        self.config: Config = backend.config  # the checkpoint's, with seq_len capped by context=
        self.tokenizer = tokenizer
        self.backend = backend
        self.device = backend.name
        self.load_seconds = load_seconds
        self.notes = notes  # e.g. why device="auto" fell back to the cpu
        # One call into the backend at a time (they share its KV cache and generators): a call is a
        # whole run / generate / logits, or one piece of a stream. A stream between pieces holds
        # nothing, so a later generation supersedes it (_generation moves on and its next piece
        # raises): a forgotten stream never locks the model, whichever thread it lives in. _guard
        # (over the three fields below) is reentrant: a close() from a signal handler that lands
        # while its thread holds it goes through, and the call then meets a refusing backend.
        self._guard = threading.RLock()
        self._calling: Optional[object] = None  # the running call's token, None when idle
        self._generation = 0  # number of the latest generation
        self._deferred: Optional[tuple] = None  # (backend, checkpoint) a close() left to the running call

    @classmethod
    def load(
        cls,
        checkpoint: PathLike,
        tokenizer: Optional[PathLike] = None,
        device: str = "auto",
        threads: Optional[int] = None,
        max_batch_size: int = 1,
        weights: Optional[str] = None,
        context: Optional[int] = None,
    ) -> Llama:
        """Load a checkpoint and its tokenizer (found as find_tokenizer says when None) onto a
        backend: "auto" (the default, as in the CLI) = cuda when CuPy and a GPU are usable, else
        cpu, with the reason in .notes; or "cpu", "cuda", "numpy". .device says which one runs.

        weights: "f32" or "q8_0" (int8, runq's arithmetic), or None for the file's own type (a v2
        file int8, others float32); a float file is quantized at load time as llama2.c's export
        would (group size 64, halved until it divides dim).

        context: at most this many positions (caps the checkpoint's seq_len and so the KV
        cache, as llama.cpp's -c; None: the checkpoint's seq_len). The memory the KV cache and
        buffers need is checked against the available memory before anything is allocated."""
        t0 = time.perf_counter()
        max_batch_size = check_int("max_batch_size", max_batch_size, 1)
        if threads is not None:
            threads = check_int("threads", threads, 1)
        if context is not None:
            context = check_int("context", context, 1)

        def host(config: Config) -> dict[str, int]:  # what a host backend allocates besides the weights
            return {} if device == "cuda" else host_buffers(config.capped(context), max_batch_size, threads)

        ck = load_weights(checkpoint, weights, host)
        config = ck.config
        notes: list[str] = []
        if context is not None:
            note = config.cap_note(context)
            if note:
                notes.append(f"context {note}")
            config = config.capped(context)
        tok_path = tokenizer if tokenizer is not None else find_tokenizer(ck.path, config.vocab_size)
        tok = Tokenizer(tok_path, config.vocab_size)
        backend = create_backend(device, config, ck.weights, max_batch_size, threads, notes)
        return cls(ck, tok, backend, time.perf_counter() - t0, notes)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the backend's memory (device memory on cuda) and drop the checkpoint's mapping (the
        file is unmapped once no view of its weights is left). The model cannot generate
        afterwards; closing twice is harmless. While a call runs (in another thread), it stops at
        its next step with the "closed" error and the memory is freed when it returns."""
        with self._guard:
            pending_backend, pending_checkpoint = self._deferred or (None, None)  # an earlier close()
            backend = self.__dict__.get("backend") or pending_backend
            checkpoint = self.__dict__.get("checkpoint") or pending_checkpoint
            self.backend = None  # type: ignore[assignment]
            self.checkpoint = None  # type: ignore[assignment]
            if backend is not None:
                backend.refuse_calls()  # before the guard opens: no call can start on it now
            if self._calling is not None:  # freeing now would pull the memory from under that call
                self._deferred = (backend, checkpoint)
                return
            self._deferred = None
        _free(backend, checkpoint)

    @property
    def closed(self) -> bool:
        return self.backend is None

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _backend(self) -> Backend:
        if self.backend is None:
            raise ClosedError(CLOSED)
        return self.backend

    def _begin(self, token: object, generation: Optional[int]) -> int:
        """Start a call (token marks it as ours): a new generation (generation None) or the next
        piece of that one; returns the generation's number."""
        with self._guard:
            if self._calling is not None:
                raise BusyError(
                    "this Llama is running a call in another thread (or this call comes from inside "
                    "one of its callbacks): use one Llama per thread, Llama.load once in each"
                )
            if self.backend is None:
                raise ClosedError(CLOSED)
            if generation is None:
                self._generation += 1
            elif generation != self._generation:
                raise BusyError(
                    "this stream was superseded: a later call on the same Llama started another "
                    "generation (finish a stream before the next call, or load a second Llama)"
                )
            self._calling = token
            return self._generation

    def _end(self, token: object) -> None:
        """End the call of token (a no-op when it never started) and free what a close() left."""
        with self._guard:
            if self._calling is not token:
                return
            self._calling = None
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            _free(*deferred)

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """One whole call (run, generate, logits) as a new generation."""
        token = object()
        try:  # _end in the finally whatever happens after _begin took the token (KeyboardInterrupt)
            self._begin(token, None)
            yield
        finally:
            self._end(token)

    def _held(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """A stream's pieces, each produced as a call of the stream's generation; between pieces
        the model is free, and a later generation supersedes this one (its next piece raises
        before any step: the steps never interleave on the KV cache)."""
        generation = None
        try:
            while True:
                token = object()
                try:
                    generation = self._begin(token, generation)
                    piece = next(pieces)
                except StopIteration:
                    return
                finally:
                    self._end(token)
                yield piece
        finally:  # ended early (superseded, closed, dropped): the loop ends now, not at collection
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    # -- run's semantics --------------------------------------------------------------------------
    def _start(
        self,
        prompt: Union[str, bytes],
        steps: Optional[int],
        temperature: float,
        top_p: float,
        seed: Optional[int],
        stats: Optional[RunStats] = None,
        max_new_tokens: Optional[int] = None,
        hold: bool = True,
    ) -> tuple[Iterator[bytes], RunStats, int]:
        """Validate eagerly (so errors surface before any output), then return the piece iterator,
        the stats it fills and the prompt's token count. hold: each piece a call of its own (a
        stream); False for a caller that holds the model itself (run)."""
        backend = self._backend()
        if max_new_tokens is not None:
            if steps is not None:
                raise ValueError("give steps (positions, prompt included) or max_new_tokens, not both")
            max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        steps = DEFAULT_STEPS if steps is None else steps
        seed = resolve_seed(seed)
        tokens = encode_prompt(self.tokenizer, prompt, self.config.seq_len)
        if stats is not None and not isinstance(stats, RunStats):
            raise TypeError(f"stats must be a RunStats (or None), got {type(stats).__name__}")
        stats = stats if stats is not None else RunStats()
        stats.seed = seed
        if max_new_tokens is not None:
            # run feeds positions 0..steps-1 and the prompt's last one predicts the first new token
            steps = len(tokens) - 1 + max_new_tokens
            if steps == 0:  # nothing to generate, and run's 0 would mean the whole context
                check_sampling(temperature, top_p)  # (run_loop checks them otherwise)
                stats.tokens, stats.prompt_tokens = list(tokens), len(tokens)
                return iter(()), stats, len(tokens)
            steps = min(steps, self.config.seq_len)
        # run_loop checks steps, temperature and top_p (once, before returning the iterator)
        pieces = run_loop(backend, self.tokenizer, tokens, steps, temperature, top_p, seed, stats)
        return (self._held(pieces) if hold else pieces), stats, len(tokens)

    def _text(self, pieces: Iterator[bytes], n_prompt: int, stop, stats: RunStats) -> Iterator[str]:
        """Text of run's pieces; with stop strings, cut at the first one in the generated text
        (the prompt's n_prompt - 1 pieces are not searched) and trim stats.tokens to match."""
        stops = check_stops(stop)
        if not stops:
            return _utf8_pieces(pieces)
        matcher = StopMatcher(stops)

        def cut() -> Iterator[str]:
            yield from cut_stream(_utf8_pieces(pieces, keep_empty=True), matcher, skip=n_prompt - 1)
            if matcher.hit is not None:
                del stats.tokens[n_prompt + matcher.kept_pieces :]

        return cut()

    def stream_bytes(
        self,
        prompt: Union[str, bytes] = "",
        steps: Optional[int] = None,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
        stats: Optional[RunStats] = None,
        max_new_tokens: Optional[int] = None,
    ) -> Iterator[bytes]:
        """The raw bytes run prints, piece by piece (the CLI writes these as they come)."""
        pieces, _, _ = self._start(prompt, steps, temperature, top_p, seed, stats, max_new_tokens)
        return pieces

    def stream(
        self,
        prompt: str = "",
        steps: Optional[int] = None,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        max_new_tokens: Optional[int] = None,
        stats: Optional[RunStats] = None,
    ) -> Iterator[str]:
        """Yield the story as text pieces while it is generated (whole UTF-8 characters only).

        steps counts positions, the prompt's included (run's -n, default 256); max_new_tokens
        counts generated tokens instead (give one of them). stop: strings that end the story at
        their first appearance in the generated text, which then excludes them (text that could
        begin a stop string is held back until it cannot; a piece that raises, e.g. a stream
        superseded by a later call, ends the stream without that text). Bad arguments raise
        here, before anything is generated. stats: a RunStats to fill (its .seed is set at once:
        the seed drawn where none was given, to tell the story again)."""
        pieces, stats, n = self._start(prompt, steps, temperature, top_p, seed, stats, max_new_tokens)
        return self._text(pieces, n, stop, stats)

    def run(
        self,
        prompt: str = "",
        steps: Optional[int] = None,
        temperature: float = 1.0,
        top_p: float = 0.9,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        max_new_tokens: Optional[int] = None,
    ) -> RunResult:
        """Tell a story as llama2.c's run would: returns its text, token ids and tok/s.
        steps / max_new_tokens / stop as for stream(); with a stop string, text and tokens end
        before it. seed: 1..2**64-1 tells the same story every time; None or 0 draws a fresh one
        (recorded in .stats.seed; llama2.c's run and the command line take the time in seconds,
        which repeats a story for every call within a second)."""
        with self._call():
            pieces, stats, n = self._start(prompt, steps, temperature, top_p, seed, None, max_new_tokens, hold=False)
            text = "".join(self._text(pieces, n, stop, stats))
        return RunResult(text, stats.tokens, stats.tok_per_s, stats)

    # -- batched generation, Meta's Llama 2 generate() / text_completion() (llama2py.batch) -------------
    def generate(
        self,
        prompt_tokens: Sequence[Sequence[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
        seed: Optional[int] = None,
        stats: Optional[BatchStats] = None,
        stop: Optional[Sequence[str]] = None,
    ) -> tuple[list[list[int]], Optional[list[list[float]]]]:
        """Complete a batch of token prompts (each starting with BOS) at shared positions.

        Returns (tokens, logprobs): per sequence the generated tokens (prompt + generated with echo),
        at most max_gen_len of them, ending before the first EOS/BOS it generated; with logprobs the
        log-softmax of the raw logits at each returned token (the first prompt token has none: 0.0,
        as in Meta's code). Sequence b samples with seed + b (seed None or 0: a fresh one), so
        it equals that prompt generated alone with seed + b. stop: strings over the decoded
        generated text; a sequence ends at its first one, keeping the tokens before it
        (llama2py.stops). stats: an optional batch.BatchStats to fill with timings."""
        toks, lps, _ = self._generate(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats, stop)
        return toks, lps

    def _generate(
        self, prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats, stop, first_prev=None
    ):
        """generate(), also returning each sequence's StopMatcher (None without stop strings), fed
        the generated text decoded after the prompt's last token (first_prev: after that token)."""
        from . import batch

        backend = self._backend()
        stops = check_stops(stop)
        base = resolve_seed(seed)
        if stats is not None and not isinstance(stats, batch.BatchStats):
            raise TypeError(f"stats must be a BatchStats (or None), got {type(stats).__name__}")
        if isinstance(prompt_tokens, (str, bytes)) or not hasattr(prompt_tokens, "__len__"):
            raise TypeError("generate takes a list of token-id lists; encode text with m.tokenizer.encode")
        prompts = prompt_tokens  # batch.generate checks them, max_gen_len, temperature and top_p (once)
        seeds = [nth_seed(base, b) for b in range(len(prompts))]
        matchers: list[Optional[StopMatcher]] = [None] * len(prompts)
        stop_at = None
        if stops:
            matchers = [StopMatcher(stops) for _ in prompts]
            prev: list[Optional[int]] = [None] * len(prompts)  # set at the first call: prompts checked by then
            decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in prompts]

            def stop_at(b: int, token: int) -> Optional[int]:
                if prev[b] is None:
                    prev[b] = int(prompts[b][-1]) if first_prev is None else first_prev
                text = decoders[b].decode(self.tokenizer.piece_bytes(prev[b], token))
                prev[b] = token
                held = bool(decoders[b].getstate()[0])  # bytes waiting for the rest of a character
                return matchers[b].kept_pieces if matchers[b].feed(text, held) else None

        if stats is not None:
            stats.seed = base  # (set before: known even where the generation raises)
        with self._call():
            toks, lps = batch.generate(
                backend, prompts, max_gen_len, temperature, top_p, seeds, logprobs, echo, stats, stop_at
            )
        return toks, lps, matchers

    def text_completion(
        self,
        prompts: Sequence[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
        seed: Optional[int] = None,
        stats: Optional[BatchStats] = None,
        stop: Optional[Sequence[str]] = None,
    ) -> list[dict]:
        """Complete a batch of text prompts: a dict per prompt with "generation" (text) and, with
        logprobs, "tokens" (each token's text piece) and "logprobs". max_gen_len None means
        seq_len - 1 (Meta's default). Prompts are encoded as run does (BOS + dummy-prefix space).

        The generation is decoded following its prompt, so prompt + generation reads as run prints
        it (a leading space is kept; Meta's sentencepiece decode drops it). With echo it starts with
        the prompt text. "tokens" are the pieces in the same way, so "".join(tokens) == generation
        (BOS and EOS pieces are ""). stop: strings that end a generation, which then excludes
        them (see generate); the generation ends exactly where the stop string starts, the tokens
        at the last token wholly before it, so a token straddling that start leaves its first
        characters in the generation only ("".join(tokens) is then a prefix of it). top_p=0 keeps
        only the most likely token, as Meta's sample_top_p (greedy; run's -p 0 means no top-p)."""
        if isinstance(prompts, (str, bytes)):
            raise TypeError("text_completion takes a list of prompts; wrap a single prompt in [ ]")
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"text_completion takes a list of prompts (str), got {type(prompts).__name__}")
        if max_gen_len is None:
            max_gen_len = self.config.seq_len - 1
        prompt_tokens = [
            encode_prompt(self.tokenizer, p, self.config.seq_len, f"prompt {b}") for b, p in enumerate(prompts)
        ]
        return self._completions(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats, stop)

    def _completions(
        self, prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats, stop, first_prev=None
    ) -> list[dict]:
        """generate() decoded: {"generation": text[, "tokens", "logprobs"]} per prompt. The text
        follows the prompt's last token (first_prev: decode as if after that token instead)."""
        toks, lps, matchers = self._generate(
            prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed, stats, stop, first_prev
        )
        out = []
        for prompt, t, matcher in zip(prompt_tokens, toks, matchers):
            start = BOS if echo else (first_prev if first_prev is not None else prompt[-1])
            pieces = []
            prev = start
            for tok in t:
                pieces.append(self.tokenizer.decode([tok], prev=prev))
                prev = tok
            gen = self.tokenizer.decode(t, prev=start)
            if matcher is not None and matcher.hit is not None:
                # exactly up to the stop string (the text of a token straddling its start included),
                # matched over the text returned (chat: decoded after BOS, no leading space)
                gen = (self.tokenizer.decode(prompt, prev=BOS) if echo else "") + matcher.kept_text
            out.append({"generation": gen, "tokens": pieces} if logprobs else {"generation": gen})
        if logprobs:
            for d, p in zip(out, lps):
                d["logprobs"] = p
        return out

    def chat_completion(
        self,
        dialogs: Sequence[Sequence[Mapping[str, Any]]],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        stats: Optional[BatchStats] = None,
    ) -> list[dict]:
        """Meta's chat_completion(): answer a batch of dialogs with the Llama 2 chat template.

        A dialog is a list of {"role": "system"|"user"|"assistant", "content": str}: an optional
        system message, then user/assistant alternating, ending with a user message (anything
        else raises PromptError). Each finished pair becomes BOS "[INST] user [/INST] answer " EOS,
        the last user turn BOS "[INST] user [/INST]" (llama2py.generate.dialog_tokens). Returns
        per dialog {"generation": {"role": "assistant", "content": text}} (plus "tokens" and
        "logprobs" with logprobs); content is decoded as Meta's tokenizer does (no leading space).
        A message holding a template tag ([INST], <<SYS>>, ...) gets Meta's error text as content.
        Batched, seeded and stopped as text_completion."""
        from .generate import UNSAFE_ERROR, dialog_tokens, has_special_tags

        if not isinstance(dialogs, (list, tuple)):
            raise TypeError(
                f"chat_completion takes a list of dialogs (lists of messages), got {type(dialogs).__name__}"
            )
        if dialogs and isinstance(dialogs[0], dict):
            raise TypeError("chat_completion takes a list of dialogs; wrap a single dialog in [ ]")
        if max_gen_len is None:
            max_gen_len = self.config.seq_len - 1
        from .generate import check_dialog

        checked = [check_dialog(d, i) for i, d in enumerate(dialogs)]
        prompt_tokens = [
            dialog_tokens(self.tokenizer, d, self.config.seq_len, f"dialog {i}") for i, d in enumerate(checked)
        ]
        results = self._completions(
            prompt_tokens, max_gen_len, temperature, top_p, logprobs, False, seed, stats, stop, first_prev=BOS
        )
        out = []
        for dialog, r in zip(checked, results):
            content = UNSAFE_ERROR if has_special_tags(dialog) else r["generation"]
            d = {"generation": {"role": "assistant", "content": content}}
            if logprobs:
                d["tokens"], d["logprobs"] = r["tokens"], r["logprobs"]
            out.append(d)
        return out

    # -- inspection ---------------------------------------------------------------------------------
    def logits(self, token_ids) -> np.ndarray:
        """Logits (len, vocab) float32 for a token sequence starting at position 0."""
        ids = as_token_ids(token_ids, self.config.vocab_size)
        if ids.ndim == 2 and ids.shape[0] == 1:  # one sequence as a batch of one
            ids = ids[0]
        if ids.ndim != 1:
            raise PromptError(f"logits() takes one sequence of token ids (1-D), got shape {ids.shape}")
        if ids.size == 0:
            raise PromptError("logits() needs at least one token")
        check_prompt(ids, self.config.seq_len)
        backend = self._backend()
        with self._call():
            return backend.prefill(ids[None, :], 0, logits="all")[0]


def _utf8_pieces(pieces: Iterator[bytes], keep_empty: bool = False) -> Iterator[str]:
    """Decode bytes pieces incrementally (a character split over pieces comes out whole). With
    keep_empty, one str per piece (possibly ""), so piece i still is token i (stop strings)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for b in pieces:
        s = dec.decode(b)
        if s or keep_empty:
            yield s
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
