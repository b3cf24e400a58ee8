"""Block hashes of a token sequence: the same function on both sides of the event plane.

A worker's KV relay hashes the pages its engine reports stored; the KV router hashes
each request's prompt; the two meet in the frontend's prefix index. Every full page
of `page_size` tokens gets a sequence hash that stands for the whole prefix up to and
including it: XXH3-64 of the page's tokens as little-endian u32, seeded with the
previous page's sequence hash (the first page with Dynamo's seed, 1337). Equal hashes
mean equal prefixes whatever hash the engine itself uses for its blocks; a partial
last page has no hash, since engines only cache full pages.
"""

from __future__ import annotations

import array

import xxhash

SEED = 1337
_xxh3 = xxhash.xxh3_64_intdigest


def sequence_hashes(token_ids: list[int], page_size: int, parent: int | None = None) -> list[int]:
    """The sequence hash of each full page of `token_ids`, continuing the prefix whose
    last page hashed to `parent` (None: the sequence starts at the root)."""
    data = memoryview(array.array("I", token_ids).tobytes())
    step = 4 * page_size
    seed = SEED if parent is None else parent
    hashes = []
    for start in range(0, len(data) - step + 1, step):
        seed = _xxh3(data[start : start + step], seed)
        hashes.append(seed)
    return hashes
