"""KV-aware routing end to end: `+recipe=llama8b_kv_router engine=mock`, workers whose
relays feed the frontend's prefix index."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.integration.frontend_support import (
    client,
    frontend,
    metric_value,
    wait_instances,
)
from tests.integration.test_launch import Launch
from tests.integration.worker_support import worker
from tests.managed import http_get

pytestmark = pytest.mark.slow
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PAGE = 16  # the recipe's page size
HELLO_SHORT = [{"role": "user", "content": "Hello!"}]


def _conversation(i: int) -> list[dict]:
    topic = ["tides", "volcanoes", "glaciers", "deserts", "reefs", "forests"][i]
    system = f"You are a patient geography teacher. Conversation {i} is about {topic}. " * 12
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Tell me about {topic}."}]


def _stored(url: str) -> float:
    return metric_value(url, "dynamo_router_kv_cache_events_applied_total", event_type="stored", status="ok")


def _first_turns(url: str, n: int = 6, events: bool = True) -> list:
    """Each conversation once, waiting until the frontend's index has its blocks."""
    c, answers = client(url), []
    for i in range(n):
        before = _stored(url)
        answers.append(c.chat.completions.create(model=MODEL, messages=_conversation(i), max_tokens=4, temperature=0))
        deadline = time.monotonic() + 10
        while events and _stored(url) <= before:
            assert time.monotonic() < deadline, "the frontend's index never saw the stored blocks"
            time.sleep(0.05)
    return answers


def _assert_repeats_hit_the_cache(url: str, firsts: list) -> None:
    c = client(url)
    for i, first in enumerate(firsts):
        again = c.chat.completions.create(model=MODEL, messages=_conversation(i), max_tokens=4, temperature=0)
        prompt, cached = again.usage.prompt_tokens, again.usage.prompt_tokens_details.cached_tokens
        # Every full page is cached where the router sent it, but the one holding the
        # last prompt token, which the engine computes again.
        assert cached >= (prompt - 1) // PAGE * PAGE - PAGE, (i, prompt, cached)
        assert again.choices[0].message.content == first.choices[0].message.content


@pytest.mark.parametrize("events", [True, False], ids=["kv-events", "approximate"])
def test_repeated_conversations_go_where_their_prefix_is_cached(tmp_path, events):
    with Launch(tmp_path, "+recipe=llama8b_kv_router", "engine=mock", f"router.use_kv_events={events}") as launch:
        launch.wait_ready()
        firsts = _first_turns(launch.url, events=events)
        _assert_repeats_hit_the_cache(launch.url, firsts)
        assert metric_value(launch.url, "dynamo_router_decision_seconds_count") == 12


def test_dp_ranks_of_one_worker_are_routed_separately(tmp_path):
    # One worker with two DP ranks, each its own radix cache: a repeat must go to the
    # rank that holds it, which the engine's own balancing would get wrong half the time.
    with Launch(tmp_path, "+recipe=llama8b_kv_router", "engine=mock", "deployment.groups.agg.replicas=1",
                "deployment.groups.agg.dp=2") as launch:
        launch.wait_ready()
        _assert_repeats_hit_the_cache(launch.url, _first_turns(launch.url))


