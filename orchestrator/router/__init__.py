"""Routing: which worker (and DP rank) serves a request."""

from orchestrator.roles import RouterMode
from orchestrator.router.base import Candidate, LeastLoadedRouter, RandomRouter, RoundRobinRouter, Router, RouterBusy
from orchestrator.router.kv import KvPolicy, KvRouter

__all__ = ["Candidate", "KvPolicy", "KvRouter", "Router", "RouterBusy", "make_router"]


def make_router(mode: RouterMode, kv_policy: KvPolicy | None = None, metrics=None) -> Router:
    if mode is RouterMode.kv:
        return KvRouter(kv_policy or KvPolicy(), metrics)
    return {
        RouterMode.round_robin: RoundRobinRouter,
        RouterMode.random: RandomRouter,
        RouterMode.least_loaded: LeastLoadedRouter,
    }[mode]()
