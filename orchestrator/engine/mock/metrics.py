"""The `sglang:*` Prometheus metrics of one mock engine, with SGLang 0.5.23's names,
label sets and buckets, in a `CollectorRegistry` the caller owns (never the global
one, so several engines can live in one process and tests stay isolated).

Two families, as in SGLang: scheduler gauges and the queue-time histogram carry
`model_name, engine_type, tp_rank, pp_rank, dp_rank` (one series per DP rank; the
mock reports for TP/PP rank 0 only, like SGLang without
`--enable-metrics-for-all-schedulers`); tokenizer-side counters and histograms
carry `model_name, engine_type`, plus `is_streaming` ("true": the engine always
streams) and `cache_source` ("device") where SGLang has them.

Durations are real wall-clock seconds as observed, not simulated GPU seconds:
with `speedup_ratio` 1 they are the same, and with a speedup the metrics agree with
what clients and the frontend measure, which is what dashboards compare them to.
"""

from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SCHEDULER = ("model_name", "engine_type", "tp_rank", "pp_rank", "dp_rank")
_TOKENIZER = ("model_name", "engine_type")
_STREAMING = (*_TOKENIZER, "is_streaming")

_TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
_ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
    0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
)
_E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 800)
_QUEUE_BUCKETS = (0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300, 400, 500, 600)


class RankMetrics:
    """The scheduler-side series of one DP rank, and the decode window behind
    `gen_throughput` (tokens decoded over the window's wall time, as SGLang logs it
    every decode-log interval)."""

    def __init__(self, parent: EngineMetrics, labels: dict[str, str]):
        self._running = parent.num_running_reqs.labels(**labels)
        self._queued = parent.num_queue_reqs.labels(**labels)
        self._token_usage = parent.token_usage.labels(**labels)
        self._used_tokens = parent.num_used_tokens.labels(**labels)
        self._cache_hit_rate = parent.cache_hit_rate.labels(**labels)
        self._gen_throughput = parent.gen_throughput.labels(**labels)
        self.queue_time = parent.queue_time.labels(**labels)
        self._window_tokens = 0
        self._window_start = 0.0

    def report(self, running: int, queued: int, token_usage: float, used_tokens: int, hit_rate: Optional[float] = None) -> None:
        self._running.set(running)
        self._queued.set(queued)
        self._token_usage.set(token_usage)
        self._used_tokens.set(used_tokens)
        if hit_rate is not None:
            self._cache_hit_rate.set(hit_rate)

    def decoded(self, tokens: int, step_started: float) -> None:
        """Count a decode step; a window opens with its first step, so idle time is not in it."""
        if not self._window_tokens:
            self._window_start = step_started
        self._window_tokens += tokens

    def close_window(self, idle: bool = False) -> None:
        """Publish the window's throughput (0 when the rank went idle) and start anew."""
        elapsed = time.monotonic() - self._window_start
        rate = 0.0 if idle or not self._window_tokens else self._window_tokens / max(elapsed, 1e-9)
        self._gen_throughput.set(rate)
        self._window_tokens = 0


class EngineMetrics:
    """Owns the metric families; `rank(i)` binds the scheduler series of DP rank i."""

    def __init__(self, registry: CollectorRegistry, model_name: str, engine_type: str):
        self._model_name = model_name
        self._engine_type = engine_type

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _SCHEDULER, registry=registry, multiprocess_mode="mostrecent")

        self.num_running_reqs = gauge("sglang:num_running_reqs", "The number of running requests.")
        self.num_queue_reqs = gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
        self.token_usage = gauge("sglang:token_usage", "The token usage.")
        self.num_used_tokens = gauge("sglang:num_used_tokens", "The number of used tokens.")
        self.cache_hit_rate = gauge("sglang:cache_hit_rate", "The prefix cache hit rate.")
        self.gen_throughput = gauge("sglang:gen_throughput", "The generation throughput (token/s).")
        self.queue_time = Histogram(
            "sglang:queue_time_seconds", "Histogram of queueing time in seconds.", _SCHEDULER,
            registry=registry, buckets=_QUEUE_BUCKETS,
        )

        # prometheus_client strips a trailing `_total` from a counter's name and adds it
        # back on exposition, so these appear exactly as spelled.
        streaming = {"model_name": model_name, "engine_type": engine_type, "is_streaming": "true"}
        plain = {"model_name": model_name, "engine_type": engine_type}
        self.prompt_tokens = Counter(
            "sglang:prompt_tokens_total", "Number of prefill tokens processed.", _STREAMING, registry=registry
        ).labels(**streaming)
        self.generation_tokens = Counter(
            "sglang:generation_tokens_total", "Number of generation tokens processed.", _STREAMING, registry=registry
        ).labels(**streaming)
        self.num_requests = Counter(
            "sglang:num_requests_total", "Number of requests processed.", _STREAMING, registry=registry
        ).labels(**streaming)
        self.cached_tokens = Counter(
            "sglang:cached_tokens_total", "Number of cached prompt tokens.", (*_TOKENIZER, "cache_source"), registry=registry
        ).labels(**plain, cache_source="device")
        self.num_aborted_requests = Counter(
            "sglang:num_aborted_requests_total", "Number of requests aborted.", _TOKENIZER, registry=registry
        ).labels(**plain)
        self.num_transfer_failed_reqs = Counter(
            "sglang:num_transfer_failed_reqs_total", "Number of disaggregated requests whose KV transfer failed.",
            _TOKENIZER, registry=registry
        ).labels(**plain)
        self.time_to_first_token = Histogram(
            "sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", _STREAMING,
            registry=registry, buckets=_TTFT_BUCKETS,
        ).labels(**streaming)
        self.inter_token_latency = Histogram(
            "sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _TOKENIZER,
            registry=registry, buckets=_ITL_BUCKETS,
        ).labels(**plain)
        self.e2e_request_latency = Histogram(
            "sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds", _STREAMING,
            registry=registry, buckets=_E2E_BUCKETS,
        ).labels(**streaming)

    def rank(self, dp_rank: int) -> RankMetrics:
        labels = {
            "model_name": self._model_name,
            "engine_type": self._engine_type,
            "tp_rank": "0",
            "pp_rank": "0",
            "dp_rank": str(dp_rank),
        }
        return RankMetrics(self, labels)

    def token(self, arrived: float, previous: Optional[float], now: float) -> None:
        """A token reached the stream: the first one is TTFT, later ones inter-token latency."""
        if previous is None:
            self.time_to_first_token.observe(now - arrived)
        else:
            self.inter_token_latency.observe(now - previous)

    def request_finished(self, prompt_tokens: int, generation_tokens: int, cached_tokens: int, e2e_seconds: float, aborted: bool) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generation_tokens)
        if cached_tokens:
            self.cached_tokens.inc(cached_tokens)
        self.num_requests.inc()
        if aborted:
            self.num_aborted_requests.inc()
        self.e2e_request_latency.observe(e2e_seconds)
