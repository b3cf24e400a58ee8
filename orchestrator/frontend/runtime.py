"""The frontend's life: watch discovery, serve HTTP, stop on SIGTERM/SIGINT.

The model registry follows every discovery snapshot, so a worker that registers is
routable at once and one that leaves (drains, or its lease expires) is not. On a stop
signal `/live` turns 503, the server stops accepting, and in-flight requests get up
to the grace period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry

from orchestrator import heap
from orchestrator.frontend.args import FrontendArgs
from orchestrator.frontend.dispatch import Dispatcher
from orchestrator.frontend.events import WorkerEvents
from orchestrator.frontend.models import ModelRegistry
from orchestrator.frontend.server import FrontendServer
from orchestrator.metrics import FrontendMetrics, RouterMetrics
from orchestrator.roles import ChatProcessor, RouterMode
from orchestrator.router import KvPolicy, KvRouter, make_router
from orchestrator.signals import Shutdown

log = logging.getLogger(__name__)


async def run_frontend(args: FrontendArgs) -> int:
    shutdown = Shutdown()
    shutdown.install(asyncio.get_running_loop())
    registry = CollectorRegistry()
    metrics = FrontendMetrics(registry)
    router_metrics = RouterMetrics(registry) if args.router_mode is RouterMode.kv else None
    router = make_router(args.router_mode, _kv_policy(args), router_metrics)
    dispatcher = Dispatcher(router, args.migration_limit, metrics, queue_when_busy=args.router_busy_policy == "queue")
    discovery = args.discovery.open()
    async with discovery, ModelRegistry() as models:
        sglang = None
        if args.chat_processor is ChatProcessor.sglang:
            from orchestrator.frontend.preprocess.sglang_processor import SGLangChatProcessor

            sglang = SGLangChatProcessor.load()
        server = FrontendServer(args.http_host, args.http_port, models, dispatcher, registry, metrics, sglang)
        kv_index = router.index if isinstance(router, KvRouter) and args.router_kv_events else None
        load = WorkerEvents(models, kv_index, router_metrics, dispatcher.load_changed)
        try:
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(_follow(discovery, args.namespace, models, load)),
                    tasks.create_task(load.run()),
                ]
                await server.start()
                heap.settle()
                await shutdown.requested.wait()
                server.shutting_down = True
                log.info("stopping: %d requests in flight", _inflight(models))
                for task in background:
                    task.cancel()
        finally:
            load.close()
        await server.close()
    return 0


def _kv_policy(args: FrontendArgs) -> KvPolicy:
    return KvPolicy(
        overlap_score_weight=args.router_kv_overlap_score_weight,
        temperature=args.router_temperature,
        use_kv_events=args.router_kv_events,
        ttl_s=args.router_ttl_secs,
        busy_kv_usage=args.active_decode_blocks_threshold,
        busy_prefill_tokens=args.active_prefill_tokens_threshold,
    )


async def _follow(discovery, namespace: str, models: ModelRegistry, load: WorkerEvents) -> None:
    async with contextlib.aclosing(discovery.watch(namespace)) as snapshots:
        async for snapshot in snapshots:
            await models.apply(snapshot)
            load.follow()


def _inflight(models: ModelRegistry) -> int:
    return sum(i.inflight for model in models.models.values() for i in model.instances.values())
