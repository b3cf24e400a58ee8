"""Checks on a typed config that must pass before anything is planned or started.

Each failure is a ConfigError naming the key, the reason and a hint. Checks that
need the plan's arithmetic (GPUs, ports) happen while planning, in the same way.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config.schema import LaunchConfig, WorkerGroupConfig
from orchestrator.errors import ConfigError
from orchestrator.plan.argv import SECTION_FLAGS, check_flag_map
from orchestrator.roles import EngineKind, RouterMode, WorkerType

DRY_RUN_VALUES = {False: None, None: None, "false": None, True: "table", "true": "table", "table": "table", "json": "json"}
GENERATE_TYPES = (WorkerType.aggregated, WorkerType.prefill, WorkerType.decode)


def dry_run_mode(value) -> str | None:
    """None (launch), "table" or "json"."""
    key = value.lower() if isinstance(value, str) else value
    if key not in DRY_RUN_VALUES:
        raise ConfigError("dry_run", f"unknown value {value!r}", "use dry_run=true (a table) or dry_run=json")
    return DRY_RUN_VALUES[key]


def validate(cfg: LaunchConfig) -> None:
    dry_run_mode(cfg.dry_run)
    groups = cfg.deployment.groups
    if not any(g.replicas for g in groups.values()):
        raise ConfigError("deployment.groups", "no worker replicas to run", "select a deployment, e.g. deployment=agg")
    check_flag_map(cfg.model.sglang, "model.sglang")
    for name, group in groups.items():
        _check_group(name, group)
    _check_disagg(cfg)
    _check_router(cfg)
    _check_engine(cfg)
    _check_cluster(cfg)


def _check_group(name: str, group: WorkerGroupConfig) -> None:
    key = f"deployment.groups.{name}"
    if group.replicas < 0:
        raise ConfigError(f"{key}.replicas", f"must be >= 0, got {group.replicas}")
    for field in ("tp", "dp", "attn_dp", "pp"):
        if getattr(group, field) < 1:
            raise ConfigError(f"{key}.{field}", f"must be >= 1, got {getattr(group, field)}")
    if group.tp % group.attn_dp:
        raise ConfigError(
            f"{key}.attn_dp", f"{group.attn_dp} attention-DP ranks must divide tp={group.tp}", "attention-DP splits the TP group"
        )
    check_flag_map(group.sglang, f"{key}.sglang", name)


def _check_disagg(cfg: LaunchConfig) -> None:
    groups = cfg.deployment.groups
    types = {g.type for g in groups.values() if g.replicas}
    if WorkerType.prefill in types and WorkerType.decode not in types:
        raise ConfigError("deployment.groups", "a prefill group needs a decode group", "add one, e.g. deployment=disagg")
    if WorkerType.decode in types and WorkerType.prefill not in types:
        raise ConfigError("deployment.groups", "a decode group needs a prefill group", "add one, e.g. deployment=disagg")
    for role, section in cfg.disagg.items():
        if not isinstance(section, dict):
            raise ConfigError(f"disagg.{role}", "a section must map SGLang flags to values")
        check_flag_map(section, f"disagg.{role}", allowed=SECTION_FLAGS)
    for name, group in groups.items():
        key = f"deployment.groups.{name}.disagg_key"
        if group.disagg_key is None:
            if group.type in (WorkerType.prefill, WorkerType.decode) and cfg.disagg:
                raise ConfigError(
                    key,
                    f"a {group.type.value} worker gets --disagg-config without --disagg-config-key",
                    f"set it to one of {sorted(cfg.disagg)}",
                )
            continue
        if not cfg.disagg:
            raise ConfigError(
                key,
                f"--disagg-config-key {group.disagg_key} without --disagg-config: the disagg group is empty",
                "select one, e.g. disagg=nixl",
            )
        if group.disagg_key not in cfg.disagg:
            raise ConfigError(
                key, f"no section {group.disagg_key!r} in the disagg file", f"available: {', '.join(sorted(cfg.disagg))}"
            )


def _check_router(cfg: LaunchConfig) -> None:
    if cfg.router.mode is not RouterMode.kv:
        return
    if (cfg.deployment.page_size or 1) <= 1:
        raise ConfigError(
            "deployment.page_size",
            "KV routing with page size 1 makes every token a block",
            "set deployment.page_size=16 (or 32, 64)",
        )
    if cfg.router.busy_policy not in ("reject", "queue"):
        raise ConfigError("router.busy_policy", f"unknown policy {cfg.router.busy_policy!r}", "use reject or queue")
    if not cfg.router.use_kv_events:
        return
    for name, group in cfg.deployment.groups.items():
        if group.replicas and group.type in (WorkerType.aggregated, WorkerType.prefill) and not group.kv_events:
            raise ConfigError(
                f"deployment.groups.{name}.kv_events",
                "router=kv needs KV events from this group",
                f"set deployment.groups.{name}.kv_events=true, or router.use_kv_events=false for approximate routing",
            )


def _check_engine(cfg: LaunchConfig) -> None:
    if cfg.engine.kind is not EngineKind.sglang:
        return
    if not Path(cfg.model.path).exists():
        raise ConfigError(
            "model.path",
            f"{cfg.model.path} does not exist and the sglang engine needs the weights",
            "point model.path at the downloaded model, or run engine=mock",
        )


def _check_cluster(cfg: LaunchConfig) -> None:
    c = cfg.cluster
    if c.nodes < 1 or c.gpus_per_node < 1:
        raise ConfigError("cluster", f"needs at least one node and one GPU, got {c.nodes} x {c.gpus_per_node}")
    if c.hosts and len(c.hosts) != c.nodes:
        raise ConfigError("cluster.hosts", f"{len(c.hosts)} addresses for {c.nodes} nodes", "give one address per node")
    if cfg.engine.kind is EngineKind.sglang and c.nodes > 1 and not c.hosts:
        raise ConfigError(
            "cluster.hosts",
            f"the sglang engine on {c.nodes} nodes needs their addresses",
            "cluster.hosts=[node0,node1,...]",
        )
    if cfg.discovery.backend not in ("file", "etcd"):
        raise ConfigError("discovery.backend", f"unknown backend {cfg.discovery.backend!r}", "use file or etcd")
    if c.nodes > 1 and cfg.engine.kind is EngineKind.sglang and cfg.discovery.backend == "file":
        raise ConfigError("discovery.backend", "file discovery cannot span machines", "use discovery.backend=etcd")
