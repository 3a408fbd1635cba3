"""Stop strings: generation ends where the generated text first contains one of them.

The one home of the rule, used by Llama.run/stream/generate/text_completion/chat_completion:

* Matching is over the decoded text of the generated tokens only (never the prompt), so a stop
  string may span several tokens ("The end" over "The", " end").
* The text ends just before the first occurrence of the earliest stop string; the stop string
  itself is never returned.
* Token lists keep the tokens whose text ends at or before that point: a token whose text
  straddles the start of the stop string is dropped with it, and so are the tokens whose bytes
  were still waiting, undecoded, for the character at which it begins (a character split over
  byte tokens: its first tokens have no text of their own).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Optional, Union


def check_stops(stop: Union[str, Iterable[str], None]) -> tuple[str, ...]:
    """The stop strings as a tuple; a lone string is one stop string. Empty strings are an error."""
    if stop is None:
        return ()
    if isinstance(stop, (bytes, bytearray)) or not isinstance(stop, (str, Iterable)):
        raise TypeError(f"stop must be a str or a list of str, got {type(stop).__name__}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str, got {s!r}")
    return stops


def _borders(s: str) -> list[int]:
    """KMP's prefix function: borders[i] = the length of the longest proper prefix of s[: i + 1]
    that is also its suffix."""
    borders = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = borders[k - 1]
        if s[i] == s[k]:
            k += 1
        borders[i] = k
    return borders


class StopMatcher:
    """Feed the text of each generated token in order; feed() says when a stop string appeared."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # generated text so far
        self.ends: list[int] = []  # ends[j]: len(text) after piece j
        self.pending: list[bool] = []  # pending[j]: piece j's bytes waited for the next piece's
        self.hit: Optional[int] = None  # where the first stop string starts in text
        # Per stop string: the length of its longest proper prefix that ends the text (a KMP state,
        # advanced a character at a time), so that safe_len() costs no search of the text.
        self._borders = [_borders(s) for s in self.stops]
        self._open = [0] * len(self.stops)

    def feed(self, piece: str, pending: bool = False) -> bool:
        """Add one token's text; True once a stop string has appeared (then feed no more).
        pending: the token's last bytes are not in `piece` yet (an incremental UTF-8 decoder holds
        them for the character the next tokens complete)."""
        if self.hit is not None:
            return True
        start = max(0, len(self.text) - self.longest + 1)  # an earlier match would have ended sooner
        self.text += piece
        self.ends.append(len(self.text))
        self.pending.append(pending)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.hit = min(found)
            return True
        for j, s in enumerate(self.stops):  # (no stop string ends in the text: no state reaches len(s))
            k, borders = self._open[j], self._borders[j]
            for ch in piece:
                while k and s[k] != ch:
                    k = borders[k - 1]
                if s[k] == ch:
                    k += 1
            self._open[j] = k
        return False

    @property
    def kept_text(self) -> str:
        return self.text if self.hit is None else self.text[: self.hit]

    @property
    def kept_pieces(self) -> int:
        """How many fed pieces end at or before the stop string (all of them without a hit)."""
        if self.hit is None:
            return len(self.ends)
        kept = bisect_right(self.ends, self.hit)
        # bytes held for the character at the stop string's start go with it
        while kept and self.pending[kept - 1] and self.ends[kept - 1] == self.hit:
            kept -= 1
        return kept

    def safe_len(self) -> int:
        """Length of the text that no later piece can turn into the start of a stop string."""
        if self.hit is not None:
            return self.hit
        return len(self.text) - max(self._open, default=0)  # the longest tail that begins a stop string


def cut_stream(pieces: Iterator[str], matcher: StopMatcher, skip: int = 0) -> Iterator[str]:
    """Pass text through, holding back what could begin a stop string; end at the first one
    (closing pieces, so the generation behind it stops too). The first `skip` pieces (a prompt's
    text) pass unsearched."""
    emitted = 0
    try:
        for i, piece in enumerate(pieces):
            if i < skip:
                if piece:
                    yield piece
                continue
            matcher.feed(piece)
            safe = matcher.safe_len()
            if safe > emitted:
                yield matcher.text[emitted:safe]
                emitted = safe
            if matcher.hit is not None:
                return
        if len(matcher.text) > emitted:
            yield matcher.text[emitted:]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
