"""The event plane: a worker's ZMQ PUB socket, which routers subscribe to.

Messages are `[topic, seq (8-byte big-endian), msgpack payload]`, with one sequence
counter per publisher, so a subscriber sees a gap when it missed something. Topic
`load` carries `LoadReport`s: per DP rank, what the router's cost function needs.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import zmq
import zmq.asyncio

from orchestrator.engine.base import Engine

log = logging.getLogger(__name__)

LOAD_TOPIC = b"load"


class RankLoad(msgspec.Struct, omit_defaults=True):
    dp_rank: int
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV pool held (not counting evictable cache)
    active_decode_blocks: int = 0
    active_prefill_tokens: int = 0
    total_blocks: int = 0


class LoadReport(msgspec.Struct):
    instance_id: int
    ranks: list[RankLoad]


_encoder = msgspec.msgpack.Encoder()
load_decoder = msgspec.msgpack.Decoder(LoadReport)


class EventPublisher:
    """Lifecycle: `start()` binds and returns the port; `publish` any time; `close()`."""

    def __init__(self, host: str, port: int):
        self._host, self.port = host, port
        self._socket = zmq.asyncio.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._seq = 0

    def start(self) -> int:
        if self.port:
            self._socket.bind(f"tcp://{self._host}:{self.port}")
        else:
            self.port = self._socket.bind_to_random_port(f"tcp://{self._host}")
        return self.port

    async def publish(self, topic: bytes, payload: msgspec.Struct) -> None:
        await self._socket.send_multipart([topic, self._seq.to_bytes(8, "big"), _encoder.encode(payload)])
        self._seq += 1

    def close(self) -> None:
        self._socket.close(linger=0)


async def publish_load(publisher: EventPublisher, engine: Engine, instance_id: int, interval_s: float = 0.1) -> None:
    """Publish the engine's load whenever it changes (checked every `interval_s`),
    and at least once a second so a new subscriber learns it. Runs until cancelled."""
    last, quiet = None, 0.0
    while True:
        ranks = [msgspec.convert(r, RankLoad) for r in engine.load()]
        if ranks != last or quiet >= 1.0:
            await publisher.publish(LOAD_TOPIC, LoadReport(instance_id, ranks))
            last, quiet = ranks, 0.0
        await asyncio.sleep(interval_s)
        quiet += interval_s
