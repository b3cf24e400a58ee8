"""The summary of one load: the numbers AIPerf and SGLang's bench_serving report.

- Throughputs divide by the measured duration (first send to last answer): requests/s
  counts completed requests; output and input tokens/s count completed requests' tokens;
  output tokens/s per GPU divides by the GPUs the deployment holds.
- TTFT and E2E percentiles are over completed requests; ITL percentiles are over every
  inter-token latency of every completed request (bench_serving's ITL).
- Cache hit rate: the prompt tokens the engine found cached over all prompt tokens.
- Goodput: completed requests/s whose TTFT and mean ITL (their TPOT) meet each SLO that
  is set; an unset SLO always passes, so with none set goodput equals throughput.
- Errors: failed requests by message, the most frequent first.

Percentiles interpolate linearly between ranks, as numpy's default does. A summary is
a flat dict (but `errors`, message -> count) so it is also one CSV row; a statistic of
no samples is None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from statistics import fmean

from orchestrator.benchmark.loadgen import Record
from orchestrator.config.schema import SloConfig

PERCENTILES = (50, 90, 99)
TOP_ERRORS = 5


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(name: str, values: Sequence[float]) -> dict[str, float | None]:
    """`{name}_mean`, `{name}_p50`, ... of the values."""
    stats = {f"{name}_mean": fmean(values) if values else None}
    stats.update({f"{name}_p{q}": percentile(values, q) for q in PERCENTILES})
    return stats


def meets_slo(record: Record, slo: SloConfig) -> bool:
    if record.error is not None:
        return False
    if slo.ttft_ms is not None and (record.ttft_ms is None or record.ttft_ms > slo.ttft_ms):
        return False
    return slo.itl_ms is None or not record.itl_ms or fmean(record.itl_ms) <= slo.itl_ms


def summarize(records: Sequence[Record], duration_s: float, gpus: int, slo: SloConfig) -> dict:
    done = [r for r in records if r.error is None]
    failed = [r for r in records if r.error is not None]
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    prompt = sum(r.prompt_tokens for r in done)
    cached = sum(r.cached_tokens for r in done)
    output = sum(r.output_tokens for r in done)
    return {
        "completed": len(done),
        "failed": len(failed),
        "duration_s": duration_s,
        "gpus": gpus,
        "request_throughput": len(done) * per_s,
        "output_throughput": output * per_s,
        "output_throughput_per_gpu": output * per_s / max(1, gpus),
        "input_throughput": prompt * per_s,
        "total_input_tokens": prompt,
        "total_output_tokens": output,
        "cached_tokens": cached,
        "cache_hit_rate": cached / prompt if prompt else None,
        **distribution("ttft_ms", [r.ttft_ms for r in done if r.ttft_ms is not None]),
        **distribution("itl_ms", [x for r in done for x in r.itl_ms]),
        **distribution("e2e_ms", [r.e2e_ms for r in done if r.e2e_ms is not None]),
        "slo_ttft_ms": slo.ttft_ms,
        "slo_itl_ms": slo.itl_ms,
        "goodput": sum(meets_slo(r, slo) for r in done) * per_s,
        "errors": dict(Counter(r.error for r in failed).most_common(TOP_ERRORS)),
    }
