"""llama2.c's tokenizer.bin: byte-pair encoding by merge score, exactly as `run` does it."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from .errors import TokenizerError

UNK, BOS, EOS = 0, 1, 2
_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{1,2})")


class Tokenizer:
    """Vocabulary and merge scores read from a llama2.c tokenizer file.

    The file does not store its size: it is the model's vocab_size, so pass it. A file with fewer
    entries than that, or with bytes left over, does not fit the model and is refused."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        if vocab_size <= 0:
            raise TokenizerError(f"tokenizer {path}: vocab_size must be positive, got {vocab_size}")
        if not self.path.exists():
            raise TokenizerError(
                f"tokenizer {path}: no such file (pass -z PATH; stories15M/42M/110M use "
                "the Llama 2 tokenizer.bin: `llama2py download tokenizer`)"
            )
        if self.path.is_dir():
            raise TokenizerError(f"tokenizer {path}: is a directory, expected a llama2.c tokenizer file (-z)")
        data = self.path.read_bytes()
        if len(data) < 4:
            raise TokenizerError(f"tokenizer {path}: {len(data)} bytes, too short to be a tokenizer file")
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
            if off + 8 > len(data):
                raise TokenizerError(
                    f"tokenizer {path}: ends after {i} tokens but the model's vocabulary has {vocab_size}; "
                    "this tokenizer does not belong to this model (pass the right one with -z)"
                )
            score, length = struct.unpack_from("<fi", data, off)
            off += 8
            if length < 0 or length > self.max_token_length or off + length > len(data):
                raise TokenizerError(
                    f"tokenizer {path}: token {i} has an invalid length {length}; "
                    "the file is corrupt or not a llama2.c tokenizer"
                )
            pieces.append(data[off : off + length])
            scores.append(score)
            off += length
        if off != len(data):
            raise TokenizerError(
                f"tokenizer {path}: has {len(data) - off} bytes beyond the model's {vocab_size} tokens; "
                "it belongs to a model with a larger vocabulary (pass the matching tokenizer with -z)"
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
    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of text as `run` encodes it: BOS, a dummy-prefix space, code points, merges."""
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
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
                tokens.extend(b + 3 for b in cp)  # byte fallback: <0x00> is token 3
            i = j
        self._merge(tokens)
        if eos:
            tokens.append(EOS)
        return tokens

    def _merge(self, tokens: list[int]) -> None:
        pieces, scores, ids = self.pieces, self.scores, self._ids
        # Merge the best-scoring adjacent pair until none concatenates to a piece. The BOS token
        # takes part as in run (its piece never forms a merge with real text in practice).
        while True:
            best_score, best_id, best_i = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                tid = ids.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
                if tid is not None and scores[tid] > best_score:
                    best_score, best_id, best_i = scores[tid], tid, i
            if best_i < 0:
                return
            tokens[best_i : best_i + 2] = [best_id]

    # ------------------------------------------------------------------------------------------
    def piece_bytes(self, prev: int, token: int) -> bytes:
        """Raw bytes of `token` following `prev`: run's decode (drop the space after BOS)."""
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
        out = bytearray()
        for t in tokens:
            if t in (BOS, EOS):
                prev = t
                continue
            out += self.piece_bytes(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")
