"""Strict validation of OpenAI request bodies into typed, normalised requests.

Owns what `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` accept.
Every parameter is either honoured or refused with a 400 whose `param` and message
name it: nothing is dropped silently, because a client would otherwise get an answer
to a question it did not ask. JSON `null` counts as absent everywhere, since SDKs
send unset optionals as null.

Where we differ from OpenAI, on purpose:
- `n` is 1..128 at any temperature. The frontend fans a request out into n engine
  requests, so n>1 at temperature 0 is well defined (n greedy, identical choices);
  OpenAI and Dynamo refuse it. With a `seed`, the fan-out must vary it per choice.
- `stop` takes up to 16 strings (OpenAI: 4); the frontend matches them on the text.
- Extensions from SGLang/vLLM/Dynamo: `top_k`, `min_p`, `repetition_penalty`,
  `min_tokens`, `ignore_eos`, `stop_token_ids`, `chat_template_kwargs`, `nvext` (also
  Dynamo's `backend_instance_id` and `dp_rank`: serve it on that worker and rank,
  whatever the router would choose, as an external router such as an inference
  gateway does).
- `/v1/completions` keeps OpenAI's legacy default of 16 `max_tokens` (as SGLang and
  vLLM do); chat defaults to None: up to the context.
- Chat messages are normalised for a chat template: `developer` becomes `system`
  (templates only know `system`), text parts are joined with "\\n" (vLLM's rule),
  null content becomes "", and tool-call `arguments` are parsed into objects, as
  Hugging Face templates expect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import msgspec

from orchestrator.frontend.openai.errors import RequestError, invalid_request
from orchestrator.planes.messages import SamplingOptions

MAX_N = 128
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
COMPLETION_MAX_TOKENS = 16
_INT64 = (-(2**63), 2**63 - 1)


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    include_usage: bool = False  # a last chunk with `choices: []` and the usage
    continuous_usage_stats: bool = False  # usage so far on every chunk


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What chat and completion requests share: sampling, stopping, streaming."""

    model: str
    sampling: SamplingOptions = SamplingOptions()
    n: int = 1  # choices; the frontend fans out one engine request per choice
    max_tokens: int | None = None  # None: up to the context
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's logprob and the top k
    stream: bool = False
    stream_options: StreamOptions = StreamOptions()  # all off unless streaming
    user: str | None = None  # accepted as metadata; it changes nothing
    backend_instance_id: int | None = None  # nvext: the worker that must serve it, bypassing the router
    dp_rank: int | None = None  # nvext: and its DP rank (None: the engine balances its ranks)


class ChatRequest(GenerationRequest, frozen=True, kw_only=True):
    messages: list[dict[str, Any]]  # plain dicts, ready for a chat template
    tools: list[dict[str, Any]] = []  # [{type: function, function: {name, description?, parameters?}}]
    tool_choice: str = "none"  # none | auto | required; "auto" by default when tools are given
    tool_name: str | None = None  # set when tool_choice named one function: it must be called
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] = {}


class CompletionRequest(GenerationRequest, frozen=True, kw_only=True):
    prompts: list[str | list[int]]  # one choice set per prompt, text or token ids


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    inputs: list[str | list[int]]
    encoding_format: str = "float"  # float | base64 (little-endian float32)
    user: str | None = None


_GENERATION_FIELDS = {
    "model", "max_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "min_p", "seed",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "n", "best_of", "logprobs", "ignore_eos",
    "min_tokens", "stream", "stream_options", "user", "logit_bias", "response_format", "nvext",
}  # fmt: skip
_CHAT_FIELDS = _GENERATION_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
    "chat_template_kwargs",
}  # fmt: skip
_COMPLETION_FIELDS = _GENERATION_FIELDS | {"prompt", "echo", "suffix"}
_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_NVEXT_FIELDS = {"ignore_eos", "top_k", "repetition_penalty", "min_p", "backend_instance_id", "dp_rank"}

