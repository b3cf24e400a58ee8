"""The mock engine's KV-event publisher, seen from real ZMQ subscribers and replay
clients: SGLang's frames, sequence numbers, per-rank ports and replay."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from orchestrator.engine.mock.publisher import KvEventPublisher, offset_endpoint_port, parse_kv_events_config
from orchestrator.engine.sglang_kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    decode_batch,
    decode_seq,
    encode_seq,
)
from tests.managed import free_port_pair

HOST = "127.0.0.1"
WAIT_MS = 5000



def stored(*hashes: int) -> BlockStored:
    return BlockStored(
        block_hashes=list(hashes), parent_block_hash=None, token_ids=[1, 2], block_size=2, lora_id=None, medium="GPU"
    )


def subscriber(endpoint: str, topic: bytes = b"") -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    return sub


def receive(sock: zmq.Socket) -> list[bytes]:
    assert sock.poll(WAIT_MS), "nothing arrived"
    return sock.recv_multipart()


def join(publisher: KvEventPublisher, sub: zmq.Socket) -> int:
    """Publish probes until the subscriber hears one (ZMQ drops what a PUB sends before
    a subscription arrives); drain; return the last seq seen."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        publisher.publish([AllBlocksCleared()])
        if sub.poll(50):
            seq = None
            while sub.poll(100):
                seq = decode_seq(sub.recv_multipart()[1])
            return seq
    raise AssertionError("subscriber never joined")


