"""The KV router's prefix index: which (worker, DP rank) holds which cached prefix.

Blocks are keyed by sequence hash (`hashing.sequence_hashes`), so one key stands for
one whole prefix and a lookup walks the request's hashes from the first page until
nobody holds the next one. Each slot gets a bit; each key maps to the mask of the
slots holding it, so the walk sees with one integer comparison that a page is held
by the same slots as the page before (the common case: a radix cache holds a block
only with its parent), and only the depths where the set shrinks cost more. A block
costs one dict entry and an int, no object of its own for the garbage collector to
walk: with a million blocks that is what keeps applying events fast.

`PrefixIndex` is fed by KV events (stored / removed / cleared per slot, as the
workers' relays publish them). `ApproximateIndex` has no events: what was routed is
assumed cached for a TTL, and the oldest entries go when it grows past its size.
"""

from __future__ import annotations

import time
from collections import OrderedDict

Slot = tuple[int, int]  # (instance id, DP rank)

OK, BLOCK_NOT_FOUND = "ok", "block_not_found"


class PrefixIndex:
    def __init__(self) -> None:
        self._nodes: dict[int, int] = {}  # hash -> mask of the slots holding it
        self._held: dict[Slot, set[int]] = {}  # slot -> the hashes it holds
        self._bits: dict[Slot, int] = {}  # slot -> its mask (one bit)
        self._slots: dict[int, Slot] = {}  # bit number -> slot
        self._free: list[int] = []  # bit numbers of cleared slots, reused to keep masks short

    def __len__(self) -> int:
        return len(self._nodes)

    def blocks(self, slot: Slot) -> int:
        return len(self._held.get(slot, ()))

    def stored(self, slot: Slot, hashes: list[int]) -> None:
        bit = self._bits.get(slot)
        if bit is None:
            bit = self._join(slot)
        self._held[slot].update(hashes)
        nodes = self._nodes
        get = nodes.get
        for h in hashes:
            nodes[h] = get(h, 0) | bit

    def removed(self, slot: Slot, hashes: list[int]) -> int:
        """Returns how many of `hashes` the slot did not hold (block_not_found)."""
        held = self._held.get(slot)
        if held is None:
            return len(hashes)
        nodes, others = self._nodes, ~self._bits[slot]
        missing = 0
        for h in hashes:
            if h not in held:
                missing += 1
                continue
            held.remove(h)
            mask = nodes[h] & others
            if mask:
                nodes[h] = mask
            else:
                del nodes[h]
        return missing

    def cleared(self, slot: Slot) -> None:
        if slot not in self._held:
            return
        self.removed(slot, list(self._held[slot]))
        del self._held[slot]
        number = self._bits.pop(slot).bit_length() - 1
        del self._slots[number]
        self._free.append(number)

    def forget(self, instance_id: int) -> None:
        """Drop every DP rank of a worker that left."""
        for slot in [s for s in self._held if s[0] == instance_id]:
            self.cleared(slot)

    def overlaps(self, hashes: list[int]) -> dict[Slot, int]:
        """For every slot holding the first page: how many leading pages it holds."""
        nodes = self._nodes
        depth = 0
        active = 0
        result: dict[Slot, int] = {}
        for h in hashes:
            mask = nodes.get(h)
            if mask is None:
                break
            if depth == 0:
                active = mask
            elif mask != active:
                kept = active & mask
                self._record(active ^ kept, depth, result)
                if not kept:
                    return result
                active = kept
            depth += 1
        self._record(active, depth, result)
        return result

    def _join(self, slot: Slot) -> int:
        number = self._free.pop() if self._free else len(self._slots)
        self._slots[number] = slot
        self._held[slot] = set()
        bit = self._bits[slot] = 1 << number
        return bit

    def _record(self, mask: int, depth: int, result: dict[Slot, int]) -> None:
        slots = self._slots
        while mask:
            low = mask & -mask
            result[slots[low.bit_length() - 1]] = depth
            mask ^= low


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
