"""Builders of OpenAI response bodies and stream chunks, as JSON-ready dicts.

Each function returns exactly the shape OpenAI sends, so any OpenAI client parses
it: chat completions and their chunks, completions and their chunks, embeddings,
usage and the model list. The caller owns the id and `created` (integer seconds) of
a response and passes the same pair to every chunk of one stream, as OpenAI does.
Non-OpenAI fields are the de-facto extensions clients of SGLang, vLLM and Dynamo
read: `reasoning_content` next to `content`.
"""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Iterable, Sequence
from typing import Any

# The engine's reasons (SGLang's, and Dynamo's `FinishReason`) to OpenAI's. A
# cancelled or failed request has no OpenAI finish reason: it is answered with an error.
_FINISH_REASONS = {"stop": "stop", "eos": "stop", "length": "length", "content_filter": "content_filter"}
# -inf (a token the sampler excluded) is not JSON; vLLM and SGLang send this floor instead.
_MIN_LOGPROB = -9999.0


def unique_hex() -> str:
    """128 random bits as 32 hex digits, for ids. `uuid4` reads the OS's random source,
    a system call per id; `random` is seeded from it once (and again after a fork)."""
    return f"{random.getrandbits(128):032x}"


def chat_completion_id() -> str:
    return f"chatcmpl-{unique_hex()}"


def completion_id() -> str:
    return f"cmpl-{unique_hex()}"


def finish_reason(engine_reason: str, *, called_tools: bool = False) -> str:
    """OpenAI's finish_reason for the engine's; a chat answer that called tools ends with "tool_calls"."""
    reason = _FINISH_REASONS.get(engine_reason)
    if reason is None:
        raise ValueError(f"finish reason {engine_reason!r} has no OpenAI equivalent; answer with an error")
    return "tool_calls" if called_tools and reason == "stop" else reason


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


# Chat completions


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """One complete call in a chat message; `arguments` is the JSON text the model wrote."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def token_logprob(token: str | bytes, logprob: float, top: Sequence[tuple[str | bytes, float]] = ()) -> dict[str, Any]:
    """One position of chat logprobs: the chosen token and its `top` alternatives.

    Pass a token as bytes when it is not valid UTF-8 on its own (part of a character
    split across tokens): `bytes` then carries the exact bytes and `token` shows them
    with replacement characters, which is why OpenAI has both fields.
    """
    entry = _token_entry(token, logprob)
    entry["top_logprobs"] = [_token_entry(t, lp) for t, lp in top]
    return entry


def chat_logprobs(content: list[dict[str, Any]]) -> dict[str, Any]:
    """A choice's logprobs, from `token_logprob` entries in order."""
    return {"content": content, "refusal": None}


def chat_message(
    content: str | None, *, reasoning_content: str | None = None, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def chat_choice(
    index: int, message: dict[str, Any], finish_reason: str, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def tool_call_delta(
    index: int, *, id: str | None = None, name: str | None = None, arguments: str | None = None
) -> dict[str, Any]:
    """A piece of the `index`-th tool call of a choice: the first piece has its id and name."""
    delta: dict[str, Any] = {"index": index}
    if id is not None:
        delta |= {"id": id, "type": "function"}
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    if function:
        delta["function"] = function
    return delta


def chat_chunk(
    id: str,
    created: int,
    model: str,
    index: int = 0,
    *,
    role: str | None = None,
    content: str | None = None,
    reasoning_content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed piece of choice `index`.

    A stream starts each choice with `role="assistant", content=""` and ends it with
    a chunk carrying `finish_reason` (its delta may be empty). `usage` goes on every
    chunk only with `continuous_usage_stats`; otherwise see `chat_usage_chunk`.
    """
    fields = (
        ("role", role),
        ("content", content),
        ("reasoning_content", reasoning_content),
        ("tool_calls", tool_calls),
    )
    delta = {k: v for k, v in fields if v is not None}
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return _body("chat.completion.chunk", id, created, model, [choice], usage)


def chat_usage_chunk(id: str, created: int, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """The last chunk of a stream with `include_usage`: no choices, the whole request's usage."""
    return _body("chat.completion.chunk", id, created, model, [], usage)


# Completions


def completion_logprobs(
    tokens: list[str], token_logprobs: list[float], top_logprobs: list[dict[str, float]], text_offset: list[int]
) -> dict[str, Any]:
    """Legacy logprobs, one entry per token in each list; `text_offset` counts characters into the choice's text."""
    return {
        "tokens": tokens,
        "token_logprobs": [max(lp, _MIN_LOGPROB) for lp in token_logprobs],
        "top_logprobs": [{t: max(lp, _MIN_LOGPROB) for t, lp in top.items()} for top in top_logprobs],
        "text_offset": text_offset,
    }


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A choice of a completion, or of a completion chunk (where `finish_reason` is null until the last)."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    return _body("text_completion", id, created, model, choices, usage)


def completion_chunk(
    id: str,
    created: int,
    model: str,
    index: int = 0,
    *,
    text: str,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed piece of choice `index`; the object is "text_completion", as in OpenAI's streams."""
    choice = completion_choice(index, text, finish_reason, logprobs)
    return _body("text_completion", id, created, model, [choice], usage)


def completion_usage_chunk(id: str, created: int, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return _body("text_completion", id, created, model, [], usage)


# Embeddings and models


def embedding_list(
    model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int, encoding_format: str = "float"
) -> dict[str, Any]:
    """`encoding_format="base64"` sends each vector as base64 of little-endian float32, as OpenAI does."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(vector, encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(id: str, created: int, owned_by: str = "dynamo-launch") -> dict[str, Any]:
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by}


def model_list(cards: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v1/models`, from `model_card`s."""
    return {"object": "list", "data": list(cards)}


def _body(
    obj: str, id: str, created: int, model: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    body = {"id": id, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def _token_entry(token: str | bytes, logprob: float) -> dict[str, Any]:
    raw = token if isinstance(token, bytes) else token.encode("utf-8")
    text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
    return {"token": text, "logprob": max(logprob, _MIN_LOGPROB), "bytes": list(raw)}


def _encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return [float(x) for x in vector]
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    raise ValueError(f"unknown encoding_format {encoding_format!r}")
