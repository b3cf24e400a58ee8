"""The live view of a running deployment (a rich table, when stdout is a terminal).

One row per process: role, replica, pid, state, GPUs, ports, health, restarts, and
from the process's own `/metrics`: requests in flight, requests per second (from the
request counter between two refreshes) and KV-cache usage.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from rich.table import Table

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? ([-+0-9.eE]+|NaN)$", re.M)


def metric_sums(text: str) -> dict[str, float]:
    """Every sample of the Prometheus text, summed per metric name over its labels."""
    sums: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        if value != "NaN":
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


@dataclass
class Load:
    inflight: float | None = None
    rate: float | None = None  # requests/s
    kv_usage: float | None = None
    _requests: float | None = None
    _at: float | None = None

    def update(self, metrics: dict[str, float], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.inflight = metrics.get("dynamo_component_inflight_requests", metrics.get("dynamo_frontend_inflight_requests"))
        requests = metrics.get("dynamo_component_requests_total", metrics.get("dynamo_frontend_requests_total"))
        if requests is not None and self._requests is not None and now > self._at:
            self.rate = max(0.0, requests - self._requests) / (now - self._at)
        self._requests, self._at = requests, now
        self.kv_usage = metrics.get("sglang:token_usage")


def table(rows: list[dict], title: str) -> Table:
    view = Table(title=title, title_justify="left")
    for column in ("process", "role", "replica", "pid", "state", "GPUs", "ports", "health", "restarts",
                   "in flight", "req/s", "KV"):
        view.add_column(column)
    for r in rows:
        load: Load = r["load"]
        view.add_row(
            r["name"], r["role"], "-" if r["replica"] is None else str(r["replica"]), str(r["pid"] or "-"),
            r["state"], ",".join(map(str, r["gpus"])) or "-", " ".join(f"{k}={v}" for k, v in r["ports"].items()),
            "ok" if r["healthy"] else "-", str(r["restarts"]),
            _number(load.inflight, "{:.0f}"), _number(load.rate, "{:.1f}"), _number(load.kv_usage, "{:.0%}"),
        )
    return view


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
