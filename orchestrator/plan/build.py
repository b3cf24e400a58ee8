"""`build_plan`: a pure function from a typed config (and the run dir) to a LaunchPlan.

Workers form stage 0 and start together; the frontend forms stage 1 and starts once
they are healthy, so a ready frontend means a ready deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.config.schema import DType, LaunchConfig, WorkerGroupConfig
from orchestrator.config.store import package_path
from orchestrator.errors import ConfigError
from orchestrator.plan.argv import python_module
from orchestrator.sglang_config import flags_to_argv as render_flags
from orchestrator.plan.inventory import Inventory, NodeSlice
from orchestrator.plan.plan import LaunchPlan, ProcessSpec
from orchestrator.plan.ports import SGLANG_PORT_SPAN, PortAllocator
from orchestrator.plan.validate import validate
from orchestrator.roles import EngineKind, Role, RouterMode, WorkerType

WORKER_MODULE = "orchestrator.worker"
FRONTEND_MODULE = "orchestrator.frontend"
TINY_TOKENIZER = "models/tiny"
KV_EVENTS_TOPIC = "kv-events"


def gpus_per_worker(group: WorkerGroupConfig) -> int:
    """SGLang: GPUs = tp x pp x dp; attention-DP ranks live inside the TP group."""
    return group.tp * group.pp * group.dp


def dp_ranks(group: WorkerGroupConfig) -> int:
    """SGLang's number of DP ranks (each its own scheduler and KV-event stream)."""
    return group.dp * group.attn_dp


@dataclass(frozen=True)
class _Replica:
    """What the node processes of one worker replica share."""

    name: str
    group_name: str
    group: WorkerGroupConfig
    index: int
    slices: list[NodeSlice]
    dist_init_port: int | None
    kv_events_port: int | None
    kv_replay_port: int | None
    bootstrap_port: int | None


def build_plan(cfg: LaunchConfig, run_dir: Path) -> LaunchPlan:
    validate(cfg)
    run_dir = Path(run_dir).resolve()
    _check_gpu_demand(cfg)
    ports = PortAllocator(cfg.ports.base, cfg.ports.sglang_base)
    ports.reserve(cfg.frontend.port, "frontend.port")
    inventory = Inventory(cfg.cluster.nodes, cfg.cluster.gpus_per_node)
    files = {str(run_dir / "disagg.yaml"): yaml.safe_dump(cfg.disagg, sort_keys=False)} if cfg.disagg else {}

    replicas = [
        _plan_replica(cfg, name, group, i, inventory, ports)
        for name, group in cfg.deployment.groups.items()
        for i in range(group.replicas)
    ]
    workers = [
        _worker_process(cfg, run_dir, replica, node_rank, ports)
        for replica in replicas
        for node_rank in range(len(replica.slices))
    ]
    frontend = _frontend_process(cfg, run_dir)
    return LaunchPlan(
        run_dir=run_dir,
        processes=tuple(workers) + (frontend,),
        files=files,
        url=f"http://{_reachable(cfg.frontend.host)}:{cfg.frontend.port}",
        served_name=cfg.model.served_name,
    )


def add_replicas(cfg: LaunchConfig, plan: LaunchPlan, group_name: str, count: int) -> list[ProcessSpec]:
    """The processes of `count` more replicas of a group (`dynamo-ctl scale`), on GPUs
    and ports that nothing in `plan` holds; a ConfigError when the cluster has no room."""
    group = cfg.deployment.groups[group_name]
    inventory = Inventory(cfg.cluster.nodes, cfg.cluster.gpus_per_node)
    ports = PortAllocator(cfg.ports.base, cfg.ports.sglang_base)
    for p in plan.processes:
        inventory.claim(p.node, p.gpus)
        for name, port in p.ports.items():
            ports.hold(port, SGLANG_PORT_SPAN if name in ("sglang", "dist_init") else 1)
    first = 1 + max((p.replica for p in plan.processes if p.group == group_name), default=-1)
    specs = []
    for index in range(first, first + count):
        replica = _plan_replica(cfg, group_name, group, index, inventory, ports)
        specs += [_worker_process(cfg, plan.run_dir, replica, rank, ports) for rank in range(len(replica.slices))]
    return specs


def _check_gpu_demand(cfg: LaunchConfig) -> None:
    need = sum(gpus_per_worker(g) * g.replicas for g in cfg.deployment.groups.values())
    have = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    if need > have:
        per_group = ", ".join(
            f"{n} {g.replicas}x{gpus_per_worker(g)}" for n, g in cfg.deployment.groups.items() if g.replicas
        )
        raise ConfigError(
            "deployment",
            f"needs {need} GPUs ({per_group}) but the cluster has {have} "
            f"({cfg.cluster.nodes} node(s) x {cfg.cluster.gpus_per_node})",
            "lower replicas or tp, or raise cluster.nodes",
        )


