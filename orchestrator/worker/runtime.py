"""The worker's life, the same for every worker type.

Start: engine -> worker type (by the one enum) -> warm-up with the type's health
payload (a worker that cannot answer it refuses to start) -> request plane -> event
plane (load, and the KV relay when the engine publishes KV events) -> system server
-> register in discovery -> ready.
Stop (SIGTERM/SIGINT): leave discovery first, refuse new requests, let in-flight
ones finish for up to the drain timeout, end the rest with a migratable
`engine_shutdown` error, shut the engine down, exit 0. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import time

from prometheus_client import CollectorRegistry

from orchestrator import heap
from orchestrator.engine.base import Engine, EngineError, EngineInfo
from orchestrator.engine.factory import build_engine, hf_config, model_files, special_token_ids
from orchestrator.errors import BootError
from orchestrator.roles import EngineKind
from orchestrator.metrics import ComponentMetrics, KvRelayMetrics
from orchestrator.planes import messages as m
from orchestrator.planes.discovery.records import InstanceRecord, ModelCard
from orchestrator.planes.events import EventPublisher, publish_load
from orchestrator.planes.request import RequestServer
from orchestrator.signals import Shutdown
from orchestrator.worker.args import WorkerArgs
from orchestrator.worker.health import Health, State, run_canary
from orchestrator.worker.kv_relay import KvRelay
from orchestrator.worker.operations import engine_routes
from orchestrator.worker.system_server import SystemServer
from orchestrator.worker.tokenizer import encode, load_tokenizer
from orchestrator.worker.types import KINDS, WorkerKind

log = logging.getLogger(__name__)


async def run_worker(args: WorkerArgs) -> int:
    shutdown = Shutdown()
    shutdown.install(asyncio.get_running_loop())
    registry = CollectorRegistry()
    health = Health(args.endpoint)
    if (getattr(args.sglang, "node_rank", 0) or 0) > 0:
        return await _follow(args, registry, health, shutdown)
    engine = build_engine(args, registry)
    started = time.monotonic()
    try:
        info = await engine.start()
    except EngineError as e:
        raise BootError(f"the engine did not start: {e}") from None
    try:
        kind = _kind(args, engine, info, registry)
        await _warm_up(kind, args.health_check_timeout * 10)
        heap.settle()
        return await _serve(args, engine, info, kind, registry, health, shutdown, started)
    finally:
        await engine.shutdown()
        await shutdown.run_deferred()


async def _follow(args: WorkerArgs, registry: CollectorRegistry, health: Health, shutdown: Shutdown) -> int:
    """A follower node of a multi-node worker: it serves its share of the model but not
    requests, so it neither registers nor opens a request plane (Dynamo's non-leader
    nodes). With SGLang its engine runs the schedulers of this node's ranks; the mock's
    leader simulates every rank of the worker, so a mock follower only reports health."""
    engine = build_engine(args, registry) if args.engine is EngineKind.sglang else None
    if engine is not None:
        await engine.start()
    system = SystemServer(args.system_host, args.system_port, health, registry, {}) if args.system_port >= 0 else None
    try:
        if system:
            await system.start()
        health.set_state(State.ready)
        log.info("follower node %d of %s ready", args.sglang.node_rank, args.sglang.dist_init_addr)
        await shutdown.requested.wait()
        health.set_state(State.draining)
    finally:
        if system:
            await system.close()
        if engine is not None:
            await engine.shutdown()
    return 0


def _kind(args: WorkerArgs, engine: Engine, info: EngineInfo, registry: CollectorRegistry) -> WorkerKind:
    served = getattr(args.sglang, "served_model_name", None) or args.sglang.model_path
    metrics = ComponentMetrics(registry, args.namespace, args.component, args.endpoint, served)
    bos, _ = special_token_ids(hf_config(args.sglang))
    tokenizer = None if getattr(args.sglang, "skip_tokenizer_init", False) else load_tokenizer(model_files(args.sglang))
    return KINDS[args.worker_type](engine, info, metrics, bos, functools.partial(encode, tokenizer) if tokenizer else None)


async def _warm_up(kind: WorkerKind, timeout: float) -> None:
    async def first_reply() -> m.FromWorker | None:
        async with contextlib.aclosing(kind.serve(kind.health_request())) as replies:
            async for reply in replies:
                return reply
        return None

    try:
        async with asyncio.timeout(timeout):
            reply = await first_reply()
    except TimeoutError:
        raise BootError(f"the warm-up request got no answer in {timeout:g}s") from None
    if reply is None or isinstance(reply, m.ErrorReply):
        raise BootError(f"the warm-up request failed: {getattr(reply, 'message', 'no reply')}")


class Registration:
    """This worker's record in discovery; it leaves on drain and on a memory release."""

    def __init__(self, discovery, record: InstanceRecord):
        self.discovery, self.record = discovery, record

    async def join(self) -> None:
        await self.discovery.register(self.record)

    async def leave(self) -> None:
        await self.discovery.unregister(self.record.instance_id)


