"""Embedding: encodes inputs to vectors; serves /v1/embeddings."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

from orchestrator.engine.base import EngineError
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.worker.types.base import Request, WorkerKind


class EmbeddingWorker(WorkerKind):
    worker_type = WorkerType.embedding
    model_types = ("embedding",)

    def health_request(self) -> m.EmbedRequest:
        return m.EmbedRequest(request_id=f"health-{uuid.uuid4().hex}", inputs=[[self.bos_token_id]])

    async def serve(self, request: Request) -> AsyncIterator[m.FromWorker]:
        if not isinstance(request, m.EmbedRequest):
            yield m.ErrorReply(request.request_id, m.ErrorKind.INVALID, "an embedding worker only encodes")
            return
        inputs = request.inputs or [self.tokenize(text) for text in request.texts]
        if not inputs or not all(inputs):
            yield m.ErrorReply(request.request_id, m.ErrorKind.INVALID, "an embedding request needs non-empty inputs")
            return
        try:
            vectors = await self.engine.encode(request.request_id, inputs)
        except EngineError as e:
            yield m.ErrorReply(request.request_id, e.kind, str(e))
            return
        yield m.Embeddings(request.request_id, vectors, prompt_tokens=sum(map(len, inputs)))
