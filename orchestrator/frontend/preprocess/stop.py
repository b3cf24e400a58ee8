"""Stop strings on streamed text, with the "jail" Dynamo's frontend keeps.

Text that might be the beginning of a stop string is held back until the next text
decides it, so a stop string is never shown to a client, not even in part. The first
stop string to complete ends the stream; like OpenAI, the text before it is emitted
and the stop string itself is not.

"First to complete" means the match that ends earliest in the text, and among matches
ending at the same character the longest one. That is what a character-by-character
stream would see, so the outcome does not depend on how the text was chunked, and
no part of a longer stop string leaks because a shorter one inside it completed too.

Matching is Knuth-Morris-Pratt, one automaton per stop string, carried across pushes:
linear in the text whatever the stop strings are.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopJail:
    """The stop-string matcher of one output stream.

    Lifecycle: `push` each new piece of text. The first match ends it: that push
    returns the text before the stop string and the stop string, and every later push
    is ignored and returns `("", None)`, since text the engine produced before it was
    cancelled is still arriving. Without a match, `flush` at the end releases the held
    text.
    """

    def __init__(self, stop: Iterable[str]):
        self._matchers = [_Matcher(s) for s in dict.fromkeys(stop)]
        self._held = ""
        self._stopped = False

    def push(self, text: str) -> tuple[str, str | None]:
        """(text safe to emit now, the stop string matched or None)."""
        if self._stopped:
            return "", None
        buffer = self._held + text
        ends = [(end, matcher.stop) for matcher in self._matchers if (end := matcher.feed(text)) is not None]
        if ends:
            end, stop = min(ends, key=lambda match: (match[0], -len(match[1])))
            start = len(self._held) + end - len(stop)  # never before the buffer: a match's start is held
            self._stopped, self._held = True, ""
            return buffer[:start], stop
        # Every automaton's state is a suffix of the buffer that begins its stop string.
        keep = max((matcher.state for matcher in self._matchers), default=0)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """The held text, at the end of a stream that matched no stop string."""
        held, self._held = self._held, ""
        return held


class _Matcher:
    """One stop string's automaton: `state` is the length of the longest prefix of the
    stop string that ends the text fed so far."""

    def __init__(self, stop: str):
        if not stop:
            raise ValueError("a stop string must not be empty")
        self.stop = stop
        self.state = 0
        # fallback[k]: the longest proper prefix of stop[:k + 1] that is also its suffix.
        self._fallback = [0] * len(stop)
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = self._fallback[k - 1]
            if stop[i] == stop[k]:
                k += 1
            self._fallback[i] = k

    def feed(self, text: str) -> int | None:
        """Advance over `text`; the index in `text` just past the first full match, if any."""
        stop, k = self.stop, self.state
        for i, char in enumerate(text):
            while k and char != stop[k]:
                k = self._fallback[k - 1]
            if char == stop[k]:
                k += 1
            if k == len(stop):
                self.state = k
                return i + 1
        self.state = k
        return None
