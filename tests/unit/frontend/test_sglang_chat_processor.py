"""`--dyn-chat-processor sglang`: SGLang renders the tiny model's chats and parses its
output through the frontend's parser protocols.

Rendering is held against the frontend's own path (the same ids, but for what SGLang
does on purpose) and against SGLang's own server code (`OpenAIServingChat._process_messages`,
built under a runtime context of its own). The parsers are held against SGLang's
whole-text parsing and against themselves at every split of a stream.

SGLang is imported as tests/sglang_env.py arranges it on this CPU; where it cannot be,
those tests skip with the reason. Beyond tests/sglang-cpu.txt they need what this mode
imports and SGLang declares: `pip install --no-deps xgrammar==0.2.7` (not its Triton) and
`pip install jsonschema`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import orchestrator.models
from orchestrator.frontend import handlers as h
from orchestrator.frontend.args import parse_frontend_args
from orchestrator.frontend.generation import choice_stream
from orchestrator.frontend.models import Model
from orchestrator.frontend.openai import errors
from orchestrator.frontend.openai.requests import parse_chat
from orchestrator.frontend.preprocess import ModelTokenizer
from orchestrator.frontend.preprocess import sglang_processor as sp
from orchestrator.planes import messages as m
from orchestrator.planes.discovery.records import ModelCard
from orchestrator.roles import ChatProcessor
from tests.sglang_env import require_sglang

TINY = Path(orchestrator.models.__file__).parent / "tiny"
REPO = Path(__file__).resolve().parents[3]
TOKENIZER = ModelTokenizer.load(TINY)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? ünïcödé ✓"},
    ],
]
TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "user", "content": "Thanks. And the time?"},
]  # fmt: skip

TOOL_OUTPUT = (
    'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
)
THINK_OUTPUT = "<think>\nThe user greets me.\n</think>\n\nHello!"


@pytest.fixture(scope="module")
def sgl():
    """SGLang's chat processor, or a skip saying why SGLang cannot run here."""
    try:
        require_sglang(*sp.SGLANG_MODULES)
    except ImportError as e:
        pytest.skip(f"SGLang's chat processing needs {e.name} here "
                    "(pip install --no-deps xgrammar==0.2.7 && pip install jsonschema)")
    return sp.SGLangChatProcessor.load()


def model(tool_call_parser: str | None = "hermes", reasoning_parser: str | None = "deepseek_r1") -> Model:
    card = ModelCard(served_name="tiny", model_path=str(TINY), tokenizer_path=str(TINY), context_length=8192,
                     kv_block_size=16, model_types=["chat"], tool_call_parser=tool_call_parser,
                     reasoning_parser=reasoning_parser)
    return Model("tiny", card, TOKENIZER)


def chat(messages, **body):
    return parse_chat({"model": "tiny", "messages": messages, **body})


def default_ids(messages, tools=None) -> list[int]:
    tokenizer = model().tokenizer
    return tokenizer.encode(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True))


