"""The paged pool and radix prefix cache of one DP rank, and the KV events it emits."""

from __future__ import annotations

from orchestrator.engine.mock.kv_cache import KvCache
from orchestrator.engine.sglang_kv_events import AllBlocksCleared, BlockRemoved, BlockStored, digest_to_int64, page_digests


def hashes(tokens: list[int], page_size: int) -> list[int]:
    return [digest_to_int64(d) for d in page_digests(tokens, page_size)]


class Recorder:
    def __init__(self):
        self.flushes: list[list] = []

    def __call__(self, events: list) -> None:
        self.flushes.append(events)

    @property
    def events(self) -> list:
        return [event for flush in self.flushes for event in flush]


def store(cache: KvCache, tokens: list[int]) -> None:
    """Run one request over `tokens` and finish it: its full pages stay cached."""
    slot = cache.open(cache.match_prefix(tokens))
    assert cache.grow(slot, len(tokens))
    cache.release(slot, tokens)
    cache.flush_events()


A, B, C, D = ([base + i for i in range(8)] for base in (100, 200, 300, 400))


def test_full_pages_are_shared_and_the_partial_page_stays_private():
    cache = KvCache(64, 4)
    first = A + [1, 2]  # two full pages and a partial one
    slot = cache.open(cache.match_prefix(first))
    assert slot.cached_tokens == 0
    assert cache.grow(slot, len(first))
    assert cache.used_tokens == 12  # three pages
    cache.release(slot, first)
    assert cache.evictable_tokens == 8 and cache.token_usage == 0.0
    assert cache.free_tokens == 64 - 8

    # A second request over the same prefix matches the two full pages only.
    assert cache.match_prefix(A + [1, 2, 3]).tokens == 8
    # At least one token must be computed: a prompt that is exactly cached matches one page less.
    assert cache.match_prefix(A).tokens == 4
    assert cache.match_prefix(A[:4] + [9, 9, 9, 9, 9]).tokens == 4


def test_locked_pages_are_not_evicted_and_unlocked_ones_are():
    cache = KvCache(16, 4)
    store(cache, A)  # 2 of 4 pages cached, unlocked
    holder = cache.open(cache.match_prefix(A + [7]))
    assert holder.cached_tokens == 8 and cache.evictable_tokens == 0
    other = cache.open(cache.match_prefix(B))
    assert cache.grow(other, 8)  # the two free pages
    assert not cache.grow(other, 12)  # only locked pages remain
    cache.release(holder)
    assert cache.grow(other, 12)  # now A's pages can be evicted
    # Eviction removes whole nodes, as SGLang's does: both of A's pages went.
    assert cache.evictable_tokens == 0 and cache.free_tokens == 4


def test_lru_eviction_order_and_removed_hashes_equal_stored_ones():
    events = Recorder()
    cache = KvCache(16, 4, on_events=events)
    store(cache, A)  # 2 pages
    store(cache, B[:4])  # 1 page
    cache.match_prefix(A + [0])  # A is now more recently used than B
    store(cache, C)  # needs 2 pages, 1 free: evicts B
    store(cache, D)  # needs 2 pages, none free: evicts A (older than C)

    stored = {tuple(e.token_ids): e.block_hashes for e in events.events if isinstance(e, BlockStored)}
    removed = [e for e in events.events if isinstance(e, BlockRemoved)]
    assert [e.block_hashes for e in removed] == [stored[tuple(B[:4])], stored[tuple(A)]]
    assert all(e.medium == "GPU" for e in removed)
    assert cache.match_prefix(C + [0]).tokens == 8 and cache.match_prefix(D + [0]).tokens == 8
    assert cache.match_prefix(A + [0]).tokens == 0


def test_evicting_a_leaf_makes_its_parent_evictable():
    events = Recorder()
    cache = KvCache(12, 4, on_events=events)
    store(cache, A[:4])
    store(cache, A)  # a child node with A's second page
    store(cache, B + [1, 2, 3, 4])  # needs all 3 pages: child first, then parent
    removed = [e.block_hashes for e in events.events if isinstance(e, BlockRemoved)]
    assert removed == [hashes(A, 4)[1:], hashes(A, 4)[:1]]


def test_block_stored_events_chain_and_use_sglang_page_hashes():
    events = Recorder()
    cache = KvCache(64, 4, on_events=events)
    store(cache, A + [1, 2])  # the partial page is not stored
    store(cache, A + B)
    store(cache, A[:4] + C)  # splits A's node after its first page
    first, second, third = events.events
    assert first == BlockStored(
        block_hashes=hashes(A, 4), parent_block_hash=None, token_ids=A, block_size=4, lora_id=None, medium="GPU"
    )
    assert second.parent_block_hash == first.block_hashes[-1]
    assert second.block_hashes == hashes(A + B, 4)[2:] and second.token_ids == B
    assert third.parent_block_hash == first.block_hashes[0]
    assert third.block_hashes == hashes(A[:4] + C, 4)[1:]
    assert len(events.flushes) == 3  # one flush per step, only when there is something


def test_no_sharing_and_no_events_without_the_radix_cache():
    events = Recorder()
    cache = KvCache(64, 4, radix=False, on_events=events)
    store(cache, A + B)
    assert cache.match_prefix(A + B + [1]).tokens == 0
    assert cache.free_tokens == 64 and cache.evictable_tokens == 0
    assert events.events == []


def test_flush_clears_everything_unless_pages_are_locked():
    events = Recorder()
    cache = KvCache(64, 4, on_events=events)
    store(cache, A)
    slot = cache.open(cache.match_prefix(A + [1]))
    assert not cache.flush()
    cache.release(slot)
    assert cache.flush()
    cache.flush_events()
    assert isinstance(events.events[-1], AllBlocksCleared)
    assert cache.free_tokens == 64 and cache.match_prefix(A + [1]).tokens == 0


def test_a_request_inserting_pages_another_already_cached_frees_its_copies():
    cache = KvCache(64, 4)
    late = cache.open(cache.match_prefix(A + [1]))
    assert cache.grow(late, 9)  # computes A itself: 3 pages
    store(cache, A)  # meanwhile another request caches A
    cache.cache(late, A + [1])
    assert late.cached_tokens == 8
    assert cache.used_tokens == 12  # A's 2 shared pages (locked) + its private last page
    cache.release(late, A + [1])
    assert cache.used_tokens == 0 and cache.evictable_tokens == 8
