"""The frontend's output parsers, chosen per model by name.

A worker names them with Dynamo's `--dyn-tool-call-parser` / `--dyn-reasoning-parser`
and its registration carries the names to the frontend, which builds fresh parsers
for every choice from the factories here: reasoning runs first, and the tool-call
parser reads the content the reasoning parser leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

from orchestrator.frontend.parsers.reasoning import (
    ReasoningParser,
    ThinkReasoningParser,
)
from orchestrator.frontend.parsers.tool_calls import (
    HermesToolCallParser,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
)

__all__ = [
    "REASONING_PARSERS",
    "TOOL_CALL_PARSERS",
    "ReasoningParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "reasoning_parser",
    "tool_call_parser",
]

_TOOL_CALL: dict[str, Callable[[], ToolCallParser]] = {
    "hermes": HermesToolCallParser,
}

_REASONING: dict[str, Callable[[], ReasoningParser]] = {
    "deepseek_r1": partial(ThinkReasoningParser, starts_in_reasoning=True),
    "think": ThinkReasoningParser,
    # Dynamo's name for the same parser, so a worker configured for Dynamo works unchanged.
    "qwen3": ThinkReasoningParser,
}

TOOL_CALL_PARSERS: tuple[str, ...] = tuple(sorted(_TOOL_CALL))
REASONING_PARSERS: tuple[str, ...] = tuple(sorted(_REASONING))

_P = TypeVar("_P")


def tool_call_parser(name: str) -> Callable[[], ToolCallParser]:
    """The factory of the tool-call parser called `name`; ValueError if there is none."""
    return _lookup("tool-call", _TOOL_CALL, name)


def reasoning_parser(name: str) -> Callable[[], ReasoningParser]:
    """The factory of the reasoning parser called `name`; ValueError if there is none."""
    return _lookup("reasoning", _REASONING, name)


def _lookup(kind: str, table: Mapping[str, Callable[[], _P]], name: str) -> Callable[[], _P]:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} parser {name!r}; known: {known}") from None
