"""KV-aware routing end to end: `+recipe=llama8b_kv_router engine=mock`, four workers
whose relays feed the frontend's prefix index."""

from __future__ import annotations

import time

import pytest

from tests.integration.frontend_support import client, metric_value
from tests.integration.test_launch import Launch

pytestmark = pytest.mark.slow


def _conversation(i: int) -> list[dict]:
    topic = ["tides", "volcanoes", "glaciers", "deserts", "reefs", "forests"][i]
    system = f"You are a patient geography teacher. Conversation {i} is about {topic}. " * 12
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Tell me about {topic}."}]


def _stored(url: str) -> float:
    return metric_value(url, "dynamo_router_kv_cache_events_applied_total", event_type="stored", status="ok")


def _wait_indexed(url: str, before: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _stored(url) <= before:
        assert time.monotonic() < deadline, "the frontend's index never saw the stored blocks"
        time.sleep(0.05)


def test_repeated_conversations_go_where_their_prefix_is_cached(tmp_path):
    with Launch(tmp_path, "+recipe=llama8b_kv_router", "engine=mock") as launch:
        launch.wait_ready()
        c = client(launch.url)
        model = "meta-llama/Llama-3.1-8B-Instruct"
        firsts = []
        for i in range(6):
            before = _stored(launch.url)
            answer = c.chat.completions.create(model=model, messages=_conversation(i), max_tokens=4, temperature=0)
            firsts.append(answer)
            _wait_indexed(launch.url, before)
        for i, first in enumerate(firsts):
            again = c.chat.completions.create(model=model, messages=_conversation(i), max_tokens=4, temperature=0)
            prompt = again.usage.prompt_tokens
            cached = again.usage.prompt_tokens_details.cached_tokens
            # Every full page of the prompt is cached where the router sent it (SGLang
            # keeps at least the last token to compute: a page boundary may be one short).
            assert cached >= (prompt - 1) // 16 * 16 - 16, (i, prompt, cached)
            assert again.choices[0].message.content == first.choices[0].message.content
        assert metric_value(launch.url, "dynamo_router_decision_seconds_count") == 12
