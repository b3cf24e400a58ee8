"""Validation of OpenAI request bodies: what is accepted maps into the typed request;
everything else is a 400 naming the parameter."""

from __future__ import annotations

import pytest

from orchestrator.frontend.openai.errors import RequestError
from orchestrator.frontend.openai.requests import (
    ChatRequest,
    CompletionRequest,
    StreamOptions,
    parse_chat,
    parse_completion,
    parse_embedding,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
EMBEDDING = {"model": "m", "input": "hi"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**fields) -> ChatRequest:
    return parse_chat(CHAT | fields)


def completion(**fields) -> CompletionRequest:
    return parse_completion(COMPLETION | fields)


def refusal(parse, body) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(body)
    error = info.value
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert "\n" not in error.message
    return error


# Accepted values, mapped into the typed request


def test_chat_defaults():
    request = parse_chat(CHAT)
    assert request.model == "m"
    assert request.messages == [{"role": "user", "content": "hi"}]
    s = request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (1.0, 1.0, -1, 0.0, None)
    assert (s.frequency_penalty, s.presence_penalty, s.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (request.n, request.max_tokens, request.min_tokens, request.stop, request.stop_token_ids) == (
        1,
        None,
        0,
        (),
        (),
    )
    assert (request.ignore_eos, request.logprobs, request.stream, request.user) == (False, None, False, None)
    assert request.stream_options == StreamOptions()
    assert (request.tools, request.tool_choice, request.tool_name, request.parallel_tool_calls) == (
        [],
        "none",
        None,
        True,
    )
    assert request.chat_template_kwargs == {}


@pytest.mark.parametrize(
    "fields, read, expected",
    [
        ({"temperature": 0}, lambda r: r.sampling.temperature, 0.0),
        ({"temperature": 2}, lambda r: r.sampling.temperature, 2.0),
        ({"temperature": 0.7}, lambda r: r.sampling.temperature, 0.7),
        ({"top_p": 0.5}, lambda r: r.sampling.top_p, 0.5),
        ({"top_p": 1}, lambda r: r.sampling.top_p, 1.0),
        ({"top_k": -1}, lambda r: r.sampling.top_k, -1),
        ({"top_k": 1}, lambda r: r.sampling.top_k, 1),
        ({"top_k": 50}, lambda r: r.sampling.top_k, 50),
        ({"min_p": 0}, lambda r: r.sampling.min_p, 0.0),
        ({"min_p": 1}, lambda r: r.sampling.min_p, 1.0),
        ({"seed": 0}, lambda r: r.sampling.seed, 0),
        ({"seed": -7}, lambda r: r.sampling.seed, -7),
        ({"seed": 2**63 - 1}, lambda r: r.sampling.seed, 2**63 - 1),
        ({"frequency_penalty": -2}, lambda r: r.sampling.frequency_penalty, -2.0),
        ({"frequency_penalty": 2}, lambda r: r.sampling.frequency_penalty, 2.0),
        ({"presence_penalty": 1.5}, lambda r: r.sampling.presence_penalty, 1.5),
        ({"repetition_penalty": 1.3}, lambda r: r.sampling.repetition_penalty, 1.3),
        ({"repetition_penalty": 0.5}, lambda r: r.sampling.repetition_penalty, 0.5),
        ({"n": 1}, lambda r: r.n, 1),
        ({"n": 128}, lambda r: r.n, 128),
        ({"n": 4, "temperature": 0}, lambda r: (r.n, r.sampling.temperature), (4, 0.0)),  # fan-out: any temperature
        ({"n": 3, "best_of": 3}, lambda r: r.n, 3),
        ({"max_tokens": 1}, lambda r: r.max_tokens, 1),
        ({"max_completion_tokens": 300}, lambda r: r.max_tokens, 300),
        ({"max_tokens": 20, "max_completion_tokens": 20}, lambda r: r.max_tokens, 20),
        ({"stop": "END"}, lambda r: r.stop, ("END",)),
        ({"stop": ["a", "b"]}, lambda r: r.stop, ("a", "b")),
        ({"stop": [f"s{i}" for i in range(16)]}, lambda r: len(r.stop), 16),
        ({"stop": []}, lambda r: r.stop, ()),
        ({"stop_token_ids": [0, 7, 151643]}, lambda r: r.stop_token_ids, (0, 7, 151643)),
        ({"ignore_eos": True}, lambda r: r.ignore_eos, True),
        ({"min_tokens": 0}, lambda r: r.min_tokens, 0),
        ({"min_tokens": 5, "max_tokens": 5}, lambda r: r.min_tokens, 5),
        ({"min_tokens": 5000}, lambda r: r.min_tokens, 5000),  # no max: bounded by the context only
        ({"stream": True}, lambda r: (r.stream, r.stream_options), (True, StreamOptions())),
        ({"stream": True, "stream_options": {"include_usage": True}}, lambda r: r.stream_options.include_usage, True),
        (
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            lambda r: (r.stream_options.include_usage, r.stream_options.continuous_usage_stats),
            (False, True),
        ),
        ({"logprobs": True}, lambda r: r.logprobs, 0),
        ({"logprobs": True, "top_logprobs": 20}, lambda r: r.logprobs, 20),
        ({"logprobs": True, "top_logprobs": 0}, lambda r: r.logprobs, 0),
        ({"logprobs": False}, lambda r: r.logprobs, None),
        ({"parallel_tool_calls": False}, lambda r: r.parallel_tool_calls, False),
        ({"user": "alice"}, lambda r: r.user, "alice"),
        ({"response_format": {"type": "text"}}, lambda r: r.model, "m"),
        ({"logit_bias": {}}, lambda r: r.model, "m"),
        (
            {"chat_template_kwargs": {"enable_thinking": False}},
            lambda r: r.chat_template_kwargs,
            {"enable_thinking": False},
        ),
        ({"nvext": {"ignore_eos": True}}, lambda r: r.ignore_eos, True),
        ({"nvext": {"top_k": 20}}, lambda r: r.sampling.top_k, 20),
        ({"nvext": {"repetition_penalty": 1.1}}, lambda r: r.sampling.repetition_penalty, 1.1),
        ({"nvext": {"min_p": 0.05}}, lambda r: r.sampling.min_p, 0.05),
        ({"nvext": {"top_k": 20}, "top_k": 20}, lambda r: r.sampling.top_k, 20),  # the same value twice is fine
        ({"nvext": {}}, lambda r: r.sampling.top_k, -1),
        ({"nvext": {"backend_instance_id": 2**64 - 1}}, lambda r: r.backend_instance_id, 2**64 - 1),
        ({"nvext": {"backend_instance_id": 7, "dp_rank": 3}}, lambda r: (r.backend_instance_id, r.dp_rank), (7, 3)),
    ],
)
def test_chat_parameter_is_mapped(fields, read, expected):
    assert read(chat(**fields)) == expected


def test_null_means_absent():
    nulls = dict.fromkeys(
        ["temperature", "top_p", "top_k", "seed", "n", "stop", "max_tokens", "stream", "stream_options", "tools"]
        + ["tool_choice", "logprobs", "top_logprobs", "user", "response_format", "logit_bias", "nvext", "best_of"]
    )
    assert chat(**nulls) == parse_chat(CHAT)


def test_tools_and_tool_choice():
    described = {"type": "function", "function": {"name": "lookup", "description": "Look it up."}}
    request = chat(tools=[TOOL, described])
    assert request.tools == [TOOL, described]
    assert (request.tool_choice, request.tool_name) == ("auto", None)  # OpenAI's default once tools are given
    assert chat(tools=[TOOL], tool_choice="required").tool_choice == "required"
    assert chat(tools=[TOOL], tool_choice="none").tool_choice == "none"
    named = chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert (named.tool_choice, named.tool_name) == ("required", "get_weather")
    assert chat(tool_choice="none").tool_choice == "none"  # "none" needs no tools
    assert chat(tools=[]).tools == []
    strict_off = {"type": "function", "function": {"name": "f", "strict": False}}
    assert chat(tools=[strict_off]).tools == [{"type": "function", "function": {"name": "f"}}]


def test_messages_are_normalised_for_a_chat_template():
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "user", "content": "Weather?", "name": "bob"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Call the tool.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c": "P"}'}}
            ],
            # what the openai SDK echoes back from an earlier response
            "refusal": None,
            "annotations": [],
            "audio": None,
            "function_call": None,
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": ""},
    ]
    assert chat(messages=messages).messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "One.\nTwo."},
        {"role": "user", "content": "Weather?", "name": "bob"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Call the tool.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"c": "P"}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "content": ""},
    ]


