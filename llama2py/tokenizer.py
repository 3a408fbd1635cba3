"""llama2.c's tokenizer.bin: byte-pair encoding by merge score, exactly as `run` does it."""

from __future__ import annotations

import heapq
import re
import struct
from typing import Union

from .errors import PromptError, TokenizerError
from .files import PathLike
from .input_files import as_path, read_regular_file

UNK, BOS, EOS = 0, 1, 2
# The smallest vocabulary run's loop can use: it starts every prompt with BOS and stops at EOS.
MIN_VOCAB = EOS + 1
_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{1,2})")


PASS_MATCHING = "pass the matching tokenizer: -z TOKENIZER, or tokenizer= in the API"


class Tokenizer:
    """Vocabulary and merge scores read from a llama2.c tokenizer file.

    The file does not store its size: it is the model's vocab_size, so pass it. A file with fewer
    entries than that, or with bytes left over, does not fit the model and is refused."""

    def __init__(self, path: PathLike, vocab_size: int):
        from .backends.base import check_int  # local: these import the checkpoint module
        from .download import in_store

        # a known name that is not here: the model store's copy
        self.path = path = in_store(path, "tokenizer") or as_path(path, "tokenizer")
        vocab_size = check_int(f"tokenizer {path}: vocab_size", vocab_size)
        if vocab_size < MIN_VOCAB:
            raise TokenizerError(
                f"tokenizer {path}: vocab_size must be an integer >= {MIN_VOCAB} (<unk>, BOS and EOS), "
                f"got {vocab_size!r}"
            )
        data = read_regular_file(
            path,
            "tokenizer",
            TokenizerError,
            " (give the tokenizer's path; stories15M/42M/110M use the Llama 2 tokenizer.bin: "
            "`llama2py download tokenizer`)",
            # a token's record is at least 8 bytes and at most 8 + max_token_length (<= 2**16)
            limit=4 + vocab_size * (8 + (1 << 16)),
            too_big_hint=f" for {vocab_size} tokens; it belongs to a model with a larger vocabulary ({PASS_MATCHING})",
        )
        if len(data) < 4:
            raise TokenizerError(f"tokenizer {path}: {len(data)} bytes, too short to be a tokenizer file")
        from .checkpoint import TOKENIZER_PLACE, convert_tokenizer_command, identify  # local: see in_store

        kind = identify(data[:64])
        if kind == "sentencepiece":
            raise TokenizerError(
                f"tokenizer {path}: this is a sentencepiece tokenizer.model; convert it first: "
                f"{convert_tokenizer_command(path)}"
            )
        if kind == "checkpoint":
            raise TokenizerError(
                f"tokenizer {path}: this is a llama2.c checkpoint, not a tokenizer ({TOKENIZER_PLACE})"
            )
        self.max_token_length = struct.unpack_from("<i", data, 0)[0]
        if not 0 < self.max_token_length <= 1 << 16:
            raise TokenizerError(
                f"tokenizer {path}: max_token_length {self.max_token_length} is not "
                "plausible; this is not a llama2.c tokenizer file"
            )
        pieces: list[bytes] = []
        scores: list[float] = []
        off = 4
        for i in range(vocab_size):
            if off == len(data):
                raise TokenizerError(
                    f"tokenizer {path}: holds {i} tokens but the model's vocabulary has {vocab_size}; it belongs "
                    f"to a model with a smaller vocabulary, or it was cut short ({PASS_MATCHING})"
                )
            if off + 8 > len(data):
                raise TokenizerError(
                    f"tokenizer {path}: truncated inside token {i}'s record (re-download or re-export it)"
                )
            score, length = struct.unpack_from("<fi", data, off)
            off += 8
            if length < 0 or length > self.max_token_length:
                raise TokenizerError(
                    f"tokenizer {path}: token {i} has an invalid length {length}; "
                    "the file is corrupt or not a llama2.c tokenizer"
                )
            if off + length > len(data):
                raise TokenizerError(
                    f"tokenizer {path}: truncated inside token {i}'s {length} bytes (re-download or re-export it)"
                )
            pieces.append(data[off : off + length])
            scores.append(score)
            off += length
        if off != len(data):
            raise TokenizerError(
                f"tokenizer {path}: has {len(data) - off} bytes beyond the model's {vocab_size} tokens; "
                f"it belongs to a model with a larger vocabulary ({PASS_MATCHING})"
            )
        self.vocab_size = vocab_size
        self.pieces = pieces  # token id -> raw bytes
        self.scores = scores
        # run looks pieces up by binary search over sorted pieces; with unique pieces (all known
        # vocabularies) any lookup gives the same id, so a dict keeping the first id is equivalent.
        self._ids: dict[bytes, int] = {}
        for i, p in enumerate(pieces):
            self._ids.setdefault(p, i)

    # ------------------------------------------------------------------------------------------
    def min_tokens(self, text: Union[str, bytes]) -> int:
        """A lower bound on len(encode(text)) computed without encoding: no piece is longer than
        max_token_length bytes (so a prompt too long for the context is refused in O(1))."""
        raw = _text_bytes(text)
        if not raw:  # BOS alone: no dummy-prefix space for empty text
            return 1
        n = len(raw) + 1  # + the dummy-prefix space
        return 1 + -(-n // self.max_token_length)

    def encode(self, text: Union[str, bytes], bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of text as `run` encodes it: BOS, a dummy-prefix space, code points, merges."""
        raw = _text_bytes(text)
        tokens: list[int] = []
        if bos:
            tokens.append(BOS)
        if raw:
            space = self._ids.get(b" ")
            if space is not None:
                tokens.append(space)
        i = 0
        n = len(raw)
        while i < n:
            # One UTF-8 code point: a lead byte plus up to 3 continuation bytes (run's rule).
            j = i + 1
            while j < n and (raw[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            cp = raw[i:j]
            tid = self._ids.get(cp)
            if tid is not None:
                tokens.append(tid)
            else:
                # byte fallback: <0x00> is token 3; a vocabulary without byte tokens (under 259
                # entries) has no id for the byte: <unk>, as sentencepiece without byte fallback
                tokens.extend(b + 3 if b + 3 < self.vocab_size else UNK for b in cp)
            i = j
        self._merge(tokens)
        if eos:
            tokens.append(EOS)
        return tokens

    def _merge(self, tokens: list[int]) -> None:
        """run's merge loop: repeatedly merge the adjacent pair whose concatenation is a piece with
        the highest score (> -1e10; the leftmost pair among equal scores) until none is left.

        The same merges in O(n log n) instead of run's O(n^2): the candidate pairs sit in a heap
        ordered by (-score, position of the left symbol) over a linked list of symbols; a merge
        replaces the left symbol and unlinks the right one, and entries that no longer describe
        two adjacent current symbols are skipped when popped. Positions keep their order under
        merges, so "leftmost" is the smallest original index. The BOS token takes part as in run."""
        n = len(tokens)
        if n < 2:
            return
        pieces, scores, ids = self.pieces, self.scores, self._ids
        sym = list(tokens)  # current token id of each symbol (by original index)
        nxt = list(range(1, n + 1))  # next live symbol (n: none)
        prv = list(range(-1, n - 1))  # previous live symbol (-1: none)
        ver = [0] * n  # bumped when a symbol changes: older heap entries about it are stale
        heap: list[tuple[float, int, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j >= n:
                return
            tid = ids.get(pieces[sym[i]] + pieces[sym[j]])
            if tid is not None and scores[tid] > -1e10:  # run's initial best score; NaN never wins
                heapq.heappush(heap, (-scores[tid], i, ver[i], j, ver[j], tid))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, vi, j, vj, tid = heapq.heappop(heap)
            if ver[i] != vi or ver[j] != vj or nxt[i] != j:
                continue  # stale: a symbol changed or was merged away since this entry was made
            sym[i] = tid
            ver[i] += 1
            ver[j] += 1  # j is gone
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out, i = [], 0
        while i < n:
            out.append(sym[i])
            i = nxt[i]
        tokens[:] = out

    # ------------------------------------------------------------------------------------------
    def piece_bytes(self, prev: int, token: int) -> bytes:
        """Raw bytes of `token` following `prev`: run's decode (drop the space after BOS)."""
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token!r} is outside the vocabulary 0..{self.vocab_size - 1}")
        piece = self.pieces[token]
        if prev == BOS and piece[:1] == b" ":
            piece = piece[1:]
        m = _BYTE_PIECE.match(piece)
        return bytes([int(m.group(1), 16)]) if m else piece

    def printable_bytes(self, prev: int, token: int) -> bytes:
        """What `run` prints for `token`: a lone byte that is neither printable ASCII nor
        whitespace is skipped (run's safe_printf in the C locale)."""
        b = self.piece_bytes(prev, token)
        if len(b) == 1 and not (0x20 <= b[0] <= 0x7E or b[0] in b"\t\n\v\f\r"):
            return b""
        return b

    def decode(self, tokens: list[int], prev: int = BOS) -> str:
        """Text of a token sequence; BOS/EOS are dropped, the first piece after BOS loses its space."""
        from .backends.base import as_token_ids, check_int  # the one check of token ids

        ids = as_token_ids(tokens, self.vocab_size).reshape(-1).tolist()
        prev = check_int("prev", prev, 0, self.vocab_size - 1)
        out = bytearray()
        for t in ids:
            if t in (BOS, EOS):
                prev = t
                continue
            out += self.piece_bytes(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")


def _text_bytes(text: Union[str, bytes]) -> bytes:
    """A prompt as bytes: str as UTF-8, bytes as they are (run takes argv bytes). Anything else
    (an int would make bytes(5) = five NUL bytes) is refused."""
    if isinstance(text, str):
        try:  # (surrogateescape: the bytes of a command line that were not UTF-8 come back as they were)
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800": no bytes stand for it
            raise PromptError(
                f"the prompt holds {text[e.start]!r} at character {e.start}, a lone surrogate that UTF-8 "
                "cannot encode; pass text, or bytes for exact bytes"
            ) from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise PromptError(f"a prompt must be text (str) or bytes, got {type(text).__name__} {text!r:.40}")
