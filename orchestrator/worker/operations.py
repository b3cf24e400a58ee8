"""The `/engine/*` operations of a worker's system server.

Releasing memory takes the worker out of discovery before the engine pauses, and
resuming puts it back after the engine is ready again (Dynamo's quiesce order), so
no router sends work to a worker without memory. Both are idempotent.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from orchestrator.engine.base import Engine

Route = Callable[[dict], Awaitable[dict]]
MEMORY_TAGS = ("weights", "kv_cache")


def engine_routes(engine: Engine, registration) -> dict[str, Route]:
    lock = asyncio.Lock()
    released = False

    async def start_profile(body: dict) -> dict:
        return await engine.start_profile(body)

    async def stop_profile(body: dict) -> dict:
        return await engine.stop_profile()

    async def flush_cache(body: dict) -> dict:
        return await engine.flush_cache()

    async def release_memory_occupation(body: dict) -> dict:
        nonlocal released
        tags = _tags(body)
        async with lock:
            if not released:
                await registration.leave()
                await engine.release_memory(tags)
                released = True
        return {"success": True, "message": f"released {', '.join(tags)}; left discovery"}

    async def resume_memory_occupation(body: dict) -> dict:
        nonlocal released
        tags = _tags(body)
        async with lock:
            if released:
                await engine.resume_memory(tags)
                await registration.join()
                released = False
        return {"success": True, "message": f"resumed {', '.join(tags)}; back in discovery"}

    return {
        "start_profile": start_profile,
        "stop_profile": stop_profile,
        "flush_cache": flush_cache,
        "release_memory_occupation": release_memory_occupation,
        "resume_memory_occupation": resume_memory_occupation,
    }


def _tags(body: dict) -> list[str]:
    tags = body.get("tags") or list(MEMORY_TAGS)
    if not isinstance(tags, list) or any(t not in MEMORY_TAGS for t in tags):
        raise ValueError(f"tags must be a list drawn from {list(MEMORY_TAGS)}, got {tags!r}")
    return tags
