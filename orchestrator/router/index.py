"""The KV router's prefix index: which (worker, DP rank) holds which cached prefix.

Blocks are keyed by sequence hash (`hashing.sequence_hashes`), so one key stands for
one whole prefix and a lookup walks the request's hashes from the first page until
nobody holds the next one. Each key maps to a `_Holders`: the set of slots holding it
and an XOR of the slots' random tags, which lets the walk see in O(1) that a page is
held by the same slots as the page before (the common case: a radix cache holds a
block only with its parent), so only the depths where the set shrinks cost a set
intersection.

`PrefixIndex` is fed by KV events (stored / removed / cleared per slot, as the
workers' relays publish them). `ApproximateIndex` has no events: what was routed is
assumed cached for a TTL, and the oldest entries go when it grows past its size.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict

Slot = tuple[int, int]  # (instance id, DP rank)

OK, BLOCK_NOT_FOUND = "ok", "block_not_found"


class _Holders:
    __slots__ = ("slots", "tag")

    def __init__(self) -> None:
        self.slots: set[Slot] = set()
        self.tag = 0


class PrefixIndex:
    def __init__(self) -> None:
        self._nodes: dict[int, _Holders] = {}
        self._held: dict[Slot, set[int]] = {}  # slot -> the hashes it holds
        self._tags: dict[Slot, int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def blocks(self, slot: Slot) -> int:
        return len(self._held.get(slot, ()))

    def stored(self, slot: Slot, hashes: list[int]) -> None:
        held = self._held.get(slot)
        if held is None:
            held = self._held[slot] = set()
            self._tags[slot] = random.getrandbits(64)
        tag, nodes = self._tags[slot], self._nodes
        for h in hashes:
            if h in held:
                continue
            held.add(h)
            node = nodes.get(h)
            if node is None:
                node = nodes[h] = _Holders()
            node.slots.add(slot)
            node.tag ^= tag

    def removed(self, slot: Slot, hashes: list[int]) -> int:
        """Returns how many of `hashes` the slot did not hold (block_not_found)."""
        held = self._held.get(slot)
        missing = 0
        for h in hashes:
            if held is None or h not in held:
                missing += 1
                continue
            held.discard(h)
            self._drop(slot, h)
        return missing

    def cleared(self, slot: Slot) -> None:
        for h in self._held.pop(slot, ()):
            self._drop(slot, h)
        self._tags.pop(slot, None)

    def forget(self, instance_id: int) -> None:
        """Drop every DP rank of a worker that left."""
        for slot in [s for s in self._held if s[0] == instance_id]:
            self.cleared(slot)

    def overlaps(self, hashes: list[int]) -> dict[Slot, int]:
        """For every slot holding the first page: how many leading pages it holds."""
        nodes = self._nodes
        depth = 0
        active: set[Slot] = set()
        tag = 0
        result: dict[Slot, int] = {}
        for h in hashes:
            node = nodes.get(h)
            if node is None:
                break
            if depth == 0:
                active, tag = set(node.slots), node.tag
            elif node.tag != tag:
                kept = active & node.slots
                for slot in active - kept:
                    result[slot] = depth
                if not kept:
                    return result
                active = kept
                tag = 0
                for slot in kept:
                    tag ^= self._tags[slot]
            depth += 1
        for slot in active:
            result[slot] = depth
        return result

    def _drop(self, slot: Slot, h: int) -> None:
        node = self._nodes[h]
        node.slots.discard(slot)
        node.tag ^= self._tags[slot]
        if not node.slots:
            del self._nodes[h]


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
