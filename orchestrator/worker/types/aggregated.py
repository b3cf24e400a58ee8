"""Aggregated: prefill and decode in one engine; serves `generate` on `backend` for
chat and completions."""

from __future__ import annotations

import uuid

from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.worker.types.base import GeneratingKind


class AggregatedWorker(GeneratingKind):
    worker_type = WorkerType.aggregated
    model_types = ("chat", "completions")

    def health_request(self) -> m.GenerateRequest:
        return self.probe(f"health-{uuid.uuid4().hex}")
