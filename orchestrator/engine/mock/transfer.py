"""The seam between a disaggregated mock engine and whatever moves its KV: the
`KvTransfer` protocol (implemented elsewhere, by the worker's transport or by a test
fake), and `await_leg`, which runs one transfer so that aborting the request
cancels it.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Protocol, TypeVar

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.request import Request
from orchestrator.planes.messages import BootstrapInfo, ErrorKind

T = TypeVar("T")


class KvTransfer(Protocol):
    async def send(self, bootstrap: BootstrapInfo, prompt_tokens: int, first_token: int, transfer_seconds: float) -> None:
        """Prefill side: wait for the decode peer of bootstrap.room (either side may arrive first), simulate the transfer, hand over the first token. Raises EngineError(ErrorKind.BOOTSTRAP_TIMEOUT) when no peer comes in time, EngineError(ErrorKind.INTERNAL) when the peer aborted. Cancelling the awaiting task tells the peer this leg was aborted."""

    async def receive(self, bootstrap: BootstrapInfo, prompt_tokens: int) -> int:
        """Decode side: meet the prefill engine of bootstrap.room; returns the first token once the KV has arrived. Same errors; cancelling tells the prefill side."""


class LegAborted(Exception):
    """The request was aborted while its transfer was in flight."""


async def await_leg(req: Request, transfer: Awaitable[T]) -> T:
    """Await `transfer` in a child task that `Scheduler.abort` cancels through
    `req.leg`; cancelling the caller cancels it too. Raises `LegAborted` when aborted
    and `EngineError` when the transfer fails (anything else becomes INTERNAL)."""
    try:
        async with asyncio.TaskGroup() as group:
            leg = req.leg = group.create_task(_run(transfer))
    except* EngineError as failed:
        raise failed.exceptions[0] from None
    except* Exception as failed:
        error = failed.exceptions[0]
        raise EngineError(ErrorKind.INTERNAL, f"KV transfer failed: {error!r}") from error
    finally:
        req.leg = None
    if leg.cancelled():
        raise LegAborted
    return leg.result()


async def _run(transfer: Awaitable[T]) -> T:
    return await transfer
