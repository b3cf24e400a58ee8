"""The Prometheus scrape config and Grafana dashboard written for a launch plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from orchestrator.engine.mock.metrics import EngineMetrics
from orchestrator.metrics import ComponentMetrics, FrontendMetrics
from orchestrator.plan import build_plan
from orchestrator.roles import Role
from orchestrator.supervisor.observability import observability_files
from tests.support import compose_config

RECIPES = ("llama70b_disagg", "deepseek_r1_disagg_dp")


@pytest.fixture(params=RECIPES)
def plan(request, tmp_path: Path):
    return build_plan(compose_config(f"+recipe={request.param}", "engine=mock"), tmp_path / "run")


def files_of(plan):
    files = observability_files(plan)
    assert set(files) == {str(plan.run_dir / "prometheus.yml"), str(plan.run_dir / "grafana-dashboard.json")}
    return yaml.safe_load(files[str(plan.run_dir / "prometheus.yml")]), json.loads(
        files[str(plan.run_dir / "grafana-dashboard.json")])


# Prometheus


def test_every_process_is_scraped_once_with_its_labels(plan):
    config, _ = files_of(plan)
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"dynamo-frontend", "dynamo-workers"}
    seen = {}
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        for static in job["static_configs"]:
            (target,) = static["targets"]
            labels = static["labels"]
            assert labels["process"] not in seen, f"{labels['process']} is scraped twice"
            seen[labels["process"]] = (name, target, labels)
    assert set(seen) == {p.name for p in plan.processes}
    for p in plan.processes:
        job, target, labels = seen[p.name]
        assert f"http://{target}/health" == p.health_url
        if p.role is Role.frontend:
            assert job == "dynamo-frontend"
            assert labels == {"process": "frontend", "role": "frontend"}
        else:
            assert job == "dynamo-workers"
            assert labels == {"process": p.name, "role": "worker", "worker_type": p.worker_type.value,
                              "group": p.group}


def test_follower_nodes_are_scraped(tmp_path):
    plan = build_plan(compose_config("+recipe=deepseek_r1_disagg_dp", "engine=mock"), tmp_path)
    followers = [p for p in plan.processes if p.node_rank > 0]
    assert followers, "the recipe should have a multi-node worker"
    config, _ = files_of(plan)
    (workers,) = [job for job in config["scrape_configs"] if job["job_name"] == "dynamo-workers"]
    scraped = {s["labels"]["process"]: s["targets"][0] for s in workers["static_configs"]}
    for p in followers:
        assert scraped[p.name] == f"{p.host}:{p.ports['system']}"


# Grafana


def exposed_names() -> set[str]:
    """Every series name the project's processes expose, from the real metric classes:
    a renamed metric changes this set."""
    registry = CollectorRegistry()
    FrontendMetrics(registry)
    ComponentMetrics(registry, "ns", "backend", "generate", "m")
    EngineMetrics(registry, "m", "mock").rank(0)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {family.name + s for family in registry.collect() for s in suffixes[family.type]}
    return names | {"up"}  # Prometheus' own per-target scrape health


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings,
    label matchers, ranges and grouping clauses are removed, that are not calls."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if not m.group(2) and m.group(1) not in KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (le, process) (rate(sglang:ttft_bucket{job=~"a|b"}[$__rate_interval])))'
    assert metric_names(expr) == {"sglang:ttft_bucket"}
    assert metric_names("sum(a_total) / on (process) b") == {"a_total", "b"}


def test_allowed_names_come_from_the_metric_classes():
    names = exposed_names()
    assert {"dynamo_frontend_requests_total", "dynamo_frontend_time_to_first_token_seconds_bucket",
            "dynamo_component_cancellation_total", "sglang:token_usage",
            "sglang:inter_token_latency_seconds_bucket"} <= names


def panels_with_queries(board):
    return [p for p in board["panels"] if p["type"] != "row"]


def test_dashboard_queries_only_exposed_metrics(plan):
    _, board = files_of(plan)
    allowed = exposed_names()
    panels = panels_with_queries(board)
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, f"{panel['title']}: no metric in {target['expr']}"
            assert used <= allowed, f"{panel['title']}: unknown {used - allowed}"


def test_dashboard_covers_the_promised_panels(plan):
    _, board = files_of(plan)
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels_with_queries(board)}
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in panels_with_queries(board)}
    assert "by (status)" in exprs["Request rate by status"] and units["Request rate by status"] == "reqps"
    for title, family in (("Time to first token", "time_to_first_token_seconds"),
                          ("Inter-token latency", "inter_token_latency_seconds")):
        assert f"histogram_quantile(0.5, sum by (le) (rate(dynamo_frontend_{family}_bucket" in exprs[title]
        assert f"histogram_quantile(0.99, sum by (le) (rate(dynamo_frontend_{family}_bucket" in exprs[title]
        assert units[title] == "s"
    assert "sglang:token_usage" in exprs["KV cache usage per worker"]
    assert units["KV cache usage per worker"] == units["Prefix cache hit rate per worker"] == "percentunit"
    assert "sglang:gen_throughput" in exprs["Generation throughput per worker"]
    assert 'up{job=~"dynamo-frontend|dynamo-workers"}' in exprs["Process up"]
    assert "migration_total" in exprs["Cancellations and migrations"]
    assert "cancellation_total" in exprs["Cancellations and migrations"]
    per_worker = [t for t, e in exprs.items() if "per worker" in t]
    assert all("by (process)" in exprs[t] for t in per_worker)


def test_dashboard_is_importable(plan):
    _, board = files_of(plan)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["schemaVersion"] >= 36 and board["id"] is None
    (ds_input,) = board["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS" and ds_input["pluginId"] == "prometheus"
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"
    for panel in panels_with_queries(board):
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert panel["title"] and panel["fieldConfig"]["defaults"]["unit"]
