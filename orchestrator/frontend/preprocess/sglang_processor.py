"""SGLang's chat processing in the frontend (`--dyn-chat-processor sglang`).

Dynamo's experimental mode: the frontend prepares a chat request with SGLang's own
code instead of its own, and still sends token ids, so routing works unchanged. This
module owns that mode: rendering a request to token ids as SGLang's OpenAI server
does, and adapting SGLang's tool-call and reasoning parsers to the frontend's parser
protocols (`push`/`finish`/`parse`), so `choice_stream` runs them like its own.

SGLang is imported here only, and only once this mode is selected: nothing on the
default path imports this module's SGLang side. Where SGLang does not import,
`require_sglang` raises the `ConfigError` the CLI prints.

What of SGLang (0.5.23) it runs:
- the tokenizer SGLang loads (`sglang.srt.utils.hf_transformers_utils.get_tokenizer`)
  and SGLang's template detection (`sglang.srt.parser.template_manager.TemplateManager`:
  content format, whether the template forces reasoning);
- the request as SGLang validates it (`entrypoints.openai.protocol.ChatCompletionRequest`),
  then the Jinja branch of `OpenAIServingChat._apply_jinja_template`, step by step with
  SGLang's own helpers (`serving_chat.normalize_assistant_tool_call_arguments`,
  `normalize_tool_content`, `jinja_template_utils.process_content_for_template_format`,
  `parallel_prompt_encode.parallel_prompt_encode`). `OpenAIServingChat` itself cannot be
  built without a published server config, so its orchestration is followed here;
  tests/unit/frontend/test_sglang_chat_processor.py holds the two against each other.
- `function_call.function_call_parser.FunctionCallParser` and
  `parser.reasoning_parser.ReasoningParser`, built per choice as `serving_chat` builds
  them (its `_get_reasoning_from_request` decides whether reasoning is forced).

Models SGLang renders some other way (a built-in conversation template, a Python
template, the DeepSeek-V3.2/V4 and Kimi-K3 encoders) are refused by name.

Behaviour that differs from the frontend's own processing, all SGLang's:
- Tools reach the template as SGLang's `Tool.model_dump()`: each gains
  `"defer_loading": null` in 0.5.23, so a template that prints tools whole renders them
  differently. `tool_choice: none` renders no tools; a named choice renders only it.
- A final assistant message is rendered as a user message (SGLang's answer to a request
  that does not ask to continue it); history tool-call arguments are parsed to objects.
- Parser names are SGLang's (`hermes`, `qwen25`, `deepseek-r1`, `qwen3`, ...); Dynamo's
  `deepseek_r1` is taken as SGLang's `deepseek-r1`. SGLang keeps reasoning and content
  untrimmed and serializes arguments with `json.dumps` spacing. Its streaming sends a
  call's name as soon as it parses: a block whose JSON never completes still yields the
  call (with what arguments parsed) and the text after it is lost; a call to a tool the
  request did not offer is dropped and the rest of its block stays in the content; a
  possible tag prefix at the very end of the output is dropped.
- `tool_choice: required` or a named function: SGLang would constrain the output to a
  JSON array; no constraint reaches the worker here, so the model's own format is parsed.
- Detokenization stays the frontend's. SGLang keeps special tokens in the text while it
  parses tool calls (for formats whose markers are special tokens); the frontend skips them.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from orchestrator.errors import ConfigError
from orchestrator.frontend.models import Model
from orchestrator.frontend.openai import errors, responses
from orchestrator.frontend.openai.requests import ChatRequest
from orchestrator.frontend.parsers import ReasoningParser, ToolCall, ToolCallDelta, ToolCallParser

# Every SGLang module this mode uses; `require_sglang` imports them all up front.
SGLANG_MODULES = (
    "sglang.srt.utils.hf_transformers_utils",
    "sglang.srt.parser.template_manager",
    "sglang.srt.parser.jinja_template_utils",
    "sglang.srt.entrypoints.openai.protocol",
    "sglang.srt.entrypoints.openai.serving_chat",
    "sglang.srt.entrypoints.openai.parallel_prompt_encode",
    "sglang.srt.entrypoints.openai.chat_encoding",
    "sglang.srt.function_call.function_call_parser",
    "sglang.srt.parser.reasoning_parser",
)

# Dynamo's parser names that SGLang spells differently; every other name is SGLang's.
_SGLANG_NAMES = {"deepseek_r1": "deepseek-r1"}

# SGLang's streaming detectors are written for token-sized increments, and some decide
# differently when one increment holds more (Hermes leaves `</tool_call>` in the content
# when an increment closes one call and opens the next). The adapters therefore feed
# SGLang the output cut at fixed positions, whatever way the worker's chunks fell: the
# same output always meets SGLang in the same increments. The tool-call detector
# re-parses a call's JSON at every increment (quadratic in its length, as in SGLang's own
# server), so it gets about a token's worth; the reasoning detector is cheap.
_TOOL_CALL_INCREMENT = 4
_REASONING_INCREMENT = 1
_MAX_STEPS_PER_PIECE = 64


def require_sglang() -> None:
    """Import what this mode runs, or raise the `ConfigError` that says why it cannot."""
    for name in SGLANG_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure means the mode is unavailable
            cause = (str(e).splitlines() or [""])[0]
            raise ConfigError(
                "--dyn-chat-processor",
                f"SGLang's chat processor needs sglang, which does not import here ({type(e).__name__}: {cause})",
                "install sglang beside the frontend, or use --dyn-chat-processor dynamo",
            ) from e


class SGLangChatProcessor:
    """Prepares chat requests with SGLang's code. Build it with `load()` when the
    frontend starts in this mode; a model's tokenizer and template state load on its
    first chat request and stay. Single-threaded, like the event loop that calls it."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str | None], _ModelChat] = {}

    @classmethod
    def load(cls) -> SGLangChatProcessor:
        require_sglang()
        return cls()

    def render(self, model: Model, request: ChatRequest) -> list[int]:
        """The prompt's token ids as SGLang's server would compute them; a request SGLang
        would refuse (its validation, a template's own error) is a 400."""
        chat = self._chat(model)
        try:
            return chat.render(_sglang_request(model, request))
        except ValueError as e:  # pydantic's ValidationError is one
            raise errors.invalid_request(str(e), "messages") from e

    def reasoning_parser(self, model: Model, request: ChatRequest, name: str) -> Callable[[], ReasoningParser]:
        """The factory of this request's reasoning parsers (one per choice); ValueError for an unknown name."""
        from sglang.srt.parser.reasoning_parser import ReasoningParser as SGLangReasoningParser

        chat = self._chat(model)
        sglang_name = _sglang_parser_name(name, SGLangReasoningParser.DetectorMap, "reasoning")
        sgl_request = _sglang_request(model, request)
        force = chat.templates.force_reasoning or chat.reasoning_requested(sglang_name, sgl_request)
        tools_parsed = bool(model.card.tool_call_parser and request.tools) and request.tool_choice != "none"

        def new() -> SGLangReasoningParser:
            return SGLangReasoningParser(
                model_type=sglang_name,
                stream_reasoning=True,
                force_reasoning=force,
                request=sgl_request,
                tokenizer=chat.tokenizer,
                tool_call_parser_active=tools_parsed,
            )

        return lambda: SGLangReasoning(new)

    def tool_call_parser(self, model: Model, request: ChatRequest, name: str) -> Callable[[], ToolCallParser]:
        """The factory of this request's tool-call parsers (one per choice); ValueError for an unknown name."""
        from sglang.srt.function_call.function_call_parser import FunctionCallParser

        chat = self._chat(model)
        sglang_name = _sglang_parser_name(name, FunctionCallParser.ToolCallParserEnum, "tool-call")
        tools = _sglang_request(model, request).tools or []

        def new() -> FunctionCallParser:
            return FunctionCallParser(tools=tools, tool_call_parser=sglang_name, tokenizer=chat.tokenizer)

        return lambda: SGLangToolCalls(new)

    def _chat(self, model: Model) -> _ModelChat:
        key = (model.card.tokenizer_path, model.card.model_path, model.card.tool_call_parser)
        chat = self._models.get(key)
        if chat is None:
            chat = self._models[key] = _ModelChat.load(model)
        return chat


