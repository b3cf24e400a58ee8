"""Continuous batching of one DP rank: admission, KV waits, chunked prefill,
retraction and request validation."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.kv_cache import KvCache
from orchestrator.engine.mock.request import Request, Role
from orchestrator.engine.mock.scheduler import Scheduler
from orchestrator.engine.mock.sizing import resolve_pool
from orchestrator.engine.mock.timing import Roofline
from orchestrator.engine.mock.tokens import TokenModel
from orchestrator.engine.sglang_kv_events import BlockStored
from orchestrator.planes.messages import Chunk, ErrorKind, StopConditions
from tests.unit.engine.mock_support import collect, prompt, request, started, tiny_config, tokens_of


async def drain(req: Request) -> list[Chunk]:
    chunks = []
    while True:
        chunk = await req.outbox.get()
        assert isinstance(chunk, Chunk)
        chunks.append(chunk)
        if chunk.finish_reason:
            return chunks


def scheduler_of(config, on_events=None, conservativeness: float = 1.0) -> Scheduler:
    pool = resolve_pool(config)
    cache = KvCache(pool.max_total_tokens, pool.page_size, on_events=on_events)
    model = TokenModel(config.model.vocab_size, config.model.eos_token_ids)
    return Scheduler(0, pool, config.max_prefill_tokens, cache, Roofline.of(config), model,
                     conservativeness=conservativeness)


def new_request(rid: str, tokens: list[int], max_new: int) -> Request:
    return Request(rid, list(tokens), len(tokens), max_new, Role.GENERATE, stop=StopConditions(max_tokens=max_new, ignore_eos=True))


async def with_loop(scheduler: Scheduler, body):
    async with asyncio.TaskGroup() as group:
        loop = group.create_task(scheduler.run())
        try:
            return await body()
        finally:
            loop.cancel()


def test_a_request_that_does_not_fit_waits_until_others_finish():
    async def main():
        async with started(tiny_config(max_total_tokens=64)) as engine:
            order: list[tuple[str, Chunk]] = []

            async def run(rid: str, tokens: list[int]):
                async for chunk in engine.generate(request(rid, tokens, max_tokens=16, ignore_eos=True)):
                    order.append((rid, chunk))

            async with asyncio.TaskGroup() as group:
                group.create_task(run("big-1", prompt(100, 40)))
                await asyncio.sleep(0)
                group.create_task(run("big-2", prompt(500, 40)))
                while not order:
                    await asyncio.sleep(0)
                assert engine.load()[0]["waiting"] == 1
                assert engine.load()[0]["active_prefill_tokens"] == 40
            first_done = next(i for i, (rid, c) in enumerate(order) if rid == "big-1" and c.finish_reason)
            second_start = next(i for i, (rid, _) in enumerate(order) if rid == "big-2")
            assert second_start > first_done
            assert [c.finish_reason for rid, c in order if c.finish_reason] == ["length", "length"]
            assert sum(len(c.token_ids) for rid, c in order if rid == "big-2") == 16
            assert engine.load()[0]["kv_usage"] == 0.0

    asyncio.run(main())


def test_long_prompts_are_prefilled_in_chunks_that_are_cached_as_they_go():
    flushes: list[list] = []
    config = tiny_config(chunked_prefill_size=8)
    scheduler = scheduler_of(config, on_events=flushes.append)

    async def body():
        req = new_request("r", prompt(1000, 30), 2)
        scheduler.submit(req)
        return await drain(req)

    chunks = asyncio.run(with_loop(scheduler, body))
    stored = [[e for e in flush if isinstance(e, BlockStored)] for flush in flushes]
    # Steps of 8, 8, 8 and 6 prompt tokens: each chunk's full pages are inserted when it is done.
    assert [sum(len(e.token_ids) for e in flush) for flush in stored[:4]] == [8, 8, 8, 4]
    assert stored[1][0].parent_block_hash == stored[0][0].block_hashes[-1]
    assert tokens_of(chunks) and chunks[-1].finish_reason == "length"


def test_max_prefill_tokens_caps_one_step():
    steps: list[int] = []
    config = tiny_config(chunked_prefill_size=-1, max_prefill_tokens=10)
    scheduler = scheduler_of(config, on_events=lambda events: steps.append(sum(len(e.token_ids) for e in events)))

    async def body():
        reqs = [new_request(f"r{i}", prompt(100 * (i + 1), 12), 1) for i in range(3)]
        for req in reqs:
            scheduler.submit(req)
        for req in reqs:
            await drain(req)

    asyncio.run(with_loop(scheduler, body))
    # Chunking off: a prompt is never split, but a step stops admitting once 10 tokens are in.
    assert steps[:3] == [12, 12, 12]


def test_running_out_of_kv_retracts_the_newest_request_which_then_resumes():
    config = tiny_config(max_total_tokens=64)
    alone = {}
    for rid, start in (("a", 100), ("b", 200)):
        scheduler = scheduler_of(config)

        async def solo(start=start, scheduler=scheduler):
            req = new_request("solo", prompt(start, 8), 40)
            scheduler.submit(req)
            return tokens_of(await drain(req))

        alone[rid] = asyncio.run(with_loop(scheduler, solo))

    # No KV kept back for future tokens: both are admitted, then 2 x 48 tokens do not fit in 64.
    scheduler = scheduler_of(config, conservativeness=0.0)

    async def both():
        a, b = new_request("a", prompt(100, 8), 40), new_request("b", prompt(200, 8), 40)
        scheduler.submit(a)
        scheduler.submit(b)
        chunks = await asyncio.gather(drain(a), drain(b))
        return a, b, chunks

    a, b, (chunks_a, chunks_b) = asyncio.run(with_loop(scheduler, both))
    assert b.retractions >= 1 and a.retractions == 0
    assert tokens_of(chunks_a) == alone["a"] and tokens_of(chunks_b) == alone["b"]
    assert scheduler.cache.used_tokens == 0

    # SGLang's default keeps room for the expected output: b waits instead of being retracted.
    scheduler = scheduler_of(config)
    a, b, (chunks_a, chunks_b) = asyncio.run(with_loop(scheduler, both))
    assert a.retractions == b.retractions == 0
    assert tokens_of(chunks_b) == alone["b"]


def test_prompt_longer_than_the_context_is_refused_before_queueing():
    async def main():
        async with started(tiny_config(context_length=100)) as engine:
            with pytest.raises(EngineError) as failure:
                engine.generate(request("r", prompt(0, 120)))
            assert failure.value.kind == ErrorKind.INVALID
            assert str(failure.value) == "The input (120 tokens) is longer than the model's context length (100 tokens)."
            with pytest.raises(EngineError, match="maximum context length of 100 tokens"):
                engine.generate(request("r", prompt(0, 90), max_tokens=20))
            assert engine.load()[0]["waiting"] == 0

    asyncio.run(main())


def test_prompt_that_could_never_fit_the_pool_is_refused():
    async def main():
        async with started(tiny_config(max_total_tokens=64, context_length=1024)) as engine:
            with pytest.raises(EngineError, match="exceeds the maximum allowed length") as failure:
                engine.generate(request("r", prompt(0, 70)))
            assert failure.value.kind == ErrorKind.INVALID
            # max_tokens beyond the pool is clipped, not refused: the request fits alone.
            chunks = await collect(engine.generate(request("ok", prompt(0, 40), max_tokens=500, ignore_eos=True)))
            assert chunks[-1].completion_tokens == 63 - 40

    asyncio.run(main())


def test_requests_decode_together_and_a_late_reader_gets_tokens_merged():
    async def main():
        async with started(tiny_config()) as engine:
            streams = [engine.generate(request(f"r{i}", prompt(1000 * i, 20), max_tokens=12, ignore_eos=True)) for i in range(4)]
            results = await asyncio.gather(*(collect(s) for s in streams))
            for chunks in results:
                assert sum(len(c.token_ids) for c in chunks) == 12
                assert chunks[-1].finish_reason == "length" and chunks[-1].prompt_tokens == 20
            assert engine.load()[0]["running"] == 0
            # Tokens that wait for their reader reach it as one chunk.
            late = engine.generate(request("late", prompt(9000, 20), max_tokens=12, ignore_eos=True))
            while engine.load()[0]["waiting"] or engine.load()[0]["running"]:
                await asyncio.sleep(0.001)  # until it has finished, with nobody reading
            [chunk] = await collect(late)
            assert len(chunk.token_ids) == 12 and chunk.finish_reason == "length"

    asyncio.run(main())
