"""Turning config into command lines: which SGLang flags a flag map may set (the
plan renders the rest from typed config), and the module a process runs. Flag maps
become tokens by SGLang's own rule (`orchestrator.sglang_config`)."""

from __future__ import annotations

import sys
from typing import Any, Mapping

from orchestrator.errors import ConfigError

# SGLang flags the plan itself renders from typed config; a flag map may not set them.
PLAN_OWNED_FLAGS: dict[str, str] = {
    "model-path": "model.path",
    "model": "model.path",
    "served-model-name": "model.served_name",
    "tokenizer-path": "model.tokenizer",
    "context-length": "model.context_length",
    "kv-cache-dtype": "model.kv_dtype",
    "tp-size": "deployment.groups.<group>.tp",
    "tensor-parallel-size": "deployment.groups.<group>.tp",
    "dp-size": "deployment.groups.<group>.dp",
    "data-parallel-size": "deployment.groups.<group>.dp",
    "attn-dp-size": "deployment.groups.<group>.attn_dp",
    "attention-data-parallel-size": "deployment.groups.<group>.attn_dp",
    "enable-dp-attention": "deployment.groups.<group>.attn_dp",
    "pp-size": "deployment.groups.<group>.pp",
    "pipeline-parallel-size": "deployment.groups.<group>.pp",
    "page-size": "deployment.page_size",
    "host": "cluster.listen_host",
    "port": "ports.sglang_base",
    "nnodes": "cluster.nodes",
    "node-rank": "cluster.nodes",
    "dist-init-addr": "cluster.hosts",
    "disaggregation-mode": "deployment.groups.<group>.type",
    "kv-events-config": "deployment.groups.<group>.kv_events",
    "skip-tokenizer-init": "tokenizer",
    "is-embedding": "deployment.groups.<group>.type (embedding)",
    "config": "disagg",
    "disagg-config": "disagg",
    "disagg-config-key": "deployment.groups.<group>.disagg_key",
}

# Of those, what a disagg section may still set (it is the base of the per-replica port).
SECTION_FLAGS = {"disaggregation-bootstrap-port"}


def check_flag_map(flags: Mapping[str, Any], where: str, group: str | None = None, allowed=frozenset()) -> None:
    for key in flags:
        if key.startswith("-") or "_" in key or " " in key:
            raise ConfigError(
                f"{where}.{key}",
                "SGLang flags are written as their dashed names without leading dashes",
                f"write {key.lstrip('-').replace('_', '-')}",
            )
        if key in PLAN_OWNED_FLAGS and key not in allowed:
            owner = PLAN_OWNED_FLAGS[key].replace("<group>", group or "<group>")
            raise ConfigError(f"{where}.{key}", "is set by the launch plan", f"set {owner} instead")


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]
