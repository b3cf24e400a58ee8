"""A worker's health: its lifecycle state and the idle canary.

State goes starting -> ready -> draining. `/live` follows the state alone; `/health`
also requires the endpoint's last canary to have passed. The canary sends the worker
type's health payload through the worker's own handler, in-process, only after the
endpoint has been idle for `wait_time` (real traffic proves health too), under a
timeout; an error or a timeout marks the endpoint not ready until a later canary passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import AsyncIterator, Callable

from orchestrator.planes import messages as m

log = logging.getLogger(__name__)


class State(enum.Enum):
    starting = "starting"
    ready = "ready"
    draining = "draining"


class Health:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.state = State.starting
        self.endpoint_ready = True  # the canary's last verdict
        self.started = time.monotonic()
        self.last_activity = time.monotonic()

    def set_state(self, state: State) -> None:
        if state is not self.state:
            log.info("worker %s -> %s", self.state.value, state.value)
            self.state = state

    @property
    def live(self) -> bool:
        return self.state is State.ready

    @property
    def healthy(self) -> bool:
        return self.live and self.endpoint_ready

    def report(self) -> dict:
        return {
            "status": "ready" if self.healthy else "notready",
            "state": self.state.value,
            "uptime": round(time.monotonic() - self.started, 3),
            "endpoints": {self.endpoint: "ready" if self.healthy else "notready"},
        }

    def touch(self) -> None:
        """Real traffic: the canary waits for the endpoint to go idle again."""
        self.last_activity = time.monotonic()


async def run_canary(
    health: Health,
    send: Callable[[], AsyncIterator[m.FromWorker]],
    busy: Callable[[], bool],
    wait_time: float,
    timeout: float,
) -> None:
    """Runs until cancelled. `send()` streams the health payload through the handler."""
    while True:
        await asyncio.sleep(min(wait_time, 1.0))
        if health.state is not State.ready or busy() or time.monotonic() - health.last_activity < wait_time:
            continue
        ok = await _probe(send, timeout)
        if ok != health.endpoint_ready:
            log.warning("canary: endpoint %s is now %s", health.endpoint, "ready" if ok else "NOT ready")
        health.endpoint_ready = ok
        health.touch()


async def _probe(send: Callable[[], AsyncIterator[m.FromWorker]], timeout: float) -> bool:
    """The first reply decides, as in Dynamo: data is healthy, an error or silence is not."""
    async def first() -> bool:
        async with contextlib.aclosing(send()) as replies:
            async for reply in replies:
                return not isinstance(reply, m.ErrorReply)
        return False

    try:
        async with asyncio.timeout(timeout):
            return await first()
    except Exception as e:
        log.warning("canary failed: %s", e or type(e).__name__)
        return False
