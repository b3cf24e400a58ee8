"""The router interface and the policies that need no KV knowledge.

A router sees the request's token ids and the candidates that can serve it, each with
the load the frontend knows of (its own in-flight count, plus what the worker last
reported on the event plane), and picks one. The KV-aware policy implements the same
interface with its prefix index.
"""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from orchestrator.roles import RouterMode


@dataclass(frozen=True)
class Candidate:
    instance_id: int
    dp_rank: int | None = None  # None: let the engine balance its ranks
    inflight: int = 0  # requests this frontend has in flight there
    active_decode_blocks: int = 0  # from the worker's last load report
    kv_usage: float = 0.0


class Router(ABC):
    @abstractmethod
    def choose(self, token_ids: list[int], candidates: list[Candidate]) -> Candidate:
        """`candidates` is never empty."""


class RoundRobinRouter(Router):
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, token_ids, candidates):
        ordered = sorted(candidates, key=lambda c: (c.instance_id, c.dp_rank or 0))
        return ordered[next(self._turn) % len(ordered)]


class RandomRouter(Router):
    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, token_ids, candidates):
        return self._random.choice(candidates)


class LeastLoadedRouter(Router):
    """Fewest requests in flight from here, then the least reported decode load; ties at random."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, token_ids, candidates):
        best = min((c.inflight, c.active_decode_blocks) for c in candidates)
        return self._random.choice([c for c in candidates if (c.inflight, c.active_decode_blocks) == best])


def make_router(mode: RouterMode) -> Router:
    routers = {
        RouterMode.round_robin: RoundRobinRouter,
        RouterMode.random: RandomRouter,
        RouterMode.least_loaded: LeastLoadedRouter,
    }
    if mode not in routers:
        raise ValueError(f"router mode {mode.value!r} is not available; use one of "
                         f"{', '.join(m.value for m in routers)}")
    return routers[mode]()
