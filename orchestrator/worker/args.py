"""The worker's command line: our flags on top of SGLang's native ones.

Ours are read first (each also from a `DYN_*` variable; the command line wins);
what remains is SGLang's. `--disagg-config FILE --disagg-config-key KEY` select one
section of a YAML file, written to a temp YAML and handed to SGLang's parser as
`--config` (the command line still wins over it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from orchestrator.errors import ConfigError
from orchestrator.roles import EngineKind, WorkerType
from orchestrator.envflags import env_flag_adder
from orchestrator.planes.discovery import DISCOVERY_ENV_NAMES, DiscoveryArgs, add_discovery_flags
from orchestrator.worker import sglang_flags


# Dynamo's variable names where it has one.
WORKER_ENV_NAMES = {
    "use-sglang-tokenizer": "DYN_SGL_USE_TOKENIZER",
    "embedding-worker": "DYN_SGL_EMBEDDING_WORKER",
    "disagg-config": "DYN_SGL_DISAGG_CONFIG",
    "disagg-config-key": "DYN_SGL_DISAGG_CONFIG_KEY",
    **DISCOVERY_ENV_NAMES,
    "system-host": "DYN_SYSTEM_HOST",
    "system-port": "DYN_SYSTEM_PORT",
    "health-check": "DYN_HEALTH_CHECK_ENABLED",
    "canary-wait-time": "DYN_CANARY_WAIT_TIME",
    "health-check-timeout": "DYN_HEALTH_CHECK_REQUEST_TIMEOUT",
    "drain-timeout": "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS",
}


@dataclass(frozen=True)
class WorkerArgs:
    worker_type: WorkerType
    namespace: str
    component: str
    endpoint: str
    engine: EngineKind
    request_port: int
    event_port: int
    advertise_host: str
    system_host: str
    system_port: int  # -1: no system server
    discovery: DiscoveryArgs
    tool_call_parser: str | None
    reasoning_parser: str | None
    use_sglang_tokenizer: bool
    health_check: bool
    canary_wait_time: float
    health_check_timeout: float
    drain_timeout: float
    mock: dict[str, Any]  # --mock-* values by field name (None: take from the model's config.json)
    sglang: Any  # SGLang's ServerArgs, or the mock's namespace with the same field names
    sglang_argv: list[str]  # SGLang's arguments after the disagg section was merged


# The simulator's model and GPU numbers; None falls back to the model's config.json.
MOCK_FLAGS: dict[str, type] = {
    "num_params": int,
    "active_params": int,
    "hidden_size": int,
    "num_layers": int,
    "num_kv_heads": int,
    "head_dim": int,
    "mla": bool,
    "weight_dtype": str,
    "gpu_memory_gb": float,
    "gpu_tflops": float,
    "gpu_bandwidth_tbs": float,
    "kv_link_gbs": float,
    "speedup_ratio": float,
    "prefill_efficiency": float,
    "decode_efficiency": float,
    "step_overhead_ms": float,
    "echo": bool,
}


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.worker", allow_abbrev=False)
    a = env_flag_adder(p, environ, WORKER_ENV_NAMES)
    a("namespace", default="dynamo")
    a("component", help="discovery component (default: by worker type)")
    a("endpoint", default="generate")
    a("engine", default=EngineKind.mock.value, choices=[e.value for e in EngineKind])
    a("embedding-worker", flag=True)
    a("disagg-config")
    a("disagg-config-key")
    a("use-sglang-tokenizer", flag=True)
    a("request-port", type=int, default=0, help="request plane (0: any free port)")
    a("event-port", type=int, default=0, help="event plane (0: any free port)")
    a("advertise-host", default="127.0.0.1", help="the address other processes dial")
    a("system-host", default="127.0.0.1")
    a("system-port", type=int, default=-1, help="health and metrics server (-1: off, 0: any port)")
    add_discovery_flags(a)
    a("dyn-tool-call-parser")
    a("dyn-reasoning-parser")
    a("health-check", flag=True, default=True, help="run the idle canary that drives /health")
    a("canary-wait-time", type=float, default=10.0)
    a("health-check-timeout", type=float, default=3.0)
    a("drain-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    for name, kind in MOCK_FLAGS.items():
        a(f"mock-{name.replace('_', '-')}", flag=kind is bool, type=None if kind is bool else kind)
    return p


def parse_worker_args(argv: list[str], environ: Mapping[str, str] | None = None) -> WorkerArgs:
    environ = os.environ if environ is None else environ
    ours, rest = _parser(environ).parse_known_args(argv)
    if (ours.disagg_config is None) != (ours.disagg_config_key is None):
        raise ConfigError(
            "--disagg-config", "--disagg-config and --disagg-config-key go together", "give both or neither"
        )
    if ours.use_sglang_tokenizer:
        warnings.warn(
            "--use-sglang-tokenizer is deprecated: run the frontend with --dyn-chat-processor sglang",
            FutureWarning,
            stacklevel=2,
        )
    sglang_argv = _with_disagg_section(rest, ours.disagg_config, ours.disagg_config_key)
    try:
        server_args = sglang_flags.parse_with_sglang(sglang_argv) or sglang_flags.parse_mock(sglang_argv)
    finally:
        if ours.disagg_config:
            Path(sglang_argv[sglang_argv.index("--config") + 1]).unlink(missing_ok=True)
    worker_type = _worker_type(server_args, ours.embedding_worker)
    return WorkerArgs(
        worker_type=worker_type,
        namespace=ours.namespace,
        component=ours.component or _default_component(worker_type),
        endpoint=ours.endpoint,
        engine=EngineKind(ours.engine),
        request_port=ours.request_port,
        event_port=ours.event_port,
        advertise_host=ours.advertise_host,
        system_host=ours.system_host,
        system_port=ours.system_port,
        discovery=DiscoveryArgs.from_flags(ours),
        tool_call_parser=ours.dyn_tool_call_parser,
        reasoning_parser=ours.dyn_reasoning_parser,
        use_sglang_tokenizer=ours.use_sglang_tokenizer,
        health_check=ours.health_check,
        canary_wait_time=ours.canary_wait_time,
        health_check_timeout=ours.health_check_timeout,
        drain_timeout=ours.drain_timeout,
        mock={name: getattr(ours, f"mock_{name}") for name in MOCK_FLAGS},
        sglang=server_args,
        sglang_argv=sglang_argv,
    )


def _with_disagg_section(argv: list[str], path: str | None, key: str | None) -> list[str]:
    """Select the section, write it to a temp YAML, and pass it as SGLang's `--config`
    (replacing one the user gave, as Dynamo does)."""
    if path is None:
        return argv
    try:
        sections = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError("--disagg-config", f"cannot read {path}: {e.strerror}") from None
    if not isinstance(sections, dict):
        raise ConfigError("--disagg-config", f"{path} must map section names to SGLang flags")
    if key not in sections:
        raise ConfigError("--disagg-config-key", f"no section {key!r} in {path}", f"available: {', '.join(sorted(sections))}")
    if not isinstance(sections[key], dict):
        raise ConfigError("--disagg-config-key", f"section {key!r} of {path} is not a mapping of SGLang flags")
    fd, temp = tempfile.mkstemp(prefix="dynamo_config_", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(sections[key], f)
    argv = list(argv)
    while "--config" in argv:
        i = argv.index("--config")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--config=")]
    return argv + ["--config", temp]


def _worker_type(server_args: Any, embedding_worker: bool) -> WorkerType:
    if embedding_worker:
        return WorkerType.embedding
    mode = getattr(server_args, "disaggregation_mode", "null") or "null"
    return {"prefill": WorkerType.prefill, "decode": WorkerType.decode}.get(mode, WorkerType.aggregated)


def _default_component(worker_type: WorkerType) -> str:
    return "prefill" if worker_type is WorkerType.prefill else "backend"
