"""File discovery in one process: records, leases, expiry and watches on a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from orchestrator.planes.discovery import (
    FileDiscovery,
    InstanceRecord,
    ModelCard,
    discovery_from_env,
    instance_key,
    new_instance_id,
    open_discovery,
)
from orchestrator.planes.discovery.records import decode_record, encode_record
from orchestrator.roles import WorkerType

pytestmark = pytest.mark.timeout(30)

NS = "dynamo"
POLL_S = 0.02
PROMPT_S = 2.0  # "promptly": generous against a loaded CI machine, far below any TTL-based path


def card() -> ModelCard:
    return ModelCard(
        served_name="tiny",
        model_path="/models/tiny",
        tokenizer_path="/models/tiny",
        context_length=2048,
        kv_block_size=16,
        model_types=["chat", "completions"],
        eos_token_ids=[2],
    )


def record(instance_id: int | None = None, **fields) -> InstanceRecord:
    values = dict(
        instance_id=new_instance_id() if instance_id is None else instance_id,
        namespace=NS,
        component="backend",
        endpoint="generate",
        worker_type=WorkerType.aggregated,
        model=card(),
        request_address="tcp://127.0.0.1:20001",
        pid=os.getpid(),
        started_at=time.time(),
    )
    values.update(fields)
    return InstanceRecord(**values)


def path_of(root: Path, rec: InstanceRecord) -> Path:
    return root / f"{instance_key(rec)}.json"


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def until(
    snapshots: AsyncIterator[dict[int, InstanceRecord]],
    predicate: Callable[[dict[int, InstanceRecord]], bool],
    within: float = PROMPT_S,
) -> dict[int, InstanceRecord]:
    async with asyncio.timeout(within):
        async for snapshot in snapshots:
            if predicate(snapshot):
                return snapshot
    raise AssertionError("the watch ended")


def write_foreign(path: Path, data: bytes, age_s: float = 0.0) -> None:
    """A file no FileDiscovery here owns (another process's record, or debris)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_key_layout_and_json_file(tmp_path):
    rec = record(0xABC123)
    assert instance_key(rec) == "v1/instances/dynamo/backend/generate/abc123"

    async def main():
        async with FileDiscovery(tmp_path) as discovery:
            await discovery.register(rec)
            assert decode_record(path_of(tmp_path, rec).read_bytes()) == rec
            assert sorted(os.listdir(path_of(tmp_path, rec).parent)) == ["abc123.json"]  # no temp left

    run(main())


def test_record_codec_validates():
    rec = record(bootstrap_host="10.0.0.1", bootstrap_port=8998, dp_size=4)
    decoded = decode_record(encode_record(rec))
    assert decoded == rec and decoded.worker_type is WorkerType.aggregated
    newer = msgspec.json.encode({**msgspec.to_builtins(rec), "added_later": 1})
    assert decode_record(newer) == rec  # unknown fields from a newer writer are ignored
    for bad in ({"namespace": "a/b"}, {"component": ".."}, {"endpoint": ""}, {"instance_id": 2**63}):
        with pytest.raises(ValueError):
            record(**bad)
    wrong_type = msgspec.json.encode({**msgspec.to_builtins(rec), "worker_type": "both"})
    with pytest.raises(msgspec.ValidationError):
        decode_record(wrong_type)


def test_register_list_replace_unregister(tmp_path):
    async def main():
        async with FileDiscovery(tmp_path, lease_ttl_s=1.0) as discovery:
            a, b = record(), record(worker_type=WorkerType.decode)
            await discovery.register(a)
            await discovery.register(b)
            assert await discovery.list(NS) == {a.instance_id: a, b.instance_id: b}

            replaced = msgspec.structs.replace(a, request_address="tcp://127.0.0.1:20002")
            await discovery.register(replaced)
            assert (await discovery.list(NS))[a.instance_id] == replaced

            moved = msgspec.structs.replace(a, endpoint="clear_kv_blocks")
            await discovery.register(moved)
            assert await discovery.list(NS) == {a.instance_id: moved, b.instance_id: b}
            assert not path_of(tmp_path, a).exists()

            await discovery.unregister(a.instance_id)
            assert await discovery.list(NS) == {b.instance_id: b}
            assert not path_of(tmp_path, moved).exists()
            await discovery.unregister(12345)  # not ours: nothing happens
            assert await discovery.list("other") == {}

    run(main())


def test_watch_yields_the_current_set_then_each_change(tmp_path):
    async def main():
        async with (
            FileDiscovery(tmp_path, lease_ttl_s=0.3, poll_interval_s=POLL_S) as worker,
            FileDiscovery(tmp_path, lease_ttl_s=0.3, poll_interval_s=POLL_S) as frontend,
        ):
            first = record()
            await worker.register(first)
            async with contextlib.aclosing(frontend.watch(NS)) as snapshots:
                assert await anext(snapshots) == {first.instance_id: first}  # at once

                second = record()
                await worker.register(second)
                await until(snapshots, lambda s: s.keys() == {first.instance_id, second.instance_id})

                replaced = msgspec.structs.replace(second, dp_size=2)
                await worker.register(replaced)
                await until(snapshots, lambda s: s.get(second.instance_id) == replaced)

                await worker.unregister(first.instance_id)
                assert await until(snapshots, lambda s: first.instance_id not in s) == {
                    second.instance_id: replaced
                }

                # Keep-alive touches (every 0.1 s here) are not changes: no new snapshot.
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await anext(snapshots)

    run(main())


def test_two_objects_on_one_root_see_each_other(tmp_path):
    async def main():
        async with FileDiscovery(tmp_path) as one, FileDiscovery(tmp_path) as two:
            a, b = record(), record(component="prefill", worker_type=WorkerType.prefill)
            await one.register(a)
            await two.register(b)
            expected = {a.instance_id: a, b.instance_id: b}
            assert await one.list(NS) == expected
            assert await two.list(NS) == expected

    run(main())


def test_lease_survives_a_blocked_event_loop(tmp_path):
    async def main():
        async with FileDiscovery(tmp_path, lease_ttl_s=0.3) as worker:
            rec = record()
            await worker.register(rec)
            time.sleep(1.0)  # blocks the loop for over three TTLs
            async with FileDiscovery(tmp_path, lease_ttl_s=0.3) as reader:
                assert await reader.list(NS) == {rec.instance_id: rec}

    run(main())


def test_file_older_than_ttl_is_ignored_and_deleted(tmp_path):
    stale, fresh = record(), record()
    write_foreign(path_of(tmp_path, stale), encode_record(stale), age_s=5.0)
    write_foreign(path_of(tmp_path, fresh), encode_record(fresh))

    async def main():
        async with FileDiscovery(tmp_path, lease_ttl_s=1.0) as reader:
            assert await reader.list(NS) == {fresh.instance_id: fresh}
        assert not path_of(tmp_path, stale).exists()
        assert path_of(tmp_path, fresh).exists()  # not the reader's to remove

    run(main())


def test_record_expires_when_its_keep_alive_stops(tmp_path):
    ttl = 0.5

    async def main():
        async with (
            FileDiscovery(tmp_path, lease_ttl_s=ttl) as worker,
            FileDiscovery(tmp_path, lease_ttl_s=ttl, poll_interval_s=POLL_S) as frontend,
        ):
            rec = record()
            await worker.register(rec)
            async with contextlib.aclosing(frontend.watch(NS)) as snapshots:
                await until(snapshots, lambda s: rec.instance_id in s)
                worker._stop_keep_alive()  # as if the process hung or died: files stay
                assert path_of(tmp_path, rec).exists()
                await until(snapshots, lambda s: rec.instance_id not in s, within=ttl + 1.0)
            assert not path_of(tmp_path, rec).exists()  # the reader deleted it

    run(main())


def test_lapsed_lease_is_published_again(tmp_path):
    async def main():
        async with FileDiscovery(tmp_path, lease_ttl_s=0.3) as worker:
            rec = record()
            await worker.register(rec)
            path_of(tmp_path, rec).unlink()  # what a reader does after the process was stopped > TTL
            async with asyncio.timeout(PROMPT_S):
                while not path_of(tmp_path, rec).exists():
                    await asyncio.sleep(POLL_S)
            assert await worker.list(NS) == {rec.instance_id: rec}

    run(main())


def test_unreadable_files_are_skipped_with_one_warning(tmp_path, caplog):
    good, misplaced = record(), record()
    corrupt = tmp_path / "v1/instances/dynamo/backend/generate/dead.json"
    write_foreign(corrupt, b'{"instance_id": 1, "namesp')
    write_foreign(path_of(tmp_path, good), encode_record(good))
    # A valid record whose content names another key: it must not leak into this one.
    write_foreign(path_of(tmp_path, record(0xBEEF)), encode_record(misplaced))

    async def main():
        async with FileDiscovery(tmp_path, poll_interval_s=POLL_S) as reader:
            for _ in range(3):
                assert await reader.list(NS) == {good.instance_id: good}
            async with contextlib.aclosing(reader.watch(NS)) as snapshots:
                assert await anext(snapshots) == {good.instance_id: good}

    with caplog.at_level(logging.WARNING, logger="orchestrator.planes.discovery"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert str(corrupt) in warnings[0] or str(corrupt) in warnings[1]


def test_temp_files_are_invisible_and_orphans_are_removed(tmp_path):
    directory = tmp_path / "v1/instances/dynamo/backend/generate"
    writing = directory / ".abc.json.0123456789ab.tmp"
    orphan = directory / ".def.json.0123456789ab.tmp"
    write_foreign(writing, encode_record(record(0xABC)))
    write_foreign(orphan, encode_record(record(0xDEF)), age_s=5.0)

    async def main():
        async with FileDiscovery(tmp_path, lease_ttl_s=1.0) as reader:
            assert await reader.list(NS) == {}
        assert writing.exists() and not orphan.exists()

    run(main())


def test_close_removes_own_records_only_and_is_idempotent(tmp_path):
    async def main():
        async with FileDiscovery(tmp_path) as other:
            theirs = record()
            await other.register(theirs)
            mine = FileDiscovery(tmp_path)
            a, b = record(), record(namespace="other")
            await mine.register(a)
            await mine.register(b)
            await mine.close()
            assert not path_of(tmp_path, a).exists() and not path_of(tmp_path, b).exists()
            assert await other.list(NS) == {theirs.instance_id: theirs}
            await mine.close()
            with pytest.raises(RuntimeError):
                await mine.register(a)
            await mine.unregister(theirs.instance_id)  # not its record
            assert path_of(tmp_path, theirs).exists()

    run(main())


def test_close_ends_every_watch(tmp_path):
    async def main():
        discovery = FileDiscovery(tmp_path, poll_interval_s=POLL_S)
        seen = []

        async def consume():
            async for snapshot in discovery.watch(NS):
                seen.append(snapshot)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(consume())
            await asyncio.sleep(0.1)
            await discovery.close()
        assert seen == [{}]

    run(main())


def test_discovery_from_env(tmp_path):
    async def registered_under(discovery) -> list[Path]:
        async with discovery:
            rec = record()
            await discovery.register(rec)
            return [p for p in tmp_path.rglob("*.json")]

    explicit = {"DYN_FILE_KV": str(tmp_path / "kv"), "DYN_LEASE_TTL_SECS": "2.5"}
    found = asyncio.run(registered_under(discovery_from_env(explicit)))
    assert len(found) == 1 and found[0].is_relative_to(tmp_path / "kv" / "v1" / "instances" / NS)

    found = asyncio.run(registered_under(discovery_from_env({"TMPDIR": str(tmp_path / "t")})))
    assert len(found) == 1 and found[0].is_relative_to(tmp_path / "t" / "dynamo_store_kv")

    etcd = {"DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": "http://a:2379, http://b:2379"}
    with pytest.raises(ValueError, match="'etcd' is not available in this build; use file"):
        discovery_from_env(etcd)
    with pytest.raises(ValueError, match="unknown discovery backend 'nats'"):
        open_discovery("nats", root=str(tmp_path), etcd_endpoints=None, lease_ttl_s=10)
    for bad in ("0", "-1", "ten", "inf"):
        with pytest.raises(ValueError, match="DYN_LEASE_TTL_SECS"):
            discovery_from_env({"DYN_FILE_KV": str(tmp_path), "DYN_LEASE_TTL_SECS": bad})
