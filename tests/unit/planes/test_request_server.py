"""What the request-plane server sends back, and when it lets go of a request."""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

from orchestrator.planes import messages as m
from orchestrator.planes.request import RequestServer


async def _serve(handler, exchange, on_cancel=None):
    """Run a RequestServer with `handler`; `exchange(dealer)` plays the frontend."""
    server = RequestServer("127.0.0.1", 0, handler, on_cancel)
    port = server.start()
    dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    serving = asyncio.ensure_future(server.serve())
    try:
        return await exchange(dealer)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        dealer.close(0)
        server.close()


async def _received(dealer, count: int) -> list[m.FromWorker]:
    replies: list[m.FromWorker] = []
    while len(replies) < count:
        replies += m.decode_replies(await asyncio.wait_for(dealer.recv(), 5))
    return replies


def test_replies_of_concurrent_requests_all_arrive_in_order():
    async def handler(request):
        for token in range(5):
            await asyncio.sleep(0)
            yield m.Chunk(request.request_id, token_ids=[token], finish_reason="length" if token == 4 else None)

    async def exchange(dealer):
        for rid in ("a", "b", "c"):
            await dealer.send(m.encode(m.GenerateRequest(rid, token_ids=[1])))
        return await _received(dealer, 15)

    replies = asyncio.run(_serve(handler, exchange))
    for rid in ("a", "b", "c"):
        assert [r.token_ids[0] for r in replies if r.request_id == rid] == [0, 1, 2, 3, 4]


def test_a_cancel_stops_the_handler_and_is_reported():
    cancelled, closed = [], asyncio.Event()

    async def handler(request):
        try:
            yield m.Chunk(request.request_id, token_ids=[1])
            await asyncio.sleep(30)
            yield m.Chunk(request.request_id, token_ids=[2], finish_reason="length")
        finally:
            closed.set()

    async def exchange(dealer):
        await dealer.send(m.encode(m.GenerateRequest("a", token_ids=[1])))
        first = await _received(dealer, 1)
        await dealer.send(m.encode(m.Cancel("a")))
        await asyncio.wait_for(closed.wait(), 5)
        return first

    assert asyncio.run(_serve(handler, exchange, cancelled.append)) == [m.Chunk("a", token_ids=[1])]
    assert cancelled == ["a"]


def test_requests_sent_in_one_frame_are_all_served():
    async def handler(request):
        yield m.Chunk(request.request_id, token_ids=[7], finish_reason="length")

    async def exchange(dealer):
        requests = [m.GenerateRequest(rid, token_ids=[1]) for rid in ("a", "b")]
        await dealer.send(m.encode_requests(requests))
        return await _received(dealer, 2)

    replies = asyncio.run(_serve(handler, exchange))
    assert sorted(r.request_id for r in replies) == ["a", "b"]
