"""The mock engine as a worker runs it: with SGLang-format KV-event publishers (one
per DP rank, when `--kv-events-config` asks for them), the bootstrap transport of
its disaggregation role, and the operations behind `/engine/*`.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.bootstrap import BootstrapClient, BootstrapServer
from orchestrator.engine.mock.config import MockEngineConfig
from orchestrator.engine.mock.engine import MockEngine
from orchestrator.engine.mock.publisher import KvEventPublisher
from orchestrator.planes.messages import ErrorKind

log = logging.getLogger(__name__)


class WorkerMockEngine(MockEngine):
    def __init__(self, config: MockEngineConfig, registry: CollectorRegistry):
        ranks = config.dp_size * config.attn_dp_size
        events = config.kv_events_config or {}
        self._publishers = (
            [KvEventPublisher(events, rank) for rank in range(ranks)] if events.get("publisher", "null") != "null" else []
        )
        self._server = None
        transfer = None
        if config.disaggregation_mode == "prefill":
            transfer = self._server = BootstrapServer(config.host, config.disaggregation_bootstrap_port,
                                                      config.bootstrap_timeout_s)
        elif config.disaggregation_mode == "decode":
            transfer = BootstrapClient(config.bootstrap_timeout_s)
        super().__init__(config, self._publish if self._publishers else None, transfer, registry)
        self._profiling_since: float | None = None
        self._released: set[str] = set()

    def _publish(self, dp_rank: int, events: list) -> None:
        self._publishers[dp_rank].publish(events)

    async def start(self):
        if self._server is not None:
            await self._server.start()
        return await super().start()

    async def shutdown(self) -> None:
        await super().shutdown()
        for publisher in self._publishers:
            publisher.close()
        if self._server is not None:
            await self._server.close()

    async def flush_cache(self) -> dict:
        ok = await super().flush_cache()
        return {"success": ok, "message": "" if ok else "cannot flush the cache while requests are running or waiting"}

    async def start_profile(self, options: dict) -> dict:
        if self._profiling_since is not None:
            return {"success": False, "message": "profiling is already running"}
        self._profiling_since = time.monotonic()
        return {"success": True, "message": "profiling started (the mock engine records no kernel traces)"}

    async def stop_profile(self) -> dict:
        if self._profiling_since is None:
            return {"success": False, "message": "profiling is not running"}
        seconds, self._profiling_since = time.monotonic() - self._profiling_since, None
        return {"success": True, "message": f"profiled {seconds:.1f}s"}

    async def release_memory(self, tags: list[str]) -> None:
        if "kv_cache" in tags and not (await self.flush_cache())["success"]:
            raise EngineError(ErrorKind.INTERNAL, "cannot release the KV cache while requests are in flight")
        self._released.update(tags)
        log.info("released memory: %s", ", ".join(sorted(self._released)))

    async def resume_memory(self, tags: list[str]) -> None:
        self._released.difference_update(tags)
        log.info("resumed memory: %s", ", ".join(tags))


def build_mock_engine(config: MockEngineConfig, registry: CollectorRegistry) -> WorkerMockEngine:
    return WorkerMockEngine(config, registry)
