"""Token ids -> text for one answer, released as deltas, with stop strings applied and never leaked.

Two things make streamed text harder than it looks:

- **Incremental decoding** (the offsets trick of TGI and vLLM): each new token decodes a short window of ids,
  not the whole answer, and half of a multi-byte character is held back until it is complete.
- **Stop strings span tokens.** With ``stop=["hom"]``, the tokens ``"...ho"`` then ``"m..."`` match only once the
  second arrives. Had the server sent ``"ho"`` when the first came, the client would have text that the
  non-streamed answer does not contain. So ``TextState`` holds back the longest tail of the text that is still
  the start of some stop string (``"ho"`` here, ``""`` after ``"hx"``), and releases it when the next token shows
  it is not a stop, or when the answer ends. Streamed deltas, joined, always equal the non-streamed text.

Used by ``smml_lib.serving.server``; tested with random prompts and stop strings in ``tests/test_serving_text.py``.
"""

from __future__ import annotations

from typing import Any


def held_back_chars(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string (0 if none).

    >>> held_back_chars("the hom", ["home"]), held_back_chars("the hx", ["home"]), held_back_chars("ab", ["b", "abc"])
    (3, 0, 2)
    """
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextState:
    """The text of one choice: feed it tokens with ``add``, it returns what may be sent now.

    ``text`` is the whole answer so far with stops applied (what a non-streamed answer returns once
    ``finish`` is set); ``sent`` is how much of it was released; ``finish`` is None, ``"stop"``, ``"length"``...
    """

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish: str | None = None
        self._prefix = self._read = 0  # ids[_prefix:_read] were decoded already (context for the next one)

    def add(self, token: int | None, reason: str | None) -> str:
        """Fold in one token (None with the finish reason at the end); returns the text that is safe to send."""
        if token is not None:
            self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        delta = ""
        if len(after) > len(before) and (reason is not None or not after.endswith("\ufffd")):
            delta = after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        full = self.text + delta
        for stop in self.stops:
            at = full.find(stop, max(0, len(self.text) - len(stop) + 1))
            if at >= 0:
                full, reason = full[:at], "stop"
        self.text, self.finish = full, reason
        keep = 0 if reason is not None else held_back_chars(full, self.stops)
        release = full[self.sent:len(full) - keep]
        self.sent += len(release)
        return release
