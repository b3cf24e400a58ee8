"""The worker's system server (`DYN_SYSTEM_PORT`): health, metrics and operations.

GET `/health`, `/live`: JSON with the status and each endpoint's state, 200 or 503.
GET `/metrics`: Prometheus text of the process's one registry (`sglang:*` and `dynamo_*`).
`/engine/<route>`: operational calls with a JSON body (empty means `{}`): 200 with the
route's JSON, 400 for a body that is not a JSON object, 404 for an unknown route,
500 `{"error": "Handler error", "message": ...}` when the route fails.
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from orchestrator.worker.health import Health

log = logging.getLogger(__name__)

EngineRoute = Callable[[dict], Awaitable[dict]]


class SystemServer:
    def __init__(self, host: str, port: int, health: Health, registry: CollectorRegistry, routes: dict[str, EngineRoute]):
        self._host, self.port = host, port
        self._health, self._registry, self._routes = health, registry, routes
        app = web.Application()
        app.router.add_get("/health", self._health_handler)
        app.router.add_get("/live", self._live_handler)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_route("*", "/engine/{route}", self._engine_handler)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the OS's choice when port was 0
        log.info("system server on http://%s:%d", self._host, self.port)
        return self.port

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _health_handler(self, _: web.Request) -> web.Response:
        return web.json_response(self._health.report(), status=200 if self._health.healthy else 503)

    async def _live_handler(self, _: web.Request) -> web.Response:
        report = self._health.report() | {"status": "live" if self._health.live else "notready"}
        return web.json_response(report, status=200 if self._health.live else 503)

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _engine_handler(self, request: web.Request) -> web.Response:
        name = request.match_info["route"]
        route = self._routes.get(name)
        if route is None:
            return web.json_response({"error": "Route not found", "routes": sorted(self._routes)}, status=404)
        raw = await request.text()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            return web.json_response({"error": "Invalid JSON", "message": str(e)}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "Invalid JSON", "message": "the body must be an object"}, status=400)
        try:
            return web.json_response(await route(body))
        except ValueError as e:
            return web.json_response({"error": "Bad request", "message": str(e)}, status=400)
        except Exception as e:
            log.exception("engine route %s failed", name)
            return web.json_response({"error": "Handler error", "message": str(e)}, status=500)
