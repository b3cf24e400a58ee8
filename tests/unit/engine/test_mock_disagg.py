"""Prefill/decode disaggregation of two mock engines in one process, paired by an
in-memory `KvTransfer` that behaves like the real rendezvous: either leg may
arrive first, a lone leg times out, and an aborted leg fails its peer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional

import pytest

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
from orchestrator.engine.mock.engine import MockEngine
from orchestrator.engine.mock.timing import Roofline
from orchestrator.planes.messages import BootstrapInfo, Chunk, ErrorKind, GenerateRequest, StopConditions
from tests.unit.engine.mock_support import collect, prompt, started, tiny_config, tokens_of


@dataclass
class Room:
    prefill_here: asyncio.Event = field(default_factory=asyncio.Event)
    decode_here: asyncio.Event = field(default_factory=asyncio.Event)
    decode_aborted: bool = False
    first: Optional[asyncio.Future] = None


class PairingTransfer:
    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.rooms: dict[int, Room] = {}
        self.sent: list[tuple[int, int, float]] = []

    def room(self, number: int) -> Room:
        room = self.rooms.setdefault(number, Room())
        if room.first is None:
            room.first = asyncio.get_running_loop().create_future()
        return room

    async def send(self, bootstrap: BootstrapInfo, prompt_tokens: int, first_token: int, transfer_seconds: float) -> None:
        room = self.room(bootstrap.room)
        room.prefill_here.set()
        try:
            try:
                await asyncio.wait_for(room.decode_here.wait(), self.timeout)
            except TimeoutError:
                raise EngineError(ErrorKind.BOOTSTRAP_TIMEOUT, f"no decode peer for room {bootstrap.room}") from None
            if room.decode_aborted:
                raise EngineError(ErrorKind.INTERNAL, "the decode leg was aborted")
            await asyncio.sleep(transfer_seconds)
            room.first.set_result(first_token)
            self.sent.append((bootstrap.room, prompt_tokens, transfer_seconds))
        except asyncio.CancelledError:
            if not room.first.done():
                room.first.set_exception(EngineError(ErrorKind.INTERNAL, "the prefill leg was aborted"))
            raise

    async def receive(self, bootstrap: BootstrapInfo, prompt_tokens: int) -> int:
        room = self.room(bootstrap.room)
        room.decode_here.set()
        try:
            return await asyncio.wait_for(asyncio.shield(room.first), self.timeout)
        except TimeoutError:
            raise EngineError(ErrorKind.BOOTSTRAP_TIMEOUT, f"no prefill peer for room {bootstrap.room}") from None
        except asyncio.CancelledError:
            room.decode_aborted = True
            raise


def leg(rid: str, tokens: list[int], room: int, max_tokens: int = 12, host: str = "10.0.0.1") -> GenerateRequest:
    return GenerateRequest(rid, token_ids=tokens, stop=StopConditions(max_tokens=max_tokens, ignore_eos=True),
                           bootstrap=BootstrapInfo(host, 8998, room))


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


async def reference(tokens: list[int], max_tokens: int = 12) -> list[int]:
    async with started(tiny_config()) as aggregated:
        request = GenerateRequest("ref", token_ids=tokens, stop=StopConditions(max_tokens=max_tokens, ignore_eos=True))
        return tokens_of(await collect(aggregated.generate(request)))


def idle(engine: MockEngine) -> bool:
    return all(rank["kv_usage"] == 0.0 and rank["running"] == 0 and rank["waiting"] == 0 for rank in engine.load())


async def pair(decode_first: bool) -> None:
    transfer = PairingTransfer()
    tokens = prompt(2000, 30)
    expected = await reference(tokens)
    async with started(tiny_config(disaggregation_mode="prefill"), transfer=transfer) as prefill, \
            started(tiny_config(disaggregation_mode="decode"), transfer=transfer) as decode:
        async with asyncio.TaskGroup() as group:
            if decode_first:
                decoded = group.create_task(collect(decode.generate(leg("r", tokens, room=77))))
                await until(lambda: 77 in transfer.rooms and transfer.rooms[77].decode_here.is_set())
                assert decode.load()[0]["kv_usage"] > 0  # pages preallocated for the prompt
                prefilled = group.create_task(collect(prefill.generate(leg("r", tokens, room=77))))
            else:
                prefilled = group.create_task(collect(prefill.generate(leg("r", tokens, room=77))))
                await until(lambda: 77 in transfer.rooms and transfer.rooms[77].prefill_here.is_set())
                assert prefill.load()[0]["kv_usage"] > 0  # the KV is held for the transfer
                decoded = group.create_task(collect(decode.generate(leg("r", tokens, room=77))))
        p_chunks, d_chunks = prefilled.result(), decoded.result()
        assert [(c.token_ids, c.finish_reason, c.completion_tokens) for c in p_chunks] == [
            ([expected[0]], "length", 1)
        ]
        assert tokens_of(d_chunks) == expected
        assert d_chunks[0].token_ids == [expected[0]]  # the prefill's token streams first
        assert d_chunks[-1].finish_reason == "length" and d_chunks[-1].cached_tokens == 0
        roofline = Roofline.of(tiny_config())
        assert transfer.sent == [(77, 30, pytest.approx(roofline.wall(roofline.transfer_seconds(30))))]
        assert idle(prefill) and idle(decode)


def test_prefill_arrives_first():
    asyncio.run(pair(decode_first=False))


def test_decode_arrives_first():
    asyncio.run(pair(decode_first=True))


def test_a_lone_prefill_times_out_and_frees_its_kv():
    async def main():
        async with started(tiny_config(disaggregation_mode="prefill"), transfer=PairingTransfer(timeout=0.05)) as prefill:
            with pytest.raises(EngineError) as failure:
                await collect(prefill.generate(leg("r", prompt(0, 20), room=5)))
            assert failure.value.kind == ErrorKind.BOOTSTRAP_TIMEOUT
            assert idle(prefill)

    asyncio.run(main())


def test_aborting_the_decode_leg_fails_its_prefill_peer():
    async def main():
        transfer = PairingTransfer()
        async with started(tiny_config(disaggregation_mode="prefill"), transfer=transfer) as prefill, \
                started(tiny_config(disaggregation_mode="decode"), transfer=transfer) as decode:
            stream = decode.generate(leg("r", prompt(0, 20), room=9))
            waiting = asyncio.ensure_future(anext(stream))
            await until(lambda: 9 in transfer.rooms and transfer.rooms[9].decode_here.is_set())
            await decode.abort("r")
            chunk: Chunk = await waiting
            assert chunk.finish_reason == "abort" and chunk.token_ids == []
            assert transfer.rooms[9].decode_aborted and idle(decode)
            with pytest.raises(EngineError) as failure:
                await collect(prefill.generate(leg("r", prompt(0, 20), room=9)))
            assert failure.value.kind == ErrorKind.INTERNAL
            assert idle(prefill)

    asyncio.run(main())


def test_aborting_the_prefill_leg_fails_its_decode_peer():
    async def main():
        transfer = PairingTransfer()
        async with started(tiny_config(disaggregation_mode="prefill"), transfer=transfer) as prefill, \
                started(tiny_config(disaggregation_mode="decode"), transfer=transfer) as decode:
            stream = prefill.generate(leg("r", prompt(0, 20), room=11))
            waiting = asyncio.ensure_future(anext(stream))
            await until(lambda: 11 in transfer.rooms and transfer.rooms[11].prefill_here.is_set())
            await prefill.abort("r")
            assert (await waiting).finish_reason == "abort"
            assert idle(prefill)
            with pytest.raises(EngineError) as failure:
                await collect(decode.generate(leg("r", prompt(0, 20), room=11)))
            assert failure.value.kind == ErrorKind.INTERNAL
            assert idle(decode)

    asyncio.run(main())


def test_the_fake_bootstrap_host_pairs_with_no_one():
    async def main():
        tokens = prompt(600, 16)
        expected = await reference(tokens)
        async with started(tiny_config(disaggregation_mode="prefill")) as prefill, \
                started(tiny_config(disaggregation_mode="decode")) as decode:
            p_chunks = await collect(prefill.generate(leg("p", tokens, room=0, host=FAKE_BOOTSTRAP_HOST)))
            assert tokens_of(p_chunks) == expected[:1] and p_chunks[-1].finish_reason == "length"
            d_chunks = await collect(decode.generate(leg("d", tokens, room=0, host=FAKE_BOOTSTRAP_HOST)))
            assert tokens_of(d_chunks) == expected
            with pytest.raises(EngineError) as failure:
                prefill.generate(leg("real", tokens, room=1))  # a real peer needs a transfer
            assert failure.value.kind == ErrorKind.INTERNAL
            with pytest.raises(EngineError) as failure:
                prefill.generate(GenerateRequest("no-bootstrap", token_ids=tokens))
            assert failure.value.kind == ErrorKind.INVALID

    asyncio.run(main())


def test_decode_engine_keeps_no_radix_cache():
    async def main():
        events: list = []
        async with started(tiny_config(disaggregation_mode="decode"), on_kv_events=lambda rank, e: events.extend(e)) as decode:
            tokens = prompt(100, 30)
            for rid in ("a", "b"):
                chunks = await collect(decode.generate(leg(rid, tokens, room=0, host=FAKE_BOOTSTRAP_HOST)))
                assert chunks[-1].cached_tokens == 0
            assert events == [] and idle(decode)
            assert decode.load()[0]["kv_usage"] == 0.0

    asyncio.run(main())


def test_engines_pair_over_the_real_bootstrap_transport():
    from orchestrator.engine.mock.bootstrap import BootstrapClient, BootstrapServer

    async def main():
        tokens = prompt(900, 24)
        expected = await reference(tokens)
        async with BootstrapServer("127.0.0.1", 0, timeout_s=10) as server:
            async with started(tiny_config(disaggregation_mode="prefill"), transfer=server) as prefill, \
                    started(tiny_config(disaggregation_mode="decode"), transfer=BootstrapClient(timeout_s=10)) as decode:
                request = leg("r", tokens, room=123, host="127.0.0.1")
                request.bootstrap.port = server.port
                p_chunks, d_chunks = await asyncio.gather(
                    collect(prefill.generate(request)), collect(decode.generate(request))
                )
                assert tokens_of(p_chunks) == expected[:1]
                assert tokens_of(d_chunks) == expected
                assert idle(prefill) and idle(decode)

    asyncio.run(main())