_ROLES = ("system", "developer", "user", "assistant", "tool")
# SDKs echo an earlier assistant message back with these set to null (or []); as such
# they say nothing, and refusing them would break ordinary multi-turn clients.
_ECHOED_FIELDS = ("refusal", "annotations", "audio", "function_call")
_MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", *_ECHOED_FIELDS}


def parse_chat(body: Any) -> ChatRequest:
    f = _Fields(body, "", _CHAT_FIELDS)
    max_tokens = f.integer("max_tokens", None, lo=1)
    max_completion_tokens = f.integer("max_completion_tokens", None, lo=1)
    if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
        raise invalid_request(
            "'max_tokens' and 'max_completion_tokens' disagree; send only 'max_completion_tokens'.", "max_tokens"
        )
    logprobs = f.boolean("logprobs", False)
    top_logprobs = f.integer("top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        raise invalid_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    tools = _tools(f)
    tool_choice, tool_name = _tool_choice(f, tools)
    return ChatRequest(
        **_generation(f, max_tokens if max_completion_tokens is None else max_completion_tokens),
        logprobs=(top_logprobs or 0) if logprobs else None,
        messages=_messages(f),
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        parallel_tool_calls=f.boolean("parallel_tool_calls", True),
        chat_template_kwargs=f.mapping("chat_template_kwargs") or {},
    )


def parse_completion(body: Any) -> CompletionRequest:
    f = _Fields(body, "", _COMPLETION_FIELDS)
    if f.boolean("echo", False):
        raise invalid_request("'echo' is not supported.", "echo")
    if f.get("suffix") is not None:
        raise invalid_request("'suffix' is not supported.", "suffix")
    return CompletionRequest(
        **_generation(f, f.integer("max_tokens", COMPLETION_MAX_TOKENS, lo=1)),
        logprobs=f.integer("logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS),
        prompts=_prompts(f, "prompt"),
    )


def parse_embedding(body: Any) -> EmbeddingRequest:
    f = _Fields(body, "", _EMBEDDING_FIELDS)
    if f.get("dimensions") is not None:
        raise invalid_request("'dimensions' is not supported; the model's own size is returned.", "dimensions")
    return EmbeddingRequest(
        model=f.string("model", required=True, nonempty=True),
        inputs=_prompts(f, "input"),
        encoding_format=f.string("encoding_format", choices=("float", "base64")) or "float",
        user=f.string("user"),
    )


def _generation(f: _Fields, max_tokens: int | None) -> dict[str, Any]:
    """The fields of `GenerationRequest` but `logprobs`, which chat and completions spell differently."""
    model = f.string("model", required=True, nonempty=True)
    nvext = f.fields("nvext", _NVEXT_FIELDS) or _Fields({}, "nvext", ())
    n = f.integer("n", 1, lo=1, hi=MAX_N)
    if f.integer("best_of", n, lo=1) != n:
        raise invalid_request("'best_of' is not supported unless it equals 'n'.", "best_of")
    if f.mapping("logit_bias"):  # {} asks for nothing
        raise invalid_request("'logit_bias' is not supported.", "logit_bias")
    if f.mapping("response_format") not in (None, {"type": "text"}):
        raise invalid_request(
            '\'response_format\' supports only {"type": "text"}: no structured output.', "response_format"
        )
    min_tokens = f.integer("min_tokens", 0, lo=0)
    if max_tokens is not None and min_tokens > max_tokens:
        raise invalid_request(f"'min_tokens' ({min_tokens}) exceeds the maximum ({max_tokens}).", "min_tokens")
    stream = f.boolean("stream", False)
    instance = nvext.integer("backend_instance_id", None, lo=0, hi=2**64 - 1)
    dp_rank = nvext.integer("dp_rank", None, lo=0)
    if dp_rank is not None and instance is None:
        raise invalid_request("'nvext.dp_rank' needs 'nvext.backend_instance_id': the worker whose rank it is.",
                              "nvext.dp_rank")
    return {
        "model": model,
        "sampling": _sampling(f, nvext),
        "n": n,
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "stop": _stop(f),
        "stop_token_ids": tuple(_token_ids(f.array("stop_token_ids") or [], "stop_token_ids", allow_empty=True)),
        "ignore_eos": _merged(f, nvext, "ignore_eos", lambda g: g.boolean("ignore_eos", None), False),
        "stream": stream,
        "stream_options": _stream_options(f, stream),
        "user": f.string("user"),
        "backend_instance_id": instance,
        "dp_rank": dp_rank,
    }


def _sampling(f: _Fields, nvext: _Fields) -> SamplingOptions:
    return SamplingOptions(
        temperature=f.number("temperature", 1.0, lo=0.0, hi=2.0),
        top_p=f.number("top_p", 1.0, lo=0.0, hi=1.0, lo_open=True),
        top_k=_merged(f, nvext, "top_k", _top_k, -1),
        min_p=_merged(f, nvext, "min_p", lambda g: g.number("min_p", None, lo=0.0, hi=1.0), 0.0),
        seed=f.integer("seed", None, lo=_INT64[0], hi=_INT64[1]),
        frequency_penalty=f.number("frequency_penalty", 0.0, lo=-2.0, hi=2.0),
        presence_penalty=f.number("presence_penalty", 0.0, lo=-2.0, hi=2.0),
        repetition_penalty=_merged(
            f, nvext, "repetition_penalty", lambda g: g.number("repetition_penalty", None, lo=0.0, lo_open=True), 1.0
        ),
    )


def _stream_options(f: _Fields, stream: bool) -> StreamOptions:
    options = f.fields("stream_options", {"include_usage", "continuous_usage_stats"})
    if options is None:
        return StreamOptions()
    if not stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    return StreamOptions(
        include_usage=options.boolean("include_usage", False),
        continuous_usage_stats=options.boolean("continuous_usage_stats", False),
    )


def _merged(f: _Fields, nvext: _Fields, key: str, read, default):
    """A parameter Dynamo's `nvext` may carry too: either place, but not two values."""
    top, ext = read(f), read(nvext)
    if None not in (top, ext) and top != ext:
        raise invalid_request(f"'nvext.{key}' ({ext}) contradicts '{key}' ({top}).", f"nvext.{key}")
    return default if top is None and ext is None else (ext if top is None else top)


def _top_k(f: _Fields) -> int | None:
    top_k = f.integer("top_k", None, lo=-1)
    if top_k == 0:  # "off" to some engines, an error to others: refuse the ambiguity
        raise invalid_request(
            f"Invalid value for '{f.name('top_k')}': expected -1 (off) or >= 1, got 0.", f.name("top_k")
        )
    return top_k


def _stop(f: _Fields) -> tuple[str, ...]:
    value = f.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise invalid_request(f"Invalid value for 'stop': expected a string or a list of up to {MAX_STOP}.", "stop")
    if not all(isinstance(s, str) and s for s in stops):
        raise invalid_request("Invalid value for 'stop': every stop must be a non-empty string.", "stop")
    return tuple(stops)


def _prompts(f: _Fields, param: str) -> list[str | list[int]]:
    """A prompt or embedding input: a string, strings, token ids, or lists of token ids."""
    value = f.get(param)
    if value is None:
        raise _missing(param)
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        value = [value]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise invalid_request(f"Invalid value for '{param}': expected a non-empty string or list.", param)
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise invalid_request(f"Invalid value for '{param}[{i}]': must not be empty.", f"{param}[{i}]")
        elif isinstance(item, list):
            _token_ids(item, f"{param}[{i}]", allow_empty=False)
        else:
            raise invalid_request(f"Invalid value for '{param}[{i}]': expected a string or token ids.", f"{param}[{i}]")
    return items


def _token_ids(value: Any, param: str, *, allow_empty: bool) -> list[int]:
    if not isinstance(value, list) or not (value or allow_empty) or not all(_is_int(t) and t >= 0 for t in value):
        what = "a list of token ids (integers >= 0)" + ("" if allow_empty else ", not empty")
        raise invalid_request(f"Invalid value for '{param}': expected {what}.", param)
    return value


def _tools(f: _Fields) -> list[dict[str, Any]]:
    tools = f.array("tools") or []  # [] offers no tools, like an absent field
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(tools):
        tool = _Fields(raw, f"tools[{i}]", {"type", "function"})
        tool.string("type", required=True, choices=("function",))
        fn = tool.fields("function", {"name", "description", "parameters", "strict"}, required=True)
        name = fn.string("name", required=True, nonempty=True)
        if any(t["function"]["name"] == name for t in out):
            raise invalid_request(
                f"Invalid value for '{fn.name('name')}': duplicate tool name {name!r}.", fn.name("name")
            )
        if fn.boolean("strict", False):
            raise invalid_request(f"'{fn.name('strict')}': strict schemas are not supported.", fn.name("strict"))
        function = {"name": name, "description": fn.string("description"), "parameters": fn.mapping("parameters")}
        out.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return out


def _tool_choice(f: _Fields, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    value = f.get("tool_choice")
    if value is None:
        return ("auto" if tools else "none"), None
    if isinstance(value, str):
        choice = f.string("tool_choice", choices=("none", "auto", "required"))
        if choice != "none" and not tools:
            raise invalid_request(f"'tool_choice' {choice!r} requires 'tools'.", "tool_choice")
        return choice, None
    named = f.fields("tool_choice", {"type", "function"})
    named.string("type", required=True, choices=("function",))
    fn = named.fields("function", {"name"}, required=True)
    name = fn.string("name", required=True)
    if all(t["function"]["name"] != name for t in tools):
        raise invalid_request(f"'{fn.name('name')}' is {name!r}, which is not in 'tools'.", fn.name("name"))
    return "required", name


def _messages(f: _Fields) -> list[dict[str, Any]]:
    messages = f.array("messages")
    if messages is None:
        raise _missing("messages")
    if not messages:
        raise invalid_request("Invalid value for 'messages': at least one message is required.", "messages")
    return [_message(_Fields(m, f"messages[{i}]", _MESSAGE_FIELDS)) for i, m in enumerate(messages)]


def _message(m: _Fields) -> dict[str, Any]:
    role = m.string("role", required=True, choices=_ROLES)
    for key in _ECHOED_FIELDS:
        if m.get(key) not in (None, []):
            raise invalid_request(f"'{m.name(key)}' is not supported in a request.", m.name(key))
    for key, owner in (("tool_calls", "assistant"), ("reasoning_content", "assistant"), ("tool_call_id", "tool")):
        if m.get(key) is not None and role != owner:
            raise invalid_request(f"'{m.name(key)}' is only allowed in {owner} messages.", m.name(key))
    tool_calls = [
        _tool_call(_Fields(c, f"{m.name('tool_calls')}[{j}]", {"id", "type", "function"}))
        for j, c in enumerate(m.array("tool_calls") or [])
    ]
    message: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": _content(m, bool(tool_calls)),
    }
    extras = {
        "name": m.string("name"),
        "tool_calls": tool_calls or None,
        "tool_call_id": m.string("tool_call_id", required=role == "tool"),
        "reasoning_content": m.string("reasoning_content"),
    }
    return message | {k: v for k, v in extras.items() if v is not None}


def _content(m: _Fields, may_be_null: bool) -> str:
    value, name = m.get("content"), m.name("content")
    if value is None:
        if not may_be_null:
            raise invalid_request(f"'{name}' is required (null only in an assistant message with tool_calls).", name)
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid_request(f"Invalid value for '{name}': expected a string or a list of text parts.", name)
    texts = []
    for j, raw in enumerate(value):
        if isinstance(raw, dict) and raw.get("type") != "text":
            raise invalid_request(
                f"'{name}[{j}].type' {raw.get('type')!r} is not supported; only 'text'.", f"{name}[{j}].type"
            )
        texts.append(_Fields(raw, f"{name}[{j}]", {"type", "text"}).string("text", required=True))
    return "\n".join(texts)


def _tool_call(c: _Fields) -> dict[str, Any]:
    c.string("type", choices=("function",))
    fn = c.fields("function", {"name", "arguments"}, required=True)
    arguments = fn.string("arguments", required=True)
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid_request(
            f"Invalid value for '{fn.name('arguments')}': expected a JSON object as a string.", fn.name("arguments")
        )
    function = {"name": fn.string("name", required=True, nonempty=True), "arguments": parsed}
    return {"id": c.string("id", required=True, nonempty=True), "type": "function", "function": function}


def _missing(param: str) -> RequestError:
    return invalid_request(f"Missing required parameter: '{param}'.", param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


class _Fields:
    """One JSON object under validation, read field by field with its type checked.

    Construction refuses a non-object and any key outside `known`. `path` prefixes
    every name reported, so a nested field is named in full (`messages[2].role`).
    Reads return the default for an absent or null field.
    """

    def __init__(self, value: Any, path: str, known: Iterable[str]):
        if not isinstance(value, dict):
            if not path:
                raise invalid_request("The request body must be a JSON object.")
            raise invalid_request(f"Invalid value for '{path}': expected an object.", path)
        known = set(known)
        for key in value:
            if key not in known:
                raise invalid_request(
                    f"Unrecognized request argument supplied: {self._join(path, key)}", self._join(path, key)
                )
        self._value, self._path = value, path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def name(self, key: str) -> str:
        return self._join(self._path, key)

    def get(self, key: str) -> Any:
        return self._value.get(key)

    def _invalid(self, key: str, expected: str) -> RequestError:
        return invalid_request(
            f"Invalid value for '{self.name(key)}': expected {expected}, got {self.get(key)!r}.", self.name(key)
        )

    def string(
        self, key: str, *, required: bool = False, nonempty: bool = False, choices: Iterable[str] = ()
    ) -> str | None:
        value = self.get(key)
        if value is None:
            if required:
                raise _missing(self.name(key))
            return None
        if not isinstance(value, str) or (nonempty and not value):
            raise self._invalid(key, "a non-empty string" if nonempty else "a string")
        if choices and value not in choices:
            raise self._invalid(key, "one of " + ", ".join(repr(c) for c in choices))
        return value

    def boolean(self, key: str, default: bool | None) -> bool | None:
        value = self.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._invalid(key, "a boolean")
        return default if value is None else value

    def integer(self, key: str, default: int | None, *, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in [{lo}, {hi}]" if None not in (lo, hi) else f">= {lo}" if lo is not None else ""
            raise self._invalid(key, f"an integer {bounds}".rstrip())
        return value

    def number(
        self, key: str, default: float | None, *, lo: float, hi: float = math.inf, lo_open: bool = False
    ) -> float | None:
        value = self.get(key)
        if value is None:
            return default
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > hi or value < lo or (lo_open and value == lo):
            if hi == math.inf:
                bounds = f"{'>' if lo_open else '>='} {lo:g}"
            else:
                bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise self._invalid(key, f"a number {bounds}")
        return float(value)

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.get(key)
        if value is not None and not isinstance(value, dict):
            raise self._invalid(key, "an object")
        return value

    def array(self, key: str) -> list[Any] | None:
        value = self.get(key)
        if value is not None and not isinstance(value, list):
            raise self._invalid(key, "a list")
        return value

    def fields(self, key: str, known: Iterable[str], *, required: bool = False) -> _Fields | None:
        value = self.get(key)
        if value is None:
            if required:
                raise _missing(self.name(key))
            return None
        return _Fields(value, self.name(key), known)
