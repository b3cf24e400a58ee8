"""The KV-aware policy: send a request where its prefix is cached, weighed against load.

For each candidate (worker, DP rank) the cost is Dynamo's:

    overlap_score_weight x prefill blocks + decode blocks

prefill blocks = the request's blocks not cached there plus the prefill already queued
there (in blocks); decode blocks = the KV blocks its running requests hold, this one
included. At temperature 0 the cheapest wins, ties to the less loaded, then at random;
above 0 the costs (scaled to their range) are sampled through a softmax. A candidate
over a busy threshold (KV usage, queued prefill tokens) is not eligible; when none is,
`RouterBusy` says so and the caller rejects or queues the request.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace

from orchestrator.router.base import Candidate, Router, RouterBusy
from orchestrator.router.hashing import sequence_hashes
from orchestrator.router.index import ApproximateIndex, PrefixIndex


@dataclass(frozen=True)
class KvPolicy:
    overlap_score_weight: float = 1.0
    temperature: float = 0.0
    use_kv_events: bool = True  # False: approximate mode
    ttl_s: float = 120.0  # approximate mode: how long a routed prefix counts as cached
    max_tree_blocks: int = 2**20  # approximate mode: entries kept at most
    busy_kv_usage: float = 1.0  # a rank above this fraction of its KV pool is busy
    busy_prefill_tokens: int = 10_000_000  # ... or with more prompt tokens queued


class KvRouter(Router):
    per_rank = True

    def __init__(self, policy: KvPolicy = KvPolicy(), metrics=None, seed: int | None = None) -> None:
        self.policy, self.metrics = policy, metrics
        self.index: PrefixIndex = (
            PrefixIndex() if policy.use_kv_events else ApproximateIndex(policy.ttl_s, policy.max_tree_blocks)
        )
        self._random = random.Random(seed)

    def choose(self, token_ids, candidates, page_size=1, overlap_score_weight=None):
        started = time.perf_counter()
        p = self.policy
        eligible = [c for c in candidates if c.kv_usage <= p.busy_kv_usage and c.prefill_tokens <= p.busy_prefill_tokens]
        if not eligible:
            raise RouterBusy(f"all {len(candidates)} candidates are over their busy thresholds")
        hashes = sequence_hashes(token_ids, page_size)
        overlaps = self.index.overlaps(hashes)
        weight = p.overlap_score_weight if overlap_score_weight is None else overlap_score_weight
        blocks = -(-len(token_ids) // page_size)
        scored = []
        for c in eligible:
            overlap = overlaps.get((c.instance_id, c.dp_rank or 0), 0)
            prefill = blocks - overlap + c.prefill_tokens / page_size
            decode = c.active_decode_blocks + blocks
            scored.append((weight * prefill + decode, overlap, c))
        _, overlap, chosen = self._pick(scored)
        if isinstance(self.index, ApproximateIndex):
            self.index.routed((chosen.instance_id, chosen.dp_rank or 0), hashes)
        if self.metrics is not None:
            self.metrics.routed(time.perf_counter() - started, overlap, len(hashes))
        return replace(chosen, overlap_blocks=overlap)

    def _pick(self, scored: list[tuple[float, int, Candidate]]) -> tuple[float, int, Candidate]:
        if self.policy.temperature <= 0 or len(scored) == 1:
            best = min(cost for cost, _, _ in scored)
            tied = [s for s in scored if s[0] == best]
            least = min(_load(c) for _, _, c in tied)
            return self._random.choice([s for s in tied if _load(s[2]) == least])
        costs = [cost for cost, _, _ in scored]
        low, span = min(costs), (max(costs) - min(costs)) or 1.0
        weights = [math.exp(-((cost - low) / span) / self.policy.temperature) for cost in costs]
        return self._random.choices(scored, weights)[0]


def _load(c: Candidate) -> tuple[int, int]:
    return c.active_decode_blocks, c.inflight
