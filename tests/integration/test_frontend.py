"""The frontend as users meet it: the official `openai` client against real processes
(a frontend and mock-engine workers) on loopback."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from urllib.parse import urlparse

import openai
import pytest

from tests.integration.frontend_support import client, frontend, metric_value, wait_instances
from tests.integration.worker_support import worker
from tests.managed import free_port, http_get

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]
LONG_SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


@pytest.fixture
def deployment(tmp_path):
    # Paced so that each token is streamed before the next is made: the frontend merges
    # tokens that wait for it, and the tests below look at how text is split into chunks.
    with worker(tmp_path, "w", "--dyn-tool-call-parser", "hermes", speedup=10.0) as (_, worker_url), \
         frontend(tmp_path, "--migration-limit", "3") as (_, url):
        yield url, worker_url


def connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlparse(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post(url: str, path: str, body: bytes) -> tuple[int, bytes]:
    conn = connection(url, timeout=10)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def get_text(url: str, path: str) -> str:
    conn = connection(url, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read().decode()  # whatever the status: /health says 503 with a body


def get_json(url: str, path: str):
    return json.loads(get_text(url, path))


def stream_chat(c, **kw) -> tuple[list[str], list]:
    pieces, chunks = [], []
    for chunk in c.chat.completions.create(stream=True, **kw):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return pieces, chunks


def test_chat_streamed_and_unary_agree_with_usage(deployment):
    url, _ = deployment
    c = client(url)
    kw = dict(model="tiny", messages=HELLO, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    unary = c.chat.completions.create(**kw)
    pieces, chunks = stream_chat(c, stream_options={"include_usage": True}, **kw)
    assert unary.choices[0].finish_reason == "length" and unary.usage.completion_tokens == 24
    assert "".join(pieces) == unary.choices[0].message.content
    assert len(pieces) > 3, "text arrives as it is generated"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == unary.usage.total_tokens
    assert all("\ufffd" not in p for p in pieces), "a multi-byte character is never split"


def test_completions_accept_strings_lists_and_token_ids(deployment):
    url, _ = deployment
    c = client(url)
    exact = {"extra_body": {"ignore_eos": True}}  # exactly max_tokens each
    text = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0, **exact)
    batch = c.completions.create(model="tiny", prompt=["Once upon a time", "The end"], max_tokens=6, n=2,
                                 temperature=0.8, **exact)
    ids = c.completions.create(model="tiny", prompt=[10, 20, 30, 40], max_tokens=6, logprobs=2, **exact)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 6
    assert sorted(ch.index for ch in batch.choices) == [0, 1, 2, 3] and batch.usage.completion_tokens == 24
    assert batch.choices[0].text != batch.choices[1].text, "n > 1 with sampling gives different choices"
    assert len(ids.choices[0].logprobs.tokens) == 6 and all(len(t) == 2 for t in ids.choices[0].logprobs.top_logprobs)
    assert ids.usage.prompt_tokens == 4


def test_repeated_conversations_report_cached_tokens(deployment):
    url, _ = deployment
    c = client(url)
    messages = [LONG_SYSTEM, *HELLO]
    first = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    second = c.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 16 * (first.usage.prompt_tokens // 16 - 1), "the shared prompt comes from the prefix cache"


def test_a_stop_string_spanning_chunks_is_cut_and_never_leaked(deployment):
    url, _ = deployment
    c = client(url)
    kw = dict(model="tiny", messages=HELLO, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    pieces, _ = stream_chat(c, **kw)
    whole = "".join(pieces)
    stop = pieces[4][-2:] + pieces[5][:2]  # straddles two streamed pieces
    expected = whole[: whole.index(stop)]
    unary = c.chat.completions.create(stop=[stop], **kw)
    streamed, chunks = stream_chat(c, stop=[stop], **kw)
    assert unary.choices[0].message.content == expected and unary.choices[0].finish_reason == "stop"
    assert "".join(streamed) == expected and chunks[-1].choices[0].finish_reason == "stop"


def test_errors_have_openais_shape_and_honest_statuses(deployment):
    url, _ = deployment
    c = client(url)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model="tiny", messages=HELLO, temperature=5)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.chat.completions.create(model="tiny", messages=HELLO, logit_bias={"5": 1})
    with pytest.raises(openai.BadRequestError) as too_long:
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=9000)
    assert too_long.value.code == "context_length_exceeded"
    status, body = post(url, "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert "dynamo_frontend_requests_total{" not in get_text(url, "/metrics"), "refused bodies never reach a worker"


def test_unknown_routes_oversized_and_chunked_bodies(deployment):
    url, _ = deployment
    status, body = post(url, "/v1/chat/complete", b"{}")
    assert status == 404 and "no route" in json.loads(body)["error"]["message"]
    status, body = post(url, "/metrics", b"{}")
    assert status == 405 and "takes GET" in json.loads(body)["error"]["message"]
    # A declared length over the limit is refused before the body is sent.
    conn = connection(url, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(64 * 1024 * 1024 + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "payload_too_large"
    # A chunked body (no Content-Length) is read as it comes.
    conn = connection(url, timeout=10)
    request = json.dumps({"model": "tiny", "messages": HELLO, "max_tokens": 3}).encode()
    conn.request("POST", "/v1/chat/completions", iter([request[:20], request[20:]]),
                 {"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["usage"]["completion_tokens"] == 3


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict]]:
    """`count` responses with a Content-Length body, as (status, JSON body)."""
    data, responses = b"", []
    while len(responses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode().split("\r\n")
            length = int(next(h.split(":")[1] for h in head if h.lower().startswith("content-length")))
            if len(data) >= head_end + 4 + length:
                responses.append((int(head[0].split()[1]), json.loads(data[head_end + 4 : head_end + 4 + length])))
                data = data[head_end + 4 + length :]
                continue
        more = sock.recv(65536)
        assert more, f"the connection closed after {len(responses)} responses"
        data += more
    return responses


def test_keep_alive_pipelining_expect_continue_and_malformed_requests(deployment):
    url, _ = deployment
    port = urlparse(url).port
    body = json.dumps({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 2}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request * 3 + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined, in order
        answers = read_responses(sock, 4)
        assert [status for status, _ in answers] == [200] * 4
        assert [a["object"] for _, a in answers] == ["text_completion"] * 3 + ["list"]
        # curl's way with larger bodies: the headers, then the body once the server says go on.
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1).split(b"\r\n\r\n")[0]
                     + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert read_responses(sock, 1)[0][0] == 200
    # HTTP/1.0 (ApacheBench speaks it): keep-alive only when asked, a stream without chunks.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200
        streamed = json.dumps({"model": "tiny", "prompt": "Once", "max_tokens": 3, "stream": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%b" % (len(streamed), streamed))
        data = b""
        while more := sock.recv(65536):
            data += more
        head, _, events = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower() and events.endswith(b"data: [DONE]\n\n")
        assert b"connection: close" in head.lower()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        status, error = read_responses(sock, 1)[0]
        assert status == 400 and "malformed HTTP request" in error["error"]["message"]
        assert sock.recv(100) == b"", "a malformed request closes its connection"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # No end of the headers: unread bytes would turn the close into a reset.
        sock.sendall(b"GET /v1/models HTTP/1.1\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\nX-Next: 1\r\n")
        status, error = read_responses(sock, 1)[0]
        assert status == 431 and "headers exceed" in error["error"]["message"]


def test_a_client_that_disconnects_cancels_the_worker_request(deployment):
    url, worker_url = deployment
    conn = connection(url, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": "tiny", "messages": HELLO, "max_tokens": 5000, "stream": True, "ignore_eos": True,
    }), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data:")
    conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and metric_value(worker_url, "dynamo_component_cancellation_total") < 1:
        time.sleep(0.05)
    assert metric_value(worker_url, "dynamo_component_cancellation_total") == 1
    assert metric_value(url, "dynamo_frontend_model_cancellation_total", request_type="stream") == 1
    assert metric_value(worker_url, "sglang:num_running_reqs") == 0


def test_unary_disconnect_is_cancelled_too(deployment):
    url, worker_url = deployment
    conn = connection(url, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": "tiny", "messages": HELLO, "max_tokens": 8000 - 40, "ignore_eos": True,
    }), {"Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    while not any(i["inflight"] for i in get_json(url, "/health")["instances"]):
        assert time.monotonic() < deadline, "the request never reached a worker"
        time.sleep(0.05)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away without reading its answer
    conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and metric_value(worker_url, "dynamo_component_cancellation_total") < 1:
        time.sleep(0.05)
    assert metric_value(worker_url, "dynamo_component_cancellation_total") == 1
    assert metric_value(url, "dynamo_frontend_model_cancellation_total", request_type="unary") == 1


def test_migration_after_sigkill_gives_the_undisturbed_answer(tmp_path):
    slow = ("--mock-num-params", "8000000000")  # about 7 ms per token: the kill lands mid-stream
    with worker(tmp_path, "a", *slow, speedup=1.0) as (a, a_url), worker(tmp_path, "b", *slow, speedup=1.0) as (b, b_url), \
         frontend(tmp_path, "--migration-limit", "3", instances=2) as (_, url):
        c = client(url)
        kw = dict(model="tiny", messages=HELLO, max_tokens=150, temperature=0, extra_body={"ignore_eos": True})
        undisturbed = c.chat.completions.create(**kw).choices[0].message.content
        pieces, killed = [], None
        for chunk in c.chat.completions.create(stream=True, **kw):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 20 and killed is None:
                serving = a if metric_value(a_url, "dynamo_component_inflight_requests") else b
                serving.signal(signal.SIGKILL)
                killed = serving
        assert killed is not None
        assert "".join(pieces) == undisturbed, "no duplicated or missing tokens across the move"
        assert metric_value(url, "dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1


def test_a_request_naming_its_worker_ends_with_it_rather_than_migrate(tmp_path):
    slow = ("--mock-num-params", "8000000000")
    with worker(tmp_path, "a", *slow, speedup=1.0) as (a, a_url), worker(tmp_path, "b", *slow, speedup=1.0) as (b, _), \
         frontend(tmp_path, "--migration-limit", "3", instances=2) as (_, url):
        instance = json.loads(http_get(f"{url}/health")[1])["instances"][0]["instance_id"]
        stream = client(url).chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=150, stream=True,
            extra_body={"ignore_eos": True, "nvext": {"backend_instance_id": int(instance, 16)}})
        pieces = 0
        with pytest.raises(openai.APIError) as error:
            for chunk in stream:
                pieces += bool(chunk.choices and chunk.choices[0].delta.content)
                if pieces == 20:
                    (a if metric_value(a_url, "dynamo_component_inflight_requests") else b).signal(signal.SIGKILL)
        assert "does not migrate" in error.value.message  # a migrated stream would have gone on


def test_a_stopping_frontend_refuses_new_connections_and_finishes_its_streams(tmp_path):
    with worker(tmp_path, "w", speedup=10.0) as _, frontend(tmp_path) as (proc, url):
        stream = client(url).chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=2000, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(c for c in chunks if c.choices and c.choices[0].delta.content)  # under way
        proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the listener closes at once
            try:
                socket.create_connection(("127.0.0.1", urlparse(url).port), timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                break
        else:
            raise AssertionError("the stopping frontend still accepts connections")
        rest = list(chunks)
        assert rest[-1].usage.completion_tokens == 2000 and rest[-2].choices[0].finish_reason == "length"
        assert proc.wait(30) == 0


def test_no_worker_left_is_a_503(tmp_path):
    with worker(tmp_path, "w") as (proc, _), frontend(tmp_path, "--migration-limit", "0") as (_, url):
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(openai.InternalServerError) as error:
            client(url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert error.value.status_code == 503


def test_embeddings(tmp_path):
    with worker(tmp_path, "e", "--embedding-worker") as _, frontend(tmp_path) as (_, url):
        c = client(url)
        result = c.embeddings.create(model="tiny", input=["hello world", "good night"])
        assert [len(d.embedding) for d in result.data] == [1024, 1024] and result.usage.prompt_tokens > 2
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="tiny", messages=HELLO)


def test_health_lists_instances_and_models_follow_discovery(tmp_path):
    with frontend(tmp_path, wait_for=None) as (_, url):
        assert get_json(url, "/v1/models")["data"] == []
        with worker(tmp_path, "w"):
            wait_instances(url, "tiny", 1)
            assert [m["id"] for m in get_json(url, "/v1/models")["data"]] == ["tiny"]
        wait_instances(url, "tiny", 0)
        health = get_json(url, "/health")
        assert health["instances"] == [] and health["status"] == "unhealthy"


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'


@pytest.fixture
def echo(tmp_path):
    """A worker whose model repeats its prompt: the answer's structure is the test's choice."""
    with worker(tmp_path, "w", "--mock-echo", "--dyn-tool-call-parser", "hermes",
                "--dyn-reasoning-parser", "think") as _, frontend(tmp_path) as (_, url):
        yield client(url)


def test_tool_calls_are_parsed_out_unary_and_streamed(echo):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Checking. " + CALL}], tools=[WEATHER_TOOL])
    unary = echo.chat.completions.create(**kw).choices[0]
    assert unary.finish_reason == "tool_calls"
    (call,) = unary.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Zürich"}
    assert "<tool_call>" not in (unary.message.content or "").split("Checking.")[-1]
    deltas = [ch.choices[0].delta for ch in echo.chat.completions.create(stream=True, **kw) if ch.choices]
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert streamed[0].function.name == "get_weather" and streamed[0].id
    assert json.loads("".join(tc.function.arguments or "" for tc in streamed)) == {"city": "Zürich"}


def test_reasoning_is_separated_from_content(echo):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "<think>ponder 😀 deeply</think>The answer is 42."}])
    message = echo.chat.completions.create(**kw).choices[0].message
    assert message.reasoning_content == "ponder 😀 deeply" and "The answer is 42." in message.content
    deltas = [ch.choices[0].delta for ch in echo.chat.completions.create(stream=True, **kw) if ch.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == "ponder 😀 deeply" and content == message.content and "<think>" not in content


def test_least_loaded_routes_around_a_busy_worker_and_sees_its_reported_load(tmp_path):
    slow = ("--mock-num-params", "8000000000")
    with worker(tmp_path, "a", *slow, speedup=1.0) as (_, a_url), worker(tmp_path, "b", *slow, speedup=1.0) as (_, b_url), \
         frontend(tmp_path, "--router-mode", "least-loaded", instances=2) as (_, url):
        c = client(url)
        long = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=400, stream=True,
                                         extra_body={"ignore_eos": True})
        next(iter(long))
        time.sleep(0.5)  # a load report or two
        busy = [i for i in get_json(url, "/health")["instances"] if i["inflight"]]
        assert len(busy) == 1 and busy[0]["active_decode_blocks"] > 0
        for _ in range(3):
            c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
        served = [metric_value(u, "dynamo_component_requests_total") for u in (a_url, b_url)]
        long.close()
    assert sorted(served)[1] - sorted(served)[0] >= 2, "the short requests went to the idle worker"


def test_disaggregated_chat_runs_both_legs(tmp_path):
    bootstrap = free_port()
    with worker(tmp_path, "p", "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bootstrap)) \
            as (_, prefill_url), worker(tmp_path, "d", "--disaggregation-mode", "decode") as (_, decode_url), \
            frontend(tmp_path, instances=2) as (_, url):
        c = client(url)
        kw = dict(model="tiny", messages=HELLO, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
        unary = c.chat.completions.create(**kw)
        pieces, _ = stream_chat(c, **kw)
        assert unary.usage.completion_tokens == 12 and "".join(pieces) == unary.choices[0].message.content
        assert metric_value(prefill_url, "sglang:prompt_tokens_total") >= 2 * unary.usage.prompt_tokens
        assert metric_value(decode_url, "sglang:generation_tokens_total") >= 2 * 12
        assert metric_value(prefill_url, "sglang:num_running_reqs") == metric_value(decode_url, "sglang:num_running_reqs") == 0

