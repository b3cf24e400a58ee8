"""The KV router's prefix index: which (worker, DP rank) holds which cached prefix.

Blocks are keyed by sequence hash (`hashing.sequence_hashes`), so one key stands for
one whole prefix and a lookup walks the request's hashes from the first page until
nobody holds the next one, narrowing the set of slots holding every page so far; a
slot leaves the set at the depth of its overlap. `PrefixIndex` is native
(`_index.c`): one open-addressing table from hash to the sorted numbers of the slots
holding it, the one holder inline when there is one. A million blocks are no
Python objects for the garbage collector to walk, and an event costs a probe per
block, not a few dict and set operations.

`PrefixIndex` is fed by KV events (stored / removed / cleared per slot, as the
workers' relays publish them). `ApproximateIndex` has no events: what was routed is
assumed cached for a TTL, and the oldest entries go when it grows past its size.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from orchestrator.router._index import PrefixIndex

Slot = tuple[int, int]  # (instance id, DP rank)

OK, BLOCK_NOT_FOUND = "ok", "block_not_found"


class ApproximateIndex(PrefixIndex):
    """No KV events: a routed prefix is assumed cached on its slot for `ttl_s`
    (refreshed when routed again); past `max_blocks` entries the oldest go first."""

    def __init__(self, ttl_s: float = 120.0, max_blocks: int = 2**20, clock=time.monotonic) -> None:
        super().__init__()
        self.ttl_s, self.max_blocks, self._clock = ttl_s, max_blocks, clock
        self._expiry: OrderedDict[tuple[Slot, int], float] = OrderedDict()

    def routed(self, slot: Slot, hashes: list[int]) -> None:
        expires = self._clock() + self.ttl_s
        for h in hashes:
            key = (slot, h)
            if key in self._expiry:
                self._expiry.move_to_end(key)
            self._expiry[key] = expires
        self.stored(slot, hashes)
        self.prune()

    def overlaps(self, hashes: list[int]) -> dict[Slot, int]:
        self.prune()
        return super().overlaps(hashes)

    def prune(self) -> None:
        now = self._clock()
        while self._expiry:
            (slot, h), expires = next(iter(self._expiry.items()))
            if expires > now and len(self._expiry) <= self.max_blocks:
                return
            del self._expiry[(slot, h)]
            self.removed(slot, [h])

    def cleared(self, slot: Slot) -> None:
        super().cleared(slot)
        for key in [k for k in self._expiry if k[0] == slot]:
            del self._expiry[key]
