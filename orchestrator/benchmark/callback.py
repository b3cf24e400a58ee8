"""The sweep's side of benchmarking, as a Hydra callback (registered in conf/config.yaml).

At the start of a multirun it counts the jobs; before each job it shows where the
sweep is (a progress bar on stderr, the job's overrides); at the end it stops the
deployment the last job left running and, when the jobs benchmarked, writes the
comparison: a table on stdout, `summary.csv` / `summary.md` and the plots in the
sweep directory (`report.write_report`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from orchestrator.benchmark.job import DEPLOYMENT, STATUS_FILE


class BenchmarkCallback(Callback):
    def __init__(self) -> None:
        self._total = 0
        self._done = 0
        self._swept: set[str] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [o for o in overrides if o.is_sweep_override()]
        self._total = math.prod(len(list(o.sweep_string_iterator())) for o in swept)
        self._swept = {o.get_key_element() for o in swept}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._total:
            return
        progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            console=Console(stderr=True))
        job = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] in self._swept]
        progress.add_task(" ".join(job), total=self._total, completed=self._done)
        progress.console.print(progress.get_renderable())
        self._done += 1

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        _report(Path(config.hydra.runtime.output_dir), [Path(config.hydra.runtime.output_dir)])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        DEPLOYMENT.close()
        sweep_dir = Path(config.hydra.sweep.dir)
        _report(sweep_dir, sweep_dir.iterdir() if sweep_dir.is_dir() else [])


def _report(out_dir: Path, job_dirs) -> None:
    jobs = collect_jobs(job_dirs)
    if jobs:
        from orchestrator.benchmark.report import (
            write_report,  # matplotlib: only when there is a report
        )

        write_report(jobs, out_dir)


def collect_jobs(job_dirs) -> list[dict]:
    """The benchmark jobs among `job_dirs`, in job order: their overrides, outcome and summary."""
    jobs = []
    for job_dir in sorted((d for d in job_dirs if (d / STATUS_FILE).is_file()), key=_job_number):
        status_file = job_dir / STATUS_FILE
        status = json.loads(status_file.read_text())
        results = job_dir / "results.json"
        summary = json.loads(results.read_text())["summary"] if results.exists() and status["status"] == "ok" else None
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        jobs.append({"name": job_dir.name, "overrides": overrides, "status": status["status"],
                     "reason": status["reason"], "summary": summary})
    return jobs


def _job_number(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (1 << 30, job_dir.name)
