"""Response bodies, stream chunks, errors and SSE framing, checked by the official
`openai` client: its pydantic models, its stream accumulation, and the client itself
talking to a fake server (an httpx mock transport) that answers with our builders."""

from __future__ import annotations

import base64
import json
import struct
from typing import Literal

import httpx2
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion, CompletionChoice, CompletionUsage, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from orchestrator.frontend.openai import errors
from orchestrator.frontend.openai import responses as r
from orchestrator.frontend.openai.errors import RequestError
from orchestrator.frontend.openai.requests import parse_chat, parse_completion, parse_embedding
from orchestrator.frontend.openai.sse import SSE_DONE, sse_error, sse_event

ID, CREATED, MODEL = "chatcmpl-abc", 1_700_000_000, "tiny"


class StreamedChoice(CompletionChoice):
    """OpenAI streams completion choices with `finish_reason: null` until the last;
    the SDK's model (written for whole completions) requires it, so relax just that."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class CompletionChunk(Completion):
    choices: list[StreamedChoice]


def client_for(handler) -> openai.OpenAI:
    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="unused", base_url="http://frontend/v1", http_client=httpx2.Client(transport=transport), max_retries=0
    )


def sse_response(events: list[dict]) -> httpx2.Response:
    body = b"".join(sse_event(e) for e in events) + SSE_DONE
    return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})


def error_response(error: RequestError) -> httpx2.Response:
    return httpx2.Response(error.status, json=error.body())


# Ids, usage, finish reasons


def test_ids_have_openai_prefixes_and_are_unique():
    assert r.chat_completion_id().startswith("chatcmpl-") and r.completion_id().startswith("cmpl-")
    assert r.chat_completion_id() != r.chat_completion_id()


def test_usage():
    usage = CompletionUsage.model_validate(r.usage(10, 5, cached_tokens=4))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 5, 15)
    assert usage.prompt_tokens_details.cached_tokens == 4


@pytest.mark.parametrize(
    "engine, called_tools, expected",
    [("stop", False, "stop"), ("eos", False, "stop"), ("length", False, "length"), ("stop", True, "tool_calls")]
    + [("length", True, "length"), ("content_filter", False, "content_filter")],
)
def test_finish_reason(engine, called_tools, expected):
    assert r.finish_reason(engine, called_tools=called_tools) == expected


@pytest.mark.parametrize("engine", ["abort", "cancelled", "error"])
def test_finish_reason_without_an_openai_equivalent_is_an_error(engine):
    with pytest.raises(ValueError):
        r.finish_reason(engine)


# Chat completions


def test_chat_completion_validates():
    logprobs = r.chat_logprobs(
        [
            r.token_logprob("Hi", -0.25, [("Hi", -0.25), ("Hello", -1.5)]),
            r.token_logprob(b"\xe2\x82", float("-inf")),  # half of "€", excluded by the sampler
        ]
    )
    choices = [
        r.chat_choice(0, r.chat_message("Hi", reasoning_content="greet"), "stop", logprobs),
        r.chat_choice(
            1,
            r.chat_message(None, tool_calls=[r.tool_call("call_1", "get_weather", '{"city": "Paris"}')]),
            "tool_calls",
        ),
        r.chat_choice(2, r.chat_message("Hel"), "length"),
    ]
    body = r.chat_completion(ID, CREATED, MODEL, choices, r.usage(7, 3))
    parsed = ChatCompletion.model_validate(body)
    assert (parsed.id, parsed.object, parsed.created, parsed.model) == (ID, "chat.completion", CREATED, MODEL)
    first, second, third = parsed.choices
    assert (first.message.role, first.message.content, first.finish_reason) == ("assistant", "Hi", "stop")
    assert first.message.model_extra["reasoning_content"] == "greet"
    hi, half = first.logprobs.content
    assert (hi.token, hi.logprob, hi.bytes) == ("Hi", -0.25, [72, 105])
    assert [(t.token, t.logprob) for t in hi.top_logprobs] == [("Hi", -0.25), ("Hello", -1.5)]
    assert half.bytes == [0xE2, 0x82] and half.logprob == -9999.0  # JSON has no -inf
    call = second.message.tool_calls[0]
    assert (second.message.content, call.id, call.type) == (None, "call_1", "function")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert (second.finish_reason, third.finish_reason) == ("tool_calls", "length")
    assert parsed.usage.total_tokens == 10
    assert json.loads(json.dumps(body)) == body  # JSON-ready as is


def chat_stream() -> list[dict]:
    """Two choices interleaved, as a fanned-out n=2 request streams them."""
    calls = [r.tool_call_delta(0, id="call_1", name="get_weather", arguments='{"city": ')]
    return [
        r.chat_chunk(ID, CREATED, MODEL, 0, role="assistant", content=""),
        r.chat_chunk(ID, CREATED, MODEL, 1, role="assistant", content=""),
        r.chat_chunk(ID, CREATED, MODEL, 0, reasoning_content="The user greets."),
        r.chat_chunk(ID, CREATED, MODEL, 0, content="Hel", logprobs=r.chat_logprobs([r.token_logprob("Hel", -0.5)])),
        r.chat_chunk(ID, CREATED, MODEL, 1, tool_calls=calls),
        r.chat_chunk(ID, CREATED, MODEL, 0, content="lo"),
        r.chat_chunk(ID, CREATED, MODEL, 1, tool_calls=[r.tool_call_delta(0, arguments='"Paris"}')]),
        r.chat_chunk(ID, CREATED, MODEL, 0, finish_reason="stop"),
        r.chat_chunk(ID, CREATED, MODEL, 1, finish_reason="tool_calls"),
        r.chat_usage_chunk(ID, CREATED, MODEL, r.usage(9, 6, cached_tokens=8)),
    ]


def test_chat_chunks_validate_and_accumulate_with_the_client():
    state = ChatCompletionStreamState()
    for chunk in chat_stream():
        parsed = ChatCompletionChunk.model_validate(chunk)
        assert (parsed.id, parsed.object, parsed.created) == (ID, "chat.completion.chunk", CREATED)
        list(state.handle_chunk(parsed))
    final = state.get_final_completion()
    text, calls = final.choices
    assert (text.message.content, text.finish_reason) == ("Hello", "stop")
    assert text.message.model_extra["reasoning_content"] == "The user greets."
    assert [t.token for t in text.logprobs.content] == ["Hel"]
    call = calls.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')
    assert calls.finish_reason == "tool_calls"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (9, 6, 15)


def test_chat_chunk_shapes():
    first = r.chat_chunk(ID, CREATED, MODEL, role="assistant", content="")
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in first
    last = r.chat_chunk(ID, CREATED, MODEL, finish_reason="length", usage=r.usage(1, 2))
    assert last["choices"][0]["delta"] == {} and last["usage"]["total_tokens"] == 3  # continuous_usage_stats
    assert r.chat_usage_chunk(ID, CREATED, MODEL, r.usage(1, 2))["choices"] == []
    assert r.tool_call_delta(2, arguments="}") == {"index": 2, "function": {"arguments": "}"}}


def test_streaming_chat_through_the_client():
    """The client's own request passes our validation; our chunks come back as its objects."""
    seen = []

    def handler(request):
        seen.append(parse_chat(json.loads(request.content)))
        return sse_response(chat_stream())

    stream = client_for(handler).chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        n=2,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=64,
        extra_body={"top_k": 20, "nvext": {"ignore_eos": False}},
    )
    chunks = list(stream)
    request = seen[0]
    assert (request.n, request.logprobs, request.max_tokens, request.sampling.top_k) == (2, 2, 64, 20)
    assert request.stream_options.include_usage and request.tool_choice == "auto"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == 0) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens_details.cached_tokens == 8