def replay(endpoint: str, frames: list[bytes]) -> list[list[bytes]]:
    """Send one request; collect replies up to and including the end marker."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(frames)
        replies = []
        while True:
            replies.append(receive(dealer))
            if replies[-1][2] == encode_seq(-1):
                return replies
    finally:
        dealer.close()


def test_a_subscriber_gets_three_frames_with_consecutive_sequence_numbers():
    port = free_port_pair()
    publisher = KvEventPublisher({"publisher": "zmq", "endpoint": f"tcp://{HOST}:{port}", "bind": True, "topic": "kv"}, 0)
    sub = subscriber(publisher.endpoint, b"kv")
    try:
        last = join(publisher, sub)
        events = [stored(11, 12), BlockRemoved(block_hashes=[11], medium="GPU"), AllBlocksCleared()]
        before = time.time()
        for i in range(5):
            publisher.publish(events[: 1 + i % 3])
        messages = [receive(sub) for _ in range(5)]
    finally:
        sub.close()
        publisher.close()

    assert all(len(m) == 3 and m[0] == b"kv" and len(m[1]) == 8 for m in messages)
    assert [decode_seq(m[1]) for m in messages] == list(range(last + 1, last + 6))
    batches = [decode_batch(m[2]) for m in messages]
    assert [b.events for b in batches] == [events[: 1 + i % 3] for i in range(5)]
    assert all(b.attn_dp_rank == 0 and before <= b.ts <= time.time() for b in batches)


def test_two_dp_ranks_publish_on_base_and_base_plus_one():
    base = free_port_pair()
    config = {"publisher": "zmq", "endpoint": f"tcp://{HOST}:{base}", "bind": True}
    ranks = [KvEventPublisher(config, rank) for rank in (0, 1)]
    subs = [subscriber(p.endpoint) for p in ranks]
    try:
        assert [p.endpoint for p in ranks] == [f"tcp://{HOST}:{base}", f"tcp://{HOST}:{base + 1}"]
        for publisher, sub in zip(ranks, subs):
            join(publisher, sub)
            publisher.publish([stored(7)])
        received = [decode_batch(receive(sub)[2]) for sub in subs]
    finally:
        for sock in subs:
            sock.close()
        for publisher in ranks:
            publisher.close()
    assert [b.attn_dp_rank for b in received] == [0, 1]
    assert all(b.events == [stored(7)] for b in received)


def test_replay_returns_the_missing_range_then_the_end_marker():
    base = free_port_pair()
    config = {
        "publisher": "zmq",
        "endpoint": f"tcp://{HOST}:{base}",
        "bind": True,
        "replay_endpoint": f"tcp://{HOST}:{base + 1}",
        "buffer_steps": 4,
        "topic": "t",
    }
    publisher = KvEventPublisher(config, 0)
    try:
        for i in range(6):  # nobody subscribed: only replay can deliver these
            publisher.publish([stored(100 + i)])
        deadline = time.monotonic() + WAIT_MS / 1000
        while len(everything := replay(publisher.replay_endpoint, [b"", encode_seq(0)])) < 5:
            assert time.monotonic() < deadline, "the publisher thread never sent the batches"
            time.sleep(0.05)
        missing = replay(publisher.replay_endpoint, [b"", encode_seq(3)])
        # A request of the wrong shape is dropped, and the socket keeps serving.
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(publisher.replay_endpoint)
        dealer.send_multipart([encode_seq(0)])
        assert not dealer.poll(300)
        dealer.close()
        after_invalid = replay(publisher.replay_endpoint, [b"", encode_seq(5)])
    finally:
        publisher.close()

    def seqs(replies):
        return [decode_seq(r[2]) for r in replies[:-1]]

    # Only the last buffer_steps=4 batches are kept: 2..5.
    assert seqs(everything) == [2, 3, 4, 5]
    assert seqs(missing) == [3, 4, 5]
    assert [decode_batch(r[3]).events for r in missing[:-1]] == [[stored(103)], [stored(104)], [stored(105)]]
    assert all(len(r) == 4 and r[0] == b"" and r[1] == b"t" for r in missing[:-1])  # DEALER sees 4 of the 5
    assert missing[-1] == [b"", b"", encode_seq(-1), b""]
    assert seqs(after_invalid) == [5]


def test_publisher_null_opens_nothing_and_publishes_nothing():
    port = free_port_pair()
    for config in ({"publisher": "null", "endpoint": f"tcp://{HOST}:{port}", "bind": True}, {}):
        publisher = KvEventPublisher(config, 0)
        publisher.publish([AllBlocksCleared()])
        assert not publisher.enabled
        with socket.socket() as probe:
            probe.bind((HOST, port))  # nothing listens there
        publisher.close()


def test_close_is_idempotent_frees_the_port_and_refuses_later_publishes():
    port = free_port_pair()
    config = {"publisher": "zmq", "endpoint": f"tcp://{HOST}:{port}", "bind": True}
    publisher = KvEventPublisher(config, 0)
    publisher.publish([AllBlocksCleared()])
    publisher.close()
    publisher.close()
    with pytest.raises(RuntimeError):
        publisher.publish([AllBlocksCleared()])
    # The port is free again, soon: ZMQ's I/O thread closes the listener after close().
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        try:
            KvEventPublisher(config, 0).close()
            break
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "the port stayed bound"
            time.sleep(0.05)


def test_bind_or_connect_is_inferred_from_the_endpoint_as_sglang_does():
    # A concrete tcp host connects: here to a subscriber that binds.
    port = free_port_pair()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind(f"tcp://{HOST}:{port}")
    connecting = KvEventPublisher({"publisher": "zmq", "endpoint": f"tcp://{HOST}:{port}"}, 0)
    # inproc binds, with the rank as a suffix.
    binding = KvEventPublisher({"publisher": "zmq", "endpoint": "inproc://kv-events"}, 1)
    inproc_sub = subscriber("inproc://kv-events_dp1")
    try:
        join(connecting, sub)
        join(binding, inproc_sub)
        assert binding.endpoint == "inproc://kv-events_dp1"
    finally:
        for sock in (sub, inproc_sub):
            sock.close()
        connecting.close()
        binding.close()


def test_endpoint_offsets_and_config_parsing_follow_sglang():
    assert offset_endpoint_port("tcp://*:5557", 0) == "tcp://*:5557"
    assert offset_endpoint_port("tcp://*:5557", 3) == "tcp://*:5560"
    assert offset_endpoint_port("tcp://[::1]:5557", 1) == "tcp://[::1]:5558"
    assert offset_endpoint_port("inproc://cache", 2) == "inproc://cache_dp2"
    assert offset_endpoint_port(None, 2) is None
    assert offset_endpoint_port("ipc:///tmp/kv", 0) == "ipc:///tmp/kv"
    with pytest.raises(ValueError):
        offset_endpoint_port("ipc:///tmp/kv", 1)

    defaults = parse_kv_events_config({})
    assert (defaults.publisher, defaults.endpoint, defaults.bind, defaults.replay_endpoint) == (
        "null", "tcp://*:5557", None, None,
    )
    assert (defaults.buffer_steps, defaults.hwm, defaults.max_queue_size, defaults.topic, defaults.format) == (
        10_000, 100_000, 100_000, "", "default",
    )
    assert parse_kv_events_config({"publisher": "zmq", "unknown": 1}).publisher == "zmq"  # pydantic ignores extras too
    for bad in ({"publisher": "kafka"}, {"format": "vllm"}, {"buffer_steps": "many"}):
        with pytest.raises(ValueError):
            parse_kv_events_config(bad)
