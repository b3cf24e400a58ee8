"""The event plane: a worker's ZMQ PUB socket, which routers subscribe to.

Messages are `[topic, seq (8-byte big-endian), msgpack payload]`, with one sequence
counter per publisher, so a subscriber sees a gap when it missed something. Topic
`load` carries `LoadReport`s: per DP rank, what the router's cost function needs.
Topic `kv` carries the worker's KV relay (`KvEvents`); a subscriber that missed some
asks the relay's sync socket (`KvSyncRequest` -> `KvSyncReply`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional, Union

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
        await self._socket.send_multipart([topic, self._seq.to_bytes(8, "big"), encode(payload)])
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


# -- KV events, as a worker's relay publishes them ---------------------------------

KV_TOPIC = b"kv"


class Stored(msgspec.Struct, tag="stored", array_like=True):
    hashes: list[int]  # sequence hashes (`router.hashing`), parents first


class Removed(msgspec.Struct, tag="removed", array_like=True):
    hashes: list[int]


class Cleared(msgspec.Struct, tag="cleared", array_like=True):
    pass


KvOp = Union[Stored, Removed, Cleared]


class KvEvents(msgspec.Struct, array_like=True):
    """What one engine batch changed on one DP rank. `event_id` counts from 0 per
    worker, across its ranks, so a subscriber sees a gap in any of them."""

    instance_id: int
    event_id: int
    dp_rank: int
    ops: list[KvOp]


class KvSyncRequest(msgspec.Struct):
    since: int  # the first event id the subscriber is missing


class KvSyncReply(msgspec.Struct):
    """Either the missing events, or (when they are no longer buffered) a snapshot of
    every block the worker holds per DP rank, which replaces what the subscriber had.
    Either way the subscriber then expects `next_event_id`."""

    next_event_id: int
    events: Optional[list[KvEvents]] = None
    snapshot: Optional[dict[int, list[int]]] = None


kv_events_decoder = msgspec.msgpack.Decoder(KvEvents)
kv_sync_request_decoder = msgspec.msgpack.Decoder(KvSyncRequest)
kv_sync_reply_decoder = msgspec.msgpack.Decoder(KvSyncReply)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)