def test_chat_through_the_client():
    def handler(request):
        body = parse_chat(json.loads(request.content))
        choice = r.chat_choice(0, r.chat_message("Hi " + body.messages[-1]["content"]), "stop")
        return httpx2.Response(200, json=r.chat_completion(ID, CREATED, body.model, [choice], r.usage(2, 2)))

    answer = client_for(handler).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Bo"}])
    assert answer.choices[0].message.content == "Hi Bo" and answer.model == MODEL


# Completions


def test_completion_validates():
    logprobs = r.completion_logprobs(
        tokens=["Hel", "lo"],
        token_logprobs=[-0.5, float("-inf")],
        top_logprobs=[{"Hel": -0.5, "He": -1.0}, {"lo": float("-inf")}],
        text_offset=[0, 3],
    )
    choices = [r.completion_choice(0, "Hello", "stop", logprobs), r.completion_choice(1, "Hel", "length")]
    body = r.completion("cmpl-1", CREATED, MODEL, choices, r.usage(4, 2))
    parsed = Completion.model_validate(body)
    assert (parsed.id, parsed.object, parsed.created, parsed.model) == ("cmpl-1", "text_completion", CREATED, MODEL)
    first = parsed.choices[0]
    assert (first.text, first.finish_reason, first.index) == ("Hello", "stop", 0)
    assert first.logprobs.tokens == ["Hel", "lo"] and first.logprobs.text_offset == [0, 3]
    assert first.logprobs.token_logprobs == [-0.5, -9999.0]
    assert first.logprobs.top_logprobs == [{"Hel": -0.5, "He": -1.0}, {"lo": -9999.0}]
    assert parsed.choices[1].finish_reason == "length" and parsed.usage.total_tokens == 6
    json.dumps(body, allow_nan=False)