def _plan_replica(
    cfg: LaunchConfig, group_name: str, group: WorkerGroupConfig, index: int, inventory: Inventory, ports: PortAllocator
) -> _Replica:
    name = f"{group_name}-{index}"
    slices = inventory.place(gpus_per_worker(group), name)
    ranks = dp_ranks(group)
    kv_events = ports.take(f"{name} kv_events", ranks) if group.kv_events else None
    bootstrap = None
    if group.type is WorkerType.prefill:
        base = cfg.disagg.get(group.disagg_key or "", {}).get("disaggregation-bootstrap-port")
        if base is None:
            bootstrap = ports.take(f"{name} bootstrap")
        else:
            bootstrap = ports.reserve(int(base) + index, f"{name} bootstrap (disagg.{group.disagg_key})")
    return _Replica(
        name=name,
        group_name=group_name,
        group=group,
        index=index,
        slices=slices,
        dist_init_port=ports.take_sglang_block(f"{name} --dist-init-addr") if len(slices) > 1 else None,
        kv_events_port=kv_events,
        kv_replay_port=ports.take(f"{name} kv_replay", ranks) if group.kv_events else None,
        bootstrap_port=bootstrap,
    )


def _worker_process(cfg: LaunchConfig, run_dir: Path, r: _Replica, node_rank: int, ports: PortAllocator) -> ProcessSpec:
    group, node = r.group, r.slices[node_rank].node
    name = r.name if node_rank == 0 else f"{r.name}.{node_rank}"
    host = _node_host(cfg, node)
    own = {
        "system": ports.take(f"{name} system"),
        "request": ports.take(f"{name} request"),
        "events": ports.take(f"{name} events"),
    }
    nnodes, ranks = len(r.slices), dp_ranks(group)
    local_ranks = range(node_rank * ranks // nnodes, (node_rank + 1) * ranks // nnodes)
    for rank in local_ranks if r.kv_events_port is not None else ():
        own[f"kv_events_dp{rank}"] = r.kv_events_port + rank
        own[f"kv_replay_dp{rank}"] = r.kv_replay_port + rank
    if r.bootstrap_port is not None and node_rank == 0:
        own["bootstrap"] = r.bootstrap_port
    own["sglang"] = ports.take_sglang_block(f"{name} sglang --port")
    if r.dist_init_port is not None and node_rank == 0:
        own["dist_init"] = r.dist_init_port  # the leader's rendezvous, a block like --port's

    sglang = {
        "model-path": cfg.model.path,
        "served-model-name": cfg.model.served_name,
        "tokenizer-path": tokenizer_path(cfg),
        "context-length": cfg.model.context_length,
        "tp-size": group.tp,
        "dp-size": group.dp if group.dp > 1 else None,
        "attn-dp-size": group.attn_dp if group.attn_dp > 1 else None,
        "pp-size": group.pp if group.pp > 1 else None,
        "page-size": cfg.deployment.page_size,
        "kv-cache-dtype": "fp8_e4m3" if cfg.model.kv_dtype is DType.fp8 else None,
        "skip-tokenizer-init": group.type in (WorkerType.aggregated, WorkerType.prefill, WorkerType.decode),
        "host": cfg.cluster.listen_host,
        "port": own["sglang"],
        "nnodes": nnodes if nnodes > 1 else None,
        "node-rank": node_rank if nnodes > 1 else None,
        "dist-init-addr": f"{_node_host(cfg, r.slices[0].node)}:{r.dist_init_port}" if nnodes > 1 else None,
        "disaggregation-mode": group.type.disaggregation_mode,
        "disaggregation-bootstrap-port": r.bootstrap_port,
        "kv-events-config": _kv_events_config(cfg, r) if r.kv_events_port is not None else None,
    }
    sglang.update(cfg.model.sglang)
    sglang.update(group.sglang)

    ours = {
        "namespace": cfg.namespace,
        "component": group.component,
        "endpoint": group.endpoint,
        "engine": cfg.engine.kind.value,
        "request-port": own["request"],
        "event-port": own["events"],
        "advertise-host": host,
        "drain-timeout": cfg.supervisor.drain_timeout_s,
        "embedding-worker": group.type is WorkerType.embedding,
        "disagg-config": str(run_dir / "disagg.yaml") if group.disagg_key else None,
        "disagg-config-key": group.disagg_key,
        "dyn-tool-call-parser": cfg.model.tool_call_parser,
        "dyn-reasoning-parser": cfg.model.reasoning_parser,
        **(_mock_flags(cfg) if cfg.engine.kind is EngineKind.mock else {}),
    }
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(map(str, r.slices[node_rank].gpus)),
        "DYN_SYSTEM_HOST": cfg.cluster.listen_host,
        "DYN_SYSTEM_PORT": str(own["system"]),
        **_discovery_env(cfg, run_dir),
        **group.env,
    }
    return ProcessSpec(
        name=name,
        role=Role.worker,
        argv=tuple(python_module(WORKER_MODULE) + render_flags(sglang) + render_flags(ours)),
        env=env,
        node=node,
        host=host,
        health_url=f"http://{_reachable(cfg.cluster.listen_host, host)}:{own['system']}/health",
        stage=0,
        ports=own,
        gpus=r.slices[node_rank].gpus,
        worker_type=group.type,
        group=r.group_name,
        replica=r.index,
        node_rank=node_rank,
    )


