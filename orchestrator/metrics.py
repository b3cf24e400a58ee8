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


TOKEN_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384, 32768, 131072)


class Labelled:
    """A metric with labels, called with its label values in order for the child:
    `labels()` takes over a microsecond and a request touches a dozen children, so each
    is looked up once and kept (the label sets are bounded)."""

    def __init__(self, metric: Counter | Gauge | Histogram):
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter | Gauge | Histogram] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class FrontendMetrics:
    """What the frontend counts (`dynamo_frontend_*`). Labels: the served model, the
    endpoint (chat_completions | completions | embeddings) and the request type
    (stream | unary); no per-request or per-user label. Every metric but
    `disconnected` is `Labelled`: `metrics.ttft(model).observe(seconds)`."""

    def __init__(self, registry: CollectorRegistry):
        def labelled(kind, name: str, doc: str, labels: tuple[str, ...], **options) -> Labelled:
            return Labelled(kind(name, doc, labels, registry=registry, **options))

        model, full = ("model",), ("model", "endpoint", "request_type")
        latency, tokens = {"buckets": LATENCY_BUCKETS}, {"buckets": TOKEN_BUCKETS}
        self.requests = labelled(Counter, "dynamo_frontend_requests", "Requests by outcome", (*full, "status"))
        self.inflight = labelled(Gauge, "dynamo_frontend_inflight_requests", "Requests being served", model)
        self.queued = labelled(Gauge, "dynamo_frontend_queued_requests", "Requests waiting for their first token",
                               model)
        self.ttft = labelled(Histogram, "dynamo_frontend_time_to_first_token_seconds", "Time to first token", model,
                             **latency)
        self.itl = labelled(Histogram, "dynamo_frontend_inter_token_latency_seconds", "Time between tokens", model,
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.duration = labelled(Histogram, "dynamo_frontend_request_duration_seconds", "Request duration", model,
                                 **latency)
        self.input_tokens = labelled(Histogram, "dynamo_frontend_input_sequence_tokens", "Prompt tokens", model,
                                     **tokens)
        self.output_tokens = labelled(Histogram, "dynamo_frontend_output_sequence_tokens", "Generated tokens", model,
                                      **tokens)
        self.cached_tokens = labelled(Histogram, "dynamo_frontend_cached_tokens",
                                      "Prompt tokens served from a prefix cache", model, **tokens)
        self.disconnected = Counter("dynamo_frontend_disconnected_clients", "Clients gone before their answer",
                                    registry=registry)
        self.cancellations = labelled(Counter, "dynamo_frontend_model_cancellation",
                                      "Requests cancelled by their client", full)
        self.rejections = labelled(Counter, "dynamo_frontend_model_rejection",
                                   "Requests refused because every worker was busy", ("model", "endpoint"))
        self.migrations = labelled(Counter, "dynamo_frontend_model_migration", "Requests moved to another worker",
                                   (*model, "migration_type"))
        # Per leg: an aggregated request has one, a disaggregated one a prefill and a decode leg.
        leg = ("model", "worker_type")
        self.legs = labelled(Counter, "dynamo_frontend_worker_requests",
                             "Legs sent to workers, by outcome (ok | error | cancelled)", (*leg, "status"))
        self.leg_first_reply = labelled(Histogram, "dynamo_frontend_worker_time_to_first_reply_seconds",
                                        "From sending a leg to its first reply (a prefill leg: its only one)", leg,
                                        **latency)
        self.kv_transfer = labelled(Histogram, "dynamo_frontend_kv_transfer_seconds",
                                    "Time a disaggregated request's KV took to move from prefill to decode, as the "
                                    "prefill worker measured it", model, **latency)
        self.leg_duration = labelled(Histogram, "dynamo_frontend_worker_request_duration_seconds",
                                     "From sending a leg to its end", leg, **latency)


class KvRelayMetrics:
    """A worker's KV relay (`dynamo_component_kv_*`): engine events by type and what
    became of them, and engine batches lost for good."""

    def __init__(self, registry: CollectorRegistry):
        self.events = Counter("dynamo_component_kv_events", "Engine KV events relayed, by type and status",
                              ("event_type", "status"), registry=registry)
        self.dropped = Counter("dynamo_component_kv_publisher_engines_dropped_events",
                               "Engine KV event batches missed and no longer replayable", registry=registry)
        for event_type in ("stored", "removed", "cleared"):
            self.events.labels(event_type=event_type, status="ok")  # present from the start, at 0


class RouterMetrics:
    """The KV router (`dynamo_router_*`): how much of each prompt was found cached where
    it went, how long deciding took, and the KV events its index applied."""

    def __init__(self, registry: CollectorRegistry):
        self.decision = Histogram("dynamo_router_decision_seconds", "Time to choose a worker (hashing included)",
                                  buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1), registry=registry)
        self.hit_rate = Histogram("dynamo_router_kv_hit_rate", "Fraction of the prompt's blocks cached on the chosen worker",
                                  buckets=(0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1), registry=registry)
        self.overlap = Histogram("dynamo_router_overlap_blocks", "Prompt blocks cached on the chosen worker",
                                 buckets=TOKEN_BUCKETS, registry=registry)
        self.events = Counter("dynamo_router_kv_cache_events_applied", "KV events applied to the index",
                              ("event_type", "status"), registry=registry)
        self.syncs = Counter("dynamo_router_kv_syncs", "Index resynchronisations with a worker (range, snapshot, failed)",
                             ("kind",), registry=registry)
        for event_type, status in (("stored", "ok"), ("removed", "ok"), ("removed", "block_not_found"),
                                   ("cleared", "ok")):
            self.events.labels(event_type=event_type, status=status)  # present from the start, at 0
        for kind in ("range", "snapshot", "failed"):
            self.syncs.labels(kind=kind)

    def routed(self, seconds: float, overlap: int, blocks: int) -> None:
        self.decision.observe(seconds)
        self.overlap.observe(overlap)
        if blocks:
            self.hit_rate.observe(overlap / blocks)