def test_a_restarted_frontend_rebuilds_its_index_from_the_workers(tmp_path):
    with Launch(tmp_path, "+recipe=llama8b_kv_router", "engine=mock") as launch:
        launch.wait_ready()
        firsts = _first_turns(launch.url)
        stop, answered = threading.Event(), []

        def load() -> None:  # other users keep sending while the frontend restarts
            c = client(launch.url, timeout=10)
            while not stop.is_set():
                try:
                    c.chat.completions.create(model=MODEL, messages=_conversation(5), max_tokens=4)
                    answered.append(time.monotonic())
                except Exception:  # noqa: BLE001 - refused while the frontend is down
                    time.sleep(0.05)

        threading.Thread(target=load, daemon=True).start()
        try:
            (frontend,) = launch.pids("orchestrator.frontend")
            os.kill(frontend, signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + 30
            while not (answered and answered[-1] > killed + 0.5):
                assert time.monotonic() < deadline, launch.log()
                time.sleep(0.1)
            wait_instances(launch.url, MODEL, 4)
            stop.set()  # (a worker busy with it would rightly lose a small prefix to an idle one)
            time.sleep(0.5)
            _assert_repeats_hit_the_cache(launch.url, firsts)
            assert metric_value(launch.url, "dynamo_router_kv_syncs_total", kind="range") >= 4
        finally:
            stop.set()


def test_a_request_naming_its_worker_is_served_there(tmp_path):
    # Dynamo's nvext.backend_instance_id, as an external router sends it. Round-robin
    # alone would alternate the repeats between the two workers.
    with worker(tmp_path, "a"), worker(tmp_path, "b"), \
         frontend(tmp_path, "--router-mode", "round-robin", instances=2) as (_, url):
        a, b = (int(i["instance_id"], 16) for i in json.loads(http_get(f"{url}/health")[1])["instances"])
        c = client(url)

        def cached(**nvext) -> int:
            answer = c.chat.completions.create(model="tiny", messages=_conversation(0), max_tokens=2,
                                               temperature=0, extra_body={"nvext": nvext})
            return answer.usage.prompt_tokens_details.cached_tokens

        assert cached(backend_instance_id=a) == 0
        assert all(cached(backend_instance_id=a) > 0 for _ in range(3))
        assert cached(backend_instance_id=b, dp_rank=0) == 0  # b never saw the prompt
        refused = [({"backend_instance_id": 7}, "nvext.backend_instance_id"), ({"dp_rank": 0}, "nvext.dp_rank"),
                   ({"backend_instance_id": a, "dp_rank": 1}, "nvext.dp_rank")]
        for nvext, param in refused:
            with pytest.raises(openai.BadRequestError) as error:
                cached(**nvext)
            assert error.value.body["param"] == param, error.value.body


@pytest.mark.parametrize("policy", ["reject", "queue"])
def test_when_every_worker_is_busy_requests_are_refused_or_queued(tmp_path, policy):
    # A rank with any prompt tokens waiting for prefill counts as busy (threshold 0, set at
    # run time); the worker is slowed down so that the first request's prefill takes about
    # a second.
    with worker(tmp_path, "w", speedup=0.004), \
         frontend(tmp_path, "--router-mode", "kv", "--router-busy-policy", policy) as (_, url):
        assert post_json(url, "/busy_threshold", {"active_prefill_tokens_threshold": "none"})[0] == 400
        status, body = post_json(url, "/busy_threshold", {"active_prefill_tokens_threshold": 0})
        assert status == 200 and body == {"active_decode_blocks_threshold": 1.0, "active_prefill_tokens_threshold": 0}
        assert json.loads(http_get(f"{url}/busy_threshold")[1]) == body
        c = client(url, timeout=60)
        long_prompt = [{"role": "user", "content": "Describe the sea. " * 300}]
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.chat.completions.create, model="tiny", messages=long_prompt, max_tokens=1)
            deadline = time.monotonic() + 10
            while sum(i["inflight"] for i in json.loads(http_get(f"{url}/health")[1])["instances"]) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            if policy == "reject":
                with pytest.raises(openai.APIStatusError) as refused:
                    c.chat.completions.create(model="tiny", messages=HELLO_SHORT, max_tokens=1)
                assert refused.value.status_code == 503 and "busy" in refused.value.message
                assert metric_value(url, "dynamo_frontend_model_rejection_total", endpoint="chat_completions") == 1
            else:
                assert c.chat.completions.create(model="tiny", messages=HELLO_SHORT, max_tokens=1).choices
                assert first.done()  # it waited for the first request's prefill to end
            assert first.result().choices


def post_json(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
