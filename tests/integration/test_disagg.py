"""Disaggregated serving end to end: `+recipe=llama70b_disagg engine=mock` (and the
DeepSeek attention-DP recipe), through the frontend, with the official client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from orchestrator.planes.events import LOAD_TOPIC, load_decoder
from tests.integration.frontend_support import client, metric_value, wait_instances
from tests.integration.test_launch import Launch
from tests.integration.worker_support import records

pytestmark = pytest.mark.slow
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
STORY = [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]
# Real time, slow enough to act inside each phase: this prompt (~20k tokens) prefills in
# three chunks over ~1.5 s and its KV takes ~3 s over a 1 GB/s link; ~10 ms per decode step.
SLOW = dict(speedup=1)
SLOW_LINK = "cluster.kv_link_gbs=1"
LONG = [{"role": "user", "content": "Describe every wave of the sea. " * 2500}]


def workers(launch: Launch, worker_type: str) -> list:
    return sorted((r for r in records(launch.run_dir).values() if r.worker_type.value == worker_type),
                  key=lambda r: r.started_at)


def total(launch: Launch, worker_type: str, name: str, **labels) -> float:
    return sum(metric_value(r.system_url, name, **labels) for r in workers(launch, worker_type))


def until(condition, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def test_streamed_chat_runs_both_legs_each_counted_where_it_ran(tmp_path):
    with Launch(tmp_path, "+recipe=llama70b_disagg", "engine=mock") as launch:
        launch.wait_ready()
        wait_instances(launch.url, MODEL, 3)
        c = client(launch.url)
        kw = dict(model=MODEL, messages=STORY, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
        pieces = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                  if ch.choices]
        unary = c.chat.completions.create(**kw)
        assert unary.usage.completion_tokens == 12 and "".join(pieces) == unary.choices[0].message.content
        assert total(launch, "prefill", "sglang:prompt_tokens_total") >= 2 * unary.usage.prompt_tokens
        assert total(launch, "decode", "sglang:generation_tokens_total") >= 2 * 12
        assert total(launch, "prefill", "sglang:generation_tokens_total") <= 2 + 2  # one forced token per leg
        url = launch.url
        for leg in ("prefill", "decode"):
            assert metric_value(url, "dynamo_frontend_worker_requests_total", worker_type=leg, status="ok") == 2
            assert metric_value(url, "dynamo_frontend_worker_time_to_first_reply_seconds_count", worker_type=leg) == 2
        assert metric_value(url, "dynamo_frontend_kv_transfer_seconds_count") == 2
        assert metric_value(url, "dynamo_frontend_kv_transfer_seconds_sum") > 0


def _inflight(records: list) -> list:
    """The workers serving a request now (the runtime's gauge, current at every request;
    SGLang's own gauges refresh only every few steps)."""
    return [r for r in records if metric_value(r.system_url, "dynamo_component_inflight_requests")]


def _running(launch: Launch, worker_type: str) -> float:
    return total(launch, worker_type, "sglang:num_running_reqs")


def _kv_held(launch: Launch, worker_type: str) -> float:
    return total(launch, worker_type, "sglang:token_usage")


@pytest.mark.parametrize("moment", ["prefill", "transfer", "decode"])
def test_a_client_gone_at_any_moment_cancels_both_legs_and_frees_their_kv(tmp_path, moment):
    with Launch(tmp_path, "+recipe=llama70b_disagg", "engine=mock", SLOW_LINK, **SLOW) as launch:
        launch.wait_ready()
        wait_instances(launch.url, MODEL, 3)
        host, port = launch.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "model": MODEL, "messages": LONG, "max_tokens": 2000, "stream": True, "ignore_eos": True,
        }), {"Content-Type": "application/json"})
        # The prefill worker's KV in use, as it reports after each prefill chunk (8,192
        # tokens in the recipe): one chunk done of three, or all of them (the KV is moving).
        used = lambda: total(launch, "prefill", "sglang:num_used_tokens")  # noqa: E731
        if moment == "prefill":
            until(lambda: 0 < used() <= 8192, what="the first of three chunks prefilled")
        elif moment == "transfer":
            until(lambda: used() > 2 * 8192, what="the whole prompt prefilled, its KV moving")
            assert _running(launch, "decode") == 0, "decode waits for the KV"
        else:
            response = conn.getresponse()
            until(lambda: response.readline().startswith(b"data:") and _running(launch, "decode") >= 1,
                  what="tokens streaming from decode")
        conn.sock.shutdown(2)
        conn.close()

        # Each leg ends cancelled by the frontend, or, when its peer's abort reached it first
        # through the bootstrap connection, as a failed transfer: either way it is over.
        ended = lambda side: total(launch, side, "dynamo_component_cancellation_total") + \
            total(launch, side, "sglang:num_transfer_failed_reqs_total")  # noqa: E731
        until(lambda: ended("decode") >= 1, what="the decode leg ended")
        if moment != "decode":  # once decoding, the prefill leg has already answered
            until(lambda: ended("prefill") >= 1, what="the prefill leg ended")
        assert total(launch, "prefill", "dynamo_component_cancellation_total") + \
            total(launch, "decode", "dynamo_component_cancellation_total") >= 1
        for side in ("prefill", "decode"):
            until(lambda side=side: _running(launch, side) == 0 and _kv_held(launch, side) == 0,
                  what=f"the {side} worker idle with its KV free")
        assert metric_value(launch.url, "dynamo_frontend_model_cancellation_total") == 1


