"""The generation loop of llama2.c's `run`, written once against the backend interface.

`run_loop` reproduces run's loop token for token (prompt tokens forced, then sampling, stop at BOS
or after `steps` positions) but processes the prompt in one prefill call; `chat_loop` is run's
chat mode. Both yield decoded pieces as they come; the caller decides where they go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .backends.base import Backend, as_token_ids, check_int, check_sampling, check_seed
from .errors import PromptError, too_long
from .tokenizer import BOS, EOS, Tokenizer


@dataclass
class RunStats:
    """Timing of one run. tok_per_s follows run: positions after the first forward call, over the
    seconds since that call ended (with no prompt this is exactly run's (pos - 1) / seconds)."""

    positions: int = 0  # positions fed through the model
    first_call_positions: int = 0
    prompt_tokens: int = 0
    first_call_s: float = 0.0  # the prefill (or the first step) in seconds
    seconds: float = 0.0  # since the end of the first call
    tokens: list[int] = field(default_factory=list)  # every token: prompt (with BOS), then generated
    seed: int = 0  # the seed the run used (a fresh one where none was given): pass it to tell it again

    @property
    def tok_per_s(self) -> float:
        n = self.positions - self.first_call_positions
        if n > 0 and self.seconds > 0:
            return n / self.seconds
        # every position went through the prefill call (steps <= prompt length - 1): its own rate
        return self.first_call_positions / self.first_call_s if self.first_call_s > 0 else 0.0


def resolve_steps(steps: int, seq_len: int) -> int:
    """run's rule: 0 (or more than the context) means the whole context."""
    steps = check_int("steps", steps, 0)
    return seq_len if steps == 0 or steps > seq_len else steps


def check_prompt(prompt_tokens: Sequence[int], seq_len: int, what: str = "the prompt") -> None:
    if len(prompt_tokens) > seq_len:
        raise too_long(f"{what} is {len(prompt_tokens)} tokens", seq_len)


def run_loop(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt_tokens: Sequence[int],
    steps: int,
    temperature: float,
    top_p: float,
    seed: int,
    stats: RunStats,
    prefill: bool = True,
) -> Iterator[bytes]:
    """The bytes run would print for each position (possibly b"" for skipped pieces), as an
    iterator. Every argument is checked here, before the iterator is returned, so errors come
    before any output."""
    c = backend.config
    steps = resolve_steps(steps, c.seq_len)
    temperature, top_p = check_sampling(temperature, top_p)
    seed = check_seed("seed", seed)
    tokens = as_token_ids(prompt_tokens, c.vocab_size, "prompt token ids")
    if tokens.ndim != 1 or tokens.size == 0:
        raise PromptError(f"the prompt must be a non-empty list of token ids (BOS first), got shape {tokens.shape}")
    check_prompt(tokens, c.seq_len)
    return _run_loop(backend, tokenizer, tokens.tolist(), steps, temperature, top_p, seed, stats, prefill)


def _run_loop(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt_tokens: list[int],
    steps: int,
    temperature: float,
    top_p: float,
    seed: int,
    stats: RunStats,
    prefill: bool,
) -> Iterator[bytes]:
    n = len(prompt_tokens)
    stats.prompt_tokens = n
    stats.tokens = list(prompt_tokens)
    backend.set_seeds([seed])
    token, pos = prompt_tokens[0], 0
    t_end_first: Optional[float] = None
    # Positions 0..k-1 of the prompt only need the KV cache: one prefill call instead of k steps.
    k = min(n - 1, steps) if prefill else 0
    if k > 0:
        t0 = time.perf_counter()
        backend.prefill(np.array([prompt_tokens[:k]], np.int32), 0, logits="none")
        t_end_first = time.perf_counter()
        stats.first_call_s = t_end_first - t0
        stats.first_call_positions = k
        for i in range(k):
            yield tokenizer.printable_bytes(prompt_tokens[i], prompt_tokens[i + 1])
        token, pos = prompt_tokens[k], k
    tok_arr = np.zeros(1, np.int32)  # (1,)
    forced = np.full(1, -1, np.int32)  # (1,)
    while pos < steps:
        tok_arr[0] = token
        prompt_left = pos < n - 1
        if prompt_left:
            forced[0] = prompt_tokens[pos + 1]
        t0 = time.perf_counter()
        # past the prompt no token is forced: None spares step() checking an array of -1s every token
        nxt = int(backend.step(tok_arr, pos, temperature, top_p, forced if prompt_left else None)[0][0])
        pos += 1
        if t_end_first is None:
            t_end_first = time.perf_counter()
            stats.first_call_s = t_end_first - t0
            stats.first_call_positions = 1
        stats.positions = pos
        if nxt == BOS:
            break
        if pos >= n:  # a sampled token, not one of the prompt's
            stats.tokens.append(nxt)
        yield tokenizer.printable_bytes(token, nxt)
        token = nxt
    stats.positions = max(stats.positions, pos)
    if t_end_first is not None:
        stats.seconds = time.perf_counter() - t_end_first


# The Llama 2 chat template (Meta's llama/generation.py); run's chat mode applies the same strings.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."  # Meta's reply to them
ROLES = ("system", "user", "assistant")


def render_chat(user: str, system: str = "") -> str:
    """The Llama 2 chat template as run applies it (one user turn; no stripping)."""
    if system:
        return f"{B_INST} {B_SYS}{system}{E_SYS}{user} {E_INST}"
    return f"{B_INST} {user} {E_INST}"


def check_dialog(dialog, index: int = 0) -> list[dict]:
    """A dialog as Meta's chat_completion takes it: an optional system message, then user and
    assistant messages alternating, ending with a user message. Returns it as a list of dicts;
    raises PromptError naming the dialog, the message and what to change."""
    where = f"dialog {index}"
    if isinstance(dialog, (str, dict)) or not hasattr(dialog, "__iter__"):
        raise PromptError(f'{where}: a dialog is a list of {{"role": ..., "content": ...}} messages')
    msgs = list(dialog)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise PromptError(
                f'{where}, message {i}: expected {{"role": "system"|"user"|"assistant", "content": str}}, got {m!r}'
            )
    turns = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not turns:
        raise PromptError(f"{where}: no user message; a dialog ends with a user message")
    offset = len(msgs) - len(turns)
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise PromptError(
                f"{where}, message {i + offset}: role {m['role']!r} where {want!r} belongs; after an "
                f"optional system message, user and assistant must alternate (u/a/u/...), ending with user"
            )
    if turns[-1]["role"] != "user":
        raise PromptError(f"{where}: the last message is from the assistant; a dialog ends with a user message")
    return msgs


def dialog_tokens(tokenizer: Tokenizer, dialog, seq_len: Optional[int] = None, what: str = "the dialog") -> list[int]:
    """The prompt tokens of a dialog, as Meta's chat_completion builds them: the system message
    folded into the first user message inside <<SYS>>, each finished user/assistant pair as
    BOS "[INST] user [/INST] answer " EOS, then BOS "[INST] last user [/INST]" left open.
    Contents are stripped (run's chat mode does not strip, and omits an empty system prompt).
    A dialog that cannot fit seq_len positions (when given) is refused before it is encoded
    (PromptError)."""
    msgs = check_dialog(dialog)
    if msgs[0]["role"] == "system":
        first = msgs[1]
        msgs = [{"role": "user", "content": B_SYS + msgs[0]["content"] + E_SYS + first["content"]}] + msgs[2:]
    turns = [
        (f"{B_INST} {u['content'].strip()} {E_INST} {a['content'].strip()} ", True)
        for u, a in zip(msgs[::2], msgs[1::2])
    ]
    turns.append((f"{B_INST} {msgs[-1]['content'].strip()} {E_INST}", False))
    if seq_len is not None:  # (encode_prompt's refusal, over the dialog's pieces)
        least = sum(tokenizer.min_tokens(text) + eos for text, eos in turns)
        if least > seq_len:
            chars = sum(len(text) for text, _ in turns)
            raise too_long(f"{what} is {chars:,} characters in its template, at least {least:,} tokens", seq_len)
    tokens: list[int] = []
    for text, eos in turns:
        tokens += tokenizer.encode(text, bos=True, eos=eos)
    if seq_len is not None:
        check_prompt(tokens, seq_len, what)
    return tokens


def has_special_tags(dialog) -> bool:
    """Meta's unsafe-request check: a message that contains one of the template's tags."""
    return any(tag in m["content"] for m in dialog for tag in SPECIAL_TAGS)


def chat_loop(
    backend: Backend,
    tokenizer: Tokenizer,
    steps: int,
    temperature: float,
    top_p: float,
    seed: int,
    read_user: Callable[[str], Optional[str]],
    system: str = "",
    first_user: Optional[str] = None,
    on_cut: Optional[Callable[[int, int], None]] = None,
) -> Iterator[bytes]:
    """run's chat mode. read_user(prompt_text) returns a line, or None at end of input (then the
    chat ends: run would spin forever). Returns an iterator of the bytes to print, including
    "Assistant: " headers; the arguments are checked before it is returned. on_cut(fed, tokens):
    called where `steps` ends the chat inside a user turn's prompt (run then stops silently).

    As in run, every position (prompt ones too) samples a token, so the generator advances the
    same way and a seeded chat matches run's. Text may be str (surrogate-escaped bytes stay the
    bytes they stand for) or bytes."""
    steps = resolve_steps(steps, backend.config.seq_len)
    temperature, top_p = check_sampling(temperature, top_p)
    seed = check_seed("seed", seed)
    return _chat_loop(backend, tokenizer, steps, temperature, top_p, seed, read_user, system, first_user, on_cut)


def _chat_loop(
    backend: Backend,
    tokenizer: Tokenizer,
    steps: int,
    temperature: float,
    top_p: float,
    seed: int,
    read_user: Callable[[str], Optional[str]],
    system: str,
    first_user: Optional[str],
    on_cut: Optional[Callable[[int, int], None]],
) -> Iterator[bytes]:
    backend.set_seeds([seed])
    seq_len = backend.config.seq_len
    user_turn, pos = True, 0
    prompt: list[int] = []
    idx = 0
    nxt = 0
    tok_arr = np.zeros(1, np.int32)
    while pos < steps:
        if user_turn:
            if pos == 0 and first_user is not None:
                user = first_user
            else:
                user = read_user("User: ")
                if user is None:
                    return
            text = render_chat(user, system if pos == 0 else "")
            need = tokenizer.min_tokens(text)  # a bound without encoding: a huge line costs nothing
            if pos + need <= seq_len:
                prompt = tokenizer.encode(text, bos=True)
                need = len(prompt)
            if pos + need > seq_len:
                if pos == 0:
                    raise too_long(f"the first turn needs at least {need} tokens", seq_len)
                return  # the context is full: the chat ends, as run's does at `steps`
            idx, user_turn = 0, False
            yield b"Assistant: "
        if idx < len(prompt):
            token = prompt[idx]
            idx += 1
        else:
            token = nxt
        if token == EOS:
            user_turn = True
        tok_arr[0] = token
        nxt = int(backend.step(tok_arr, pos, temperature, top_p)[0][0])
        pos += 1
        if idx >= len(prompt) and nxt != EOS:
            yield tokenizer.printable_bytes(token, nxt)
        if nxt == EOS:
            yield b"\n"
    if idx < len(prompt) and on_cut is not None:
        on_cut(idx, len(prompt))
