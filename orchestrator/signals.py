"""SIGTERM/SIGINT handling that stays ours.

The handlers only set events; all work happens in the loop. The first signal asks
for a graceful stop (`requested`), the second forces it (`forced`). Libraries that
register their own SIGTERM/SIGINT callbacks on the loop afterwards — SGLang's
TokenizerManager does, and its handler ends the process — are captured instead of
installed, and can be run once our drain is done (`run_deferred`), as Dynamo does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._deferred: list[tuple] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        original = loop.add_signal_handler

        def add_signal_handler(sig, callback, *args):
            if sig in STOP_SIGNALS:
                log.info("deferring a %s handler registered by %r", signal.Signals(sig).name, callback)
                self._deferred.append((callback, args))
            else:
                original(sig, callback, *args)

        loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign]

    def _on_signal(self, sig: int) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()
        log.info("%s: %s", signal.Signals(sig).name, "forcing the stop" if self.forced.is_set() else "draining")

    async def run_deferred(self) -> None:
        for callback, args in self._deferred:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
