"""File discovery: records as JSON files in a directory, leases as fresh mtimes.

Layout: `{root}/v1/instances/{namespace}/{component}/{endpoint}/{instance_id:x}.json`,
the keys of `records.instance_key` plus `.json`. It needs no server and works across
the processes of one machine (Dynamo's `file` backend, reference §10):

- A write goes to a temp file in the same directory and is renamed over the record,
  so a reader sees the old record or the new one, never a partial one.
- The lease: one daemon thread per `FileDiscovery` touches the file of every record
  the object registered every max(TTL/3, 0.05 s). It is an OS thread, not an asyncio
  task, so an event loop blocked for longer than the TTL does not lose the lease.
- A record whose mtime is older than the TTL is expired: readers skip it and delete
  it, so a SIGKILLed worker's records vanish within TTL + one poll at every watcher.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple, Optional

import msgspec

from orchestrator.planes.discovery.base import Discovery
from orchestrator.planes.discovery.records import (
    InstanceRecord,
    decode_record,
    encode_record,
    instance_key,
    namespace_prefix,
)

logger = logging.getLogger(__name__)

_RECORD_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"  # also keeps half-written files out of the readers' *.json
_MIN_KEEP_ALIVE_S = 0.05


class _Owned(NamedTuple):
    """A record this object published: where, and the bytes to publish again."""

    path: Path
    data: bytes


class FileDiscovery(Discovery):
    """`Discovery` in a directory shared by the processes of one machine.

    The lease is the keep-alive thread, started by the first `register` and stopped by
    `close`; until then each registered record's file stays fresh. Unregister and close
    delete only files this object wrote. Watches poll the namespace every
    `poll_interval_s`, re-reading only files whose inode, mtime or size changed.

    Expiry is judged by the reader against its own TTL, so every process sharing a root
    must use the same TTL (`DYN_LEASE_TTL_SECS`): a reader with a shorter one would
    expire records between their writer's renewals.
    """

    def __init__(self, root: Path, lease_ttl_s: float = 10.0, poll_interval_s: float = 0.1):
        for name, value in (("lease_ttl_s", lease_ttl_s), ("poll_interval_s", poll_interval_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self._root = Path(root)
        self._ttl_s = lease_ttl_s
        self._poll_interval_s = poll_interval_s
        self._keep_alive_interval_s = max(lease_ttl_s / 3, _MIN_KEEP_ALIVE_S)
        # Shared with the keep-alive thread: guards _owned, _keeper and the owned files,
        # so a keep-alive pass never re-creates a file that unregister just removed.
        self._lock = threading.Lock()
        self._owned: dict[int, _Owned] = {}
        self._keeper: Optional[threading.Thread] = None
        self._closed = threading.Event()
        self._views: dict[str, _NamespaceView] = {}

    async def register(self, record: InstanceRecord) -> None:
        # File I/O and the lock (which the keep-alive pass holds) stay off the loop.
        await asyncio.to_thread(self._publish, record)
        logger.info("registered instance %x (%s) in %s", record.instance_id, instance_key(record), self._root)

    async def unregister(self, instance_id: int) -> None:
        if await asyncio.to_thread(self._withdraw, instance_id):
            logger.info("unregistered instance %x", instance_id)

    async def list(self, namespace: str) -> dict[int, InstanceRecord]:
        return await asyncio.to_thread(self._view(namespace).scan)

    async def watch(self, namespace: str) -> AsyncIterator[dict[int, InstanceRecord]]:
        view = self._view(namespace)
        previous: Optional[dict[int, InstanceRecord]] = None
        while not self._closed.is_set():
            live = await asyncio.to_thread(view.scan)
            if live != previous:
                previous = live
                yield dict(live)  # the consumer's copy; `previous` stays ours to compare
            await asyncio.sleep(self._poll_interval_s)

    async def close(self) -> None:
        released = await asyncio.to_thread(self._release)
        if released:
            logger.info("released discovery lease in %s: %d record(s) removed", self._root, released)

    def _publish(self, record: InstanceRecord) -> None:
        path = self._root / f"{instance_key(record)}{_RECORD_SUFFIX}"
        data = encode_record(record)
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("discovery is closed")
            _write_atomic(path, data)
            previous = self._owned.get(record.instance_id)
            self._owned[record.instance_id] = _Owned(path, data)
            if previous is not None and previous.path != path:
                previous.path.unlink(missing_ok=True)  # the instance moved to another key
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep_alive, name="discovery-keep-alive", daemon=True)
                self._keeper.start()

    def _withdraw(self, instance_id: int) -> bool:
        with self._lock:
            owned = self._owned.pop(instance_id, None)
            if owned is not None:
                owned.path.unlink(missing_ok=True)
        return owned is not None

    def _release(self) -> int:
        self._stop_keep_alive()
        with self._lock:
            owned, self._owned = self._owned, {}
            for record in owned.values():
                record.path.unlink(missing_ok=True)
        return len(owned)

    def _stop_keep_alive(self) -> None:
        """Stop renewing the lease; the files stay until readers find them expired."""
        self._closed.set()
        with self._lock:
            keeper = self._keeper
        if keeper is not None:
            keeper.join()

    def _keep_alive(self) -> None:
        while not self._closed.wait(self._keep_alive_interval_s):
            with self._lock:
                for instance_id, owned in self._owned.items():
                    _renew(instance_id, owned)

    def _view(self, namespace: str) -> _NamespaceView:
        view = self._views.get(namespace)
        if view is None:
            view = _NamespaceView(self._root, namespace_prefix(namespace), self._ttl_s)
            self._views[namespace] = view
        return view


def _renew(instance_id: int, owned: _Owned) -> None:
    try:
        os.utime(owned.path)
    except FileNotFoundError:
        # A reader found it expired and deleted it: this process was stopped (or
        # starved) longer than the TTL. It is alive now, so it is in discovery again.
        logger.warning("lease of instance %x lapsed; publishing it again", instance_id)
        try:
            _write_atomic(owned.path, owned.data)
        except OSError as error:
            logger.warning("cannot publish instance %x again: %s", instance_id, error)
    except OSError as error:
        # The thread must survive a transient error; the next pass retries.
        logger.warning("cannot renew the lease of instance %x: %s", instance_id, error)


def _write_atomic(path: Path, data: bytes) -> None:
    # No fsync: a record only matters while its writer lives, and a machine crash
    # ends every writer on it, so durability across power loss buys nothing.
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
    try:
        with open(temp, "xb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class _Stamp(NamedTuple):
    """What changes when a file is rewritten (new inode) or renewed (mtime)."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Stamp:
        return cls(stat.st_ino, stat.st_mtime_ns, stat.st_size)