# -- the mode: selected by name, importing SGLang only then --------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_default_path_never_imports_sglang():
    run = _run(
        "import sys\n"
        "import orchestrator.frontend.server, orchestrator.frontend.runtime\n"
        "from orchestrator.frontend.args import parse_frontend_args\n"
        "parse_frontend_args([], environ={})\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'sglang'))\n"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_mode_is_refused_by_name_where_sglang_does_not_import():
    run = _run(
        "import sys\n"
        "sys.modules['sglang'] = None  # any import of it fails, as where it is not installed\n"
        "from orchestrator.errors import ConfigError\n"
        "from orchestrator.frontend.args import parse_frontend_args\n"
        "try:\n"
        "    parse_frontend_args(['--dyn-chat-processor', 'sglang'], environ={})\n"
        "except ConfigError as e:\n"
        "    print(e.key, '|', e.exit_code, '|', e)\n"
    )
    assert run.returncode == 0, run.stderr
    key, code, message = run.stdout.strip().split(" | ")
    assert (key, code) == ("--dyn-chat-processor", "2")
    assert "needs sglang" in message and "--dyn-chat-processor dynamo" in message
    assert "\n" not in message


def test_the_mode_is_accepted_where_sglang_imports(sgl):
    args = parse_frontend_args(["--dyn-chat-processor", "sglang"], environ={})
    assert args.chat_processor is ChatProcessor.sglang


# -- rendering -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_plain_chats_render_to_the_frontends_own_ids(sgl, messages):
    assert sgl.render(model(), chat(messages)) == default_ids(messages)


def sglang_dump(tool: dict) -> dict:
    """A tool as SGLang 0.5.23's `Tool.model_dump()` hands it to the template: the keys
    given, in their order, then `description: null` when none was given, and the tool's
    own `defer_loading: null`."""
    function = dict(tool["function"])
    function.setdefault("description", None)
    return {**tool, "function": function, "defer_loading": None}


def test_tools_render_as_sglang_dumps_them(sgl):
    """The one difference from the frontend's own rendering: the tools SGLang hands the
    template carry keys the client never sent, and this template prints tools whole."""
    messages = CONVERSATIONS[1]
    ids = sgl.render(model(), chat(messages, tools=[WEATHER, TIME]))
    assert ids == default_ids(messages, [sglang_dump(WEATHER), sglang_dump(TIME)])
    assert ids != default_ids(messages, [WEATHER, TIME])


def test_tool_choice_decides_which_tools_the_template_sees(sgl):
    messages = CONVERSATIONS[0]
    none = sgl.render(model(), chat(messages, tools=[WEATHER, TIME], tool_choice="none"))
    named = sgl.render(model(), chat(messages, tools=[WEATHER, TIME],
                                     tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert none == default_ids(messages)
    assert named == default_ids(messages, [sglang_dump(TIME)])


def test_a_template_that_refuses_the_messages_is_a_bad_request(sgl, tmp_path):
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('one message at most') if messages | length > 1 }}{{ bos_token }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).symlink_to(TINY / name)
    strict = Model("strict", ModelCard(served_name="strict", model_path=str(tmp_path), tokenizer_path=str(tmp_path),
                                       context_length=8192, kv_block_size=16, model_types=["chat"]),
                   ModelTokenizer.load(tmp_path))
    assert sgl.render(strict, chat(CONVERSATIONS[0])) == [0]
    with pytest.raises(errors.RequestError, match="one message at most") as e:
        sgl.render(strict, chat(CONVERSATIONS[1]))
    assert (e.value.status, e.value.param) == (400, "messages")


def test_a_model_sglang_renders_with_its_own_encoder_is_refused_by_name(sgl):
    with pytest.raises(errors.RequestError, match="'dsv32' encoder") as e:
        sgl.render(model(tool_call_parser="deepseekv32"), chat(CONVERSATIONS[0]))
    assert e.value.status == 500 and "--dyn-chat-processor dynamo" in str(e.value)


@pytest.fixture(scope="module")
def sglang_server_chat(sgl):
    """SGLang's own `OpenAIServingChat` for the tiny model, built under a runtime context
    of its own (ServerArgs publish SGLang's process environment, put back afterwards)."""
    server_args, runtime, serving_chat, templates, hf = require_sglang(
        "sglang.srt.server_args", "sglang.srt.runtime_context", "sglang.srt.entrypoints.openai.serving_chat",
        "sglang.srt.parser.template_manager", "sglang.srt.utils.hf_transformers_utils",
    )
    environ = dict(os.environ)
    try:
        context = runtime.create_context(server_args.ServerArgs(model_path=str(TINY), device="cpu"), role="tokenizer")
    finally:
        os.environ.clear()
        os.environ.update(environ)
    config = json.loads((TINY / "config.json").read_text())
    tokenizer_manager = SimpleNamespace(
        tokenizer=hf.get_tokenizer(str(TINY)), processor=None, model_path=str(TINY), served_model_name="tiny",
        server_args=None, config_value={"tool_call_parser": "hermes", "reasoning_parser": "deepseek-r1"}.get,
        model_config=SimpleNamespace(hf_config=SimpleNamespace(**config), is_multimodal=False,
                                     get_default_sampling_params=dict),
    )
    manager = templates.TemplateManager()
    manager.load_chat_template(tokenizer_manager, None, str(TINY))
    with runtime.use_context(context):
        return serving_chat.OpenAIServingChat(tokenizer_manager, manager)


@pytest.mark.parametrize("messages, body", [
    (CONVERSATIONS[2], {}),
    (CONVERSATIONS[1], {"tools": [WEATHER, TIME]}),
    (TOOL_HISTORY, {"tools": [WEATHER, TIME]}),
    (TOOL_HISTORY, {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    (CONVERSATIONS[1], {"tools": [WEATHER], "tool_choice": "none"}),
    (CONVERSATIONS[2][:3], {}),  # ends with the assistant's turn
], ids=["multi-turn", "tools", "tool-history", "named-tool", "tool-choice-none", "assistant-last"])  # fmt: skip
def test_rendering_matches_sglangs_own_server(sgl, sglang_server_chat, messages, body):
    request = chat(messages, **body)
    server = sglang_server_chat._process_messages(sp._sglang_request(model(), request), is_multimodal=False)
    assert sgl.render(model(), request) == list(server.prompt_ids)


# -- the tool-call parser ------------------------------------------------------------------------------


def _stream(parser, pieces: list[str]):
    content, deltas = "", []
    for piece in pieces:
        text, more = parser.push(piece)
        content, deltas = content + text, deltas + more
    text, more = parser.finish()
    return content + text, deltas + more


def _calls(deltas) -> list[tuple[str, dict]]:
    """Deltas as a client assembles them: per index, the first piece's name and all arguments."""
    calls: dict[int, list] = {}
    for d in deltas:
        if d.index not in calls:
            assert d.id and d.id.startswith("call_") and d.name, "a call's first delta has its id and name"
            calls[d.index] = [d.name, ""]
        else:
            assert d.id is None and d.name is None
        calls[d.index][1] += d.arguments
    return [(name, json.loads(arguments)) for _, (name, arguments) in sorted(calls.items())]


def _tool_parser(sgl, tools=(WEATHER, TIME)):
    return sgl.tool_call_parser(model(), chat(CONVERSATIONS[0], tools=list(tools)), "hermes")


def test_tool_calls_are_taken_whole_as_sglang_takes_them(sgl):
    new = _tool_parser(sgl)
    content, calls = new().parse(TOOL_OUTPUT)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert content.strip() == "Let me check."
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    # SGLang's own whole-text parse agrees on the calls.
    fcp, = require_sglang("sglang.srt.function_call.function_call_parser")
    tools = sp._sglang_request(model(), chat(CONVERSATIONS[0], tools=[WEATHER, TIME])).tools
    normal, items = fcp.FunctionCallParser(tools, "hermes").parse_non_stream(TOOL_OUTPUT)
    assert [(i.name, i.parameters) for i in items] == [(c.name, c.arguments) for c in calls]
    assert normal == content.strip()


def test_tool_calls_stream_the_same_at_every_split(sgl):
    new = _tool_parser(sgl)
    whole = _stream(new(), [TOOL_OUTPUT])
    assert _calls(whole[1]) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert "tool_call" not in whole[0] and whole[0].strip() == "Let me check."
    for at in range(len(TOOL_OUTPUT) + 1):
        content, deltas = _stream(new(), [TOOL_OUTPUT[:at], TOOL_OUTPUT[at:]])
        assert (content, _calls(deltas)) == (whole[0], _calls(whole[1])), at
    content, deltas = _stream(new(), list(TOOL_OUTPUT))
    assert (content, _calls(deltas)) == (whole[0], _calls(whole[1]))


def test_a_call_streams_its_name_before_its_arguments_close(sgl):
    parser = _tool_parser(sgl)()
    _, first = parser.push('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    assert [(d.index, d.name) for d in first] == [(0, "get_weather")]
    _, rest = parser.push('ris"}}</tool_call>')
    _, end = parser.finish()
    assert _calls(first + rest + end) == [("get_weather", {"city": "Paris"})]


def test_text_without_calls_is_content(sgl):
    text = "No tools needed: 2 < 3 and <b>bold</b>."
    assert _stream(_tool_parser(sgl)(), [text]) == (text, [])
    assert _stream(_tool_parser(sgl)(), list(text)) == (text, [])


def test_a_call_to_a_tool_not_offered_is_dropped_as_sglang_drops_it(sgl):
    # (SGLang's streaming then leaves the rest of that block in the content.)
    content, calls = _tool_parser(sgl, tools=[TIME])().parse(TOOL_OUTPUT)
    assert [(c.name, c.arguments) for c in calls] == [("get_time", "{}")]


def test_an_unknown_parser_name_is_refused(sgl):
    with pytest.raises(ValueError, match="unknown tool-call parser 'nope'"):
        sgl.tool_call_parser(model(), chat(CONVERSATIONS[0], tools=[WEATHER]), "nope")


# -- the reasoning parser ------------------------------------------------------------------------------


def _reasoning_stream(parser, pieces: list[str]) -> tuple[str, str]:
    reasoning, content = "", ""
    for piece in pieces:
        r, c = parser.push(piece)
        reasoning, content = reasoning + r, content + c
    r, c = parser.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize("name, body, text, expected", [
    ("deepseek_r1", {}, THINK_OUTPUT, ("\nThe user greets me.\n", "\n\nHello!")),
    ("deepseek_r1", {}, "The template opened it.</think>Hi", ("The template opened it.", "Hi")),
    ("deepseek_r1", {}, "Cut short before the end", ("Cut short before the end", "")),
    ("qwen3", {}, THINK_OUTPUT, ("\nThe user greets me.\n", "\n\nHello!")),
    ("qwen3", {"chat_template_kwargs": {"enable_thinking": False}}, "Just an answer.", ("", "Just an answer.")),
], ids=["r1", "r1-template-opened", "r1-truncated", "qwen3", "qwen3-not-thinking"])  # fmt: skip
def test_reasoning_is_split_whole_and_at_every_split(sgl, name, body, text, expected):
    new = sgl.reasoning_parser(model(reasoning_parser=name), chat(CONVERSATIONS[0], **body), name)
    reasoning, content = new().parse(text)
    assert (reasoning or "", content) == expected
    for at in range(len(text) + 1):
        assert _reasoning_stream(new(), [text[:at], text[at:]]) == expected, at
    assert _reasoning_stream(new(), list(text)) == expected


def test_sglang_decides_whether_qwen3_starts_in_reasoning(sgl):
    """SGLang's server forces Qwen3's reasoning unless the request turns thinking off."""
    text = "Thinking first.</think>Answer."
    thinking = sgl.reasoning_parser(model(reasoning_parser="qwen3"), chat(CONVERSATIONS[0]), "qwen3")
    off = sgl.reasoning_parser(model(reasoning_parser="qwen3"),
                               chat(CONVERSATIONS[0], chat_template_kwargs={"enable_thinking": False}), "qwen3")
    assert thinking().parse(text) == ("Thinking first.", "Answer.")
    assert off().parse(text)[0] is None


# -- through the frontend's chat path ------------------------------------------------------------------


class _Worker:
    """A dispatcher whose worker answers with the given text, one token per chunk."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    async def generate(self, model, request, pin=None):
        for i, token in enumerate(self.ids):
            last = i == len(self.ids) - 1
            yield m.Chunk(request.request_id, token_ids=[token], finish_reason="stop" if last else None,
                          prompt_tokens=len(request.token_ids), completion_tokens=i + 1)


def test_chat_jobs_render_and_parse_with_sglang(sgl):
    tiny = model()
    request = chat(CONVERSATIONS[0], tools=[WEATHER, TIME])
    jobs, prompt = h.chat_jobs(tiny, request, sgl)
    assert prompt == sgl.render(tiny, request) and jobs[0][1].token_ids == prompt
    output = "Checking.</think>" + TOOL_OUTPUT
    worker = _Worker(tiny.tokenizer.encode(output))

    async def run():
        return [d async for d in choice_stream(worker, tiny, jobs[0][1], jobs[0][2])]

    deltas = asyncio.run(run())
    assert "".join(d.reasoning for d in deltas) == "Checking."
    assert "".join(d.text for d in deltas).strip() == "Let me check."
    assert _calls([c for d in deltas for c in d.tool_calls]) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert deltas[-1].finish_reason == "tool_calls"


def test_chat_jobs_without_sglang_keep_the_frontends_parsers():
    tiny = model()
    jobs, prompt = h.chat_jobs(tiny, chat(CONVERSATIONS[0], tools=[WEATHER]))
    options = jobs[0][2]
    assert prompt == default_ids(CONVERSATIONS[0], [WEATHER])
    assert (options.new_reasoning_parser, options.new_tool_call_parser) == (None, None)
    assert (options.reasoning_parser, options.tool_call_parser) == ("deepseek_r1", "hermes")