@dataclass
class _ModelChat:
    """One model as SGLang's server sees it: its tokenizer and template features."""

    tokenizer: Any
    templates: Any  # sglang TemplateManager
    encode_kwargs: dict[str, Any]
    round_trip_is_lossy: bool  # rendering to text and encoding it loses control tokens (mistral-common)
    _reasoning_defaults: dict[str, Any] = field(default_factory=dict)  # parser name -> its detector

    @classmethod
    def load(cls, model: Model) -> _ModelChat:
        from sglang.srt.entrypoints.openai.chat_encoding import resolve_chat_encoding_spec
        from sglang.srt.parser.template_manager import TemplateManager
        from sglang.srt.utils.hf_transformers_utils import get_tokenizer

        tokenizer_path = Path(model.card.tokenizer_path)
        tokenizer = get_tokenizer(str(tokenizer_path))
        if isinstance(tokenizer.chat_template, dict) and tokenizer.chat_template:
            # Named templates: SGLang takes --hf-chat-template-name, else the first one.
            tokenizer.chat_template = next(iter(tokenizer.chat_template.values()))
        hf_config = _hf_config(tokenizer_path)
        templates = TemplateManager()
        # The template manager reads these three of SGLang's TokenizerManager.
        templates.load_chat_template(
            SimpleNamespace(tokenizer=tokenizer, processor=None, model_config=SimpleNamespace(hf_config=hf_config)),
            None,
            model.card.model_path,
        )
        spec = resolve_chat_encoding_spec(hf_config=hf_config, tokenizer=tokenizer,
                                          tool_call_parser=_sglang_name(model.card.tool_call_parser))
        other = (f"its conversation template {templates.chat_template_name!r}" if templates.chat_template_name
                 else "a Python chat template" if templates.python_chat_template is not None
                 else f"its {spec!r} encoder" if spec is not None else None)
        if other is not None:
            raise errors.internal_error(
                f"SGLang renders {model.name}'s chats with {other}, which the frontend's SGLang mode does not run; "
                "use --dyn-chat-processor dynamo"
            )
        # serving_chat keeps add_special_tokens=False only where encode("") adds specials.
        encode_kwargs = {"add_special_tokens": False} if tokenizer.encode("") else {}
        return cls(tokenizer, templates, encode_kwargs, _round_trip_is_lossy(tokenizer, encode_kwargs))

    def render(self, request: Any) -> list[int]:
        """`OpenAIServingChat._apply_jinja_template`'s Jinja branch for a text-only request."""
        from sglang.srt.entrypoints.openai.serving_chat import (
            OpenAIServingChat,
            normalize_assistant_tool_call_arguments,
            normalize_tool_content,
        )
        from sglang.srt.parser.jinja_template_utils import process_content_for_template_format

        messages = [message.model_dump() for message in request.messages]
        for message in messages:
            normalize_assistant_tool_call_arguments(message, strict=True)
        if self.templates.jinja_template_may_reorder_tool_results:
            messages = OpenAIServingChat._canonicalize_tool_message_order(messages)
        prepared = []
        for message in messages:
            if message.get("content") is None:
                message["content"] = ""
            message = process_content_for_template_format(message, self.templates.jinja_template_content_format,
                                                          [], [], [], [])
            message["content"] = normalize_tool_content(message["role"], message.get("content"))
            prepared.append(message)
        if prepared and prepared[-1].get("role") == "assistant" and isinstance(prepared[-1].get("content"), str):
            prepared[-1] = {"role": "user", "content": prepared[-1]["content"]}  # no continue_final_message here
        tools = _template_tools(request)
        kwargs = dict(request.chat_template_kwargs or {})
        try:
            return self._encode(prepared, tools, kwargs)
        except Exception:  # noqa: BLE001 - SGLang retries any failure with bare functions (Mistral's templates)
            bare = [tool.get("function", tool) for tool in tools] if tools else None
            try:
                return self._encode(prepared, bare, kwargs)
            except Exception as e:
                from jinja2 import TemplateError

                if isinstance(e, (TemplateError, TypeError)):  # SGLang answers these with a 400
                    raise ValueError(str(e)) from e
                raise

    def reasoning_requested(self, name: str, request: Any) -> bool:
        """Whether SGLang forces this request's output to start in reasoning: its server's
        own rule, run on the three things it reads from the server."""
        from sglang.srt.entrypoints.openai.serving_chat import OpenAIServingChat
        from sglang.srt.parser.reasoning_parser import ReasoningParser as SGLangReasoningParser

        if name not in self._reasoning_defaults:
            self._reasoning_defaults[name] = SGLangReasoningParser(
                model_type=name, stream_reasoning=True, tokenizer=self.tokenizer
            ).detector
        server = SimpleNamespace(reasoning_parser=name, template_manager=self.templates,
                                 _reasoning_detector=self._reasoning_defaults[name])
        return bool(OpenAIServingChat._get_reasoning_from_request(server, request))

    def _encode(self, messages: list[dict], tools: list[dict] | None, kwargs: dict[str, Any]) -> list[int]:
        from sglang.srt.entrypoints.openai.parallel_prompt_encode import parallel_prompt_encode

        template = dict(add_generation_prompt=True, tools=tools, return_dict=False, **kwargs)
        if self.round_trip_is_lossy:
            return list(self.tokenizer.apply_chat_template(messages, tokenize=True, **template))
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, **template)
        return list(parallel_prompt_encode(self.tokenizer, text, self.encode_kwargs))


