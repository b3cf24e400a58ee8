"""Runtime metrics (`dynamo_*`), with Dynamo's names and bounded label sets.

Each process has one `CollectorRegistry`; the engine's `sglang:*` metrics register in
the same one, so a worker's `/metrics` shows both families on one endpoint.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ComponentMetrics:
    """What a served endpoint counts (`dynamo_component_*`)."""

    LABELS = ("dynamo_namespace", "dynamo_component", "dynamo_endpoint", "model")

    def __init__(self, registry: CollectorRegistry, namespace: str, component: str, endpoint: str, model: str):
        labels = dict(zip(self.LABELS, (namespace, component, endpoint, model)))
        self._started = time.monotonic()
        self.requests = Counter(
            "dynamo_component_requests", "Requests received", self.LABELS, registry=registry
        ).labels(**labels)
        self.inflight = Gauge(
            "dynamo_component_inflight_requests", "Requests being served", self.LABELS, registry=registry
        ).labels(**labels)
        self.duration = Histogram(
            "dynamo_component_request_duration_seconds",
            "Time from request to last response",
            self.LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self._errors = Counter(
            "dynamo_component_errors", "Requests that ended in an error", (*self.LABELS, "error_type"), registry=registry
        )
        self._labels = labels
        self.cancellations = Counter(
            "dynamo_component_cancellation", "Requests cancelled by their caller", self.LABELS, registry=registry
        ).labels(**labels)
        Gauge("dynamo_component_uptime_seconds", "Seconds since the worker started", self.LABELS,
              registry=registry).labels(**labels).set_function(lambda: time.monotonic() - self._started)

    def error(self, kind: str) -> None:
        self._errors.labels(**self._labels, error_type=kind).inc()