def _frontend_process(cfg: LaunchConfig, run_dir: Path) -> ProcessSpec:
    router = cfg.router
    kv = router.mode is RouterMode.kv
    flags = {
        "http-host": cfg.frontend.host,
        "http-port": cfg.frontend.port,
        "namespace": cfg.namespace,
        "router-mode": router.mode.value,
        "router-kv-overlap-score-weight": router.overlap_score_weight if kv else None,
        "router-temperature": router.temperature if kv else None,
        "no-router-kv-events": kv and not router.use_kv_events,
        "router-ttl-secs": router.ttl_s if kv and not router.use_kv_events else None,
        "active-decode-blocks-threshold": router.busy_kv_usage if kv else None,
        "active-prefill-tokens-threshold": router.busy_prefill_tokens if kv else None,
        "router-busy-policy": router.busy_policy if kv else None,
        "migration-limit": cfg.frontend.migration_limit,
        "dyn-chat-processor": cfg.tokenizer.chat_processor.value,
    }
    return ProcessSpec(
        name="frontend",
        role=Role.frontend,
        argv=tuple(python_module(FRONTEND_MODULE) + render_flags(flags)),
        env=_discovery_env(cfg, run_dir),
        node=0,
        host=_node_host(cfg, 0),
        health_url=f"http://{_reachable(cfg.frontend.host)}:{cfg.frontend.port}/health",
        stage=1,
        ports={"http": cfg.frontend.port},
    )


def _kv_events_config(cfg: LaunchConfig, r: _Replica) -> dict:
    """SGLang's --kv-events-config: ZMQ PUB (and replay ROUTER) at base + DP rank."""
    host = cfg.cluster.listen_host
    return {
        "publisher": "zmq",
        "topic": KV_EVENTS_TOPIC,
        "endpoint": f"tcp://{host}:{r.kv_events_port}",
        "replay_endpoint": f"tcp://{host}:{r.kv_replay_port}",
        "bind": True,  # SGLang only infers bind for wildcard hosts
    }


def _mock_flags(cfg: LaunchConfig) -> dict:
    m, gpu, mock = cfg.model, cfg.cluster.gpu, cfg.engine.mock
    return {
        "mock-num-params": m.num_params,
        "mock-active-params": m.active_params,
        "mock-hidden-size": m.hidden_size,
        "mock-num-layers": m.num_layers,
        "mock-num-kv-heads": m.num_kv_heads,
        "mock-head-dim": m.head_dim,
        "mock-mla": m.mla,
        "mock-weight-dtype": m.dtype.value,
        "mock-gpu-memory-gb": gpu.memory_gb,
        "mock-gpu-tflops": gpu.peak_tflops_fp8 if m.dtype in (DType.fp8, DType.fp4) and gpu.peak_tflops_fp8 else gpu.peak_tflops,
        "mock-gpu-bandwidth-tbs": gpu.memory_bandwidth_tbs,
        "mock-kv-link-gbs": cfg.cluster.kv_link_gbs,
        "mock-speedup-ratio": mock.speedup_ratio,
        "mock-prefill-efficiency": mock.prefill_efficiency,
        "mock-decode-efficiency": mock.decode_efficiency,
        "mock-step-overhead-ms": mock.step_overhead_ms,
    }


def _discovery_env(cfg: LaunchConfig, run_dir: Path) -> dict[str, str]:
    env = {"DYN_DISCOVERY_BACKEND": cfg.discovery.backend, "PYTHONUNBUFFERED": "1"}
    if cfg.discovery.backend == "file":
        env["DYN_FILE_KV"] = str(run_dir / "discovery")
    else:
        env["ETCD_ENDPOINTS"] = ",".join(cfg.discovery.etcd_endpoints)
    env["DYN_LEASE_TTL_SECS"] = f"{cfg.discovery.lease_ttl_s:g}"
    return env


def tokenizer_path(cfg: LaunchConfig) -> str | None:
    """The model's own tokenizer; with the mock engine and no local model, the tiny
    model's, so any recipe runs on a laptop."""
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if cfg.engine.kind is EngineKind.mock and not Path(cfg.model.path).is_dir():
        return package_path(TINY_TOKENIZER)
    return None


def _node_host(cfg: LaunchConfig, node: int) -> str:
    """A node's address; with the mock engine (or no hosts given) every node is here."""
    if cfg.engine.kind is EngineKind.mock or not cfg.cluster.hosts:
        return "127.0.0.1"
    return cfg.cluster.hosts[node]


def _reachable(bind_host: str, node_host: str = "127.0.0.1") -> str:
    """Where to dial a listener bound to `bind_host`."""
    return node_host if bind_host in ("0.0.0.0", "::", "*") else bind_host