class SGLangReasoning:
    """Our `ReasoningParser` over SGLang's `ReasoningParser`: `push`/`finish` return
    `(reasoning delta, content delta)`; `parse` is one `push` and `finish` on a fresh
    parser. SGLang keeps the text around its tags as it is (no trimming)."""

    def __init__(self, new: Callable[[], Any]):
        self._new = new
        self._parser = new()
        self._feed = _Increments(_REASONING_INCREMENT)

    def parse(self, text: str) -> tuple[str | None, str]:
        whole = SGLangReasoning(self._new)
        reasoning, content = whole.push(text)
        more_reasoning, more_content = whole.finish()
        return (reasoning + more_reasoning) or None, content + more_content

    def push(self, text: str) -> tuple[str, str]:
        return self._run(self._feed.push(text))

    def finish(self) -> tuple[str, str]:
        reasoning, content = self._run(self._feed.flush())
        more_reasoning, more_content = self._parser.parse_stream_end()
        return reasoning + (more_reasoning or ""), content + (more_content or "")

    def _run(self, pieces: list[str]) -> tuple[str, str]:
        reasoning, content = [], []
        for piece in pieces:
            r, c = self._parser.parse_stream_chunk(piece)
            reasoning.append(r or "")
            content.append(c or "")
        return "".join(reasoning), "".join(content)


