"""The router interface and the policies that need no KV knowledge.

A router sees the request's token ids and the candidates that can serve it, each with
the load the frontend knows of (its own in-flight count, plus what the worker last
reported on the event plane), and picks one. A router with `per_rank` gets one
candidate per DP rank and its choice names the rank; the others get one per worker
and leave the rank to the engine. The KV-aware policy (`router.kv`) implements the
same interface with its prefix index.
"""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass



@dataclass(frozen=True)
class Candidate:
    instance_id: int
    dp_rank: int | None = None  # None: let the engine balance its ranks
    inflight: int = 0  # requests this frontend has in flight there
    active_decode_blocks: int = 0  # held by its running requests (reported, or tracked here)
    kv_usage: float = 0.0  # fraction of its KV pool in use, as reported
    prefill_tokens: int = 0  # prompt tokens queued there, not yet prefilled
    overlap_blocks: int = 0  # set by the KV router on its choice: prefix blocks cached there


class RouterBusy(Exception):
    """Every candidate is over a busy threshold."""


class Router(ABC):
    per_rank = False

    @abstractmethod
    def choose(self, token_ids: list[int], candidates: list[Candidate], page_size: int = 1,
               overlap_score_weight: float | None = None) -> Candidate:
        """`candidates` is never empty. `page_size` and `overlap_score_weight` (an
        override of the configured weight) matter to the KV router only."""


class RoundRobinRouter(Router):
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, token_ids, candidates, page_size=1, overlap_score_weight=None):
        ordered = sorted(candidates, key=lambda c: (c.instance_id, c.dp_rank or 0))
        return ordered[next(self._turn) % len(ordered)]


class RandomRouter(Router):
    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, token_ids, candidates, page_size=1, overlap_score_weight=None):
        return self._random.choice(candidates)


class LeastLoadedRouter(Router):
    """Fewest requests in flight from here, then the least reported decode load; ties at random."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, token_ids, candidates, page_size=1, overlap_score_weight=None):
        best = min((c.inflight, c.active_decode_blocks) for c in candidates)
        return self._random.choice([c for c in candidates if (c.inflight, c.active_decode_blocks) == best])
