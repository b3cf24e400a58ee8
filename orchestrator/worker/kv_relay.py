"""The worker's KV relay: the engine's KV events in, the router's view out.

For each DP rank the engine publishes on (SGLang's `--kv-events-config`, base port +
rank) a SUB socket reads `[topic, seq, KVEventBatch]`. A missed engine seq is asked
again from the engine's replay socket (also how the relay catches up at start, since
the engine has been publishing since before the relay subscribed); what the engine no
longer has is counted as dropped.

Each batch is checked and turned into sequence hashes (`router.hashing`): the relay
keeps, per rank, the engine's block hash -> sequence hash of every block it holds, so
a stored block's parent gives the prefix to continue and a removal names the hash
the router knows. A block whose size is not the page size, an unknown parent, an
unknown removal and a malformed frame are counted and logged, never fatal.

What a batch changed goes out on the event plane as one `KvEvents` with the worker's
own event id. The last `buffer_size` of them are kept: a subscriber that saw a gap,
or just started, asks the sync socket (ROUTER) and gets the missing range, or a
snapshot of every block per rank when the range is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import msgspec
import zmq
import zmq.asyncio

from orchestrator.engine.mock.publisher import offset_endpoint_port, parse_kv_events_config
from orchestrator.engine.sglang_kv_events import AllBlocksCleared, BlockRemoved, BlockStored, decode_batch, decode_seq
from orchestrator.metrics import KvRelayMetrics
from orchestrator.planes import events as ev
from orchestrator.router.hashing import sequence_hashes

log = logging.getLogger(__name__)

_REPLAY_TIMEOUT_S = 2.0
_END = -1


class KvRelay:
    """Lifecycle: `start()` binds the sync socket and returns its port; `run()` relays
    until cancelled; `close()`."""

    def __init__(self, kv_events_config: dict, ranks: list[int], engine_host: str, page_size: int,
                 publisher: ev.EventPublisher, instance_id: int, metrics: KvRelayMetrics,
                 sync_host: str, sync_port: int = 0, buffer_size: int = 4096):
        self._config = parse_kv_events_config(kv_events_config)
        self._ranks, self._engine_host, self.page_size = ranks, engine_host, page_size
        self._publisher, self.instance_id, self.metrics = publisher, instance_id, metrics
        self._sync_host, self.sync_port = sync_host, sync_port
        self._ctx = zmq.asyncio.Context.instance()
        self._sync = self._ctx.socket(zmq.ROUTER)
        self._sync.setsockopt(zmq.LINGER, 0)
        self._blocks: dict[int, dict[int, int]] = {rank: {} for rank in ranks}  # engine hash -> sequence hash
        self._buffer: deque[ev.KvEvents] = deque(maxlen=buffer_size)
        self.next_event_id = 0
        self._warned: set[str] = set()

    def start(self) -> int:
        if self.sync_port:
            self._sync.bind(f"tcp://{self._sync_host}:{self.sync_port}")
        else:
            self.sync_port = self._sync.bind_to_random_port(f"tcp://{self._sync_host}")
        return self.sync_port

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._serve_sync())
            for rank in self._ranks:
                tasks.create_task(self._relay_rank(rank))

    def close(self) -> None:
        self._sync.close(linger=0)

    # -- engine side ------------------------------------------------------------

    def _dial(self, endpoint: str | None, rank: int) -> str | None:
        """The rank's address as this process dials it: a wildcard host means the engine's."""
        endpoint = offset_endpoint_port(endpoint, rank)
        if endpoint is None:
            return None
        for wildcard in ("*", "0.0.0.0", "[::]"):
            endpoint = endpoint.replace(f"//{wildcard}:", f"//{self._engine_host}:")
        return endpoint

    async def _relay_rank(self, rank: int) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self._config.topic.encode())
        sub.connect(self._dial(self._config.endpoint, rank))
        replay = self._dial(self._config.replay_endpoint, rank)
        try:
            expected = await self._replay(rank, replay, 0)
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3 or len(frames[1]) != 8:
                    self._count("batch", "malformed", f"a KV event message of DP rank {rank} has a bad frame layout")
                    continue
                seq = decode_seq(frames[1])
                if seq < expected:
                    continue  # already had it from a replay
                if seq > expected:
                    expected = await self._replay(rank, replay, expected)
                    if seq < expected:
                        continue
                    if seq > expected:
                        self.metrics.dropped.inc(seq - expected)
                        log.warning("DP rank %d: engine KV event batches %d..%d are lost", rank, expected, seq - 1)
                await self._apply(rank, frames[2])
                expected = seq + 1
        finally:
            sub.close(linger=0)

    async def _replay(self, rank: int, endpoint: str | None, start: int) -> int:
        """Apply what the engine still has from `start` on; return the next seq to expect."""
        if endpoint is None:
            return start
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                async with asyncio.timeout(_REPLAY_TIMEOUT_S):  # not wait_for: on 3.11 it can swallow a cancel
                    frames = await dealer.recv_multipart()
                if len(frames) != 4 or len(frames[2]) != 8:
                    self._count("batch", "malformed", f"a KV event replay reply of DP rank {rank} is malformed")
                    continue
                seq = decode_seq(frames[2])
                if seq == _END:
                    return start
                if seq >= start:
                    await self._apply(rank, frames[3])
                    start = seq + 1
        except TimeoutError:
            log.warning("DP rank %d: the engine's KV event replay did not answer in %gs", rank, _REPLAY_TIMEOUT_S)
            return start
        finally:
            dealer.close(linger=0)

    async def _apply(self, rank: int, payload: bytes) -> None:
        try:
            batch = decode_batch(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._count("batch", "malformed", f"a KV event batch of DP rank {rank} does not decode: {e}")
            return
        ops = [op for event in batch.events if (op := self._convert(rank, event)) is not None]
        if not ops:
            return
        message = ev.KvEvents(self.instance_id, self.next_event_id, rank, ops)
        self.next_event_id += 1
        self._buffer.append(message)
        await self._publisher.publish(ev.KV_TOPIC, message)

    def _convert(self, rank: int, event) -> ev.KvOp | None:
        blocks = self._blocks[rank]
        if isinstance(event, BlockStored):
            if event.block_size != self.page_size or len(event.token_ids) != event.block_size * len(event.block_hashes):
                self._count("stored", "invalid_block", f"DP rank {rank} stored blocks of {event.block_size} tokens "
                            f"({len(event.token_ids)} for {len(event.block_hashes)} blocks); the page size is "
                            f"{self.page_size}")
                return None
            parent = None
            if event.parent_block_hash is not None:
                parent = blocks.get(event.parent_block_hash)
                if parent is None:
                    self._count("stored", "parent_block_not_found",
                                f"DP rank {rank} stored blocks under an unknown parent {event.parent_block_hash}")
                    return None
            hashes = sequence_hashes(event.token_ids, self.page_size, parent)
            blocks.update(zip(event.block_hashes, hashes, strict=True))
            self._count("stored", "ok")
            return ev.Stored(hashes)
        if isinstance(event, BlockRemoved):
            hashes = [h for e in event.block_hashes if (h := blocks.pop(e, None)) is not None]
            if len(hashes) < len(event.block_hashes):
                self._count("removed", "block_not_found", f"DP rank {rank} removed blocks it never stored")
            if not hashes:
                return None
            self._count("removed", "ok")
            return ev.Removed(hashes)
        if isinstance(event, AllBlocksCleared):
            blocks.clear()
            self._count("cleared", "ok")
            return ev.Cleared()
        return None

    def _count(self, event_type: str, status: str, warning: str | None = None) -> None:
        self.metrics.events.labels(event_type=event_type, status=status).inc()
        if warning is not None and status not in self._warned:  # once per kind of fault, then only counted
            self._warned.add(status)
            log.warning("%s (counted in dynamo_component_kv_events_total, status=%s)", warning, status)

    # -- subscriber side -----------------------------------------------------------

    async def _serve_sync(self) -> None:
        while True:
            identity, *rest = await self._sync.recv_multipart()
            try:
                request = ev.kv_sync_request_decoder.decode(rest[-1] if rest else b"")
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("dropping a malformed KV sync request")
                continue
            with contextlib.suppress(zmq.ZMQError):
                await self._sync.send_multipart([identity, ev.encode(self.sync_reply(request.since))])

    def sync_reply(self, since: int) -> ev.KvSyncReply:
        oldest = self._buffer[0].event_id if self._buffer else self.next_event_id
        if oldest <= since <= self.next_event_id:
            events = [e for e in self._buffer if e.event_id >= since]
            return ev.KvSyncReply(self.next_event_id, events=events)
        return ev.KvSyncReply(self.next_event_id, snapshot={r: list(b.values()) for r, b in self._blocks.items()})
