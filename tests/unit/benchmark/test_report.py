"""The sweep report: a row per job, the files and plots, failed jobs marked."""

from __future__ import annotations

import csv
from pathlib import Path

from orchestrator.benchmark.report import varying_keys, write_report


def _summary(concurrency: int, scale: float) -> dict:
    return {"workload": "synthetic", "concurrency": concurrency, "completed": 10, "failed": 1,
            "request_throughput": concurrency * scale, "output_throughput_per_gpu": 100.0 * concurrency * scale,
            "ttft_ms_p50": 10.0 * concurrency, "ttft_ms_p99": 30.0 * concurrency, "itl_ms_p50": 2.0 + concurrency,
            "itl_ms_p99": 5.0 + concurrency, "cache_hit_rate": 0.25, "goodput": concurrency * scale / 2,
            "errors": {"HTTP 503: overloaded": 1}}


def _jobs() -> list[dict]:
    jobs = []
    for i, (router, concurrency) in enumerate([("kv", 1), ("kv", 8), ("round_robin", 1), ("round_robin", 8)]):
        overrides = ["+recipe=llama8b_agg", "engine=mock", f"router={router}", f"benchmark.concurrency={concurrency}"]
        jobs.append({"name": str(i), "overrides": overrides, "status": "ok", "reason": None,
                     "summary": _summary(concurrency, 1.5 if router == "kv" else 1.0)})
    jobs.append({"name": "4", "overrides": ["+recipe=llama8b_agg", "engine=mock", "router=random",
                                            "benchmark.concurrency=64"],
                 "status": "failed", "reason": "the deployment stopped while starting (exit 3)", "summary": None})
    return jobs


def test_only_the_overrides_that_vary_become_columns():
    assert varying_keys(_jobs()) == ["router", "benchmark.concurrency"]


def test_report_writes_the_table_files_and_plots(tmp_path: Path, capsys):
    markdown = write_report(_jobs(), tmp_path)
    assert markdown == tmp_path / "summary.md"
    for name in ("pareto.png", "ttft_vs_concurrency.png", "itl_vs_concurrency.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["router"] for r in rows] == ["kv", "kv", "round_robin", "round_robin", "random"]
    assert rows[4]["status"] == "failed" and "exit 3" in rows[4]["reason"]
    assert rows[1]["request_throughput"] == "12.0" and rows[1]["errors"] == "HTTP 503: overloaded (1)"
    md = markdown.read_text().splitlines()
    assert md[0].startswith("| job | router | benchmark.concurrency | req/s |")
    assert len(md) == 2 + 5
    assert "failed" in md[-1] and "exit 3" in md[-1]
    out = capsys.readouterr().out
    assert "round_robin" in out and "failed" in out


def test_a_single_failed_job_still_reports(tmp_path: Path):
    jobs = [{"name": "0", "overrides": [], "status": "failed", "reason": "unreachable", "summary": None}]
    write_report(jobs, tmp_path)
    assert "unreachable" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
