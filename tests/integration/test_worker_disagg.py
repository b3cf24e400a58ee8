"""Workers that talk to each other or to a KV-event subscriber: a prefill/decode pair
across processes, DP ranks with their own event streams, and KV events read back by
SGLang's own decoder."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
import zmq

from orchestrator.engine.sglang_kv_events import (
    BlockStored, decode_batch, decode_seq, digest_to_int64, page_digests,
)
from orchestrator.planes import messages as m
from tests.integration.worker_support import address_of, collect, request, tokens_of, worker
from tests.managed import free_port

pytestmark = pytest.mark.slow
PROMPT = list(range(3000, 3050))


@pytest.fixture
def pair(tmp_path):
    """A prefill worker and a decode worker; yields (prefill address, decode address, bootstrap port)."""
    bootstrap = free_port()
    env = {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "2"}
    with worker(tmp_path, "prefill", "--disaggregation-mode", "prefill",
                "--disaggregation-bootstrap-port", str(bootstrap), env=env), \
         worker(tmp_path, "decode", "--disaggregation-mode", "decode", env=env):
        yield address_of(tmp_path, "prefill"), address_of(tmp_path, "decode"), bootstrap


@pytest.mark.parametrize("first", ["prefill", "decode"])
def test_prefill_and_decode_pair_in_either_order(tmp_path, pair, first):
    prefill_address, decode_address, port = pair
    info = m.BootstrapInfo("127.0.0.1", port, random.getrandbits(63))

    async def both():
        prefill = collect(prefill_address, request("p", PROMPT, max_tokens=1, bootstrap=info))
        decode = collect(decode_address, request("d", PROMPT, max_tokens=12, bootstrap=info))
        legs = [prefill, decode] if first == "prefill" else [decode, prefill]
        early = asyncio.ensure_future(legs[0])
        await asyncio.sleep(0.3)  # the first leg waits at the rendezvous
        late = await legs[1]
        return (await early, late) if first == "prefill" else (late, await early)

    prefill_replies, decode_replies = asyncio.run(both())
    assert prefill_replies[-1].finish_reason == "length" and tokens_of(prefill_replies) == [tokens_of(decode_replies)[0]]
    assert prefill_replies[-1].prompt_tokens == 50
    assert decode_replies[-1].finish_reason == "length" and len(tokens_of(decode_replies)) == 12

    # The pair generates what one aggregated engine generates for the same prompt.
    with worker(tmp_path, "agg"):
        alone = asyncio.run(collect(address_of(tmp_path), request("a", PROMPT, max_tokens=12)))
    assert tokens_of(alone) == tokens_of(decode_replies)


def test_a_decode_whose_prefill_never_comes_times_out(pair):
    _, decode_address, port = pair
    info = m.BootstrapInfo("127.0.0.1", port, random.getrandbits(63))
    (reply,) = asyncio.run(collect(decode_address, request("lonely", PROMPT, bootstrap=info)))
    assert isinstance(reply, m.ErrorReply) and reply.kind == m.ErrorKind.BOOTSTRAP_TIMEOUT


def _kv_events_config(port: int) -> str:
    return json.dumps({"publisher": "zmq", "topic": "kv-events", "endpoint": f"tcp://127.0.0.1:{port}", "bind": True})


_handshakes: dict[zmq.Socket, zmq.Socket] = {}


def _subscribe(ctx: zmq.Context, port: int) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    _handshakes[sub] = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sub.connect(f"tcp://127.0.0.1:{port}")
    return sub


def _joined(sub: zmq.Socket) -> None:
    """Wait until the SUB socket has reached the publisher: PUB drops what is sent to a
    subscriber that has not joined yet (ZMQ's slow joiner)."""
    monitor = _handshakes.pop(sub)
    assert monitor.poll(5000), "the subscriber never reached the publisher"
    sub.disable_monitor()
    monitor.close(0)
    time.sleep(0.2)  # the subscription itself follows the handshake


def _stored_until(sub: zmq.Socket, want_hashes: set[int]) -> tuple[list, list]:
    """Frames of every batch received until `want_hashes` have all been stored."""
    seqs, stored = [], []
    while not want_hashes <= {h for e in stored for h in e.block_hashes}:
        topic, seq, payload = sub.recv_multipart()
        assert topic == b"kv-events"
        batch = decode_batch(payload)
        seqs.append((decode_seq(seq), batch.attn_dp_rank))
        stored += [e for e in batch.events if isinstance(e, BlockStored)]
    return seqs, stored


def test_dp_ranks_publish_separate_event_streams(tmp_path):
    port = free_port()
    ctx = zmq.Context()
    subs = [_subscribe(ctx, port), _subscribe(ctx, port + 1)]
    try:
        with worker(tmp_path, "dp", "--dp-size", "2", "--kv-events-config", _kv_events_config(port)):
            for sub in subs:
                _joined(sub)
            address = address_of(tmp_path)
            prompts = [list(range(5000, 5048)), list(range(6000, 6048))]
            for rank, prompt in enumerate(prompts):
                asyncio.run(collect(address, request(f"r{rank}", prompt, max_tokens=2, dp_rank=rank)))
            for rank, (sub, prompt) in enumerate(zip(subs, prompts)):
                expected = {digest_to_int64(d) for d in page_digests(prompt, 16)}
                seqs, stored = _stored_until(sub, expected)
                assert {r for _, r in seqs} == {rank}, "each stream carries one rank's events"
                assert [s for s, _ in seqs] == list(range(seqs[0][0], seqs[0][0] + len(seqs))), "no gaps"
                other = {digest_to_int64(d) for d in page_digests(prompts[1 - rank], 16)}
                assert not other & {h for e in stored for h in e.block_hashes}
    finally:
        for sub in subs:
            sub.close(0)
        ctx.term()


def test_kv_events_read_by_sglangs_decoder_carry_sglangs_hashes(tmp_path):
    from tests.sglang_cpu import import_sglang

    kv_events = import_sglang("sglang.srt.disaggregation.kv_events")
    port = free_port()
    ctx = zmq.Context()
    sub = _subscribe(ctx, port)
    try:
        with worker(tmp_path, "ev", "--kv-events-config", _kv_events_config(port)):
            _joined(sub)
            asyncio.run(collect(address_of(tmp_path), request("e", PROMPT, max_tokens=2)))
            expected = [digest_to_int64(d) for d in page_digests(PROMPT, 16)]
            decoder = kv_events.msgspec.msgpack.Decoder(kv_events.KVEventBatch)
            stored = []
            while not set(expected) <= {h for e in stored for h in e.block_hashes}:
                _, _, payload = sub.recv_multipart()
                stored += [e for e in decoder.decode(payload).events if isinstance(e, kv_events.BlockStored)]
    finally:
        sub.close(0)
        ctx.term()
    first = stored[0]
    assert first.block_hashes[:3] == expected and first.parent_block_hash is None
    assert first.token_ids == PROMPT[:48] and first.block_size == 16 and first.medium == "GPU"
