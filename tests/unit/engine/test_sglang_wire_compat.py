"""Our KV-event wire format and page hash against SGLang 0.5.23's own code: its
`KVEventBatch` decodes what we publish, we decode what its `ZmqEventPublisher`
publishes, both replay sockets answer the same request alike, and our page hashes are
the ones its radix cache publishes. Skipped when sglang is not installed (see
tests/sglang_cpu.py for the torch-free import)."""

from __future__ import annotations

import atexit
import hashlib
import struct
import time

import msgspec
import pytest
import zmq

from orchestrator.engine import sglang_kv_events as ours
from orchestrator.engine.mock.publisher import KvEventPublisher
from tests.sglang_cpu import import_sglang, use_gxx_extension_builder
from tests.managed import free_port_pair

HOST = "127.0.0.1"
WAIT_MS = 5000
TOKENS = [5, 6, 7, 8, 151643, 151644, 2**32 - 1, 0, 42, 43, 44, 45]  # three pages of 4


@pytest.fixture(scope="module")
def sgl():
    return import_sglang("sglang.srt.disaggregation.kv_events")


def shutdown(publisher) -> None:
    """SGLang's publisher shuts down at exit too, waiting 1 s on its dead thread's queue."""
    publisher.shutdown()
    atexit.unregister(publisher.shutdown)


@pytest.fixture(scope="module")
def native_hash(tmp_path_factory):
    """SGLang's C++ page hash, built from its own source; skips with the cause if it
    cannot be built here."""
    use_gxx_extension_builder(tmp_path_factory.mktemp("sglang-native-hash"))
    module = import_sglang("sglang.srt.mem_cache.cpp_utils.native_hash")
    try:
        module._load_native_hash_module()
    except RuntimeError as exc:
        pytest.skip(f"SGLang's hash_binding.cpp does not build here: {exc.__cause__}")
    return module



def subscribe(endpoint: str) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    return sub


