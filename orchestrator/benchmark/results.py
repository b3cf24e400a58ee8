"""The files of one load run, and reading its config.

- `results.json`: {"config": the BenchmarkConfig, "summary": stats.summarize(...) and
  the load's shape (workload, concurrency, request_rate), "requests": one object per
  measured request (loadgen.Record)}.
- `results.csv`: one row per request; its inter-token latencies become their count and
  mean (results.json keeps every one).
- `summary.csv`: the summary as one row; `errors` as "message (count); ...".
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.benchmark.loadgen import Record
from orchestrator.benchmark.workload import WorkloadError
from orchestrator.config.schema import BenchmarkConfig

RESULTS_JSON, RESULTS_CSV, SUMMARY_CSV = "results.json", "results.csv", "summary.csv"


def load_config(path: str | Path) -> BenchmarkConfig:
    """The `benchmark:` section as YAML, checked against the schema (unknown keys and bad types fail)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except (OSError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", None)
        raise WorkloadError(f"bad benchmark config {path}: {f'{key}: ' if key else ''}{str(e).splitlines()[0]}") from e


def load_shape(cfg: BenchmarkConfig) -> dict:
    """What the summary says about how the load was driven (the sweep report's axes)."""
    timed = cfg.workload == "trace"
    return {
        "workload": cfg.workload,
        "concurrency": None if timed or cfg.request_rate is not None else cfg.concurrency,
        "request_rate": None if timed else cfg.request_rate,
    }


def write_results(out: Path, cfg: BenchmarkConfig, summary: dict, records: list[Record]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"config": asdict(cfg), "summary": summary, "requests": [asdict(r) for r in records]}
    (out / RESULTS_JSON).write_text(json.dumps(document, indent=1))
    columns = [f.name for f in fields(Record) if f.name != "itl_ms"] + ["itl_count", "itl_mean_ms"]
    with open(out / RESULTS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            mean = sum(r.itl_ms) / len(r.itl_ms) if r.itl_ms else None
            writer.writerow({**asdict(r), "itl_count": len(r.itl_ms), "itl_mean_ms": mean})
    write_summary_csv(out / SUMMARY_CSV, [summary])


def write_summary_csv(path: Path, rows: list[dict]) -> None:
    """Rows of summaries (and whatever columns the caller adds), `errors` flattened to one cell."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            if isinstance(row.get("errors"), dict):
                row = {**row, "errors": "; ".join(f"{m} ({n})" for m, n in row["errors"].items())}
            writer.writerow(row)
