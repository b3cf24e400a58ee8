"""What the request-plane client puts on the wire."""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

from orchestrator.planes import messages as m
from orchestrator.planes.request import RequestClient


async def _exchange(stop_after_final: bool) -> list:
    """A raw ROUTER plays the worker: one chunk, then the final one. Returns what the
    client sent after the request."""
    router = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        async with RequestClient(f"tcp://127.0.0.1:{port}") as client:
            stream = client.stream(m.GenerateRequest(request_id="r", token_ids=[1]))
            async with contextlib.aclosing(stream):
                first = asyncio.ensure_future(anext(stream))
                identity, _ = await router.recv_multipart()
                await router.send_multipart([identity, m.encode(m.Chunk("r", token_ids=[5]))])
                await first
                if stop_after_final:
                    await router.send_multipart([identity, m.encode(m.Chunk("r", [6], finish_reason="length"))])
                    await anext(stream)  # the consumer stops right after the final chunk
            sent = []
            with contextlib.suppress(TimeoutError):
                while True:
                    sent.append(m.decode_to_worker((await asyncio.wait_for(router.recv_multipart(), 0.3))[1]))
            return sent
    finally:
        router.close(0)


def test_a_finished_request_owes_no_cancel():
    assert asyncio.run(_exchange(stop_after_final=True)) == []


def test_an_abandoned_request_is_cancelled():
    assert asyncio.run(_exchange(stop_after_final=False)) == [m.Cancel("r")]
