"""One choice of a completion, from worker tokens to the deltas a client sees.

Tokens are detokenized incrementally; stop strings are matched on the text (a match
ends the choice at once, cancels the worker's request and is never shown); for chat,
reasoning is split from content and tool calls are parsed out of the content. Every
step holds back only what it must, so deltas flow as tokens arrive.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from orchestrator.frontend.dispatch import Dispatcher, Pin
from orchestrator.frontend.models import Model
from orchestrator.frontend.parsers import ReasoningParser, ToolCallParser, reasoning_parser, tool_call_parser
from orchestrator.frontend.preprocess import StopJail
from orchestrator.planes import messages as m


@dataclass
class Delta:
    text: str = ""
    reasoning: str = ""
    tool_calls: list = field(default_factory=list)  # ToolCallDelta
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list | None = None
    finish_reason: str | None = None
    usage: m.Chunk | None = None  # the final chunk, for its token counts


@dataclass
class ChoiceOptions:
    stop: list[str]
    skip_special_tokens: bool = True
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None  # only when the request offered tools
    # Set by SGLang's chat processor (`--dyn-chat-processor sglang`): build each choice's
    # parsers in place of the frontend's own parsers of those names.
    new_reasoning_parser: Callable[[], ReasoningParser] | None = None
    new_tool_call_parser: Callable[[], ToolCallParser] | None = None
    pin: Pin | None = None  # the worker the request names (nvext.backend_instance_id): no routing


async def choice_stream(
    dispatcher: Dispatcher, model: Model, request: m.GenerateRequest, options: ChoiceOptions, on_token=None
) -> AsyncIterator[Delta]:
    decoder = model.tokenizer.decoder(options.skip_special_tokens)
    jail = StopJail(options.stop)
    new_reasoning = options.new_reasoning_parser or (
        reasoning_parser(options.reasoning_parser) if options.reasoning_parser else None)
    new_tools = options.new_tool_call_parser or (
        tool_call_parser(options.tool_call_parser) if options.tool_call_parser else None)
    reasoning = new_reasoning() if new_reasoning else None
    tools = new_tools() if new_tools else None
    called = False
    received = 0

    def shape(text: str, last: bool) -> Delta:
        nonlocal called
        thought = ""
        if reasoning is not None:
            thought, text = reasoning.push(text)
            if last:
                more_thought, more_text = reasoning.finish()
                thought, text = thought + more_thought, text + more_text
        calls: list = []
        if tools is not None:
            text, calls = tools.push(text)
            if last:
                more_text, more_calls = tools.finish()
                text, calls = text + more_text, calls + more_calls
        called = called or bool(calls)
        return Delta(text=text, reasoning=thought, tool_calls=calls)

    def detokenize(token_ids: list[int]) -> tuple[str, str | None, int]:
        """The text these tokens add past the stop jail, the stop string that matched,
        and how many of the tokens made it. With stop strings, the tokens of a merged
        chunk go in one at a time, so the choice ends, and counts, exactly at the token
        that completed a stop string, as it would have arriving alone."""
        if not options.stop or len(token_ids) == 1:
            text, matched = jail.push(decoder.step(token_ids))
            return text, matched, len(token_ids)
        text = ""
        for used, token in enumerate(token_ids, 1):
            piece, matched = jail.push(decoder.step([token]))
            text += piece
            if matched is not None:
                return text, matched, used
        return text, None, len(token_ids)

    stream = dispatcher.generate(model, request, options.pin)
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            if on_token is not None:
                on_token(time.monotonic(), len(chunk.token_ids))
            text, matched, used = detokenize(chunk.token_ids)
            received += used
            done = matched is not None or chunk.finish_reason is not None
            if done and matched is None:
                tail, matched = jail.push(decoder.flush())
                text += tail + ("" if matched else jail.flush())
            delta = shape(text, last=done)
            delta.token_ids, delta.logprobs, delta.top_logprobs = _first(chunk, used)
            if done:
                finish = "stop" if matched is not None else _finish(chunk.finish_reason)
                delta.finish_reason = "tool_calls" if called and finish == "stop" else finish
                whole = chunk.finish_reason and used == len(chunk.token_ids)
                delta.usage = chunk if whole else _usage_so_far(request, received)
                yield delta
                return  # leaving the block closes the worker stream: a stop string cancels the request
            yield delta


def _first(chunk: m.Chunk, used: int) -> tuple[list[int], list[float] | None, list | None]:
    """The chunk's token ids and logprobs, cut to its first `used` tokens."""
    if used == len(chunk.token_ids):
        return chunk.token_ids, chunk.logprobs, chunk.top_logprobs
    logprobs = chunk.logprobs[:used] if chunk.logprobs is not None else None
    tops = chunk.top_logprobs[:used] if chunk.top_logprobs is not None else None
    return chunk.token_ids[:used], logprobs, tops


def _finish(reason: str) -> str:
    return {"abort": "stop"}.get(reason, reason)


def _usage_so_far(request: m.GenerateRequest, received: int) -> m.Chunk:
    """A stop string ended the choice before the worker's final chunk: count what came."""
    return m.Chunk(request.request_id, prompt_tokens=len(request.token_ids), completion_tokens=received)
