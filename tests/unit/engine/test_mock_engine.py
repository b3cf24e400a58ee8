"""`MockEngine` from the outside: streams, prefix reuse, abort, DP ranks, encode,
health, shutdown and the `sglang:*` metrics."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.engine import MockEngine
from orchestrator.engine.sglang_kv_events import BlockStored
from orchestrator.planes.messages import ErrorKind, GenerateRequest, SamplingOptions
from tests.unit.engine.mock_support import collect, prompt, request, started, tiny_config, tokens_of


def test_start_reports_what_the_engine_resolved():
    async def main():
        engine = MockEngine(tiny_config(dp_size=2, attn_dp_size=2, disaggregation_mode="prefill", host="10.0.0.1"))
        info = await engine.start()
        try:
            assert info.dp_size == 4 and info.page_size == 4 and info.max_total_tokens == 2048
            assert info.context_length == 1024 and info.eos_token_ids == (2, 3)
            assert (info.bootstrap_host, info.bootstrap_port) == ("10.0.0.1", 8998)
            assert info.embedding_dim is None
            assert await engine.health_check()
        finally:
            await engine.shutdown()
        assert not await engine.health_check()
        with pytest.raises(EngineError) as failure:
            engine.generate(request("late", prompt(0, 8)))
        assert failure.value.kind == ErrorKind.ENGINE_SHUTDOWN

    asyncio.run(main())


def test_a_shared_prefix_is_reported_as_cached_tokens():
    async def main():
        async with started(tiny_config()) as engine:
            shared = prompt(100, 18)
            first = await collect(engine.generate(request("a", shared + [7, 7, 7])))
            assert first[-1].cached_tokens == 0
            second = await collect(engine.generate(request("b", shared + [9, 9])))
            assert second[-1].cached_tokens == 16  # four full pages of four
            assert second[-1].prompt_tokens == 20

    asyncio.run(main())


def test_same_prompt_same_tokens_and_a_continuation_picks_up_exactly():
    async def main():
        async with started(tiny_config()) as engine:
            tokens = prompt(3000, 25)
            full = await collect(engine.generate(request("a", tokens, max_tokens=30, ignore_eos=True)))
            again = await collect(engine.generate(request("b", tokens, max_tokens=30, ignore_eos=True)))
            assert tokens_of(full) == tokens_of(again)
            out = tokens_of(full)
            # A migrated request: the prompt plus what was already streamed.
            rest = await collect(engine.generate(request("c", tokens + out[:11], max_tokens=19, ignore_eos=True)))
            assert tokens_of(rest) == out[11:]

    asyncio.run(main())


def test_stop_token_ends_the_stream_with_matched_stop():
    async def main():
        async with started(tiny_config()) as engine:
            tokens = prompt(4000, 12)
            out = tokens_of(await collect(engine.generate(request("a", tokens, max_tokens=20, ignore_eos=True))))
            index = next(i for i, t in enumerate(out) if i >= 3 and t not in out[:i])
            chunks = await collect(
                engine.generate(request("b", tokens, max_tokens=20, ignore_eos=True, stop_token_ids=(out[index],)))
            )
            assert tokens_of(chunks) == out[: index + 1]
            assert (chunks[-1].finish_reason, chunks[-1].matched_stop) == ("stop", out[index])
            assert chunks[-1].completion_tokens == index + 1

    asyncio.run(main())


def test_logprobs_come_with_every_token_when_asked():
    async def main():
        async with started(tiny_config()) as engine:
            chunks = await collect(engine.generate(request("a", prompt(10, 10), max_tokens=5, top_logprobs=3)))
            assert sum(len(chunk.token_ids) for chunk in chunks) == 5
            for chunk in chunks:  # one logprob and 3 alternatives (the token first) per token
                assert len(chunk.logprobs) == len(chunk.token_ids) and all(lp < 0 for lp in chunk.logprobs)
                assert [top[0].token_id for top in chunk.top_logprobs] == chunk.token_ids
                assert all(len(top) == 3 for top in chunk.top_logprobs)
            plain = await collect(engine.generate(request("b", prompt(10, 10), max_tokens=5)))
            assert all(c.logprobs is None and c.top_logprobs is None for c in plain)

    asyncio.run(main())


def idle_kv(engine: MockEngine) -> bool:
    return all(rank["kv_usage"] == 0.0 and rank["running"] == 0 and rank["waiting"] == 0 for rank in engine.load())


def test_abort_before_admission_ends_the_stream_with_abort():
    async def main():
        async with started(tiny_config(max_total_tokens=64)) as engine:
            blocker = engine.generate(request("big", prompt(0, 40), max_tokens=16, ignore_eos=True))
            waiting = engine.generate(request("queued", prompt(500, 40), max_tokens=16))
            first = await anext(blocker)
            assert engine.load()[0]["waiting"] == 1
            await engine.abort("queued")
            chunks = await collect(waiting)
            assert [(c.token_ids, c.finish_reason) for c in chunks] == [([], "abort")]
            assert engine.load()[0]["waiting"] == 0
            assert first.token_ids and (await collect(blocker))[-1].finish_reason == "length"
            assert idle_kv(engine)

    asyncio.run(main())


def test_abort_while_running_frees_kv_and_keeps_cached_pages_evictable():
    async def main():
        async with started(tiny_config()) as engine:
            stream = engine.generate(request("r", prompt(0, 30), max_tokens=500, ignore_eos=True))
            got = [await anext(stream), await anext(stream)]
            assert engine.load()[0]["kv_usage"] > 0
            await engine.abort("r")
            rest = await collect(stream)
            assert rest[-1].finish_reason == "abort"
            assert rest[-1].completion_tokens == len(tokens_of(got + rest))
            assert idle_kv(engine)
            # Its full pages stay in the radix tree, unlocked: a new request reuses them.
            again = await collect(engine.generate(request("again", prompt(0, 30), max_tokens=2)))
            assert again[-1].cached_tokens == 28
            await engine.abort("unknown")  # a no-op

    asyncio.run(main())


def test_dropping_the_stream_aborts_the_request():
    async def main():
        async with started(tiny_config(enable_metrics=True)) as engine:
            stream = engine.generate(request("closed", prompt(0, 30), max_tokens=500, ignore_eos=True))
            await anext(stream)
            await stream.aclose()
            assert idle_kv(engine)

            async def consume():
                async for _ in engine.generate(request("cancelled", prompt(100, 30), max_tokens=500, ignore_eos=True)):
                    pass

            async with asyncio.TaskGroup() as group:
                task = group.create_task(consume())
                while engine.load()[0]["running"] == 0:
                    await asyncio.sleep(0)
                task.cancel()
            assert idle_kv(engine)
            aborted = engine.registry.get_sample_value(
                "sglang:num_aborted_requests_total", {"model_name": "tiny", "engine_type": "unified"}
            )
            assert aborted == 2
            # The ids are free again.
            assert (await collect(engine.generate(request("closed", prompt(0, 8), max_tokens=1))))[-1].finish_reason

    asyncio.run(main())


def test_duplicate_live_request_ids_are_refused():
    async def main():
        async with started(tiny_config()) as engine:
            stream = engine.generate(request("same", prompt(0, 8), max_tokens=50, ignore_eos=True))
            with pytest.raises(EngineError, match="Duplicate request ID"):
                engine.generate(request("same", prompt(0, 8)))
            await stream.aclose()

    asyncio.run(main())


def test_shutdown_aborts_requests_in_flight():
    async def main():
        engine = MockEngine(tiny_config())
        await engine.start()
        stream = engine.generate(request("r", prompt(0, 20), max_tokens=500, ignore_eos=True))
        await anext(stream)
        await engine.shutdown()
        assert (await collect(stream))[-1].finish_reason == "abort"

    asyncio.run(main())


def test_dp_rank_targeting_and_round_robin():
    async def main():
        served: list[int] = []

        def on_events(rank: int, events: list) -> None:
            served.extend(rank for e in events if isinstance(e, BlockStored) and e.parent_block_hash is None)

        async with started(tiny_config(dp_size=2, attn_dp_size=2), on_kv_events=on_events) as engine:
            await collect(engine.generate(request("t", prompt(10, 9), max_tokens=1, dp_rank=3)))
            assert served == [3]
            served.clear()
            await asyncio.gather(*(collect(engine.generate(request(f"r{i}", prompt(100 * i + 50, 9), max_tokens=1)))
                                   for i in range(8)))
            assert sorted(served) == [0, 0, 1, 1, 2, 2, 3, 3]
            with pytest.raises(EngineError) as failure:
                engine.generate(request("bad", prompt(0, 9), dp_rank=4))
            assert failure.value.kind == ErrorKind.INVALID
            assert len(engine.load()) == 4 and engine.load()[3]["total_blocks"] == 512

    asyncio.run(main())


def test_prefill_engine_follows_the_bootstrap_room():
    from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
    from orchestrator.planes.messages import BootstrapInfo

    async def main():
        served: list[int] = []
        config = tiny_config(dp_size=4, disaggregation_mode="prefill")
        async with started(config, on_kv_events=lambda rank, events: served.append(rank)) as engine:
            bootstrap = BootstrapInfo(FAKE_BOOTSTRAP_HOST, 8998, room=4 * 1000 + 2)
            chunks = await collect(engine.generate(GenerateRequest("p", token_ids=prompt(0, 9), bootstrap=bootstrap)))
            assert chunks[-1].finish_reason == "length" and len(tokens_of(chunks)) == 1
            assert served == [2]

    asyncio.run(main())


def test_encode_returns_unit_vectors_after_a_prefill():
    async def main():
        async with started(tiny_config(is_embedding=True)) as engine:
            vectors = await engine.encode("e", [prompt(0, 10), prompt(50, 30)])
            assert [len(v) for v in vectors] == [32, 32]
            assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
            assert vectors[0] == (await engine.encode("again", [prompt(0, 10)]))[0]
            assert vectors[0] != vectors[1]
            with pytest.raises(EngineError):
                engine.generate(request("g", prompt(0, 10)))
            assert idle_kv(engine)
        async with started(tiny_config()) as engine:
            with pytest.raises(EngineError) as failure:
                await engine.encode("e", [prompt(0, 10)])
            assert failure.value.kind == ErrorKind.INVALID

    asyncio.run(main())


def test_metrics_use_sglang_names_and_labels():
    async def main():
        registry = CollectorRegistry()
        async with started(tiny_config(enable_metrics=True, dp_size=2), registry=registry) as engine:
            shared = prompt(100, 20)
            await collect(engine.generate(request("a", shared, max_tokens=8, ignore_eos=True, dp_rank=1)))
            await collect(engine.generate(request("b", shared + [5], max_tokens=8, ignore_eos=True, dp_rank=1)))
        text = generate_latest(registry).decode()
        names = ("num_running_reqs", "num_queue_reqs", "token_usage", "cache_hit_rate", "gen_throughput",
                 "num_used_tokens", "queue_time_seconds", "prompt_tokens_total", "generation_tokens_total",
                 "num_requests_total", "num_aborted_requests_total", "cached_tokens_total",
                 "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds")
        samples = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
        for name in names:
            assert f"sglang:{name}" in samples or f"sglang:{name}_count" in samples

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        rank1 = dict(model_name="tiny", engine_type="unified", tp_rank="0", pp_rank="0", dp_rank="1")
        for gauge in ("num_running_reqs", "num_queue_reqs", "token_usage", "gen_throughput", "num_used_tokens"):
            assert value(f"sglang:{gauge}", **rank1) is not None
        assert value("sglang:queue_time_seconds_count", **rank1) == 2
        assert value("sglang:queue_time_seconds_count", **{**rank1, "dp_rank": "0"}) == 0  # served nothing
        streaming = dict(model_name="tiny", engine_type="unified", is_streaming="true")
        plain = dict(model_name="tiny", engine_type="unified")
        assert value("sglang:prompt_tokens_total", **streaming) == 41
        assert value("sglang:generation_tokens_total", **streaming) == 16
        assert value("sglang:num_requests_total", **streaming) == 2
        assert value("sglang:cached_tokens_total", **plain, cache_source="device") == 20
        assert value("sglang:num_aborted_requests_total", **plain) == 0
        assert value("sglang:time_to_first_token_seconds_count", **streaming) == 2
        assert value("sglang:inter_token_latency_seconds_count", **plain) == 14
        assert value("sglang:e2e_request_latency_seconds_count", **streaming) == 2
        # The second prefill batch hit all five pages of the shared prompt: 20 of 21 tokens.
        assert value("sglang:cache_hit_rate", **rank1) == pytest.approx(20 / 21)

    asyncio.run(main())


def test_gen_throughput_is_published_every_40_decode_steps_and_zeroed_when_idle():
    async def main():
        async with started(tiny_config(enable_metrics=True)) as engine:
            rank0 = dict(model_name="tiny", engine_type="unified", tp_rank="0", pp_rank="0", dp_rank="0")
            stream = engine.generate(request("r", prompt(0, 10), max_tokens=60, ignore_eos=True))
            for _ in range(45):
                await anext(stream)
            assert engine.registry.get_sample_value("sglang:gen_throughput", rank0) > 0
            await collect(stream)
            while engine.registry.get_sample_value("sglang:gen_throughput", rank0) != 0:
                await asyncio.sleep(0)  # until the loop notices it is idle (pytest-timeout bounds it)

    asyncio.run(main())


def test_no_metrics_unless_enabled():
    engine = MockEngine(tiny_config(), registry=CollectorRegistry())
    assert engine.registry is None


def test_seed_changes_the_output():
    async def main():
        async with started(tiny_config()) as engine:
            tokens = prompt(0, 10)
            plain = tokens_of(await collect(engine.generate(request("a", tokens, max_tokens=10, ignore_eos=True))))
            seeded = tokens_of(await collect(engine.generate(
                request("b", tokens, max_tokens=10, ignore_eos=True, sampling=SamplingOptions(seed=42)))))
            assert plain != seeded

    asyncio.run(main())
