"""Monitoring files for a launch plan: a Prometheus scrape config and a Grafana dashboard.

`observability_files(plan)` returns both as `{absolute path: content}` in the run dir;
it only computes them, the caller writes them. To use them:

    prometheus --config.file <run dir>/prometheus.yml

scrapes every process of the deployment (followers of multi-node workers included)
every 5 s, labelling each series with the `process`, `role`, `worker_type` and `group`
it came from. Then in Grafana, Dashboards > New > Import, upload
`<run dir>/grafana-dashboard.json` and pick that Prometheus as the datasource.

The dashboard queries metric names only (no `job` selector) except the `up` panel,
which needs this file's job names; it also works with another scrape config that
keeps the `process` target label.
"""

from __future__ import annotations

import json

import yaml

from orchestrator.plan import LaunchPlan, ProcessSpec
from orchestrator.roles import Role

PROMETHEUS_FILE = "prometheus.yml"
DASHBOARD_FILE = "grafana-dashboard.json"
SCRAPE_INTERVAL = "5s"
# Both the frontend's HTTP server and a worker's system server serve `/metrics` next
# to the `/health` the plan names.
METRICS_PATH = "/metrics"
JOBS = {Role.frontend: "dynamo-frontend", Role.worker: "dynamo-workers"}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"


def observability_files(plan: LaunchPlan) -> dict[str, str]:
    return {
        str(plan.run_dir / PROMETHEUS_FILE): prometheus_config(plan),
        str(plan.run_dir / DASHBOARD_FILE): json.dumps(dashboard(plan), indent=2) + "\n",
    }


# Prometheus


def target_labels(p: ProcessSpec) -> dict[str, str]:
    """The labels Prometheus puts on every series of `p` (a frontend has no worker
    type or group; Prometheus treats an empty label as absent, so none is written)."""
    labels = {"process": p.name, "role": p.role.value}
    if p.worker_type is not None:
        labels["worker_type"] = p.worker_type.value
    if p.group is not None:
        labels["group"] = p.group
    return labels


def metrics_target(p: ProcessSpec) -> str:
    """`host:port` of the server behind `p.health_url`, which also serves /metrics."""
    rest = p.health_url.split("://", 1)[1]
    return rest.split("/", 1)[0]


def prometheus_config(plan: LaunchPlan) -> str:
    jobs = []
    for role, job in JOBS.items():
        members = [p for p in plan.processes if p.role is role]
        if members:
            jobs.append({
                "job_name": job,
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": [metrics_target(p)], "labels": target_labels(p)} for p in members],
            })
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs,
    }
    header = f"# Scrapes the deployment in {plan.run_dir}: prometheus --config.file {plan.run_dir / PROMETHEUS_FILE}\n"
    return header + yaml.safe_dump(config, sort_keys=False)


# Grafana


def _target(expr: str, legend: str, ref: int, instant: bool = False) -> dict:
    target = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + ref)}
    if instant:
        target.update(instant=True, range=False)
    return target


_GRAPH_OPTIONS = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}
_STAT_OPTIONS = {
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "colorMode": "value", "graphMode": "none", "textMode": "value_and_name", "justifyMode": "auto",
}


def _panel(title: str, unit: str, queries: list[tuple[str, str]], kind: str = "timeseries",
           defaults: dict | None = None, instant: bool = False) -> dict:
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, **(defaults or {})}, "overrides": []},
        "options": _STAT_OPTIONS if kind == "stat" else _GRAPH_OPTIONS,
        "targets": [_target(expr, legend, i, instant) for i, (expr, legend) in enumerate(queries)],
    }


def _quantiles(frontend: str, engine: str) -> list[tuple[str, str]]:
    """p50/p99 from the frontend's histogram (what clients see) and each worker's engine
    p99 (where the time went)."""
    return [
        (f"histogram_quantile(0.5, sum by (le) (rate({frontend}_bucket{RATE})))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate({frontend}_bucket{RATE})))", "p99"),
        (f"histogram_quantile(0.99, sum by (le, process) (rate({engine}_bucket{RATE})))", "engine p99 {{process}}"),
    ]


_UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "down", "color": "red", "index": 0},
                                              "1": {"text": "up", "color": "green", "index": 1}}}]
_PERCENT = {"max": 1}


def _sections() -> list[tuple[str, list[dict]]]:
    jobs = "|".join(JOBS.values())
    return [
        ("Requests", [
            _panel("Request rate by status", "reqps", [
                (f"sum by (status) (rate(dynamo_frontend_requests_total{RATE}))", "{{status}}")]),
            _panel("In-flight requests", "short", [
                ("sum(dynamo_frontend_inflight_requests)", "frontend"),
                ("sum by (process) (dynamo_component_inflight_requests)", "{{process}}")]),
            _panel("Time to first token", "s", _quantiles(
                "dynamo_frontend_time_to_first_token_seconds", "sglang:time_to_first_token_seconds")),
            _panel("Inter-token latency", "s", _quantiles(
                "dynamo_frontend_inter_token_latency_seconds", "sglang:inter_token_latency_seconds")),
            _panel("Cancellations and migrations", "reqps", [
                (f"sum(rate(dynamo_frontend_model_cancellation_total{RATE}))", "cancelled by client"),
                (f"sum by (migration_type) (rate(dynamo_frontend_model_migration_total{RATE}))",
                 "migrated ({{migration_type}})"),
                (f"sum by (process) (rate(dynamo_component_cancellation_total{RATE}))", "cancelled at {{process}}")]),
            _panel("Worker errors by type", "reqps", [
                (f"sum by (process, error_type) (rate(dynamo_component_errors_total{RATE}))",
                 "{{process}} {{error_type}}")]),
        ]),
        ("Workers", [
            # A worker's KV pool is split evenly across its DP ranks, so the mean of the
            # ranks is the share of the whole pool in use.
            _panel("KV cache usage per worker", "percentunit", [
                ("avg by (process) (sglang:token_usage)", "{{process}}")], defaults=_PERCENT),
            _panel("Prefix cache hit rate per worker", "percentunit", [
                ("avg by (process) (sglang:cache_hit_rate)", "{{process}}")], defaults=_PERCENT),
            _panel("Generation throughput per worker", "suffix: tok/s", [
                ("sum by (process) (sglang:gen_throughput)", "{{process}}")]),
            # No restart counter exists; a scrape that fails while a process restarts
            # shows here, and a leader worker's uptime gauge falling back counts below.
            _panel("Process up", "none", [(f'up{{job=~"{jobs}"}}', "{{process}}")],
                   kind="state-timeline", defaults={"max": 1, "mappings": _UP_MAPPINGS}),
            _panel("Worker restarts in range", "none", [
                ("sum by (process) (resets(dynamo_component_uptime_seconds[$__range]))", "{{process}}")],
                kind="stat", instant=True),
        ]),
    ]


def _layout(sections: list[tuple[str, list[dict]]]) -> list[dict]:
    """Row headers and two panels of 12x8 per line; ids in reading order."""
    panels, y = [], 0
    for title, members in sections:
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        for i, panel in enumerate(members):
            panels.append({**panel, "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)}})
        y += 8 * ((len(members) + 1) // 2)
    return [{"id": i, **panel} for i, panel in enumerate(panels, 1)]


def dashboard(plan: LaunchPlan) -> dict:
    return {
        # Grafana's import dialog asks for a Prometheus datasource for DS_PROMETHEUS and
        # substitutes it; it becomes the default of the `datasource` variable, which
        # every panel uses, so the datasource can be switched later without editing.
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "state-timeline", "name": "State timeline", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "id": None,
        "uid": "dynamo-launch",
        "title": f"dynamo-launch: {plan.served_name}",
        "tags": ["dynamo-launch"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [{
            "name": "datasource",
            "label": "Datasource",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": True, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        }]},
        "panels": _layout(_sections()),
    }