async def _serve(args, engine, info, kind, registry, health, shutdown, started) -> int:
    cancelled: set[str] = set()

    def on_cancel(request_id: str) -> None:
        if request_id not in cancelled:  # count each request once
            cancelled.add(request_id)
            kind.metrics.cancellations.inc()

    async def handle(request):
        health.touch()
        async for reply in kind.handle(request):
            yield reply

    requests = RequestServer(args.sglang.host, args.request_port, handle, on_cancel)
    request_port = requests.start()
    events = EventPublisher(args.sglang.host, args.event_port)
    event_port = events.start()
    instance_id = random.getrandbits(63)
    relay = _kv_relay(args, info, events, instance_id, registry)
    discovery = args.discovery.open()
    registration = Registration(discovery, None)
    system = None
    try:
        system_url = None
        if args.system_port >= 0:
            system = SystemServer(args.system_host, args.system_port, health, registry, engine_routes(engine, registration))
            system_url = f"http://{args.advertise_host}:{await system.start()}"
        sync_address = f"tcp://{args.advertise_host}:{relay.start()}" if relay else None
        registration.record = _record(args, info, kind, instance_id, request_port, event_port, system_url, sync_address)
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(requests.serve()),
                tasks.create_task(publish_load(events, engine, instance_id)),
            ]
            if relay:
                background.append(tasks.create_task(relay.run()))
            if args.health_check:
                background.append(tasks.create_task(run_canary(
                    health, lambda: kind.handle(kind.health_request()), lambda: requests.inflight > 0,
                    args.canary_wait_time, args.health_check_timeout,
                )))
            await registration.join()
            health.set_state(State.ready)
            log.info("%s worker ready in %.1fs: %s on %s", args.worker_type.value, time.monotonic() - started,
                     registration.record.model.served_name, registration.record.request_address)
            await shutdown.requested.wait()
            await _drain(args, requests, registration, health, shutdown)
            for task in background:
                task.cancel()
    finally:
        requests.close()
        if relay:
            relay.close()
        events.close()
        await discovery.close()
        if system:
            await system.close()
    return 0


async def _drain(args, requests: RequestServer, registration: Registration, health: Health, shutdown: Shutdown) -> None:
    health.set_state(State.draining)
    t0 = time.monotonic()
    await registration.leave()
    requests.stop_accepting()
    log.info("drain: left discovery; %d requests in flight", requests.inflight)
    waiting = asyncio.ensure_future(requests.wait_idle(args.drain_timeout))
    forced = asyncio.ensure_future(shutdown.forced.wait())
    await asyncio.wait({waiting, forced}, return_when=asyncio.FIRST_COMPLETED)
    forced.cancel()
    waiting.cancel()
    ended = await requests.fail_all(m.ErrorKind.ENGINE_SHUTDOWN, "the worker is shutting down")
    log.info("drain: done in %.2fs; %d requests handed back for migration", time.monotonic() - t0, ended)


def _kv_relay(args: WorkerArgs, info: EngineInfo, events: EventPublisher, instance_id: int,
              registry: CollectorRegistry) -> KvRelay | None:
    """A relay when the engine publishes KV events: of every DP rank on this node (SGLang's
    attention-DP spreads the ranks over the nodes; plain DP keeps them on the first)."""
    config = getattr(args.sglang, "kv_events_config", None)
    config = json.loads(config) if isinstance(config, str) else config
    if not config or config.get("publisher", "null") == "null":
        return None
    nnodes = getattr(args.sglang, "nnodes", 1) or 1
    ranks = info.dp_size // nnodes if nnodes > 1 and getattr(args.sglang, "enable_dp_attention", False) else info.dp_size
    return KvRelay(config, list(range(ranks)), args.sglang.host, info.page_size, events, instance_id,
                   KvRelayMetrics(registry), sync_host=args.sglang.host)


def _record(
    args: WorkerArgs, info: EngineInfo, kind: WorkerKind, instance_id: int, request_port: int, event_port: int,
    system_url: str | None, kv_sync_address: str | None,
) -> InstanceRecord:
    s = args.sglang
    return InstanceRecord(
        instance_id=instance_id,
        namespace=args.namespace,
        component=args.component,
        endpoint=args.endpoint,
        worker_type=args.worker_type.value,
        model=ModelCard(
            served_name=getattr(s, "served_model_name", None) or s.model_path,
            model_path=s.model_path,
            tokenizer_path=str(model_files(s)),
            context_length=info.context_length,
            kv_block_size=info.page_size,
            model_types=list(kind.model_types),
            tool_call_parser=args.tool_call_parser,
            reasoning_parser=args.reasoning_parser,
            eos_token_ids=list(info.eos_token_ids),
            max_running_requests=info.max_running_requests,
            total_kv_blocks=info.max_total_tokens // max(info.page_size, 1),
            embedding_dim=info.embedding_dim,
        ),
        request_address=f"tcp://{args.advertise_host}:{request_port}",
        event_address=f"tcp://{args.advertise_host}:{event_port}",
        kv_sync_address=kv_sync_address,
        system_url=system_url,
        dp_size=info.dp_size,
        pid=os.getpid(),
        started_at=time.time(),
        **kind.record_fields(),
    )