class _NamespaceView:
    """The live records of one namespace directory, as of its latest scan.

    `list` and every watch of a namespace share one view, so each file version is
    decoded once and an unreadable one is reported once. Scans run in worker threads
    and are serialised by a lock.
    """

    def __init__(self, root: Path, prefix: str, ttl_s: float):
        self._root = root
        self._directory = root / prefix
        self._ttl_ns = int(ttl_s * 1e9)
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[_Stamp, Optional[InstanceRecord]]] = {}

    def scan(self) -> dict[int, InstanceRecord]:
        with self._lock:
            now_ns = time.time_ns()
            files: dict[Path, tuple[_Stamp, Optional[InstanceRecord]]] = {}
            live: dict[int, InstanceRecord] = {}
            for path, stat in self._entries():
                if now_ns - stat.st_mtime_ns > self._ttl_ns:
                    _remove_expired(path)
                    continue
                if not path.name.endswith(_RECORD_SUFFIX):
                    continue  # a temp file being written right now
                known = self._files.get(path)
                entry = known if known is not None and known[0] == _Stamp.of(stat) else self._read(path)
                if entry is None:
                    continue  # deleted since the listing
                files[path] = entry
                record = entry[1]
                if record is not None:
                    live[record.instance_id] = record
            self._files = files
            return live

    def _entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        for component in _subdirectories(self._directory):
            for endpoint in _subdirectories(component):
                for entry in _list_directory(endpoint):
                    if not entry.name.endswith((_RECORD_SUFFIX, _TEMP_SUFFIX)):
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue
                    yield Path(entry.path), stat

    def _read(self, path: Path) -> Optional[tuple[_Stamp, Optional[InstanceRecord]]]:
        """The file's stamp and record (None if unreadable), or None if it is gone."""
        try:
            with open(path, "rb") as file:
                stamp = _Stamp.of(os.fstat(file.fileno()))  # of the bytes we read
                data = file.read()
        except FileNotFoundError:
            return None
        try:
            record = decode_record(data)
        except msgspec.DecodeError as error:
            logger.warning("skipping unreadable discovery record %s: %s", path, error)
            return stamp, None
        expected = self._root / f"{instance_key(record)}{_RECORD_SUFFIX}"
        if expected != path:
            logger.warning("skipping discovery record %s: its content belongs at %s", path, expected)
            return stamp, None
        return stamp, record


def _remove_expired(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return  # another reader was first
    if path.name.endswith(_RECORD_SUFFIX):
        logger.info("removed expired discovery record %s", path)


def _list_directory(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirectories(directory: Path) -> list[Path]:
    return [Path(entry.path) for entry in _list_directory(directory) if entry.is_dir()]