def completion_stream() -> list[dict]:
    return [
        r.completion_chunk("cmpl-1", CREATED, MODEL, 0, text="Hel"),
        r.completion_chunk("cmpl-1", CREATED, MODEL, 0, text="lo", usage=r.usage(4, 2)),
        r.completion_chunk("cmpl-1", CREATED, MODEL, 0, text="", finish_reason="stop"),
        r.completion_usage_chunk("cmpl-1", CREATED, MODEL, r.usage(4, 2)),
    ]


def test_completion_chunks_validate():
    *pieces, last, usage_only = completion_stream()
    for piece in pieces:
        chunk = CompletionChunk.model_validate(piece)
        assert chunk.object == "text_completion" and chunk.choices[0].finish_reason is None
    assert Completion.model_validate(last).choices[0].finish_reason == "stop"
    usage_chunk = Completion.model_validate(usage_only)
    assert usage_chunk.choices == [] and usage_chunk.usage.total_tokens == 6


def test_streaming_completion_through_the_client():
    def handler(request):
        parse_completion(json.loads(request.content))
        return sse_response(completion_stream())

    stream = client_for(handler).completions.create(
        model=MODEL, prompt=[[1, 2, 3]], stream=True, stream_options={"include_usage": True}, max_tokens=2
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage.completion_tokens == 2


# Embeddings and models


VECTORS = [[0.1, -2.5, 3.0], [1e-3, 0.0, 7.25]]


def test_embeddings_validate_as_floats():
    parsed = CreateEmbeddingResponse.model_validate(r.embedding_list(MODEL, VECTORS, prompt_tokens=5))
    assert [e.embedding for e in parsed.data] == VECTORS
    assert [(e.index, e.object) for e in parsed.data] == [(0, "embedding"), (1, "embedding")]
    assert (parsed.object, parsed.model, parsed.usage.prompt_tokens, parsed.usage.total_tokens) == ("list", MODEL, 5, 5)


def test_embeddings_as_base64_are_little_endian_float32():
    # The SDK's model types `embedding` as floats only: base64 is checked through the client below.
    body = r.embedding_list(MODEL, VECTORS, prompt_tokens=5, encoding_format="base64")
    raw = base64.b64decode(body["data"][1]["embedding"])
    assert raw == struct.pack("<3f", *VECTORS[1])


def test_embeddings_through_the_client():
    """The SDK asks for base64 unless told otherwise and decodes it itself."""
    formats = []

    def handler(request):
        body = parse_embedding(json.loads(request.content))
        formats.append(body.encoding_format)
        return httpx2.Response(200, json=r.embedding_list(body.model, VECTORS, 4, body.encoding_format))

    client = client_for(handler)
    decoded = client.embeddings.create(model=MODEL, input=["a", "b"]).data
    assert [e.embedding for e in decoded] == [list(struct.unpack("<3f", struct.pack("<3f", *v))) for v in VECTORS]
    assert client.embeddings.create(model=MODEL, input="a", encoding_format="float").data[0].embedding == VECTORS[0]
    assert formats == ["base64", "float"]


def test_models_list_through_the_client():
    cards = [r.model_card("tiny", CREATED), r.model_card("big", CREATED + 1, owned_by="team")]
    Model.model_validate(cards[0])
    page = client_for(lambda request: httpx2.Response(200, json=r.model_list(cards))).models.list()
    assert [(m.id, m.object, m.created, m.owned_by) for m in page.data] == [
        ("tiny", "model", CREATED, "dynamo-launch"),
        ("big", "model", CREATED + 1, "team"),
    ]


# Errors


def test_error_body_has_every_key():
    assert errors.error_body("bad", param="n") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": None}
    }


