"""Tool-call parsers: take the calls out of a model's content, whole or as OpenAI deltas.

`hermes` reads what the bundled chat template asks for (and Qwen and Hermes models
write): `<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>`,
any number of them, one per line, possibly after some content.

Semantics, streamed or whole (`parse` is one `push` and `finish` on a fresh parser, so
the two cannot disagree):

- A block is a call only once it closes and its body is a JSON object with a non-empty
  string `name` and an object `arguments` (absent means `{}`). Anything else, malformed
  JSON or a block still open at the end, stays in the content verbatim, tags included:
  never lost, never an error. (SGLang's Hermes detector also accepts an unclosed final
  block whose JSON parses; here it is content, as the frontend's contract asks.)
- `arguments` is the object re-serialized compactly with key order kept
  (`{"city":"Paris"}`), the shape OpenAI and Dynamo return, whatever spacing the model
  used.
- Each call streams as one delta carrying index, id, name and the whole arguments, when
  its `</tool_call>` arrives. A body is only known to be a call once it parses: a name
  streamed earlier could not be taken back if the body then had to become content.
- The whitespace right before each call, and a whitespace-only tail after the last one,
  separate content from calls and are dropped. Other text is content verbatim; an
  output without calls comes back unchanged.
- Streaming holds back a possible `<tool_call>` prefix and trailing whitespace (it may
  precede a call), and the body of an open block; nothing else.
"""

from __future__ import annotations

import json
import secrets
from typing import Protocol

import msgspec

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str  # a JSON object, serialized


class ToolCallDelta(msgspec.Struct, frozen=True):
    """One streamed piece of a call: OpenAI's `delta.tool_calls[i]`."""

    index: int  # the call's position in this choice, from 0
    id: str | None  # only on a call's first delta
    name: str | None  # only on a call's first delta
    arguments: str  # clients concatenate these per index


class ToolCallParser(Protocol):
    def parse(self, text: str) -> tuple[str, list[ToolCall]]: ...
    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]: ...
    def finish(self) -> tuple[str, list[ToolCallDelta]]: ...


class HermesToolCallParser:
    """Parses one response's content. Stream it with `push` per piece of text and
    `finish` once at the end (each returns `(content delta, call deltas)`); `parse`
    takes a whole output and neither reads nor changes the streaming state."""

    def __init__(self) -> None:
        self._pending = ""  # outside a block: undecided tail; inside: the body so far
        self._in_block = False
        self._space_before = ""  # whitespace before the open block: content if it fails
        self._calls = 0
        self._text_since_call = False

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        whole = HermesToolCallParser()
        content, deltas = whole.push(text)
        more_content, more_deltas = whole.finish()
        calls = [ToolCall(d.id or "", d.name or "", d.arguments) for d in deltas + more_deltas]
        return content + more_content, calls

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        self._pending += text
        while True:
            if self._in_block:
                end = self._pending.find(_CLOSE)
                if end < 0:
                    break
                body, self._pending = self._pending[:end], self._pending[end + len(_CLOSE) :]
                self._close_block(body, content, deltas)
            else:
                start = self._pending.find(_OPEN)
                if start < 0:
                    break
                before = self._pending[:start]
                self._emit(content, before.rstrip())
                self._space_before = before[len(before.rstrip()) :]
                self._pending = self._pending[start + len(_OPEN) :]
                self._in_block = True
        if not self._in_block:
            undecided = _partial_open_len(self._pending)
            decided = self._pending[: len(self._pending) - undecided].rstrip()
            self._emit(content, decided)
            self._pending = self._pending[len(decided) :]
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        rest = self._pending
        if self._in_block:
            rest = self._space_before + _OPEN + rest
        elif rest.isspace() and self._calls and not self._text_since_call:
            rest = ""  # the whitespace-only tail after the last call
        self._pending, self._in_block, self._space_before = "", False, ""
        content: list[str] = []
        self._emit(content, rest)
        return "".join(content), []

    def _close_block(self, body: str, content: list[str], deltas: list[ToolCallDelta]) -> None:
        self._in_block = False
        call = _decode(body)
        if call is None:
            self._emit(content, self._space_before + _OPEN + body + _CLOSE)
        else:
            name, arguments = call
            deltas.append(ToolCallDelta(self._calls, _new_call_id(), name, arguments))
            self._calls += 1
            self._text_since_call = False
        self._space_before = ""

    def _emit(self, content: list[str], text: str) -> None:
        if text:
            content.append(text)
            self._text_since_call = True


def _decode(body: str) -> tuple[str, str] | None:
    """`(name, arguments)` of a well-formed call body, else None."""
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def _reject_constant(token: str) -> float:
    # NaN and Infinity are not JSON: re-serialized, they would hand clients invalid arguments.
    raise ValueError(f"{token} is not JSON")


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _partial_open_len(text: str) -> int:
    """Length of the longest tail of `text` that a later piece could complete into `<tool_call>`."""
    for n in range(min(len(text), len(_OPEN) - 1), 0, -1):
        if _OPEN.startswith(text[-n:]):
            return n
    return 0
