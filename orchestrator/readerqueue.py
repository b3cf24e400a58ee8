"""A queue with one reader: a deque and that reader's waiter.

`asyncio.Queue` serves many readers and costs a loop lookup and a waiter list on every
item; a stream's tokens (the mock engine's outbox of one request, the request client's
inbox of one stream) have exactly one reader, and pass through here once per token.
`ChunkQueue` hands its reader the chunks that waited for it as one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from orchestrator.planes.messages import Chunk

T = TypeVar("T")


class ReaderQueue(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class ChunkQueue(ReaderQueue[T]):
    """A stream's replies: a chunk comes with the chunks queued right behind it merged in,
    up to the last chunk or an item of another kind (which stays, to be read next)."""

    async def get(self) -> T:
        item = await super().get()
        if isinstance(item, Chunk):
            while item.finish_reason is None and self._items and isinstance(self._items[0], Chunk):
                item.extend(self._items.popleft())
        return item
