"""Disaggregated prefill: computes the prompt's KV cache and hands it to the decode
worker that shares the request's bootstrap room; serves `generate` on `prefill` and
publishes its bootstrap server in discovery."""

from __future__ import annotations

import uuid

from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.worker.types.base import GeneratingKind


class PrefillWorker(GeneratingKind):
    worker_type = WorkerType.prefill
    model_types = ("prefill",)

    def check(self, request: m.GenerateRequest) -> str | None:
        if request.bootstrap is None:
            return "a prefill worker needs a bootstrap host, port and room (send it through the router)"
        return super().check(request)

    def health_request(self) -> m.GenerateRequest:
        return self.probe(
            f"health-{uuid.uuid4().hex}", m.BootstrapInfo(FAKE_BOOTSTRAP_HOST, self.info.bootstrap_port or 0, 0)
        )

    def record_fields(self) -> dict:
        return {"bootstrap_host": self.info.bootstrap_host, "bootstrap_port": self.info.bootstrap_port}
