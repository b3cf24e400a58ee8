"""What every worker type provides, and the streaming loop the generating types share.

A worker type is its request handler, its health-check payload (run once as a
warm-up before the worker registers, then by the idle canary) and what it adds to
its discovery record. The start-up sequence around them is one and the same for all
types (`orchestrator.worker.runtime`), so it is not repeated per type.
"""

from __future__ import annotations

import time

import msgspec
from abc import ABC, abstractmethod
from typing import AsyncIterator, Callable

from orchestrator.engine.base import Engine, EngineError, EngineInfo
from orchestrator.metrics import ComponentMetrics
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType

Request = m.GenerateRequest | m.EmbedRequest


class WorkerKind(ABC):
    worker_type: WorkerType
    model_types: tuple[str, ...]  # what the frontend may send here

    def __init__(
        self,
        engine: Engine,
        info: EngineInfo,
        metrics: ComponentMetrics,
        bos_token_id: int,
        tokenize: Callable[[str], list[int]] | None = None,  # None: the worker takes token ids only
    ):
        self.engine, self.info, self.metrics, self.bos_token_id = engine, info, metrics, bos_token_id
        self.tokenize = tokenize

    @abstractmethod
    def health_request(self) -> Request: ...

    @abstractmethod
    def serve(self, request: Request) -> AsyncIterator[m.FromWorker]: ...

    def record_fields(self) -> dict:
        """Extra fields of this type's discovery record."""
        return {}

    async def handle(self, request: Request) -> AsyncIterator[m.FromWorker]:
        """`serve` with the runtime metrics around it."""
        self.metrics.requests.inc()
        self.metrics.inflight.inc()
        started = time.monotonic()
        try:
            async for reply in self.serve(request):
                if isinstance(reply, m.ErrorReply):
                    self.metrics.error(reply.kind)
                yield reply
        finally:
            self.metrics.inflight.dec()
            self.metrics.duration.observe(time.monotonic() - started)


class GeneratingKind(WorkerKind):
    """Aggregated, prefill and decode workers: token ids in, chunks out."""

    def check(self, request: m.GenerateRequest) -> str | None:
        """A reason to refuse the request before it reaches the engine."""
        if not request.token_ids:
            if request.text is None:
                return "the request has neither token ids nor text"
            if self.tokenize is None:
                return "this worker takes token ids (it runs with --skip-tokenizer-init)"
        return None

    async def serve(self, request: Request) -> AsyncIterator[m.FromWorker]:
        if not isinstance(request, m.GenerateRequest):
            yield m.ErrorReply(request.request_id, m.ErrorKind.INVALID, f"a {self.worker_type.value} worker only generates")
            return
        reason = self.check(request)
        if reason:
            yield m.ErrorReply(request.request_id, m.ErrorKind.INVALID, reason)
            return
        if not request.token_ids:
            request = msgspec.structs.replace(request, token_ids=self.tokenize(request.text), text=None)
        try:
            async for chunk in self.engine.generate(request):
                yield chunk
        except EngineError as e:
            yield m.ErrorReply(request.request_id, e.kind, str(e))

    def probe(self, request_id: str, bootstrap: m.BootstrapInfo | None = None) -> m.GenerateRequest:
        """SGLang's health probe: one token from BOS at temperature 0."""
        return m.GenerateRequest(
            request_id=request_id,
            token_ids=[self.bos_token_id],
            sampling=m.SamplingOptions(temperature=0.0, top_p=1.0, top_k=-1),
            stop=m.StopConditions(max_tokens=1),
            bootstrap=bootstrap,
        )
