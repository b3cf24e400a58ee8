"""The control socket of a running deployment: `<run dir>/control.sock`.

One JSON object per line in each direction. Requests: `{"command": "status"}`,
`{"command": "restart", "group": "<name>|all"}`, `{"command": "stop"}`. Replies:
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`. `dynamo-ctl` is its client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
Handler = Callable[[dict], Awaitable[dict]]


class ControlServer:
    def __init__(self, run_dir: Path, handlers: dict[str, Handler]):
        self.path = run_dir / SOCKET_NAME
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            handler = self._handlers[request["command"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            return {"ok": False, "error": f"unknown request; commands: {', '.join(sorted(self._handlers))}"}
        try:
            return {"ok": True, **await handler(request)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
