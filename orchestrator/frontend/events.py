"""What the workers publish on their event planes: load, and KV events for the index.

One SUB socket follows every registered worker's event address (connected when the
worker joins, disconnected when it leaves). Load reports become each instance's
per-rank `reported` load. KV events (when routing by KV with events) are applied to
the KV router's prefix index in each worker's event-id order: a worker that joins is
synced first (the missing range or a snapshot from its relay's sync socket, so a
restarted frontend rebuilds its index from the workers), and a gap in its event ids
makes the frontend sync again; events that arrive meanwhile wait their turn. A worker
that leaves is forgotten by the index.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

import msgspec
import zmq
import zmq.asyncio

from orchestrator.frontend.models import ModelRegistry
from orchestrator.metrics import RouterMetrics
from orchestrator.planes import events as ev
from orchestrator.router.index import OK, PrefixIndex

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 5.0
_RETRY_S = (0.2, 1.0, 5.0)


@dataclass
class _Feed:
    address: str  # the relay's sync socket
    next_id: int | None = None  # the event id expected next; None before the first sync
    pending: list[ev.KvEvents] | None = None  # while syncing: events that arrived meanwhile
    task: asyncio.Task | None = field(default=None, repr=False)


class WorkerEvents:
    def __init__(self, models: ModelRegistry, index: PrefixIndex | None = None, metrics: RouterMetrics | None = None,
                 on_load: Callable[[], None] | None = None):
        self.models, self.index, self.metrics, self._on_load = models, index, metrics, on_load
        self._ctx = zmq.asyncio.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, ev.LOAD_TOPIC)
        if index is not None:
            self._socket.setsockopt(zmq.SUBSCRIBE, ev.KV_TOPIC)
        self._connected: set[str] = set()
        self._feeds: dict[int, _Feed] = {}

    def follow(self) -> None:
        """Connect to the workers that joined, disconnect from those that left."""
        instances = {i.record.instance_id: i.record for m in self.models.models.values() for i in m.instances.values()}
        wanted = {r.event_address for r in instances.values() if r.event_address}
        for address in wanted - self._connected:
            self._socket.connect(address)
        for address in self._connected - wanted:
            self._socket.disconnect(address)
        self._connected = wanted
        if self.index is None:
            return
        for instance_id in set(self._feeds) - set(instances):
            feed = self._feeds.pop(instance_id)
            if feed.task is not None:
                feed.task.cancel()
            self.index.forget(instance_id)
        for instance_id, record in instances.items():
            if record.kv_sync_address and instance_id not in self._feeds:
                feed = self._feeds[instance_id] = _Feed(record.kv_sync_address)
                self._sync(instance_id, feed, [])

    async def run(self) -> None:
        while True:
            topic, _, payload = await self._socket.recv_multipart()
            try:
                if topic == ev.KV_TOPIC:
                    self._on_kv(ev.kv_events_decoder.decode(payload))
                else:
                    self._on_load_report(ev.load_decoder.decode(payload))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.warning("dropping a malformed %s message: %s", topic.decode(errors="replace"), e)

    def close(self) -> None:
        for feed in self._feeds.values():
            if feed.task is not None:
                feed.task.cancel()
        self._socket.close(linger=0)

    # -- load ---------------------------------------------------------------------

    def _on_load_report(self, report: ev.LoadReport) -> None:
        instance = self.models.instance(report.instance_id)
        if instance is None:
            return
        for rank in report.ranks:
            instance.rank(rank.dp_rank).reported = rank
        instance.active_decode_blocks = sum(r.active_decode_blocks for r in report.ranks)
        if self._on_load is not None:
            self._on_load()

    # -- KV events -------------------------------------------------------------------

    def _on_kv(self, events: ev.KvEvents) -> None:
        feed = self._feeds.get(events.instance_id)
        if feed is None:
            return  # not (or no longer) a registered worker
        if feed.pending is not None:
            feed.pending.append(events)
        elif events.event_id == feed.next_id:
            self._apply(events)
            feed.next_id += 1
        elif feed.next_id is None or events.event_id > feed.next_id:
            log.info("KV events of instance %x: expected event %s, got %d; syncing", events.instance_id,
                     feed.next_id, events.event_id)
            self._sync(events.instance_id, feed, [events])
        # else: an event already applied (it came with a sync reply as well)

    def _apply(self, events: ev.KvEvents) -> None:
        slot = (events.instance_id, events.dp_rank)
        for op in events.ops:
            if isinstance(op, ev.Stored):
                self.index.stored(slot, op.hashes)
                self._count("stored", OK, len(op.hashes))
            elif isinstance(op, ev.Removed):
                missing = self.index.removed(slot, op.hashes)
                self._count("removed", OK, len(op.hashes) - missing)
                self._count("removed", "block_not_found", missing)
            else:
                self.index.cleared(slot)
                self._count("cleared", OK, 1)

    def _count(self, event_type: str, status: str, n: int) -> None:
        if self.metrics is not None and n:
            self.metrics.events.labels(event_type=event_type, status=status).inc(n)

    def _sync(self, instance_id: int, feed: _Feed, pending: list[ev.KvEvents]) -> None:
        feed.pending = pending
        feed.task = asyncio.ensure_future(self._resync(instance_id, feed))

    async def _resync(self, instance_id: int, feed: _Feed) -> None:
        since = feed.next_id or 0
        for attempt in range(len(_RETRY_S) + 1):
            try:
                reply = await self._ask(feed.address, since)
                break
            except (TimeoutError, zmq.ZMQError, msgspec.DecodeError, msgspec.ValidationError) as e:
                if self.metrics is not None:
                    self.metrics.syncs.labels(kind="failed").inc()
                log.warning("KV sync with instance %x failed (%s)", instance_id, e or type(e).__name__)
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        else:
            reply = None
        if reply is None:  # give up until its next event shows the gap again
            feed.pending = None
            return
        if reply.snapshot is not None:
            self.index.forget(instance_id)
            for dp_rank, hashes in reply.snapshot.items():
                self.index.stored((instance_id, dp_rank), hashes)
            kind = "snapshot"
        else:
            for events in reply.events or ():
                if events.event_id >= since:
                    self._apply(events)
            kind = "range"
        if self.metrics is not None:
            self.metrics.syncs.labels(kind=kind).inc()
        log.info("KV index synced with instance %x (%s up to event %d)", instance_id, kind, reply.next_event_id - 1)
        feed.next_id, pending, feed.pending, feed.task = reply.next_event_id, feed.pending, None, None
        for events in pending:
            if feed.pending is not None:  # a gap among them started another sync
                feed.pending.append(events)
            else:
                self._on_kv(events)

    async def _ask(self, address: str, since: int) -> ev.KvSyncReply:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(address)
        try:
            await dealer.send(ev.encode(ev.KvSyncRequest(since)))
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                reply = await dealer.recv()
        finally:
            dealer.close(linger=0)
        return ev.kv_sync_reply_decoder.decode(reply)
