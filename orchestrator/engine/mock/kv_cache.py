"""The KV memory of one DP rank: a pool of fixed-size pages and the radix prefix
cache over it, as SGLang's `UnifiedRadixCache` keeps them, with the KV events it
publishes.

Only pages are simulated, never their contents: the pool is a count of free pages,
the tree holds token ids. A request holds a `KvSlot`: a locked path of the tree
(full pages it shares with others) plus private pages for the rest of its
sequence, including its trailing partial page. Finished (and chunk-prefilled)
sequences are inserted page-aligned, so later requests match them; pages nobody
locks are evictable, least recently used leaf first, and evicting a leaf may turn
its parent into an evictable leaf. `token_usage` counts evictable pages as free,
like SGLang's `(capacity - (available + evictable)) / capacity`.

Events follow SGLang's recorder: one `BlockStored` per new tree node with the
chained page hashes (the chain continues from the parent node's last page), one
`BlockRemoved` per evicted node, `AllBlocksCleared` on flush. They are collected
and handed to `on_events` when the scheduler calls `flush_events` once per step.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from orchestrator.engine.sglang_kv_events import (
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    digest_to_int64,
    page_digests,
)

KvEvent = BlockStored | BlockRemoved | AllBlocksCleared
EventSink = Callable[[list[KvEvent]], None]


class RadixNode:
    """A run of whole pages: `key` holds their tokens, `digests` their chained hashes."""

    __slots__ = ("key", "children", "parent", "lock_ref", "last_access", "digests")

    def __init__(self, key: list[int], parent: Optional[RadixNode], digests: list[bytes], last_access: int = 0):
        self.key = key
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = last_access
        self.digests = digests


@dataclass(frozen=True)
class PrefixMatch:
    node: RadixNode
    tokens: int  # page-aligned cached tokens


@dataclass
class KvSlot:
    """The KV of one request: the locked tree path ending at `node` covers the first
    `cached_tokens`; private pages cover the rest up to `tokens`."""

    node: RadixNode
    cached_tokens: int
    tokens: int


class KvCache:
    """Page pool plus radix tree of one DP rank. Not thread-safe; the rank's scheduler owns it."""

    def __init__(self, max_total_tokens: int, page_size: int, radix: bool = True, on_events: Optional[EventSink] = None):
        self.page_size = page_size
        self.total_pages = max_total_tokens // page_size
        self.radix = radix
        self._free_pages = self.total_pages
        self._root = RadixNode([], None, [])
        self._evictable = 0  # tokens in tree nodes nobody locks
        self._protected = 0  # tokens in locked tree nodes
        self._clock = 0  # logical time for LRU: deterministic, unlike a wall clock
        # SGLang's decode side and --disable-radix-cache run a ChunkCache, which records nothing.
        self._on_events = on_events if radix else None
        self._pending: list[KvEvent] = []

    # ---- accounting --------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.total_pages * self.page_size

    @property
    def free_tokens(self) -> int:
        return self._free_pages * self.page_size

    @property
    def evictable_tokens(self) -> int:
        return self._evictable

    @property
    def available_tokens(self) -> int:
        """What an allocation can get, evicting if it must."""
        return self.free_tokens + self._evictable

    @property
    def used_tokens(self) -> int:
        return self.capacity_tokens - self.available_tokens

    @property
    def token_usage(self) -> float:
        return self.used_tokens / self.capacity_tokens

    def pages(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    # ---- requests ----------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached page-aligned prefix, leaving at least the last token to
        compute (its forward pass produces the next token's logits)."""
        if not self.radix:
            return PrefixMatch(self._root, 0)
        usable = (len(tokens) - 1) // self.page_size * self.page_size
        node, matched = self._walk(tokens, usable)
        return PrefixMatch(node, matched)

    def open(self, match: PrefixMatch) -> KvSlot:
        """Lock the matched path for a request; its cached pages cost no allocation."""
        self._lock(match.node)
        return KvSlot(match.node, match.tokens, match.tokens)

    def grow(self, slot: KvSlot, tokens: int) -> bool:
        """Give `slot` KV for `tokens` in total, evicting if needed; False when the pool cannot."""
        need = self.pages(tokens) - self.pages(slot.tokens)
        if need > self._free_pages:
            self._evict(need - self._free_pages)
        if need > self._free_pages:
            return False
        self._free_pages -= max(need, 0)
        slot.tokens = max(slot.tokens, tokens)
        return True

    def cache(self, slot: KvSlot, computed: Sequence[int]) -> None:
        """Insert the full pages of the computed sequence so other requests can share
        them (SGLang's `cache_unfinished_req`); pages another request inserted first
        are freed from this slot, and the slot's lock moves to the new end."""
        if not self.radix:
            return
        full = len(computed) // self.page_size * self.page_size
        if full <= slot.cached_tokens:
            return
        node, present = self._insert(computed, full)
        self._free_pages += (present - slot.cached_tokens) // self.page_size
        self._lock(node)
        self._unlock(slot.node)
        slot.node, slot.cached_tokens = node, full

    def release(self, slot: KvSlot, computed: Optional[Sequence[int]] = None) -> None:
        """Free a request's KV; with `computed`, first insert its full pages (SGLang's
        `cache_finished_req`). Tree pages stay cached, unlocked and evictable."""
        if computed is not None:
            self.cache(slot, computed)
        self._free_pages += self.pages(slot.tokens) - slot.cached_tokens // self.page_size
        self._unlock(slot.node)
        slot.node, slot.cached_tokens, slot.tokens = self._root, 0, 0

    def flush(self) -> bool:
        """Drop every cached page (SGLang's `flush_cache`); refused while any is locked."""
        if self._protected:
            return False
        self._free_pages += self._evictable // self.page_size
        self._evictable = 0
        self._root.children.clear()
        if self._on_events is not None:
            self._pending.append(AllBlocksCleared())
        return True

    def flush_events(self) -> None:
        if self._pending and self._on_events is not None:
            events, self._pending = self._pending, []
            self._on_events(events)

    # ---- the tree ----------------------------------------------------------------
    def _walk(self, tokens: Sequence[int], length: int) -> tuple[RadixNode, int]:
        """Follow `tokens[:length]` down the tree, splitting a node where the match
        ends inside it, so the returned node ends exactly at the matched length."""
        self._clock += 1
        ps = self.page_size
        node, matched = self._root, 0
        while matched < length:
            child = node.children.get(tuple(tokens[matched : matched + ps]))
            if child is None:
                break
            child.last_access = self._clock
            common = self._common_prefix(child.key, tokens, matched, length)
            matched += common
            if common < len(child.key):
                node = self._split(child, common)
                break
            node = child
        return node, matched

    def _common_prefix(self, key: list[int], tokens: Sequence[int], start: int, end: int) -> int:
        limit = min(len(key), end - start)
        window = list(tokens[start : start + limit])
        if key[:limit] == window:
            return limit
        mismatch = next(i for i, (a, b) in enumerate(zip(key, window)) if a != b)
        return mismatch // self.page_size * self.page_size

    def _split(self, child: RadixNode, at: int) -> RadixNode:
        """Cut `child` after `at` tokens; the new upper node inherits its locks."""
        ps = self.page_size
        parent = child.parent
        assert parent is not None
        upper = RadixNode(child.key[:at], parent, child.digests[: at // ps], child.last_access)
        upper.lock_ref = child.lock_ref
        parent.children[tuple(upper.key[:ps])] = upper
        child.key, child.digests, child.parent = child.key[at:], child.digests[at // ps :], upper
        upper.children[tuple(child.key[:ps])] = child
        return upper

    def _insert(self, tokens: Sequence[int], length: int) -> tuple[RadixNode, int]:
        """Make `tokens[:length]` a path; returns its end node and how much was already there."""
        node, present = self._walk(tokens, length)
        if present == length:
            return node, present
        rest = list(tokens[present:length])
        prior = node.digests[-1] if node.digests else None
        digests = page_digests(rest, self.page_size, prior) if self._on_events is not None else []
        leaf = RadixNode(rest, node, digests, self._clock)
        node.children[tuple(rest[: self.page_size])] = leaf
        self._evictable += len(rest)
        if self._on_events is not None:
            self._pending.append(
                BlockStored(
                    block_hashes=[digest_to_int64(d) for d in digests],
                    parent_block_hash=digest_to_int64(prior) if prior is not None else None,
                    token_ids=rest,
                    block_size=self.page_size,
                    lora_id=None,
                    medium=MEDIUM_GPU,
                )
            )
        return leaf, present

    def _evict(self, pages: int) -> None:
        """Free at least `pages` by removing unlocked leaves, least recently used first."""
        heap = [(n.last_access, id(n), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < pages and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None
            del parent.children[tuple(node.key[: self.page_size])]
            freed += len(node.key) // self.page_size
            self._evictable -= len(node.key)
            if self._on_events is not None:
                self._pending.append(BlockRemoved(block_hashes=[digest_to_int64(d) for d in node.digests], medium=MEDIUM_GPU))
            if parent is not self._root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        self._free_pages += freed

    def _leaves(self) -> list[RadixNode]:
        leaves, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append(node)
        return leaves

    def _lock(self, node: RadixNode) -> None:
        while node is not self._root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def _unlock(self, node: RadixNode) -> None:
        while node is not self._root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node = node.parent  # type: ignore[assignment]