def join(publish_probe, sub: zmq.Socket) -> None:
    """Publish probes until the subscriber hears them, then drain them."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not sub.poll(50):
        assert time.monotonic() < deadline, "subscriber never joined"
        publish_probe()
    while sub.poll(100):
        sub.recv_multipart()


def receive(sock: zmq.Socket) -> list[bytes]:
    assert sock.poll(WAIT_MS), "nothing arrived"
    return sock.recv_multipart()


def test_sglang_decodes_what_our_publisher_sends(sgl):
    base = free_port_pair()
    events = [
        ours.BlockStored(
            block_hashes=[-5, 2**63 - 1], parent_block_hash=-(2**63), token_ids=[1, 2, 3, 4],
            block_size=2, lora_id=None, medium="GPU", cache_salt="salt", session_id="s1", lora_name="ada",
        ),
        ours.BlockStored(block_hashes=[9], parent_block_hash=None, token_ids=[7, 8], block_size=2, lora_id=3),
        ours.BlockRemoved(block_hashes=[-5, 9], medium="CPU_PINNED"),
        ours.AllBlocksCleared(),
    ]  # fmt: skip
    publisher = KvEventPublisher({"publisher": "zmq", "endpoint": f"tcp://{HOST}:{base}", "bind": True, "topic": "kv"}, 1)
    sub = subscribe(publisher.endpoint)
    try:
        join(lambda: publisher.publish([ours.AllBlocksCleared()]), sub)
        before = time.time()
        publisher.publish(events)
        topic, seq, payload = receive(sub)
    finally:
        sub.close()
        publisher.close()

    assert publisher.endpoint == f"tcp://{HOST}:{base + 1}"  # SGLang's port for DP rank 1
    assert topic == b"kv" and int.from_bytes(seq, "big") >= 1
    batch = msgspec.msgpack.Decoder(sgl.KVEventBatch).decode(payload)
    assert before <= batch.ts <= time.time()
    assert batch.attn_dp_rank == 1
    stored, plain, removed, cleared = batch.events
    assert type(stored) is sgl.BlockStored and type(plain) is sgl.BlockStored
    assert (stored.block_hashes, stored.parent_block_hash, stored.token_ids, stored.block_size) == (
        [-5, 2**63 - 1], -(2**63), [1, 2, 3, 4], 2,
    )  # fmt: skip
    assert (stored.lora_id, stored.medium, stored.cache_salt, stored.session_id, stored.lora_name) == (
        None, "GPU", "salt", "s1", "ada",
    )  # fmt: skip
    assert (plain.block_hashes, plain.parent_block_hash, plain.token_ids, plain.block_size, plain.lora_id) == (
        [9], None, [7, 8], 2, 3,
    )  # fmt: skip
    assert (plain.medium, plain.cache_salt, plain.session_id, plain.lora_name) == (None, None, None, None)
    assert type(removed) is sgl.BlockRemoved and (removed.block_hashes, removed.medium) == ([-5, 9], "CPU_PINNED")
    assert type(cleared) is sgl.AllBlocksCleared
    # Byte for byte what SGLang's own encoder makes of the same batch.
    as_sglang = msgspec.convert(msgspec.to_builtins(batch), sgl.KVEventBatch)
    assert msgspec.msgpack.encode(as_sglang) == payload


def test_we_decode_what_sglangs_publisher_sends(sgl):
    base = free_port_pair()
    publisher = sgl.ZmqEventPublisher(attn_dp_rank=1, endpoint=f"tcp://{HOST}:{base}", bind=True, topic="kv")
    sub = subscribe(f"tcp://{HOST}:{base + 1}")  # SGLang offsets rank 1 by one port, as we do
    try:
        join(lambda: publisher.publish(sgl.KVEventBatch(ts=time.time(), events=[sgl.AllBlocksCleared()])), sub)
        events = [
            sgl.BlockStored(
                block_hashes=[11, -12], parent_block_hash=10, token_ids=[1, 2, 3, 4], block_size=2, lora_id=None,
                medium=sgl.StorageMedium.GPU, session_id="s",
            ),
            sgl.BlockRemoved(block_hashes=[11], medium=sgl.StorageMedium.CPU),
            sgl.AllBlocksCleared(),
        ]  # fmt: skip
        publisher.publish(sgl.KVEventBatch(ts=123.5, events=events))
        topic, seq, payload = receive(sub)
    finally:
        sub.close()
        shutdown(publisher)

    assert topic == b"kv" and ours.decode_seq(seq) >= 1
    batch = ours.decode_batch(payload)
    assert (batch.ts, batch.attn_dp_rank) == (123.5, 1)
    assert batch.events == [
        ours.BlockStored(
            block_hashes=[11, -12], parent_block_hash=10, token_ids=[1, 2, 3, 4], block_size=2, lora_id=None,
            medium="GPU", session_id="s",
        ),
        ours.BlockRemoved(block_hashes=[11], medium="CPU_PINNED"),
        ours.AllBlocksCleared(),
    ]  # fmt: skip


def replay(endpoint: str, start_seq: int) -> list[list[bytes]]:
    """A request in the layout SGLang's `_service_replay` reads; replies to the end marker."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart([b"", start_seq.to_bytes(8, "big")])
        replies = [receive(dealer)]
        while replies[-1][2] != (-1).to_bytes(8, "big", signed=True):
            replies.append(receive(dealer))
        return replies
    finally:
        dealer.close()


