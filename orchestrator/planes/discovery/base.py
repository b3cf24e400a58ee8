"""The discovery interface every backend implements (file today, etcd later)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from types import TracebackType

from orchestrator.planes.discovery.records import InstanceRecord


class Discovery(abc.ABC):
    """A store of live `InstanceRecord`s, each held under its publisher's lease.

    Lifecycle contract:
    - A `Discovery` object is one process's lease. `register` publishes a record under
      it; re-registering an `instance_id` replaces that record (wherever its key was).
      The lease is kept alive independently of the event loop, so a loop blocked for
      longer than the TTL does not lose it.
    - `unregister` removes a record at once. It is the first step of a drain: leave
      discovery, then finish in-flight work. Unknown ids are ignored.
    - `close` stops the keep-alive and releases the lease: every record this object
      registered disappears, records of other objects are untouched. It is idempotent,
      ends every `watch` of this object, and `register` after it raises.
    - If the process dies, its records expire within the lease TTL, and every watcher
      sees them go. If the lease lapses while the process lives (the process was
      stopped longer than the TTL), the keep-alive publishes its records again.
    - `watch(namespace)` yields the full set of live instances of the namespace at
      once, then again after every change (add, replace, remove, expiry), at most one
      snapshot per batch of changes; a consumer slower than the changes sees only the
      latest set. Close it with `contextlib.aclosing` when leaving the loop early.
    - Use it as an async context manager: `async with open_discovery(...) as d:`.
    """

    @abc.abstractmethod
    async def register(self, record: InstanceRecord) -> None: ...

    @abc.abstractmethod
    async def unregister(self, instance_id: int) -> None: ...

    @abc.abstractmethod
    def watch(self, namespace: str) -> AsyncIterator[dict[int, InstanceRecord]]: ...

    @abc.abstractmethod
    async def list(self, namespace: str) -> dict[int, InstanceRecord]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Discovery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
