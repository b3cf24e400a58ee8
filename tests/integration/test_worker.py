"""A worker process as the launch plan runs it: registration, streaming, cancellation,
health, metrics and drain, with the mock engine on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import pytest

from orchestrator.planes import messages as m
from orchestrator.planes.request import RequestClient
from tests.integration.worker_support import (
    address_of, collect, metric, records, request, tokens_of, worker,
)
from tests.managed import http_get

pytestmark = pytest.mark.slow
PROMPT = list(range(1000, 1040))  # 40 tokens: two full pages of 16 and a partial one


def test_registers_and_its_lease_expires_after_sigkill(tmp_path):
    with worker(tmp_path, "w", env={"DYN_LEASE_TTL_SECS": "1"}) as (proc, _):
        (record,) = records(tmp_path).values()
        assert record.worker_type.value == "aggregated" and record.component == "backend"
        assert record.model.served_name == "tiny" and record.model.kv_block_size == 16
        assert record.pid == proc.pid
        proc.signal(signal.SIGKILL)
        deadline = time.monotonic() + 3
        while records(tmp_path, lease_ttl_s=1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert records(tmp_path, lease_ttl_s=1) == {}, "a dead worker's record must expire with its lease"


def test_streams_deterministic_tokens_and_reports_cached_prefix(tmp_path):
    # Real-time steps (~2 ms each): a client that falls behind gets the tokens waiting
    # for it merged into one chunk, and this test looks at tokens arriving one by one.
    with worker(tmp_path, "w", speedup=1.0):
        address = address_of(tmp_path)
        first = asyncio.run(collect(address, request("r1", PROMPT, max_tokens=12)))
        second = asyncio.run(collect(address, request("r2", PROMPT, max_tokens=12)))
    final = first[-1]
    assert final.finish_reason == "length" and final.completion_tokens == 12 and final.prompt_tokens == 40
    assert len(tokens_of(first)) == 12 and len(first) > 1, "tokens arrive in several chunks"
    assert tokens_of(first) == tokens_of(second)
    assert final.cached_tokens == 0 and second[-1].cached_tokens == 32, "two full pages come from the prefix cache"


def test_continuation_matches_an_undisturbed_run(tmp_path):
    """What migration relies on: the prompt plus the first k tokens yields the rest."""
    with worker(tmp_path, "w"):
        address = address_of(tmp_path)
        whole = tokens_of(asyncio.run(collect(address, request("a", PROMPT, max_tokens=10))))
        rest = tokens_of(asyncio.run(collect(address, request("b", PROMPT + whole[:4], max_tokens=6))))
    assert rest == whole[4:]


@pytest.mark.parametrize("when", ["before the first token", "after the first token"])
def test_cancel_aborts_frees_kv_and_counts(tmp_path, when):
    long_prompt = list(range(2000, 2000 + 4000))
    # A 30B model on one GPU prefills 4,000 tokens in about half a second.
    with worker(tmp_path, "w", "--mock-num-params", "30000000000", speedup=1.0) as (_, url):
        address = address_of(tmp_path)

        async def cancel():
            async with RequestClient(address) as client:
                stream = client.stream(request("c", long_prompt, max_tokens=2000))
                if when == "after the first token":
                    assert (await anext(stream)).token_ids
                else:
                    task = asyncio.ensure_future(anext(stream))
                    await asyncio.sleep(0.2)  # the prompt is still prefilling
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await stream.aclose()
                await asyncio.sleep(0.5)

        asyncio.run(cancel())
        assert metric(url, "dynamo_component_cancellation_total") == 1
        assert metric(url, "sglang:num_aborted_requests_total") == 1
        assert metric(url, "sglang:num_running_reqs") == 0 and metric(url, "sglang:num_queue_reqs") == 0
        assert metric(url, "sglang:token_usage") == 0, "the aborted request's KV is free again"


def test_metrics_show_engine_and_runtime_families(tmp_path):
    with worker(tmp_path, "w") as (_, url):
        asyncio.run(collect(address_of(tmp_path), request("m", PROMPT, max_tokens=5)))
        assert metric(url, "sglang:generation_tokens_total", model_name="tiny") >= 5
        assert metric(url, "sglang:prompt_tokens_total") >= 40
        assert metric(url, "sglang:time_to_first_token_seconds_count") >= 1
        assert metric(url, "dynamo_component_requests_total", dynamo_component="backend", model="tiny") >= 1
        assert metric(url, "dynamo_component_uptime_seconds") > 0
        assert metric(url, "dynamo_component_inflight_requests") == 0


def test_health_reports_the_endpoint_and_the_idle_canary_runs(tmp_path):
    with worker(tmp_path, "w", "--canary-wait-time", "0.3") as (_, url):
        status, body = http_get(f"{url}/health")
        assert status == 200 and json.loads(body)["endpoints"] == {"generate": "ready"}
        before = metric(url, "dynamo_component_requests_total")
        time.sleep(2.5)
        assert metric(url, "dynamo_component_requests_total") > before, "the canary probes an idle worker"
        assert http_get(f"{url}/live")[0] == 200


@pytest.mark.parametrize(
    "worker_type, extra",
    [
        ("prefill", ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "0"]),
        ("decode", ["--disaggregation-mode", "decode"]),
        ("embedding", ["--embedding-worker"]),
    ],
)
def test_every_worker_type_passes_its_health_payload(tmp_path, worker_type, extra):
    if worker_type == "prefill":
        from tests.managed import free_port

        extra = extra[:-1] + [str(free_port())]
    with worker(tmp_path, worker_type, *extra, "--canary-wait-time", "0.3") as (_, url):
        time.sleep(1.5)  # a canary round has run
        status, body = http_get(f"{url}/health")
        assert status == 200, body
        (record,) = records(tmp_path).values()
        assert record.worker_type.value == worker_type
        if worker_type == "prefill":
            assert record.component == "prefill" and record.bootstrap_port is not None
            assert record.model.model_types == ["prefill"]
        if worker_type == "embedding":
            assert record.model.embedding_dim == 1024


def test_embedding_worker_encodes(tmp_path):
    with worker(tmp_path, "e", "--embedding-worker"):
        (reply,) = asyncio.run(collect(address_of(tmp_path, "embedding"), m.EmbedRequest("e1", inputs=[[5, 6, 7], [8]])))
    assert isinstance(reply, m.Embeddings) and reply.prompt_tokens == 4
    assert [len(v) for v in reply.embeddings] == [1024, 1024]
    assert abs(sum(x * x for x in reply.embeddings[0]) - 1.0) < 1e-6


def test_bad_requests_get_a_typed_error(tmp_path):
    with worker(tmp_path, "w"):
        address = address_of(tmp_path)
        (empty,) = asyncio.run(collect(address, request("x", [])))
        (too_long,) = asyncio.run(collect(address, request("y", [5] * 9000)))
    assert isinstance(empty, m.ErrorReply) and empty.kind == m.ErrorKind.INVALID
    assert isinstance(too_long, m.ErrorReply) and "context length" in too_long.message


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path):
    # An 8B model decodes a token in about 7 ms: 100 tokens outlast the signal.
    with worker(tmp_path, "w", "--mock-num-params", "8000000000", speedup=1.0) as (proc, url):
        address = address_of(tmp_path)

        async def drain():
            async with RequestClient(address) as client:
                streams = [asyncio.ensure_future(_all(client.stream(request(f"d{i}", PROMPT, max_tokens=100))))
                           for i in range(4)]
                await asyncio.sleep(0.3)
                proc.signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                refused = await _all(client.stream(request("late", PROMPT)))
                return await asyncio.gather(*streams), refused

        results, refused = asyncio.run(drain())
        assert proc.wait(30) == 0
    assert records(tmp_path) == {}, "the worker left discovery"
    for replies in results:
        assert replies[-1].finish_reason == "length" and len(tokens_of(replies)) == 100
    assert isinstance(refused[-1], m.ErrorReply) and refused[-1].kind == m.ErrorKind.ENGINE_SHUTDOWN


def test_drain_timeout_hands_leftovers_back_for_migration(tmp_path):
    with worker(tmp_path, "w", "--drain-timeout", "0.5", speedup=5.0) as (proc, _):
        address = address_of(tmp_path)

        async def drain():
            async with RequestClient(address) as client:
                stream = asyncio.ensure_future(_all(client.stream(request("long", PROMPT, max_tokens=5000))))
                await asyncio.sleep(0.5)
                proc.signal(signal.SIGTERM)
                return await stream

        replies = asyncio.run(drain())
        assert proc.wait(30) == 0
    assert tokens_of(replies), "it was streaming before the drain"
    assert isinstance(replies[-1], m.ErrorReply) and replies[-1].kind == m.ErrorKind.ENGINE_SHUTDOWN


def test_engine_routes(tmp_path):
    with worker(tmp_path, "w") as (_, url):
        post = lambda route, body=b"": _post(f"{url}/engine/{route}", body)  # noqa: E731
        assert post("flush_cache")[0] == 200
        assert post("nope")[0] == 404
        assert post("start_profile", b"[1]")[0] == 400
        assert post("release_memory_occupation", b'{"tags": ["weights"]}')[0] == 200
        assert records(tmp_path) == {}, "a worker without memory is out of discovery"
        assert post("resume_memory_occupation", b'{"tags": ["weights"]}')[0] == 200
        assert len(records(tmp_path)) == 1
        assert post("release_memory_occupation", b'{"tags": ["gpu"]}')[0] == 400


async def _all(stream) -> list:
    return [reply async for reply in stream]


def _post(url: str, body: bytes) -> tuple[int, str]:
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
