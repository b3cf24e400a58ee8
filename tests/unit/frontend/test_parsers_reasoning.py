"""The `think` and `deepseek_r1` reasoning parsers, whole and streamed, the registry, and
reasoning composed with tool calls the way the frontend runs them."""

from __future__ import annotations

import pytest

from orchestrator.frontend.parsers import (
    REASONING_PARSERS,
    reasoning_parser,
    tool_call_parser,
)

# (parser, output, reasoning_content, content)
CASES = [
    ("think", "<think>\nThe user greets me.\n</think>\n\nHello!", "The user greets me.", "Hello!"),
    ("think", "Just an answer.\n", None, "Just an answer.\n"),
    ("think", "<think>only thinking</think>", "only thinking", ""),
    ("think", "<think>cut off while thin", "cut off while thin", ""),
    ("think", "<think>a</think>Line one.\n\nLine two.", "a", "Line one.\n\nLine two."),
    ("think", "Sure. <think>why not</think>Done.", "why not", "Sure. Done."),
    ("think", "plain </think> text", None, "plain text"),
    ("think", "a <thinking> b </thin", None, "a <thinking> b </thin"),
    ("think", "<think></think>\n\nNo thoughts.", None, "No thoughts."),
    ("deepseek_r1", "Let me see.\n</think>\n\nThe answer is 42.", "Let me see.", "The answer is 42."),
    ("deepseek_r1", "<think>\nR1-0528 opens its own.\n</think>ok", "R1-0528 opens its own.", "ok"),
    ("deepseek_r1", "\nStill thinking, never closed <th", "Still thinking, never closed <th", ""),
    ("deepseek_r1", "Reasoning only, cut off.\n\n", "Reasoning only, cut off.", ""),
    ("deepseek_r1", "</think>Content only.", None, "Content only."),
    ("deepseek_r1", "", None, ""),
]


def stream(name: str, chunks: list[str]) -> tuple[list[str], list[str]]:
    p = reasoning_parser(name)()
    thoughts, texts = [], []
    for chunk in chunks:
        thought, text = p.push(chunk)
        thoughts.append(thought)
        texts.append(text)
    thought, text = p.finish()
    return thoughts + [thought], texts + [text]


def splits(output: str):
    """Every cut into two pieces, and pieces of every size."""
    for at in range(len(output) + 1):
        yield [output[:at], output[at:]]
    for size in range(1, len(output) + 1):
        yield [output[i : i + size] for i in range(0, len(output), size)]


@pytest.mark.parametrize(("name", "output", "reasoning", "content"), CASES)
def test_parse(name, output, reasoning, content):
    assert reasoning_parser(name)().parse(output) == (reasoning, content)


@pytest.mark.parametrize(("name", "output", "reasoning", "content"), CASES)
def test_streamed_at_every_split_equals_parse(name, output, reasoning, content):
    for chunks in splits(output):
        thoughts, texts = stream(name, chunks)
        assert ("".join(thoughts) or None, "".join(texts)) == (reasoning, content), chunks
        for piece in thoughts + texts:
            assert "<think>" not in piece and "</think>" not in piece
        if "<" not in (reasoning or "") + content:
            assert not any("<" in piece for piece in thoughts + texts), chunks


def test_deepseek_r1_starts_inside_reasoning_and_streams_it_at_once():
    p = reasoning_parser("deepseek_r1")()
    assert p.push("\nLet me") == ("Let me", "")
    assert p.push(" think.\n</thi") == (" think.", "")
    assert p.push("nk>\n\nFor") == ("", "For")
    assert p.push("ty-two.") == ("", "ty-two.")
    assert p.finish() == ("", "")


def test_think_starts_in_content_and_enters_reasoning_at_the_tag():
    p = reasoning_parser("think")()
    assert p.push("Hello") == ("", "Hello")
    assert p.push(" <thi") == ("", " ")
    assert p.push("nk>hmm") == ("hmm", "")
    assert p.push("</think>bye") == ("", "bye")


def test_parse_leaves_the_stream_alone():
    p = reasoning_parser("deepseek_r1")()
    assert p.push("thinking </th") == ("thinking", "")
    assert p.parse("<think>x</think>y") == ("x", "y")
    assert p.push("ink>answer") == ("", "answer")


def compose(reasoning_name: str, chunks: list[str]):
    """The frontend's order: reasoning first, then tool calls on the content it leaves."""
    reasoning, tools = reasoning_parser(reasoning_name)(), tool_call_parser("hermes")()
    thoughts, texts, deltas = [], [], []
    for i, chunk in enumerate(chunks):
        thought, text = reasoning.push(chunk)
        if i == len(chunks) - 1:
            more_thought, more_text = reasoning.finish()
            thought, text = thought + more_thought, text + more_text
        text, calls = tools.push(text)
        if i == len(chunks) - 1:
            more_text, more_calls = tools.finish()
            text, calls = text + more_text, calls + more_calls
        thoughts.append(thought)
        texts.append(text)
        deltas += calls
    return "".join(thoughts), "".join(texts), [(d.index, d.name, d.arguments) for d in deltas]


CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.mark.parametrize(
    ("name", "output", "expected"),
    [
        (
            "think",
            "<think>\nThe user wants the weather: call the tool.\n</think>\n\nLet me check.\n" + CALL,
            ("The user wants the weather: call the tool.", "Let me check.", [(0, "get_weather", '{"city":"Paris"}')]),
        ),
        (
            "deepseek_r1",
            "Need the tool.</think>\n" + CALL,
            ("Need the tool.", "", [(0, "get_weather", '{"city":"Paris"}')]),
        ),
        # A call written inside reasoning is reasoning, as in Dynamo: the tool parser never sees it.
        ("think", "<think>maybe " + CALL + "</think>Answer.", ("maybe " + CALL, "Answer.", [])),
    ],
)
def test_reasoning_then_tool_calls_at_every_split(name, output, expected):
    for chunks in splits(output):
        assert compose(name, chunks) == expected, chunks


def test_registry():
    assert {"deepseek_r1", "think", "qwen3"} <= set(REASONING_PARSERS)
    assert reasoning_parser("qwen3")().parse("before</think>after") == (None, "beforeafter")
    assert reasoning_parser("deepseek_r1")().parse("before</think>after") == ("before", "after")
    first, second = reasoning_parser("deepseek_r1")(), reasoning_parser("deepseek_r1")()
    first.push("</think>")
    assert second.push("x") == ("x", ""), "each factory call is a fresh parser"
    with pytest.raises(ValueError, match="unknown reasoning parser 'deepseek-r1'.*deepseek_r1.*think"):
        reasoning_parser("deepseek-r1")
