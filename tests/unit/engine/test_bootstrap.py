"""The PD rendezvous: a prefill `send` and a decode `receive` meet in a bootstrap room,
in either order, within a timeout, and each learns when the other aborted."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.bootstrap import BootstrapClient, BootstrapServer
from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
from orchestrator.planes.messages import BootstrapInfo, ErrorKind

HOST = "127.0.0.1"
TIMEOUT = 1.0
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run(scenario, timeout_s: float = TIMEOUT):
    """Run `scenario(server, client)` against a fresh server on an OS-assigned port."""

    async def main():
        async with BootstrapServer(HOST, 0, timeout_s) as server:
            return await scenario(server, BootstrapClient(timeout_s))

    return asyncio.run(main())


def info(server: BootstrapServer, room: int) -> BootstrapInfo:
    return BootstrapInfo(host=HOST, port=server.port, room=room)


async def later(delay: float, coro):
    await asyncio.sleep(delay)
    return await coro


async def both(prefill, decode):
    """Run both legs; return (prefill outcome, decode outcome), exceptions included."""
    return await asyncio.gather(prefill, decode, return_exceptions=True)


async def outcome(coro):
    """The result or the exception: lets a task fail inside a TaskGroup without failing it."""
    try:
        return await coro
    except Exception as exc:
        return exc


def test_decode_first_waits_for_the_prefill_and_gets_its_first_token():
    async def scenario(server, client):
        start = time.monotonic()
        sent, token = await both(
            later(0.3, server.send(info(server, 7), 12, first_token=42, transfer_seconds=0.2)),
            client.receive(info(server, 7), 12),
        )
        return sent, token, time.monotonic() - start

    sent, token, elapsed = run(scenario)
    assert (sent, token) == (None, 42)
    assert 0.5 <= elapsed < TIMEOUT  # the prefill's 0.3 s plus the 0.2 s transfer


def test_prefill_first_holds_its_kv_until_the_decode_comes():
    async def scenario(server, client):
        return await both(
            server.send(info(server, 8), 5, first_token=99, transfer_seconds=0.0),
            later(0.4, client.receive(info(server, 8), 5)),
        )

    assert run(scenario) == [None, 99]


def test_a_waiting_leg_times_out_with_bootstrap_timeout():
    async def scenario(server, client):
        start = time.monotonic()
        sent, received = await both(
            server.send(info(server, 1), 5, 1, 0.0), client.receive(info(server, 2), 5)
        )
        return sent, received, time.monotonic() - start

    sent, received, elapsed = run(scenario, timeout_s=0.3)
    for outcome in (sent, received):
        assert isinstance(outcome, EngineError) and outcome.kind == ErrorKind.BOOTSTRAP_TIMEOUT
    assert 0.3 <= elapsed < 1.0


def test_a_decode_retries_until_the_prefill_server_listens_then_times_out():
    port = free_port()

    async def main():
        client = BootstrapClient(timeout_s=1.0)
        room = BootstrapInfo(host=HOST, port=port, room=3)

        async def late_server():  # the prefill worker is still starting
            await asyncio.sleep(0.3)
            async with BootstrapServer(HOST, port, 1.0) as server:
                await server.send(room, 4, first_token=17, transfer_seconds=0.0)

        _, token = await asyncio.gather(late_server(), client.receive(room, 4))
        start = time.monotonic()
        with pytest.raises(EngineError) as nobody:
            await BootstrapClient(timeout_s=0.3).receive(room, 4)
        return token, nobody.value, time.monotonic() - start

    token, nobody, elapsed = asyncio.run(main())
    assert token == 17
    assert nobody.kind == ErrorKind.BOOTSTRAP_TIMEOUT and "no bootstrap server" in str(nobody)
    assert 0.3 <= elapsed < 1.0


def test_cancelling_the_prefill_aborts_the_decode_promptly():
    async def scenario(server, client):
        async with asyncio.TaskGroup() as tg:
            # Mid-transfer: the pair has met, the KV is moving for 10 s.
            prefill = tg.create_task(server.send(info(server, 1), 5, 1, transfer_seconds=10))
            decode = tg.create_task(outcome(later(0.1, client.receive(info(server, 1), 5))))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            prefill.cancel()
            mid_transfer = await decode
            mid_elapsed = time.monotonic() - start

            # Before the decode arrived: remembered for it.
            prefill = tg.create_task(server.send(info(server, 2), 5, 1, transfer_seconds=0))
            await asyncio.sleep(0.1)
            prefill.cancel()
            start = time.monotonic()
            early = await outcome(client.receive(info(server, 2), 5))
            early_elapsed = time.monotonic() - start
        return mid_transfer, mid_elapsed, early, early_elapsed

    mid_transfer, mid_elapsed, early, early_elapsed = run(scenario)
    for error, elapsed in ((mid_transfer, mid_elapsed), (early, early_elapsed)):
        assert isinstance(error, EngineError) and error.kind == ErrorKind.INTERNAL
        assert "aborted by the prefill side" in str(error)
        assert elapsed < 0.5


def test_cancelling_the_decode_aborts_the_prefill_promptly():
    async def scenario(server, client):
        async with asyncio.TaskGroup() as tg:
            decode = tg.create_task(client.receive(info(server, 1), 5))
            prefill = tg.create_task(outcome(later(0.1, server.send(info(server, 1), 5, 1, transfer_seconds=10))))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            decode.cancel()
            mid_transfer = await prefill
            mid_elapsed = time.monotonic() - start

            decode = tg.create_task(client.receive(info(server, 2), 5))
            await asyncio.sleep(0.1)
            decode.cancel()
            await asyncio.sleep(0.1)  # the Abort crosses the socket
            start = time.monotonic()
            early = await outcome(server.send(info(server, 2), 5, 1, 0.0))
            early_elapsed = time.monotonic() - start
        return mid_transfer, mid_elapsed, early, early_elapsed

    mid_transfer, mid_elapsed, early, early_elapsed = run(scenario)
    for error, elapsed in ((mid_transfer, mid_elapsed), (early, early_elapsed)):
        assert isinstance(error, EngineError) and error.kind == ErrorKind.INTERNAL
        assert "aborted by the decode side" in str(error)
        assert elapsed < 0.5


def test_a_prompt_size_mismatch_fails_both_legs():
    async def scenario(server, client):
        return await both(server.send(info(server, 4), 10, 1, 0.0), client.receive(info(server, 4), 11))

    sent, received = run(scenario)
    for error in (sent, received):
        assert isinstance(error, EngineError) and error.kind == ErrorKind.INTERNAL
        assert "KV shape mismatch" in str(error)


def test_many_rooms_pair_concurrently_in_mixed_order():
    rooms = range(1, 41)

    async def scenario(server, client):
        prefills = [later(0.01 * (r % 7), server.send(info(server, r), r, 1000 + r, 0.05)) for r in rooms]
        decodes = [later(0.01 * (r % 5), client.receive(info(server, r), r)) for r in rooms]
        return await asyncio.gather(*prefills, *decodes)

    outcomes = run(scenario)
    assert outcomes == [None] * len(rooms) + [1000 + r for r in rooms]


def test_a_room_is_reused_only_after_its_pairing_completed():
    async def scenario(server, client):
        first = await both(server.send(info(server, 5), 3, 1, 0.0), client.receive(info(server, 5), 3))
        again = await both(server.send(info(server, 5), 3, 2, 0.0), client.receive(info(server, 5), 3))
        async with asyncio.TaskGroup() as tg:
            waiting = tg.create_task(server.send(info(server, 6), 3, 3, 0.0))
            await asyncio.sleep(0.05)
            with pytest.raises(EngineError, match="already has a prefill"):
                await server.send(info(server, 6), 3, 3, 0.0)
            assert await client.receive(info(server, 6), 3) == 3
            await waiting
        return first, again

    assert run(scenario) == ([None, 1], [None, 2])


def test_closing_the_server_fails_a_waiting_prefill_as_shutdown():
    async def main():
        server = await BootstrapServer(HOST, 0, 5.0).start()
        async with asyncio.TaskGroup() as tg:
            waiting = tg.create_task(outcome(server.send(BootstrapInfo(host=HOST, port=server.port, room=1), 3, 1, 0.0)))
            await asyncio.sleep(0.05)
            await server.close()
            await server.close()  # idempotent
        return await waiting

    error = asyncio.run(main())
    assert isinstance(error, EngineError) and error.kind == ErrorKind.ENGINE_SHUTDOWN


def test_fake_bootstrap_requests_pair_with_no_one():
    async def scenario(server, client):
        fake = BootstrapInfo(host=FAKE_BOOTSTRAP_HOST, port=server.port, room=0)
        await asyncio.wait_for(server.send(fake, 5, 1, 10.0), 0.1)  # SGLang's FakeKVSender: done at once
        with pytest.raises(ValueError):
            await client.receive(fake, 5)

    run(scenario)


PREFILL_PROCESS = """
import asyncio, sys
from orchestrator.engine.mock.bootstrap import BootstrapServer
from orchestrator.planes.messages import BootstrapInfo

async def main():
    async with BootstrapServer("127.0.0.1", 0, 10.0) as server:
        print(server.port, flush=True)
        await server.send(BootstrapInfo(host="127.0.0.1", port=server.port, room=2**62 + 1),
                          prompt_tokens=64, first_token=31337, transfer_seconds=0.1)
        print("sent", flush=True)

asyncio.run(main())
"""


def test_pairing_across_processes():
    prefill = subprocess.Popen(
        [sys.executable, "-c", PREFILL_PROCESS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        port = int(prefill.stdout.readline())
        room = BootstrapInfo(host=HOST, port=port, room=2**62 + 1)
        token = asyncio.run(BootstrapClient(timeout_s=10.0).receive(room, 64))
        out, err = prefill.communicate(timeout=10)
    finally:
        prefill.kill()
        prefill.wait()
    assert token == 31337
    assert prefill.returncode == 0, err
    assert out.strip() == "sent"