def test_our_replay_answers_like_sglangs(sgl):
    """The same batches in both publishers, the same request to both replay sockets."""
    their_base = free_port_pair()
    their_replay = f"tcp://{HOST}:{their_base + 1}"
    theirs = sgl.ZmqEventPublisher(
        attn_dp_rank=0, endpoint=f"tcp://{HOST}:{their_base}", replay_endpoint=their_replay,
        bind=True, buffer_steps=3, topic="kv",
    )  # fmt: skip
    our_base = free_port_pair()  # picked while theirs are bound, so never the same
    mine = KvEventPublisher(
        {"publisher": "zmq", "endpoint": f"tcp://{HOST}:{our_base}", "replay_endpoint": f"tcp://{HOST}:{our_base + 1}",
         "bind": True, "buffer_steps": 3, "topic": "kv"},
        0,
    )  # fmt: skip
    try:
        for i in range(5):
            theirs.publish(sgl.KVEventBatch(ts=time.time(), events=[sgl.BlockRemoved(block_hashes=[i])]))
            mine.publish([ours.BlockRemoved(block_hashes=[i])])
        deadline = time.monotonic() + WAIT_MS / 1000
        while len(replay(their_replay, 0)) < 4 or len(replay(mine.replay_endpoint, 0)) < 4:
            assert time.monotonic() < deadline, "the publisher threads never sent the batches"
            time.sleep(0.05)
        their_replies = replay(their_replay, 3)
        our_replies = replay(mine.replay_endpoint, 3)
    finally:
        shutdown(theirs)
        mine.close()

    assert len(our_replies) == len(their_replies) == 3  # seqs 3 and 4, then the end marker
    for our_reply, their_reply in zip(our_replies, their_replies):
        assert len(our_reply) == len(their_reply)
        assert our_reply[:3] == their_reply[:3]  # delimiter, topic, seq (or the end marker)
        if our_reply[3]:  # payloads differ only in ts
            decode = msgspec.msgpack.Decoder(sgl.KVEventBatch).decode
            mine_decoded, theirs_decoded = decode(our_reply[3]), decode(their_reply[3])
            assert mine_decoded.events == theirs_decoded.events
            assert mine_decoded.attn_dp_rank == theirs_decoded.attn_dp_rank == 0
    assert our_replies[-1] == their_replies[-1] == [b"", b"", (-1).to_bytes(8, "big", signed=True), b""]


def test_page_hash_is_the_documented_rule_read_by_sglangs_int64(sgl):
    """Runs without a C++ compiler: SHA-256 chained over 4-byte little-endian token ids,
    re-implemented here with hashlib, then SGLang's own `hash_str_to_int64`."""
    utils = import_sglang("sglang.srt.mem_cache.utils")
    prior, expected = None, []
    for start in range(0, len(TOKENS), 4):
        h = hashlib.sha256()
        if prior is not None:
            h.update(prior)
        h.update(struct.pack("<4I", *TOKENS[start : start + 4]))
        prior = h.digest()
        expected.append(utils.hash_str_to_int64(prior.hex()))
    assert [ours.digest_to_int64(d) for d in ours.page_digests(TOKENS, 4)] == expected


def test_page_hash_equals_sglangs_native_hash(sgl, native_hash):
    """SGLang's C++ page hash (`hash_binding.cpp`, as its radix cache calls it) and our
    `page_digests`, with and without a prior page."""
    utils = import_sglang("sglang.srt.mem_cache.utils")
    for page_size in (1, 4):
        theirs = utils.get_hash_str(TOKENS, prior_hash=None, page_size=page_size)
        assert [d.hex() for d in ours.page_digests(TOKENS, page_size)] == theirs
    prior = bytes(range(32))
    assert [d.hex() for d in ours.page_digests(TOKENS, 4, prior)] == utils.get_hash_str(TOKENS, prior.hex(), 4)


class _Key:
    """The parts of SGLang's RadixKey its event recorder reads."""

    def __init__(self, token_ids):
        self.token_ids, self.extra_key, self.cache_salt, self.is_bigram = token_ids, None, None, False

    def __len__(self):
        return len(self.token_ids)


class _Node:
    def __init__(self, parent, token_ids):
        self.parent, self.key, self.hash_value, self.event_hash_value = parent, _Key(token_ids), None, None


def test_block_ids_equal_what_sglangs_event_recorder_publishes(sgl, native_hash):
    """SGLang's `KVCacheEventRecorder` storing and evicting radix nodes root -> a -> b."""
    recorder_module = import_sglang("sglang.srt.mem_cache.events")
    recorder = recorder_module.KVCacheEventRecorder(enabled=True, page_size=4)
    root = _Node(None, [])
    root.hash_value = []
    a = _Node(root, TOKENS[:8])
    b = _Node(a, TOKENS[8:])
    recorder.record_store(a)
    recorder.record_store(b)
    recorder.record_remove(b)
    stored, removed = recorder.take()

    ids = [ours.digest_to_int64(d) for d in ours.page_digests(TOKENS, 4)]
    assert (stored.block_hashes, stored.parent_block_hash, stored.token_ids) == (ids, None, TOKENS)
    assert removed.block_hashes == ids[2:]
