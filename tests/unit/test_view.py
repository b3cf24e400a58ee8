"""The live view's numbers, from Prometheus text."""

from __future__ import annotations

from rich.console import Console

from orchestrator.supervisor.view import Load, metric_sums, table

WORKER = """# HELP dynamo_component_requests_total Requests received
# TYPE dynamo_component_requests_total counter
dynamo_component_requests_total{dynamo_component="backend",model="tiny"} 10.0
dynamo_component_inflight_requests{model="tiny"} 3.0
sglang:token_usage{dp_rank="0"} 0.25
sglang:token_usage{dp_rank="1"} 0.5
sglang:cache_hit_rate{dp_rank="0"} NaN
"""


def test_samples_are_summed_over_labels_and_nan_is_skipped():
    sums = metric_sums(WORKER)
    assert sums["dynamo_component_requests_total"] == 10 and sums["sglang:token_usage"] == 0.75
    assert "sglang:cache_hit_rate" not in sums


def test_request_rate_comes_from_two_scrapes():
    load = Load()
    load.update(metric_sums(WORKER), now=100.0)
    assert load.rate is None and load.inflight == 3
    load.update(metric_sums(WORKER.replace(" 10.0", " 30.0")), now=102.0)
    assert load.rate == 10.0


def test_table_shows_a_row_per_process():
    load = Load()
    load.update(metric_sums(WORKER), now=1.0)
    rows = [{"name": "agg-0", "role": "worker", "replica": 0, "pid": 42, "state": "ready", "gpus": [0, 1],
             "ports": {"system": 20000}, "healthy": True, "restarts": 1, "load": load}]
    console = Console(width=200, record=True)
    console.print(table(rows, "tiny"))
    text = console.export_text()
    assert "agg-0" in text and "0,1" in text and "75%" in text and "system=20000" in text
