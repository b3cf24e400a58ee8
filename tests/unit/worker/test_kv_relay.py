"""The KV relay (engine events -> sequence hashes on the event plane) and the frontend's
side of it (`WorkerEvents` feeding the prefix index): catch-up, faults, gaps, syncs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from orchestrator.engine.mock.publisher import KvEventPublisher
from orchestrator.engine.sglang_kv_events import (
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    digest_to_int64,
    encode_batch,
    encode_seq,
    page_digests,
)
from orchestrator.frontend.events import WorkerEvents
from orchestrator.frontend.models import ModelRegistry
from orchestrator.metrics import KvRelayMetrics, RouterMetrics
from orchestrator.planes import events as ev
from orchestrator.planes.discovery.records import InstanceRecord, ModelCard
from orchestrator.roles import WorkerType
from orchestrator.router.hashing import sequence_hashes
from orchestrator.router.index import PrefixIndex
from orchestrator.worker.kv_relay import KvRelay
from tests.managed import free_port

PAGE = 4
HOST = "127.0.0.1"
TINY = Path(__file__).parents[3] / "orchestrator" / "models" / "tiny"


def stored(tokens: list[int], parent_tokens: list[int] | None = None) -> BlockStored:
    """What SGLang publishes when it caches `tokens` after `parent_tokens` (full pages)."""
    prior = page_digests(parent_tokens, PAGE)[-1] if parent_tokens else None
    digests = page_digests(tokens, PAGE, prior)
    return BlockStored(block_hashes=[digest_to_int64(d) for d in digests],
                       parent_block_hash=digest_to_int64(prior) if prior else None,
                       token_ids=tokens, block_size=PAGE, lora_id=None, medium="GPU")


def removed(tokens: list[int], parent_tokens: list[int] | None = None) -> BlockRemoved:
    return BlockRemoved(block_hashes=stored(tokens, parent_tokens).block_hashes, medium="GPU")


class Worker:
    """An engine-side publisher (the mock's, SGLang's wire format, with replay) and a
    relay in front of it, publishing on a real event plane."""

    def __init__(self, buffer_size: int = 4096):
        self.registry = CollectorRegistry()
        config = {"publisher": "zmq", "endpoint": f"tcp://{HOST}:{free_port()}", "bind": True,
                  "replay_endpoint": f"tcp://{HOST}:{free_port()}"}
        self.engine = KvEventPublisher(config, 0)
        self.plane = ev.EventPublisher(HOST, 0)
        self.plane.start()
        self.relay = KvRelay(config, [0], HOST, PAGE, self.plane, instance_id=77,
                             metrics=KvRelayMetrics(self.registry), sync_host=HOST, buffer_size=buffer_size)
        self.relay.start()

    def count(self, event_type: str, status: str) -> float:
        return self.registry.get_sample_value("dynamo_component_kv_events_total",
                                              {"event_type": event_type, "status": status}) or 0

    def close(self) -> None:
        self.relay.close()
        self.plane.close()
        self.engine.close()


@contextlib.asynccontextmanager
async def running(worker: Worker):
    task = asyncio.ensure_future(worker.relay.run())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        worker.close()


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_the_relay_catches_up_from_the_engine_replay_and_hashes_like_the_router():
    async def scenario():
        worker = Worker()
        a, b = list(range(8)), list(range(8, 16))
        worker.engine.publish([stored(a)])  # before the relay subscribed
        worker.engine.publish([stored(b, parent_tokens=a)])
        async with running(worker):
            await until(lambda: worker.relay.next_event_id == 2)
            reply = worker.relay.sync_reply(0)
        assert [e.event_id for e in reply.events] == [0, 1]
        hashes = [h for e in reply.events for op in e.ops for h in op.hashes]
        assert hashes == sequence_hashes(a + b, PAGE)  # what the router computes from the prompt

    asyncio.run(scenario())


def test_faulty_events_are_counted_and_the_relay_goes_on():
    async def scenario():
        worker = Worker()
        a = list(range(8))
        async with running(worker):
            worker.engine.publish([stored([1, 2, 3], None)])  # a block of 3 tokens, page size 4
            worker.engine.publish([stored(list(range(20, 24)), parent_tokens=list(range(50, 54)))])  # unknown parent
            worker.engine.publish([removed(list(range(60, 64)))])  # never stored
            worker.engine.publish([stored(a)])
            await until(lambda: worker.count("stored", "ok") == 1)
            assert worker.count("stored", "invalid_block") == 1
            assert worker.count("stored", "parent_block_not_found") == 1
            assert worker.count("removed", "block_not_found") == 1
            assert worker.relay.next_event_id == 1  # only the good batch went out

    asyncio.run(scenario())


def test_malformed_engine_messages_are_counted_not_fatal():
    async def scenario():
        engine = zmq.asyncio.Context.instance().socket(zmq.PUB)  # an engine without replay, raw frames
        port = engine.bind_to_random_port(f"tcp://{HOST}")
        plane = ev.EventPublisher(HOST, 0)
        plane.start()
        registry = CollectorRegistry()
        relay = KvRelay({"publisher": "zmq", "endpoint": f"tcp://{HOST}:{port}"}, [0], HOST, PAGE, plane, 77,
                        KvRelayMetrics(registry), sync_host=HOST)
        relay.start()
        task = asyncio.ensure_future(relay.run())

        def batch(tokens):
            return encode_batch(KVEventBatch(ts=time.time(), events=[stored(tokens)], attn_dp_rank=0))

        try:
            while relay.next_event_id == 0:  # until the relay's subscription is in place
                await engine.send_multipart([b"", encode_seq(0), batch(list(range(4)))])
                await asyncio.sleep(0.02)
            await engine.send_multipart([b"", encode_seq(1)])  # two frames
            await engine.send_multipart([b"", b"\x01", b"x"])  # a 1-byte seq
            await engine.send_multipart([b"", encode_seq(1), b"\xc1 not msgpack"])
            await engine.send_multipart([b"", encode_seq(2), batch(list(range(4, 8)))])
            await until(lambda: relay.next_event_id == 2)
            malformed = registry.get_sample_value("dynamo_component_kv_events_total",
                                                  {"event_type": "batch", "status": "malformed"})
            assert malformed == 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            relay.close()
            plane.close()
            engine.close(0)

    asyncio.run(scenario())


def test_a_gone_range_is_answered_with_a_snapshot():
    async def scenario():
        worker = Worker(buffer_size=2)
        tokens = list(range(12))
        async with running(worker):
            for i in range(3):
                worker.engine.publish([stored(tokens[4 * i : 4 * i + 4], parent_tokens=tokens[: 4 * i] or None)])
            await until(lambda: worker.relay.next_event_id == 3)
            assert [e.event_id for e in worker.relay.sync_reply(1).events] == [1, 2]
            snapshot = worker.relay.sync_reply(0)
        assert snapshot.events is None and snapshot.next_event_id == 3
        assert snapshot.snapshot == {0: sequence_hashes(tokens, PAGE)}

    asyncio.run(scenario())


def _record(worker: Worker) -> InstanceRecord:
    card = ModelCard(served_name="tiny", model_path=str(TINY), tokenizer_path=str(TINY), context_length=4096,
                     kv_block_size=PAGE, model_types=["chat"])
    return InstanceRecord(
        instance_id=worker.relay.instance_id, namespace="dynamo", component="backend", endpoint="generate",
        worker_type=WorkerType.aggregated, model=card, request_address=f"tcp://{HOST}:{free_port()}",
        pid=os.getpid(), started_at=time.time(), event_address=f"tcp://{HOST}:{worker.plane.port}",
        kv_sync_address=f"tcp://{HOST}:{worker.relay.sync_port}",
    )


def test_the_frontend_index_follows_syncs_after_gaps_and_forgets_a_worker_that_left():
    async def scenario():
        worker = Worker()
        index, registry = PrefixIndex(), CollectorRegistry()
        metrics = RouterMetrics(registry)
        syncs = lambda kind: registry.get_sample_value("dynamo_router_kv_syncs_total", {"kind": kind})  # noqa: E731
        convo = [list(range(100 * i, 100 * i + 8)) for i in range(4)]
        async with running(worker), ModelRegistry() as models:
            worker.engine.publish([stored(convo[0])])  # before the frontend existed
            await until(lambda: worker.relay.next_event_id == 1)
            record = _record(worker)
            await models.apply({record.instance_id: record})
            events = WorkerEvents(models, index, metrics)
            listening = asyncio.ensure_future(events.run())
            try:
                events.follow()  # joins: synced from the relay, not from live events
                slot = (record.instance_id, 0)
                await until(lambda: index.overlaps(sequence_hashes(convo[0], PAGE)) == {slot: 2})
                assert syncs("range") == 1

                # Live events; then the frontend misses two of them (its link drops).
                worker.engine.publish([stored(convo[1])])
                await until(lambda: index.blocks(slot) == 4)
                events._socket.disconnect(record.event_address)  # noqa: SLF001 - a network partition
                worker.engine.publish([stored(convo[2])])
                worker.engine.publish([removed(convo[0])])
                await until(lambda: worker.relay.next_event_id == 4)
                events._socket.connect(record.event_address)  # noqa: SLF001
                await asyncio.sleep(0.3)  # the subscription is back
                worker.engine.publish([stored(convo[3])])  # event 4: the frontend sees the gap
                await until(lambda: index.blocks(slot) == 6)
                assert syncs("range") == 2
                assert index.overlaps(sequence_hashes(convo[0], PAGE)) == {}
                for c in convo[1:]:
                    assert index.overlaps(sequence_hashes(c, PAGE)) == {slot: 2}

                await models.apply({})  # the worker left discovery
                events.follow()
                assert len(index) == 0 and index.blocks(slot) == 0
            finally:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
                events.close()

    asyncio.run(scenario())


def test_kv_event_messages_round_trip():
    message = ev.KvEvents(1, 2, 0, [ev.Stored([2**64 - 1]), ev.Removed([3]), ev.Cleared()])
    assert ev.kv_events_decoder.decode(ev.encode(message)) == message
    assert msgspec.msgpack.decode(ev.encode(ev.KvSyncRequest(5))) == {"since": 5}