def test_completion_defaults_and_parameters():
    request = parse_completion(COMPLETION)
    assert (request.model, request.prompts, request.max_tokens, request.logprobs) == ("m", ["hi"], 16, None)
    assert completion(max_tokens=500).max_tokens == 500
    assert completion(logprobs=0).logprobs == 0
    assert completion(logprobs=20).logprobs == 20
    assert completion(echo=False, suffix=None).prompts == ["hi"]
    assert completion(n=2, best_of=2, temperature=0.3, stop=["\n"]).n == 2
    assert completion(stream=True, stream_options={"include_usage": True}).stream_options.include_usage
    assert completion(nvext={"ignore_eos": True}, min_tokens=16).ignore_eos


@pytest.mark.parametrize(
    "prompt, prompts",
    [
        ("once", ["once"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_prompt_forms(prompt, prompts):
    assert completion(prompt=prompt).prompts == prompts
    assert parse_embedding(EMBEDDING | {"input": prompt}).inputs == prompts


def test_embedding_parameters():
    request = parse_embedding(EMBEDDING)
    assert (request.model, request.inputs, request.encoding_format, request.user) == ("m", ["hi"], "float", None)
    request = parse_embedding(EMBEDDING | {"encoding_format": "base64", "user": "u", "dimensions": None})
    assert (request.encoding_format, request.user) == ("base64", "u")


# Refusals: 400, `param` names the parameter and the message says it


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": True}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"n": 2, "best_of": 3}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 5]}, "stop"),
        ({"stop_token_ids": [1, -1]}, "stop_token_ids"),
        ({"stop_token_ids": "1"}, "stop_token_ids"),
        ({"stop_token_ids": [True]}, "stop_token_ids"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 11, "max_tokens": 10}, "min_tokens"),
        ({"stream": 1}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream": True, "stream_options": {"continuous_usage_stats": 1}}, "stream_options.continuous_usage_stats"),
        ({"stream": True, "stream_options": {"extra": True}}, "stream_options.extra"),
        ({"stream": True, "stream_options": []}, "stream_options"),
        ({"logprobs": 5}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"user": 5}, "user"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"response_format": "text"}, "response_format"),
        ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"nvext": {"greed_sampling": True}}, "nvext.greed_sampling"),
        ({"nvext": {"top_k": 0}}, "nvext.top_k"),
        ({"nvext": {"top_k": "5"}}, "nvext.top_k"),
        ({"nvext": {"ignore_eos": 1}}, "nvext.ignore_eos"),
        ({"nvext": {"min_p": 2}}, "nvext.min_p"),
        ({"nvext": {"repetition_penalty": 0}}, "nvext.repetition_penalty"),
        ({"nvext": {"top_k": 5}, "top_k": 6}, "nvext.top_k"),
        ({"nvext": "fast"}, "nvext"),
        ({"nvext": {"backend_instance_id": -1}}, "nvext.backend_instance_id"),
        ({"nvext": {"backend_instance_id": "7f"}}, "nvext.backend_instance_id"),
        ({"nvext": {"dp_rank": 0}}, "nvext.dp_rank"),
        ({"nvext": {"backend_instance_id": 7, "dp_rank": -1}}, "nvext.dp_rank"),
        ({"echo": False}, "echo"),  # a completions parameter
        ({"frobnicate": 1}, "frobnicate"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"store": True}, "store"),
    ],
)
def test_chat_refuses(fields, param):
    error = refusal(parse_chat, CHAT | fields)
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "tools[0].function.strict"),
        ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "extra": 1}}]}, "tools[0].function.extra"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "any"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice.function.name"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "function": {"name": "x"}}}, "tool_choice.type"),
        ({"tools": [TOOL], "tool_choice": 1}, "tool_choice"),
    ],
)
def test_chat_refuses_tools(fields, param):
    error = refusal(parse_chat, CHAT | fields)
    assert error.param == param
    assert param in error.message