@pytest.mark.parametrize(
    "error, status, type, code, exception",
    [
        (errors.invalid_request("bad n", "n"), 400, "invalid_request_error", None, openai.BadRequestError),
        (errors.model_not_found("gpt-9"), 404, "invalid_request_error", "model_not_found", openai.NotFoundError),
        (
            errors.context_length_exceeded(4000, 200, 4096, "messages"),
            400,
            "invalid_request_error",
            "context_length_exceeded",
            openai.BadRequestError,
        ),
        (errors.payload_too_large(1024), 413, "invalid_request_error", "payload_too_large", openai.APIStatusError),
        (
            errors.service_unavailable("no worker"),
            503,
            "server_error",
            "service_unavailable",
            openai.InternalServerError,
        ),
        (errors.internal_error(), 500, "server_error", "internal_error", openai.InternalServerError),
    ],
)
def test_errors_reach_the_client(error, status, type, code, exception):
    assert (error.status, error.type, error.code) == (status, type, code)
    with pytest.raises(exception) as info:
        client_for(lambda request: error_response(error)).models.list()
    raised = info.value
    assert (raised.status_code, raised.type, raised.code, raised.param) == (status, type, code, error.param)
    assert error.message in raised.message


def test_error_messages_name_what_went_wrong():
    assert "`gpt-9`" in errors.model_not_found("gpt-9").message
    message = errors.context_length_exceeded(4000, 200, 4096, "prompt").message
    assert "4096" in message and "4000" in message and "200" in message
    assert "+" not in errors.context_length_exceeded(5000, None, 4096, "prompt").message


def test_validation_error_reaches_the_client_with_its_param():
    def handler(request):
        try:
            parse_chat(json.loads(request.content))
        except RequestError as error:
            return error_response(error)
        raise AssertionError("the request should have been refused")

    with pytest.raises(openai.BadRequestError) as info:
        client_for(handler).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            temperature=0,
            stream_options={"include_usage": True},
        )
    assert info.value.param == "stream_options" and "stream_options" in info.value.message


# Server-Sent Events


def test_sse_framing():
    assert sse_event({"a": "line\nbreak", "b": [1, None]}) == b'data: {"a":"line\\nbreak","b":[1,null]}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert sse_error(errors.internal_error("engine died")) == (
        b'data: {"error":{"message":"engine died","type":"server_error","param":null,"code":"internal_error"}}\n\n'
    )


def test_mid_stream_error_raises_in_the_client():
    def handler(request):
        body = sse_event(r.chat_chunk(ID, CREATED, MODEL, role="assistant", content=""))
        body += sse_error(errors.service_unavailable("worker lost; migration limit reached")) + SSE_DONE
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    stream = client_for(handler).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert next(stream).choices[0].delta.role == "assistant"
    with pytest.raises(openai.APIError, match="migration limit reached") as info:
        next(stream)
    assert info.value.code == "service_unavailable"
