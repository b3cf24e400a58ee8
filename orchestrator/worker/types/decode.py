"""Disaggregated decode: receives the KV cache a prefill worker computed (through the
request's bootstrap triple) and generates; serves `generate` on `backend`."""

from __future__ import annotations

import uuid

from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.worker.types.base import GeneratingKind


class DecodeWorker(GeneratingKind):
    worker_type = WorkerType.decode
    model_types = ("chat", "completions")

    def check(self, request: m.GenerateRequest) -> str | None:
        if request.bootstrap is None:
            return "a decode worker needs the prefill worker's bootstrap host, port and room"
        return super().check(request)

    def health_request(self) -> m.GenerateRequest:
        # SGLang's fake transfer: the probe exercises this engine alone, with no partner.
        return self.probe(f"health-{uuid.uuid4().hex}", m.BootstrapInfo(FAKE_BOOTSTRAP_HOST, 0, 0))