def user(content):
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    "messages, param",
    [
        (None, "messages"),
        ([], "messages"),
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"role": "function", "content": "hi", "name": "f"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "assistant", "content": None}], "messages[0].content"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].content"),
        ([user(5)], "messages[0].content"),
        ([user([{"type": "image_url", "image_url": {"url": "http://x"}}])], "messages[0].content[0].type"),
        ([user([{"type": "text"}])], "messages[0].content[0].text"),
        ([user(["hi"])], "messages[0].content[0]"),
        ([user("a"), {"role": "user", "content": "b", "weight": 2}], "messages[1].weight"),
        ([{"role": "user", "content": "hi", "name": 5}], "messages[0].name"),
        ([{"role": "user", "content": "hi", "tool_call_id": "c"}], "messages[0].tool_call_id"),
        ([{"role": "user", "content": "hi", "reasoning_content": "r"}], "messages[0].reasoning_content"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "tool", "content": "sunny"}], "messages[0].tool_call_id"),
        ([{"role": "assistant", "content": "x", "refusal": "no"}], "messages[0].refusal"),
        ([{"role": "assistant", "content": "x", "function_call": {"name": "f"}}], "messages[0].function_call"),
        ([{"role": "assistant", "content": None, "tool_calls": {}}], "messages[0].tool_calls"),
        (
            [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
            "messages[0].tool_calls[0].id",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "type": "code", "function": {"name": "f"}}]}],
            "messages[0].tool_calls[0].type",
        ),
    ],
)
def test_chat_refuses_messages(messages, param):
    error = refusal(parse_chat, {"model": "m", "messages": messages})
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt[0]"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt[1]"),
        ({"prompt": [[]]}, "prompt[0]"),
        ({"prompt": [[1], [-1]]}, "prompt[1]"),
        ({"prompt": [1, "a"]}, "prompt[0]"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": {"text": "hi"}}, "prompt"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"echo": "no"}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"min_tokens": 17}, "min_tokens"),  # over the default of 16
        ({"n": 2, "best_of": 4}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [user("hi")]}, "messages"),
        ({"max_completion_tokens": 5}, "max_completion_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tools": [TOOL]}, "tools"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_completion_refuses(fields, param):
    error = refusal(parse_completion, COMPLETION | fields)
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"model": None}, "model"),
        ({"input": None}, "input"),
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": [3.5]}, "input[0]"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"dimensions": 256}, "dimensions"),
        ({"user": ["u"]}, "user"),
        ({"temperature": 0}, "temperature"),
    ],
)
def test_embedding_refuses(fields, param):
    error = refusal(parse_embedding, EMBEDDING | fields)
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize("parse", [parse_chat, parse_completion, parse_embedding])
@pytest.mark.parametrize("body", [None, [], "hi", 3])
def test_body_must_be_an_object(parse, body):
    assert "JSON object" in refusal(parse, body).message