class SGLangToolCalls:
    """Our `ToolCallParser` over SGLang's `FunctionCallParser`: `push`/`finish` return
    `(content delta, call deltas)`; `parse` is one `push` and `finish` on a fresh parser.

    A call streams as SGLang streams it: a first delta with id and name, then its
    arguments in pieces (one push's pieces are merged). A step SGLang defers to its next
    increment is taken at once (the detector runs until it has nothing more to say), and
    `finish` sends what SGLang's server sends at the end: the detector's flush and the
    arguments of a call it had parsed but not yet streamed. Ids are SGLang's
    (`call_` + 24 hex digits)."""

    def __init__(self, new: Callable[[], Any]):
        self._new = new
        self._parser = new()
        self._feed = _Increments(_TOOL_CALL_INCREMENT)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        whole = SGLangToolCalls(self._new)
        content, deltas = whole.push(text)
        more_content, more_deltas = whole.finish()
        calls: dict[int, list] = {}
        for d in deltas + more_deltas:
            calls.setdefault(d.index, [d.id or "", d.name or "", ""])[2] += d.arguments
        return content + more_content, [ToolCall(*calls[i]) for i in sorted(calls)]

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        for piece in self._feed.push(text):
            self._step(piece, content, deltas)
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        for piece in self._feed.flush():
            self._step(piece, content, deltas)
        text, items = self._parser.parse_stream_end()
        content.append(text or "")
        for item in items:
            _add(deltas, item.tool_index, item.name, item.parameters)
        rest = _unstreamed_arguments(self._parser.detector)
        if rest is not None:
            _add(deltas, *rest)
        return "".join(content), deltas

    def _step(self, piece: str, content: list[str], deltas: list[ToolCallDelta]) -> None:
        # A detector takes one step per increment (a call's name, then its arguments)
        # and leaves the rest in its buffer: run it until it has nothing more to say.
        # The bound only keeps a detector that never settles from holding the loop;
        # whatever it still holds goes on with the next piece.
        for _ in range(_MAX_STEPS_PER_PIECE):
            text, items = self._parser.parse_stream_chunk(piece)
            content.append(text or "")
            for item in items:
                _add(deltas, item.tool_index, item.name, item.parameters)
            if not text and not items:
                return
            piece = ""


