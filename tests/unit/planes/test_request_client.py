"""What the request-plane client puts on the wire."""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

from orchestrator.planes import messages as m
from orchestrator.planes.request import RequestClient


@contextlib.asynccontextmanager
async def _one_request():
    """A raw ROUTER plays the worker for one streamed request "r": yields the ROUTER,
    the stream, the task reading its first reply and the client's identity."""
    router = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        async with RequestClient(f"tcp://127.0.0.1:{port}") as client:
            stream = client.stream(m.GenerateRequest(request_id="r", token_ids=[1]))
            async with contextlib.aclosing(stream):
                first = asyncio.ensure_future(anext(stream))
                identity, _ = await router.recv_multipart()
                yield router, stream, first, identity
    finally:
        router.close(0)


async def _exchange(stop_after_final: bool) -> list:
    """One chunk, then (or not) the final one. Returns what the client sent after the request."""
    async with _one_request() as (router, stream, first, identity):
        await router.send_multipart([identity, m.encode(m.Chunk("r", token_ids=[5]))])
        await first
        if stop_after_final:
            await router.send_multipart([identity, m.encode(m.Chunk("r", [6], finish_reason="length"))])
            await anext(stream)  # the consumer stops right after the final chunk
        await stream.aclose()
        sent = []
        with contextlib.suppress(TimeoutError):
            while True:
                sent.append(m.decode_to_worker((await asyncio.wait_for(router.recv_multipart(), 0.3))[1]))
        return sent


def test_a_finished_request_owes_no_cancel():
    assert asyncio.run(_exchange(stop_after_final=True)) == []


def test_an_abandoned_request_is_cancelled():
    assert asyncio.run(_exchange(stop_after_final=False)) == [m.Cancel("r")]


async def _replies_to(frame: list[m.FromWorker]) -> list[m.FromWorker]:
    """The ROUTER sends `frame` (as one `Replies` frame) for request "r"; what the consumer reads."""
    async with _one_request() as (router, stream, first, identity):
        await router.send_multipart([identity, m.encode_replies(frame)])
        return [await first] + [reply async for reply in stream]


def test_chunks_waiting_together_reach_the_consumer_as_one():
    top = [[m.TopLogprob(9, -0.5)], [m.TopLogprob(8, -0.25)], [m.TopLogprob(7, -0.75)]]
    frame = [
        m.Chunk("r", token_ids=[5], logprobs=[-0.1], top_logprobs=top[:1]),
        m.Chunk("r", token_ids=[6], logprobs=[-0.2], top_logprobs=top[1:2]),
        m.Chunk("r", token_ids=[7], logprobs=[-0.3], top_logprobs=top[2:], finish_reason="length",
                prompt_tokens=1, completion_tokens=3, cached_tokens=1),
    ]
    assert asyncio.run(_replies_to(frame)) == [
        m.Chunk("r", token_ids=[5, 6, 7], logprobs=[-0.1, -0.2, -0.3], top_logprobs=top, finish_reason="length",
                prompt_tokens=1, completion_tokens=3, cached_tokens=1),
    ]


def test_an_error_after_chunks_still_comes_on_its_own():
    error = m.ErrorReply("r", m.ErrorKind.ENGINE_SHUTDOWN, "draining")
    replies = asyncio.run(_replies_to([m.Chunk("r", token_ids=[5]), m.Chunk("r", token_ids=[6]), error]))
    assert replies == [m.Chunk("r", token_ids=[5, 6]), error]
