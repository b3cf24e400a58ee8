"""The frontend's command line (Dynamo's flag names; each also reads a DYN_* variable)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping

from orchestrator.envflags import env_flag_adder
from orchestrator.planes.discovery import DISCOVERY_ENV_NAMES, DiscoveryArgs, add_discovery_flags
from orchestrator.roles import ChatProcessor, RouterMode

FRONTEND_ENV_NAMES = {
    **DISCOVERY_ENV_NAMES,
    "router-kv-overlap-score-weight": "DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT",
    "router-temperature": "DYN_ROUTER_TEMPERATURE",
    "router-kv-events": "DYN_ROUTER_KV_EVENTS",
    "router-ttl-secs": "DYN_ROUTER_TTL_SECS",
    "active-decode-blocks-threshold": "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD",
    "active-prefill-tokens-threshold": "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD",
    "router-busy-policy": "DYN_ROUTER_BUSY_POLICY",
}


@dataclass(frozen=True)
class FrontendArgs:
    http_host: str
    http_port: int
    namespace: str
    router_mode: RouterMode
    router_kv_overlap_score_weight: float
    router_temperature: float
    router_kv_events: bool
    router_ttl_secs: float
    active_decode_blocks_threshold: float
    active_prefill_tokens_threshold: int
    router_busy_policy: str
    migration_limit: int
    chat_processor: ChatProcessor
    discovery: DiscoveryArgs


def parse_frontend_args(argv: list[str], environ: Mapping[str, str] | None = None) -> FrontendArgs:
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m orchestrator.frontend", allow_abbrev=False)
    a = env_flag_adder(p, environ, FRONTEND_ENV_NAMES)
    a("http-host", default="127.0.0.1")
    a("http-port", type=int, default=8000)
    a("namespace", default="dynamo")
    a("router-mode", default=RouterMode.round_robin.value, choices=[m.value for m in RouterMode])
    a("router-kv-overlap-score-weight", type=float, default=1.0)
    a("router-temperature", type=float, default=0.0)
    a("router-kv-events", flag=True, default=True, help="off: approximate KV routing")
    a("router-ttl-secs", type=float, default=120.0, help="approximate mode: how long a routed prefix counts as cached")
    a("active-decode-blocks-threshold", type=float, default=1.0,
      help="a DP rank using more than this fraction of its KV pool is busy")
    a("active-prefill-tokens-threshold", type=int, default=10_000_000,
      help="a DP rank with more prompt tokens queued than this is busy")
    a("router-busy-policy", default="reject", choices=["reject", "queue"],
      help="when every worker is busy: answer 503, or wait for one to free up")
    a("migration-limit", type=int, default=0, help="times a request may move to another worker")
    a("dyn-chat-processor", default=ChatProcessor.dynamo.value, choices=[c.value for c in ChatProcessor])
    add_discovery_flags(a)
    ns = p.parse_args(argv)
    _check_available(ns)
    return FrontendArgs(
        http_host=ns.http_host,
        http_port=ns.http_port,
        namespace=ns.namespace,
        router_mode=RouterMode(ns.router_mode),
        router_kv_overlap_score_weight=ns.router_kv_overlap_score_weight,
        router_temperature=ns.router_temperature,
        router_kv_events=ns.router_kv_events,
        router_ttl_secs=ns.router_ttl_secs,
        active_decode_blocks_threshold=ns.active_decode_blocks_threshold,
        active_prefill_tokens_threshold=ns.active_prefill_tokens_threshold,
        router_busy_policy=ns.router_busy_policy,
        migration_limit=ns.migration_limit,
        chat_processor=ChatProcessor(ns.dyn_chat_processor),
        discovery=DiscoveryArgs.from_flags(ns),
    )


def _check_available(ns: argparse.Namespace) -> None:
    """Refuse, by name, what this frontend cannot do rather than quietly doing something else."""
    if ns.dyn_chat_processor == ChatProcessor.sglang.value:
        from orchestrator.frontend.preprocess.sglang_processor import require_sglang

        require_sglang()  # imports SGLang only in this mode; its ConfigError names why SGLang does not import
