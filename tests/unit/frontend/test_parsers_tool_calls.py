"""The `hermes` tool-call parser, whole and streamed, and the tool-call registry."""

from __future__ import annotations

import json
import random
import re

import pytest

from orchestrator.frontend.parsers import (
    TOOL_CALL_PARSERS,
    ToolCallDelta,
    tool_call_parser,
)

WEATHER = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
TIME = '<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}</tool_call>'
NESTED_ARGS = {
    "query": {"tags": ["a", "b"], "range": {"min": 1, "max": 2.5}},
    "deep": [[{"x": None, "ok": True}]],
    "city": "Zürich",
}
NESTED = '<tool_call>{"name": "search", "arguments": ' + json.dumps(NESTED_ARGS) + "}</tool_call>"

# (output, content the client sees, [(name, arguments)])
CASES = [
    (WEATHER, "", [("get_weather", '{"city":"Paris","unit":"celsius"}')]),
    (
        WEATHER + "\n" + TIME,
        "",
        [("get_weather", '{"city":"Paris","unit":"celsius"}'), ("get_time", '{"tz":"Europe/Paris"}')],
    ),
    ("Let me check.\n" + WEATHER, "Let me check.", [("get_weather", '{"city":"Paris","unit":"celsius"}')]),
    (NESTED, "", [("search", json.dumps(NESTED_ARGS, ensure_ascii=False, separators=(",", ":")))]),
    (
        '\n\n<tool_call>\n  {"name": "get_time",\n   "arguments": {}}\n</tool_call>\n \n<tool_call>{"name":"get_time"}</tool_call>\n\n',
        "",
        [("get_time", "{}"), ("get_time", "{}")],
    ),
    (
        "I'll check.\n" + WEATHER + "\nDone.",
        "I'll check.\nDone.",
        [("get_weather", '{"city":"Paris","unit":"celsius"}')],
    ),
    ("No tools needed.\n\n", "No tools needed.\n\n", []),
    ("a < b, and x <tool_call", "a < b, and x <tool_call", []),
    (
        "Oops <tool_call>{not json}</tool_call>\n" + TIME,
        "Oops <tool_call>{not json}</tool_call>",
        [("get_time", '{"tz":"Europe/Paris"}')],
    ),
    ('Hi\n<tool_call>{"name": "f", "argu', 'Hi\n<tool_call>{"name": "f", "argu', []),
]

MALFORMED_BODIES = [
    '{"name": "f", "arguments": {',
    "not json at all",
    '{"arguments": {"x": 1}}',
    '{"name": "", "arguments": {}}',
    '{"name": 3, "arguments": {}}',
    '{"name": "f", "arguments": "x=1"}',
    '[{"name": "f", "arguments": {}}]',
    '{"name": "f", "arguments": {"x": NaN}}',
    "[" * 100_000,
]


def parser():
    return tool_call_parser("hermes")()


def stream(chunks: list[str]) -> tuple[list[str], list[ToolCallDelta]]:
    p = parser()
    pieces, deltas = [], []
    for chunk in chunks:
        text, new = p.push(chunk)
        pieces.append(text)
        deltas += new
    text, new = p.finish()
    return pieces + [text], deltas + new


def assemble(deltas: list[ToolCallDelta]) -> list[tuple[str, str, str]]:
    """What an OpenAI client builds from the deltas, checking the delta contract on the way."""
    calls: list[list[str]] = []
    for d in deltas:
        if d.index == len(calls):  # a new call: the next index, with its id and name
            assert d.id is not None and d.name is not None
            calls.append([d.id, d.name, d.arguments])
        else:
            assert d.index == len(calls) - 1, "indices are consecutive"
            assert d.id is None and d.name is None, "id and name only on a call's first delta"
            calls[-1][2] += d.arguments
    return [tuple(c) for c in calls]


@pytest.mark.parametrize(("output", "content", "calls"), CASES)
def test_parse(output, content, calls):
    got_content, got_calls = parser().parse(output)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls
    for c in got_calls:
        assert re.fullmatch(r"call_[0-9a-f]{24}", c.id)
    assert len({c.id for c in got_calls}) == len(got_calls)


