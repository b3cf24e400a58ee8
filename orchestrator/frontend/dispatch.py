"""One generation, routed to a worker and kept alive across worker failures.

The router picks among the model's generating instances. When the worker ends the
stream with a migratable error (it drains: `engine_shutdown`; it died: `disconnected`)
and the migration limit allows, the request is sent to another worker with the prompt
plus every token generated so far and the token budget reduced; the caller sees one
continuous stream, with usage counted against the original prompt. Other errors end
the generation with the HTTP status they deserve.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import msgspec

from orchestrator.frontend.models import GENERATING, Instance, Model
from orchestrator.metrics import FrontendMetrics
from orchestrator.planes import messages as m
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
            instance = self._choose(model, prompt + generated, failed)
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
            error = None
            instance.inflight += 1
            try:
                async for reply in instance.client.stream(attempt_request):
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
            finally:
                instance.inflight -= 1
            if error is None:
                return
            if error.kind not in m.ErrorKind.MIGRATABLE:
                raise GenerationError(_STATUS.get(error.kind, 500), error.message)
            failed.add(instance.record.instance_id)
            if attempt == self.migration_limit:
                break
            kind = "ongoing_request" if generated else "new_request"
            self.metrics.migrations.labels(model=model.name, migration_type=kind).inc()
            log.info("migrating %s after %d tokens: %s", request.request_id, len(generated), error.message)
        raise GenerationError(503, f"Cannot recreate stream: {error.message} (migration limit {self.migration_limit})")

    def _choose(self, model: Model, tokens: list[int], failed: set[int]) -> Instance:
        live = [i for i in model.serving(*GENERATING) if i.record.instance_id not in failed]
        if not live:
            raise GenerationError(503, f"no worker can take a request for {model.name} now")
        candidates = [Candidate(i.record.instance_id, None, i.inflight, i.active_decode_blocks) for i in live]
        chosen = self.router.choose(tokens, candidates)
        return next(i for i in live if i.record.instance_id == chosen.instance_id)