@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_a_prefill_worker_that_dies_or_stalls_mid_flight_hands_the_request_to_the_other(tmp_path, fault):
    # A stalled worker (SIGSTOP) is given up when the decode leg's bootstrap wait (2 s here) ends.
    overrides = ["supervisor.restart.policy=never"] if fault == "killed" else \
        ["+deployment.groups.decode.env.SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=2"]
    with Launch(tmp_path, "+recipe=llama70b_disagg", "engine=mock", "frontend.migration_limit=3", *overrides,
                **SLOW) as launch:
        launch.wait_ready()
        wait_instances(launch.url, MODEL, 3)
        c = client(launch.url, timeout=120)
        kw = dict(model=MODEL, messages=LONG, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(c.chat.completions.create, **kw)
            until(lambda: _inflight(workers(launch, "prefill")), what="a prefill leg in flight")
            (busy,) = _inflight(workers(launch, "prefill"))
            os.kill(busy.pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
            try:
                result = answer.result()
            finally:
                if fault == "stalled":
                    os.kill(busy.pid, signal.SIGCONT)
        assert result.usage.completion_tokens == 8 and result.choices[0].finish_reason == "length"
        assert metric_value(launch.url, "dynamo_frontend_model_migration_total", migration_type="new_request") == 1
        undisturbed = c.chat.completions.create(**kw)
        assert result.choices[0].message.content == undisturbed.choices[0].message.content


def test_a_decode_worker_killed_mid_stream_is_migrated(tmp_path):
    # Two TP2 decode workers (the recipe has one TP4) so that there is another to go to.
    with Launch(tmp_path, "+recipe=llama70b_disagg", "engine=mock", "frontend.migration_limit=3",
                "deployment.groups.decode.replicas=2", "deployment.groups.decode.tp=2",
                "supervisor.restart.policy=never", **SLOW) as launch:
        launch.wait_ready()
        wait_instances(launch.url, MODEL, 4)
        c = client(launch.url, timeout=120)
        kw = dict(model=MODEL, messages=STORY, max_tokens=60, temperature=0, extra_body={"ignore_eos": True})
        undisturbed = c.chat.completions.create(**kw).choices[0].message.content
        pieces = []
        for chunk in c.chat.completions.create(stream=True, **kw):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 5:
                    (busy,) = _inflight(workers(launch, "decode"))
                    os.kill(busy.pid, signal.SIGKILL)
        assert "".join(pieces) == undisturbed
        assert metric_value(launch.url, "dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1


def test_attention_dp_decode_spreads_concurrent_requests_over_its_ranks(tmp_path):
    # The end-to-end view of DP routing in disaggregation; that the router, not the
    # engine, picks the rank is pinned by the router's unit tests and by the aggregated
    # DP test in test_kv_routing.py, where a wrong rank loses the cached prefix.
    with Launch(tmp_path, "+recipe=deepseek_r1_disagg_dp", "engine=mock", speedup=10) as launch:
        launch.wait_ready()
        (decode,) = workers(launch, "decode")
        busy_ranks: set[int] = set()
        stop = threading.Event()

        def watch_load() -> None:  # the decode worker's own per-rank load reports, on its event plane
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, LOAD_TOPIC)
            sub.connect(decode.event_address)
            while not stop.is_set():
                if sub.poll(50):
                    report = load_decoder.decode(sub.recv_multipart()[2])
                    busy_ranks.update(r.dp_rank for r in report.ranks if r.running)
            sub.close(0)

        watcher = threading.Thread(target=watch_load)
        watcher.start()
        try:
            time.sleep(0.3)
            c = client(launch.url, timeout=120)
            kw = dict(model="deepseek-ai/DeepSeek-R1", max_tokens=300, extra_body={"ignore_eos": True})
            prompts = [[{"role": "user", "content": f"Question {i}: why is the sky blue?"}] for i in range(8)]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda p: c.chat.completions.create(messages=p, **kw), prompts))
        finally:
            stop.set()
            watcher.join()
        assert all(a.usage.completion_tokens == 300 for a in answers)
        # Eight requests at once over sixteen decode ranks, each on a rank of its own.
        assert len(busy_ranks) == 8, busy_ranks