def test_arguments_are_the_model_json_compacted_in_order():
    _, [call] = parser().parse(NESTED)
    assert json.loads(call.arguments) == NESTED_ARGS
    assert list(json.loads(call.arguments)) == list(NESTED_ARGS)
    assert "Zürich" in call.arguments and " " not in call.arguments.replace("Zürich", "")


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
def test_malformed_body_stays_content(body):
    output = f"Before\n<tool_call>{body}</tool_call>"
    assert parser().parse(output) == (output, [])
    pieces, deltas = stream([output[i : i + 7] for i in range(0, len(output), 7)])
    assert "".join(pieces) == output and deltas == []


@pytest.mark.parametrize(("output", "content", "calls"), CASES)
def test_streamed_in_pieces_of_every_size_equals_parse(output, content, calls):
    for size in range(1, len(output) + 1):
        pieces, deltas = stream([output[i : i + size] for i in range(0, len(output), size)])
        assert "".join(pieces) == content, size
        assembled = assemble(deltas)
        assert [(name, args) for _, name, args in assembled] == calls, size
        assert len({call_id for call_id, _, _ in assembled}) == len(assembled)
        if "<" not in content:
            assert not any("<" in piece for piece in pieces), size


def test_streamed_at_random_splits_equals_parse():
    rng = random.Random(7)
    output = "Checking both.\n" + WEATHER + "\n" + NESTED + "\n" + TIME
    content, calls = parser().parse(output)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(output)), rng.randint(1, 12)))
        pieces, deltas = stream([output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)])])
        assert "".join(pieces) == content
        assert [(n, a) for _, n, a in assemble(deltas)] == [(c.name, c.arguments) for c in calls]


def test_content_and_calls_flow_as_they_arrive():
    p = parser()
    assert p.push("Let me check") == ("Let me check", [])
    assert p.push(" the weather.\n<tool") == (" the weather.", [])
    assert p.push('_call>{"name": "get_weather", "arguments": {"city"') == ("", [])
    text, [delta] = p.push(': "Paris"}}</tool_call>\n')
    assert text == ""
    assert (delta.index, delta.name, delta.arguments) == (0, "get_weather", '{"city":"Paris"}')
    assert delta.id is not None and delta.id.startswith("call_")
    assert p.finish() == ("", [])


def test_finish_releases_an_unterminated_call_as_content():
    p = parser()
    assert p.push('Hi\n<tool_call>{"name": "get_weather", "arguments": {"ci') == ("Hi", [])
    assert p.finish() == ('\n<tool_call>{"name": "get_weather", "arguments": {"ci', [])


def test_finish_releases_a_held_tag_prefix():
    p = parser()
    assert p.push("x <tool") == ("x", [])
    assert p.finish() == (" <tool", [])


def test_parse_leaves_the_stream_alone():
    p = parser()
    assert p.push("Hello <tool") == ("Hello", [])
    assert p.parse(WEATHER)[0] == ""
    text, [delta] = p.push(WEATHER[len("<tool") :])
    assert (text, delta.index, delta.name) == ("", 0, "get_weather")


def test_assembled_calls_are_valid_openai_tool_calls():
    chat = pytest.importorskip("openai.types.chat")
    chunk = pytest.importorskip("openai.types.chat.chat_completion_chunk")
    output = "Checking.\n" + WEATHER + "\n" + NESTED
    _, calls = parser().parse(output)
    message = chat.ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ],
        }
    )
    assert [tc.function.name for tc in message.tool_calls] == ["get_weather", "search"]
    assert json.loads(message.tool_calls[1].function.arguments) == NESTED_ARGS
    single = chat.ChatCompletionMessageToolCall.model_validate(
        {"id": calls[0].id, "type": "function", "function": {"name": calls[0].name, "arguments": calls[0].arguments}}
    )
    assert single.type == "function"
    _, deltas = stream([output[i : i + 5] for i in range(0, len(output), 5)])
    for d in deltas:
        function = {"arguments": d.arguments} | ({"name": d.name} if d.name is not None else {})
        wire = {"index": d.index, "function": function} | ({"id": d.id, "type": "function"} if d.id else {})
        assert chunk.ChoiceDeltaToolCall.model_validate(wire).index == d.index


def test_registry():
    assert "hermes" in TOOL_CALL_PARSERS
    first, second = tool_call_parser("hermes")(), tool_call_parser("hermes")()
    first.push("Hello <tool")
    assert second.finish() == ("", []), "each factory call is a fresh parser"
    with pytest.raises(ValueError, match="unknown tool-call parser 'pythonic'.*hermes"):
        tool_call_parser("pythonic")