@dataclass
class _Increments:
    """Cuts an output into pieces of `size` characters counted from its start."""

    size: int
    _pending: str = ""

    def push(self, text: str) -> list[str]:
        buf = self._pending + text
        cut = len(buf) - len(buf) % self.size
        self._pending = buf[cut:]
        return [buf[i : i + self.size] for i in range(0, cut, self.size)]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []


def _add(deltas: list[ToolCallDelta], index: int, name: str | None, arguments: str) -> None:
    """Append one of SGLang's call items; arguments right after their call's piece join it."""
    if name:
        deltas.append(ToolCallDelta(index, f"call_{responses.unique_hex()[:24]}", name, arguments))
    elif deltas and deltas[-1].index == index:
        last = deltas[-1]
        deltas[-1] = ToolCallDelta(index, last.id, last.name, last.arguments + arguments)
    elif arguments:
        deltas.append(ToolCallDelta(index, None, None, arguments))


def _unstreamed_arguments(detector: Any) -> tuple[int, None, str] | None:
    """`OpenAIServingChat._check_for_unstreamed_tool_args`: the part of the last call's
    arguments the detector parsed but never streamed (a call the output cut short)."""
    parsed = getattr(detector, "prev_tool_call_arr", None)
    streamed = getattr(detector, "streamed_args_for_tool", None)
    if not parsed or not streamed or len(parsed) > len(streamed):
        return None
    index = len(parsed) - 1
    expected = parsed[index].get("arguments", {})
    expected = expected if isinstance(expected, str) else json.dumps(expected, ensure_ascii=False)
    sent = streamed[index]
    rest = expected[len(sent) :] if expected.startswith(sent) else ""
    return (index, None, rest) if rest else None


def _sglang_request(model: Model, request: ChatRequest) -> Any:
    """The request as SGLang's server validates it (its own types and defaults)."""
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest

    tool_choice: Any = request.tool_choice
    if request.tool_name is not None:
        tool_choice = {"type": "function", "function": {"name": request.tool_name}}
    return ChatCompletionRequest(
        model=model.name,
        messages=list(request.messages),
        tools=list(request.tools) or None,
        tool_choice=tool_choice,
        parallel_tool_calls=request.parallel_tool_calls,
        chat_template_kwargs=dict(request.chat_template_kwargs) or None,
    )


def _template_tools(request: Any) -> list[dict] | None:
    """The tools `_process_messages` hands the template."""
    if not request.tools or request.tool_choice == "none":
        return None
    if isinstance(request.tool_choice, str):
        return [tool.model_dump() for tool in request.tools]
    chosen = request.tool_choice.function.name
    return [tool.model_dump() for tool in request.tools if tool.function.name == chosen] or None


def _round_trip_is_lossy(tokenizer: Any, encode_kwargs: dict[str, Any]) -> bool:
    """`OpenAIServingChat._probe_prompt_text_round_trip`: does a rendered prompt encode
    to other ids than the template's own tokenization? (mistral-common tokenizers)"""
    probe = [{"role": "user", "content": "x"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True, return_dict=False)
        direct = tokenizer.apply_chat_template(probe, tokenize=True, add_generation_prompt=True, return_dict=False)
        return list(tokenizer.encode(text, **encode_kwargs)) != list(direct)
    except Exception:  # noqa: BLE001 - a template that needs kwargs tells nothing; SGLang keeps the text path
        return False


def _hf_config(model_dir: Path) -> SimpleNamespace:
    """What SGLang's template choice reads of the model's config: its architectures and type."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return SimpleNamespace(architectures=config.get("architectures") or [], model_type=config.get("model_type"))


def _sglang_name(name: str | None) -> str | None:
    return _SGLANG_NAMES.get(name, name) if name else name


def _sglang_parser_name(name: str, known: Any, kind: str) -> str:
    sglang_name = _sglang_name(name)
    if sglang_name not in known:
        raise ValueError(f"unknown {kind} parser {name!r} for SGLang's chat processor; known: {', '.join(sorted(known))}")
    return sglang_name
