"""The KV router's hashing, prefix index and policy: deterministic decisions."""

from __future__ import annotations

import pytest

from orchestrator.router import Candidate, KvPolicy, KvRouter, RouterBusy
from orchestrator.router.hashing import sequence_hashes
from orchestrator.router.index import ApproximateIndex, PrefixIndex

PAGE = 4


def test_sequence_hashes_name_whole_prefixes():
    a = sequence_hashes(list(range(12)), PAGE)
    assert len(a) == 3 and len(set(a)) == 3
    assert sequence_hashes(list(range(10)), PAGE) == a[:2]  # a partial page has no hash
    assert sequence_hashes(list(range(4, 12)), PAGE, parent=a[0]) == a[1:]  # continuing a prefix
    # The same page after a different prefix is a different block.
    assert sequence_hashes([9, 9, 9, 9, 4, 5, 6, 7], PAGE)[1] != a[1]


def test_overlap_is_the_longest_consecutive_prefix_per_slot():
    index = PrefixIndex()
    h = sequence_hashes(list(range(40)), PAGE)  # 10 pages
    index.stored((1, 0), h[:7])
    index.stored((2, 0), h[:3])
    index.stored((2, 1), h[:10])
    index.stored((3, 0), h[1:5])  # not from the first page: no overlap at all
    assert index.overlaps(h) == {(1, 0): 7, (2, 0): 3, (2, 1): 10}
    assert index.removed((2, 1), h[5:]) == 0
    assert index.overlaps(h)[(2, 1)] == 5
    assert index.removed((2, 1), [12345]) == 1  # never held: block_not_found
    index.cleared((1, 0))
    index.forget(2)
    assert index.overlaps(h) == {}
    assert len(index) == 4  # slot 3's blocks


def test_approximate_index_forgets_after_the_ttl_and_past_its_size():
    now = [0.0]
    index = ApproximateIndex(ttl_s=10, max_blocks=6, clock=lambda: now[0])
    h = sequence_hashes(list(range(16)), PAGE)
    index.routed((1, 0), h)
    now[0] = 5
    index.routed((2, 0), h[:2])  # 6 entries: at the limit
    assert index.overlaps(h) == {(1, 0): 4, (2, 0): 2}
    index.routed((3, 0), h[:1])  # one too many: the oldest entry goes
    assert index.overlaps(h) == {(2, 0): 2, (3, 0): 1}
    now[0] = 12  # (1, 0)'s entries expired, (2, 0)'s not yet
    assert index.overlaps(h) == {(2, 0): 2, (3, 0): 1}
    now[0] = 16
    assert index.overlaps(h) == {}


def _cands(*specs) -> list[Candidate]:
    return [Candidate(instance_id=i, dp_rank=r, **kw) for i, r, kw in specs]


def test_longest_prefix_wins():
    router = KvRouter(seed=1)
    tokens = list(range(64))
    h = sequence_hashes(tokens, PAGE)
    router.index.stored((1, 0), h[:4])
    router.index.stored((2, 0), h[:12])
    chosen = router.choose(tokens, _cands((1, 0, {}), (2, 0, {}), (3, 0, {})), PAGE)
    assert (chosen.instance_id, chosen.overlap_blocks) == (2, 12)


def test_dp_ranks_are_routed_separately():
    router = KvRouter(seed=1)
    tokens = list(range(64))
    router.index.stored((1, 1), sequence_hashes(tokens, PAGE))
    chosen = router.choose(tokens, _cands((1, 0, {}), (1, 1, {})), PAGE)
    assert (chosen.dp_rank, chosen.overlap_blocks) == (1, 16)


def test_load_outweighs_a_small_overlap():
    router = KvRouter(seed=1)
    tokens = list(range(64))  # 16 blocks
    router.index.stored((1, 0), sequence_hashes(tokens, PAGE)[:2])
    # Worker 1: 14 to prefill + 16 + 40 decode = 70; worker 2: 16 + 16 = 32.
    chosen = router.choose(tokens, _cands((1, 0, {"active_decode_blocks": 40}), (2, 0, {})), PAGE)
    assert chosen.instance_id == 2
    # Queued prefill counts against a candidate too (in blocks).
    chosen = router.choose(tokens, _cands((1, 0, {}), (2, 0, {"prefill_tokens": 400})), PAGE)
    assert chosen.instance_id == 1


def test_ties_go_to_the_less_loaded():
    router = KvRouter(KvPolicy(overlap_score_weight=0.0), seed=1)
    tokens = list(range(64))
    # Equal cost (no overlap weight, equal decode blocks); fewer requests in flight wins.
    for _ in range(20):
        chosen = router.choose(tokens, _cands((1, 0, {"inflight": 3}), (2, 0, {"inflight": 1})), PAGE)
        assert chosen.instance_id == 2


def test_temperature_samples_the_cheap_ones_more_often():
    router = KvRouter(KvPolicy(temperature=0.5), seed=3)
    tokens = list(range(64))
    router.index.stored((1, 0), sequence_hashes(tokens, PAGE))
    picks = [router.choose(tokens, _cands((1, 0, {}), (2, 0, {})), PAGE).instance_id for _ in range(400)]
    assert 0 < picks.count(2) < picks.count(1)


def test_busy_candidates_are_not_eligible():
    router = KvRouter(KvPolicy(busy_kv_usage=0.9, busy_prefill_tokens=1000), seed=1)
    tokens = list(range(64))
    router.index.stored((1, 0), sequence_hashes(tokens, PAGE))
    chosen = router.choose(tokens, _cands((1, 0, {"kv_usage": 0.95}), (2, 0, {"kv_usage": 0.5})), PAGE)
    assert chosen.instance_id == 2
    with pytest.raises(RouterBusy):
        router.choose(tokens, _cands((1, 0, {"kv_usage": 0.95}), (2, 0, {"prefill_tokens": 5000})), PAGE)


def test_approximate_mode_assumes_what_it_routed_is_cached():
    router = KvRouter(KvPolicy(use_kv_events=False), seed=1)
    tokens = list(range(64))
    first = router.choose(tokens, _cands((1, 0, {}), (2, 0, {})), PAGE)
    assert first.overlap_blocks == 0
    again = router.choose(tokens + [1, 2, 3, 4], _cands((1, 0, {}), (2, 0, {})), PAGE)
    assert (again.instance_id, again.overlap_blocks) == (first.instance_id, 16)
