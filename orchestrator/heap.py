"""Garbage-collector settings for the long-running servers, the frontend and the worker.

A server allocates dozens of short-lived objects per request and per token. With
CPython's default thresholds (a young collection every 700 allocations) the frontend
under load ran hundreds of collections a second, and every older one walked what
start-up had built (tokenizers, chat templates, aiohttp, the engine's tables), none of
which ever becomes garbage: about a tenth of its CPU per request. Once a server is up,
`settle()` moves what start-up built out of the collector's sight (`gc.freeze`) and
collects the young generation every 20,000 allocations; cycles still get collected,
a little later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Call once start-up is done, before serving."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
