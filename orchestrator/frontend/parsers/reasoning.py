"""Reasoning parsers: split a model's output into `reasoning_content` and `content`.

Both parsers read `<think>...</think>`; they differ only in where the output starts.

- `think` (Qwen3 style): the model writes `<think>` itself, so the output starts as
  content and reasoning begins only at `<think>`. An output that closes a block it
  never opened (its template opened it) needs `deepseek_r1`: here that text stays
  content, since deciding otherwise would hold back all content until `</think>`.
- `deepseek_r1`: DeepSeek-R1's template opens `<think>` in the prompt, so the output
  starts inside reasoning and content begins at `</think>`. An output that never
  closes is reasoning from end to end, as in SGLang's `DeepSeekR1Detector`
  (force_reasoning: "assume reasoning was truncated before end token") and Dynamo's
  `deepseek_r1` parser (the force-reasoning `<think>` parser).

Rules shared by both, streamed or whole (`parse` is one `push` and `finish` on a
fresh parser, so the two cannot disagree):

- Tags never reach the output. `<think>` opens reasoning; inside reasoning a repeated
  one is dropped (DeepSeek-R1-0528 writes its own after the template's). `</think>`
  closes reasoning; a stray one in content is dropped.
- Reasoning is trimmed at both ends of each span, and content loses the whitespace
  right after `</think>`: that is the template's formatting (`<think>\\n...\\n</think>\\n\\n`).
  All other text passes through verbatim; a stray `</think>` in content keeps the
  space before it, so the words around it stay apart.
- Streaming holds back only a possible tag prefix and, inside reasoning, trailing
  whitespace (it may end the span).
"""

from __future__ import annotations

from typing import Protocol

_OPEN = "<think>"
_CLOSE = "</think>"


class ReasoningParser(Protocol):
    def parse(self, text: str) -> tuple[str | None, str]: ...
    def push(self, text: str) -> tuple[str, str]: ...
    def finish(self) -> tuple[str, str]: ...


class ThinkReasoningParser:
    """Splits one response. Stream it with `push` per piece of text and `finish` once at
    the end (each returns `(reasoning delta, content delta)`); `parse` takes a whole
    output and neither reads nor changes the streaming state."""

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._starts_in_reasoning = starts_in_reasoning
        self._in_reasoning = starts_in_reasoning
        # A template-opened `<think>` is a tag the output starts right after.
        self._after_tag = starts_in_reasoning
        self._pending = ""  # text that may still turn out to be (next to) a tag

    def parse(self, text: str) -> tuple[str | None, str]:
        whole = ThinkReasoningParser(self._starts_in_reasoning)
        reasoning, content = whole.push(text)
        more_reasoning, more_content = whole.finish()
        return (reasoning + more_reasoning) or None, content + more_content

    def push(self, text: str) -> tuple[str, str]:
        out: dict[bool, list[str]] = {True: [], False: []}
        buf = self._pending + text
        while (found := _next_tag(buf)) is not None:
            at, tag = found
            self._emit(out, self._span_text(buf[:at]))
            self._in_reasoning = tag == _OPEN
            self._after_tag = True
            buf = buf[at + len(tag) :]
        undecided = _partial_tag_len(buf)
        decided = self._span_text(buf[: len(buf) - undecided])
        self._emit(out, decided)
        self._pending = buf[len(decided) :]
        return "".join(out[True]), "".join(out[False])

    def finish(self) -> tuple[str, str]:
        out: dict[bool, list[str]] = {True: [], False: []}
        # Nothing follows: a held tag prefix was text after all; reasoning still ends a span.
        self._emit(out, self._span_text(self._pending))
        self._pending = ""
        return "".join(out[True]), "".join(out[False])

    def _span_text(self, text: str) -> str:
        """What of `text` is decided: inside reasoning, trailing whitespace waits (it may end the span)."""
        return text.rstrip() if self._in_reasoning else text

    def _emit(self, out: dict[bool, list[str]], text: str) -> None:
        if self._after_tag:
            text = text.lstrip()
        if text:
            self._after_tag = False
            out[self._in_reasoning].append(text)


def _next_tag(text: str) -> tuple[int, str] | None:
    hits = [(at, tag) for tag in (_OPEN, _CLOSE) if (at := text.find(tag)) >= 0]
    return min(hits) if hits else None


def _partial_tag_len(text: str) -> int:
    """Length of the longest tail of `text` that a later piece could complete into a tag."""
    for n in range(min(len(text), len(_CLOSE) - 1), 0, -1):
        tail = text[-n:]
        if _OPEN.startswith(tail) or _CLOSE.startswith(tail):
            return n
    return 0
