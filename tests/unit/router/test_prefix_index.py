"""The prefix index's slot bookkeeping: slots that leave give their place to new ones
without lending them their blocks."""

from __future__ import annotations

import random

from orchestrator.router.hashing import sequence_hashes
from orchestrator.router.index import PrefixIndex

PAGE = 4


def test_a_slot_joining_after_one_was_cleared_holds_only_its_own_blocks():
    index = PrefixIndex()
    h = sequence_hashes(list(range(40)), PAGE)
    index.stored((1, 0), h[:6])
    index.stored((2, 0), h[:3])
    index.cleared((1, 0))
    index.stored((3, 0), h[:2])  # takes the place (1, 0) left
    assert index.overlaps(h) == {(2, 0): 3, (3, 0): 2}
    assert index.blocks((1, 0)) == 0 and index.blocks((3, 0)) == 2
    assert index.removed((3, 0), h[:6]) == 4
    assert len(index) == 3


def test_overlaps_match_a_brute_force_count_while_slots_come_and_go():
    rng = random.Random(11)
    index = PrefixIndex()
    prompts = [sequence_hashes([rng.randrange(30) for _ in range(PAGE * 10)], PAGE) for _ in range(5)]
    held: dict = {}
    for _ in range(3000):
        slot = (rng.randrange(40), rng.randrange(2))
        prompt, depth, roll = rng.choice(prompts), rng.randrange(11), rng.random()
        if roll < 0.55:
            index.stored(slot, prompt[:depth])
            held.setdefault(slot, set()).update(prompt[:depth])
        elif roll < 0.9:
            index.removed(slot, prompt[depth:])
            held.get(slot, set()).difference_update(prompt[depth:])
        elif roll < 0.97:
            index.cleared(slot)
            held.pop(slot, None)
        else:
            index.forget(slot[0])
            held = {s: b for s, b in held.items() if s[0] != slot[0]}
        query = rng.choice(prompts)
        expected = {}
        for s, blocks in held.items():
            n = 0
            while n < len(query) and query[n] in blocks:
                n += 1
            if n:
                expected[s] = n
        assert index.overlaps(query) == expected
        assert len(index) == len(set().union(*held.values()))


def test_every_block_stays_findable_through_growth_removals_and_clears():
    """Thousands of blocks: the table grows, and removals and clears empty buckets in
    the middle of probe runs. Every block must still be found with exactly its holders."""
    rng = random.Random(5)
    index = PrefixIndex()
    keys = [rng.getrandbits(64) for _ in range(6000)] + list(range(3000))  # runs of neighbouring keys too
    held: dict = {}
    for step in range(40):
        slot = (rng.randrange(6), 0)
        if step % 10 == 9:
            index.cleared(slot)
            held.pop(slot, None)
        else:
            stored, dropped = rng.sample(keys, 1500), rng.sample(keys, 1000)
            index.stored(slot, stored)
            missing = index.removed(slot, dropped)
            before = held.get(slot, set()) | set(stored)
            assert missing == sum(k not in before for k in dropped)
            held[slot] = before - set(dropped)
        holders: dict = {}
        for s, blocks in held.items():
            for k in blocks:
                holders.setdefault(k, set()).add(s)
        assert len(index) == len(holders)
        assert all(index.blocks(s) == len(b) for s, b in held.items())
        for k in rng.sample(keys, 500):
            assert set(index.overlaps([k])) == holders.get(k, set())
