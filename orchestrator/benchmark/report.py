"""The end of a sweep: every job side by side, as a table, files and plots.

A job is {"name", "overrides", "status": "ok"|"failed", "reason", "summary"}. Only the
overrides whose values differ between jobs say what a job is, so they become the
columns (all of them for a single job would only repeat the command line). A failed
job keeps its row, marked failed with its reason, and has no point in the plots.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.benchmark.plots import write_plots
from orchestrator.benchmark.results import write_summary_csv

# (column title, summary key, format)
METRICS = (
    ("req/s", "request_throughput", "{:.2f}"),
    ("out tok/s/GPU", "output_throughput_per_gpu", "{:.1f}"),
    ("TTFT p50 ms", "ttft_ms_p50", "{:.1f}"),
    ("TTFT p99 ms", "ttft_ms_p99", "{:.1f}"),
    ("ITL p50 ms", "itl_ms_p50", "{:.2f}"),
    ("ITL p99 ms", "itl_ms_p99", "{:.2f}"),
    ("hit rate", "cache_hit_rate", "{:.1%}"),
    ("goodput", "goodput", "{:.2f}"),
)


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides as a dict; an override without `=` names itself."""
    parsed = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        parsed[key if sep else o] = value if sep else ""
    return parsed


def varying_keys(jobs: list[dict]) -> list[str]:
    """The override keys whose value is not the same in every job, in first-seen order."""
    parsed = [parse_overrides(j["overrides"]) for j in jobs]
    keys: list[str] = []
    for p in parsed:
        keys += [k for k in p if k not in keys]
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def write_report(jobs: list[dict], out_dir: Path) -> Path:
    """Prints the table and writes summary.csv, summary.md and the plots; returns summary.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(jobs)
    rows = [_row(job, keys) for job in jobs]
    # Piped to a file or a log, the table keeps whole rows rather than folding to 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=240)
    console.print(_table(rows, keys))
    write_summary_csv(out_dir / "summary.csv", [_csv_row(job, keys) for job in jobs])
    markdown = out_dir / "summary.md"
    markdown.write_text(_markdown(rows, keys))
    write_plots(jobs, [parse_overrides(j["overrides"]) for j in jobs], keys, out_dir)
    return markdown


def _row(job: dict, keys: list[str]) -> list[str]:
    """The table cells of one job: its name, varying overrides, metrics (or why it failed), errors."""
    overrides = parse_overrides(job["overrides"])
    cells = [job["name"]] + [overrides.get(k, "") for k in keys]
    summary = job.get("summary")
    if job["status"] != "ok" or summary is None:
        return cells + ["failed"] + [""] * (len(METRICS) - 1) + [job.get("reason") or "no results"]
    cells += [_format(summary.get(key), fmt) for _, key, fmt in METRICS]
    errors = summary.get("errors") or {}
    failed = summary.get("failed", 0)
    top = next(iter(errors), "")
    return cells + [f"{failed}: {top}" if failed else "0"]


def _format(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _headers(keys: list[str]) -> list[str]:
    return ["job", *keys, *(title for title, _, _ in METRICS), "errors"]


def _table(rows: list[list[str]], keys: list[str]) -> Table:
    table = Table(title="benchmark sweep" if len(rows) > 1 else "benchmark")
    for i, header in enumerate(_headers(keys)):
        numeric = len(keys) < i <= len(keys) + len(METRICS)
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        style = "red" if row[len(keys) + 1] == "failed" else None
        table.add_row(*row, style=style)
    return table


def _markdown(rows: list[list[str]], keys: list[str]) -> str:
    headers = _headers(keys)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv_row(job: dict, keys: list[str]) -> dict:
    overrides = parse_overrides(job["overrides"])
    row = {"job": job["name"], **{k: overrides.get(k, "") for k in keys},
           "status": job["status"], "reason": job.get("reason") or ""}
    return {**row, **(job.get("summary") or {})}
