"""The summary: consistent throughputs, ordered percentiles, goodput within throughput."""

from __future__ import annotations

import random

import pytest

from orchestrator.benchmark.loadgen import Record
from orchestrator.benchmark.stats import percentile, summarize
from orchestrator.config.schema import SloConfig


def _record(i: int, ttft: float, itl: list[float], error: str | None = None) -> Record:
    return Record(session=i, turn=0, start_s=i * 0.1, isl=100, osl=len(itl) + 1, ttft_ms=None if error else ttft,
                  itl_ms=[] if error else itl, e2e_ms=None if error else ttft + sum(itl), prompt_tokens=100,
                  cached_tokens=0 if error else 40, output_tokens=0 if error else len(itl) + 1, error=error)


def _records() -> list[Record]:
    rng = random.Random(0)
    done = [_record(i, rng.uniform(5, 50), [rng.uniform(1, 10) for _ in range(9)]) for i in range(40)]
    failed = [_record(40, 0, [], "HTTP 503: overloaded"), _record(41, 0, [], "HTTP 503: overloaded"),
              _record(42, 0, [], "ClientConnectionError")]
    return done + failed


def test_counts_throughputs_and_tokens():
    s = summarize(_records(), duration_s=8.0, gpus=4, slo=SloConfig())
    assert (s["completed"], s["failed"]) == (40, 3)
    assert s["request_throughput"] == pytest.approx(40 / 8.0)
    assert s["output_throughput"] == pytest.approx(400 / 8.0)
    assert s["output_throughput_per_gpu"] == pytest.approx(400 / 8.0 / 4)
    assert s["input_throughput"] == pytest.approx(4000 / 8.0)
    assert s["cache_hit_rate"] == pytest.approx(0.4)
    assert s["errors"] == {"HTTP 503: overloaded": 2, "ClientConnectionError": 1}
    assert list(s["errors"])[0] == "HTTP 503: overloaded"  # the most frequent first


def test_percentiles_are_ordered():
    s = summarize(_records(), duration_s=8.0, gpus=1, slo=SloConfig())
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert s[f"{name}_p50"] <= s[f"{name}_p90"] <= s[f"{name}_p99"]
    assert s["ttft_ms_p50"] <= s["e2e_ms_p50"]


def test_goodput_counts_requests_meeting_every_slo():
    records = _records()
    unset = summarize(records, 8.0, 1, SloConfig())
    assert unset["goodput"] == unset["request_throughput"]  # an unset SLO always passes
    ttft_only = summarize(records, 8.0, 1, SloConfig(ttft_ms=25.0))
    both = summarize(records, 8.0, 1, SloConfig(ttft_ms=25.0, itl_ms=5.5))
    meets_ttft = sum(r.error is None and r.ttft_ms <= 25.0 for r in records)
    assert ttft_only["goodput"] == pytest.approx(meets_ttft / 8.0)
    assert 0 < both["goodput"] < ttft_only["goodput"] < unset["request_throughput"]


def test_percentile_interpolates_between_ranks():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([], 50) is None


def test_no_completed_request_gives_empty_statistics():
    s = summarize([_record(0, 0, [], "boom")], duration_s=1.0, gpus=1, slo=SloConfig())
    assert (s["completed"], s["request_throughput"], s["goodput"]) == (0, 0.0, 0.0)
    assert s["ttft_ms_p50"] is None and s["cache_hit_rate"] is None
