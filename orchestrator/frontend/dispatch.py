"""One generation, routed to a worker and kept alive across worker failures.

The router picks among the model's generating instances. When the worker ends the
stream with a migratable error (it drains: `engine_shutdown`; it died: `disconnected`)
and the migration limit allows, the request is sent to another worker with the prompt
plus every token generated so far and the token budget reduced; the caller sees one
continuous stream, with usage counted against the original prompt. Other errors end
the generation with the HTTP status they deserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import AsyncIterator

import msgspec

from orchestrator.frontend.models import GENERATING, Instance, Model
from orchestrator.metrics import FrontendMetrics
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.router import Candidate, Router

log = logging.getLogger(__name__)

_STATUS = {m.ErrorKind.INVALID: 400, m.ErrorKind.OVERLOADED: 503, m.ErrorKind.BOOTSTRAP_TIMEOUT: 503}


class GenerationError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Dispatcher:
    def __init__(self, router: Router, migration_limit: int, metrics: FrontendMetrics):
        self.router, self.migration_limit, self.metrics = router, migration_limit, metrics

    async def generate(self, model: Model, request: m.GenerateRequest) -> AsyncIterator[m.Chunk]:
        prompt, budget = list(request.token_ids), request.stop
        generated: list[int] = []
        failed: set[int] = set()
        cached = None
        for attempt in range(self.migration_limit + 1):
            attempt_request = msgspec.structs.replace(
                request,
                request_id=request.request_id if attempt == 0 else f"{request.request_id}.{attempt}",
                token_ids=prompt + generated,
                stop=msgspec.structs.replace(
                    budget,
                    max_tokens=budget.max_tokens - len(generated),
                    min_tokens=max(0, budget.min_tokens - len(generated)),
                ),
            )
            error = culprit = None
            legs = self._disaggregated(model, attempt_request, failed) if model.serving(WorkerType.prefill) \
                else self._aggregated(model, attempt_request, failed)
            async with contextlib.aclosing(legs) as replies:
                async for culprit, reply in replies:
                    if isinstance(reply, m.ErrorReply):
                        error = reply
                        break
                    generated += reply.token_ids
                    cached = reply.cached_tokens if cached is None and reply.finish_reason else cached
                    if reply.finish_reason:
                        reply.prompt_tokens = len(prompt)
                        reply.completion_tokens = len(generated)
                        reply.cached_tokens = cached or 0
                    yield reply
            if error is None:
                return
            if error.kind not in m.ErrorKind.MIGRATABLE:
                raise GenerationError(_STATUS.get(error.kind, 500), error.message)
            failed.add(culprit.record.instance_id)
            if attempt == self.migration_limit:
                break
            kind = "ongoing_request" if generated else "new_request"
            self.metrics.migrations.labels(model=model.name, migration_type=kind).inc()
            log.info("migrating %s after %d tokens: %s", request.request_id, len(generated), error.message)
        raise GenerationError(503, f"Cannot recreate stream: {error.message} (migration limit {self.migration_limit})")

    async def _aggregated(self, model: Model, request: m.GenerateRequest, failed: set[int]):
        """One leg: (instance, reply) pairs from an aggregated (or decode-only) worker."""
        instance = self._choose(model, GENERATING, request.token_ids, failed)
        instance.inflight += 1
        try:
            async with contextlib.aclosing(instance.client.stream(request)) as replies:
                async for reply in replies:
                    yield instance, reply
        finally:
            instance.inflight -= 1

    async def _disaggregated(self, model: Model, request: m.GenerateRequest, failed: set[int]):
        """Both legs at once, as SGLang's PD routers send them: the prefill leg (one token)
        and the decode leg share a bootstrap room, the answer streams from decode. A failed
        prefill leg ends the attempt at once rather than leaving decode to time out; ending
        the attempt (a client gone, an error) cancels both legs."""
        prefill = self._choose(model, (WorkerType.prefill,), request.token_ids, failed)
        decode = self._choose(model, (WorkerType.decode,), request.token_ids, failed)
        info = m.BootstrapInfo(prefill.record.bootstrap_host, prefill.record.bootstrap_port, random.getrandbits(63))
        prefill_request = msgspec.structs.replace(
            request, request_id=f"{request.request_id}-prefill", bootstrap=info,
            stop=msgspec.structs.replace(request.stop, max_tokens=1, min_tokens=0),
        )

        async def prefill_leg() -> m.ErrorReply | None:
            async with contextlib.aclosing(prefill.client.stream(prefill_request)) as replies:
                async for reply in replies:
                    if isinstance(reply, m.ErrorReply):
                        return reply
            return None

        prefill.inflight += 1
        decode.inflight += 1
        decode_replies = decode.client.stream(msgspec.structs.replace(request, bootstrap=info))
        prefilling = asyncio.ensure_future(prefill_leg())
        next_reply = asyncio.ensure_future(anext(decode_replies))
        try:
            while True:
                watch = {next_reply} if prefilling.done() else {next_reply, prefilling}
                done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                if prefilling in done and prefilling.result() is not None:
                    yield prefill, prefilling.result()
                    return
                if next_reply in done:
                    try:
                        reply = next_reply.result()
                    except StopAsyncIteration:
                        return
                    yield decode, reply
                    if isinstance(reply, m.ErrorReply) or reply.finish_reason:
                        return
                    next_reply = asyncio.ensure_future(anext(decode_replies))
        finally:
            for task in (next_reply, prefilling):
                task.cancel()
            await asyncio.gather(next_reply, prefilling, return_exceptions=True)
            await decode_replies.aclose()
            prefill.inflight -= 1
            decode.inflight -= 1

    def _choose(self, model: Model, types: tuple, tokens: list[int], failed: set[int]) -> Instance:
        live = [i for i in model.serving(*types) if i.record.instance_id not in failed]
        if not live:
            raise GenerationError(503, f"no worker can take a request for {model.name} now")
        candidates = [Candidate(i.record.instance_id, None, i.inflight, i.active_decode_blocks) for i in live]
        chosen = self.router.choose(tokens, candidates)
        return next(i for i in live if i.record.instance_id == chosen.instance_id)
