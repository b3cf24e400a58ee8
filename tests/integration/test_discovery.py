"""File discovery across processes: a worker's record dies with it, and leaves on close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from orchestrator.planes.discovery import FileDiscovery, InstanceRecord, new_instance_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
NS = "dynamo"
TTL_S = 1.0
STARTUP_S = 20.0  # interpreter start and imports on a loaded machine

# The worker side: register under a 1 s lease, say so, then either wait to be killed
# or, on a line from stdin, close cleanly and stay alive.
WORKER = r"""
import asyncio, os, sys, time
from pathlib import Path
from orchestrator.planes.discovery import FileDiscovery, InstanceRecord, ModelCard
from orchestrator.roles import WorkerType

async def main(root, instance_id, then):
    discovery = FileDiscovery(Path(root), lease_ttl_s=1.0)
    card = ModelCard(served_name="tiny", model_path="tiny", tokenizer_path="tiny",
                     context_length=2048, kv_block_size=16, model_types=["chat"])
    await discovery.register(InstanceRecord(
        instance_id=instance_id, namespace="dynamo", component="backend", endpoint="generate",
        worker_type=WorkerType.aggregated, model=card, request_address="tcp://127.0.0.1:20001",
        pid=os.getpid(), started_at=time.time()))
    print("registered", flush=True)
    if then == "close":
        await asyncio.to_thread(sys.stdin.readline)
        await discovery.close()
        print("closed", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


@contextlib.asynccontextmanager
async def worker(root: Path, instance_id: int, then: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A registered worker process in its own session; killed and reaped on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, str(root), str(instance_id), then,
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        async with asyncio.timeout(STARTUP_S):
            line = await process.stdout.readline()
        assert line == b"registered\n", f"worker exited before registering ({process.returncode})"
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def until(
    snapshots: AsyncIterator[dict[int, InstanceRecord]],
    predicate: Callable[[dict[int, InstanceRecord]], bool],
    within: float,
) -> dict[int, InstanceRecord]:
    async with asyncio.timeout(within):
        async for snapshot in snapshots:
            if predicate(snapshot):
                return snapshot
    raise AssertionError("the watch ended")


def test_sigkilled_worker_leaves_every_watch_within_the_ttl(tmp_path):
    instance_id = new_instance_id()

    async def main():
        async with (
            FileDiscovery(tmp_path, lease_ttl_s=TTL_S, poll_interval_s=0.1) as frontend,
            worker(tmp_path, instance_id, then="wait") as process,
            contextlib.aclosing(frontend.watch(NS)) as snapshots,
        ):
            live = await until(snapshots, lambda s: instance_id in s, within=STARTUP_S)
            assert live[instance_id].pid == process.pid
            os.kill(process.pid, signal.SIGKILL)
            await until(snapshots, lambda s: instance_id not in s, within=TTL_S + 1.0)
        assert list(tmp_path.rglob("*.json")) == []  # the reader deleted the expired file

    asyncio.run(main())


def test_clean_close_removes_the_record_at_once(tmp_path):
    instance_id = new_instance_id()

    async def main():
        async with (
            FileDiscovery(tmp_path, lease_ttl_s=TTL_S) as frontend,
            worker(tmp_path, instance_id, then="close") as process,
        ):
            assert instance_id in await frontend.list(NS)
            process.stdin.write(b"close\n")
            await process.stdin.drain()
            async with asyncio.timeout(STARTUP_S):
                assert await process.stdout.readline() == b"closed\n"
            assert await frontend.list(NS) == {}
            assert list(tmp_path.rglob("*.json")) == []
            assert process.returncode is None  # gone because of close, not because it died

    asyncio.run(main())
