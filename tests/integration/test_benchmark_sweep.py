"""Benchmark sweeps as users run them: `dynamo-launch -m ... benchmark=sweep ...` on the
mock engine, each job a deployment (or the previous one, reused) driven by the load
process, and the comparison at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from tests.integration.frontend_support import frontend
from tests.integration.worker_support import worker
from tests.managed import free_port, port_bases
from tests.support import compose_config

pytestmark = pytest.mark.slow
DYNAMO_LAUNCH = str(Path(sys.executable).parent / "dynamo-launch")
SMALL = ["benchmark=sweep", "benchmark.isl=256", "benchmark.osl=8", "benchmark.num_requests=24",
         "benchmark.warmup_requests=2", "engine.mock.speedup_ratio=20"]


def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    base, sglang_base = port_bases()
    return subprocess.run(
        [DYNAMO_LAUNCH, "-m", *overrides, f"ports.base={base}", f"ports.sglang_base={sglang_base}",
         f"frontend.port={free_port()}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "supervisor.health_interval_s=0.3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def job(tmp_path: Path, n: int) -> tuple[dict, dict]:
    job_dir = tmp_path / "sweep" / str(n)
    status = json.loads((job_dir / "status.json").read_text())
    results = json.loads((job_dir / "results.json").read_text()) if (job_dir / "results.json").exists() else None
    return status, results


def test_a_sweep_reuses_its_deployment_and_ends_with_a_report(tmp_path):
    result = sweep(tmp_path, "engine=mock", "deployment.groups.agg.replicas=2", *SMALL, "benchmark.concurrency=2,6")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "sweep"
    for name in ("summary.csv", "summary.md", "pareto.png", "ttft_vs_concurrency.png", "itl_vs_concurrency.png"):
        assert (root / name).stat().st_size > 0, name
    assert (root / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "benchmark.concurrency" in result.stdout and "req/s" in result.stdout  # the table
    for n, concurrency in enumerate((2, 6)):
        status, results = job(tmp_path, n)
        assert status["status"] == "ok" and status["reused_deployment"] == (n == 1)
        s = results["summary"]
        assert s["concurrency"] == concurrency and s["completed"] == 24 and s["failed"] == 0
        assert len(results["requests"]) == 24 and all(r["output_tokens"] == 8 for r in results["requests"])
        assert s["request_throughput"] == pytest.approx(s["completed"] / s["duration_s"], rel=1e-6)
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert s[f"{metric}_p50"] <= s[f"{metric}_p90"] <= s[f"{metric}_p99"]
        assert s["goodput"] <= s["request_throughput"]
        # The same seed sends the same prompts: the reused deployment's caches were flushed.
        assert s["cache_hit_rate"] == 0
        for name in ("resolved_config.yaml", "benchmark.yaml", "results.csv", "summary.csv"):
            assert (root / str(n) / name).exists(), name
    assert (root / "1" / "agg-0.log").exists() is False, "the second job ran on the first job's deployment"


def test_a_failed_job_is_reported_and_the_sweep_goes_on(tmp_path):
    result = sweep(tmp_path, "engine=mock", *SMALL, "benchmark.workload=trace,synthetic",
                   f"benchmark.trace={tmp_path / 'missing.jsonl'}")
    assert result.returncode == 0, result.stderr[-3000:]
    failed, _ = job(tmp_path, 0)
    assert failed["status"] == "failed" and "missing.jsonl" in failed["reason"]
    ok, results = job(tmp_path, 1)
    assert ok["status"] == "ok" and results["summary"]["completed"] == 24
    assert "failed" in (tmp_path / "sweep" / "summary.md").read_text()


def test_stop_on_failure_ends_the_sweep(tmp_path):
    result = sweep(tmp_path, "engine=mock", *SMALL, "benchmark.workload=trace,synthetic",
                   f"benchmark.trace={tmp_path / 'missing.jsonl'}", "benchmark.stop_on_failure=true")
    assert result.returncode != 0
    assert not (tmp_path / "sweep" / "1").exists()


def test_a_trace_replays_at_its_timestamps(tmp_path):
    trace = tmp_path / "trace.jsonl"
    stamps = [0, 400, 800, 1200, 1600]  # ms; replayed twice as fast
    trace.write_text("".join(json.dumps({"timestamp": t, "input_length": 600, "output_length": 4,
                                         "hash_ids": [1, i + 2]}) + "\n" for i, t in enumerate(stamps)))
    result = sweep(tmp_path, "engine=mock", *SMALL, "benchmark.workload=trace", f"benchmark.trace={trace}",
                   "benchmark.trace_speedup=2", "benchmark.num_requests=5")
    assert result.returncode == 0, result.stderr[-3000:]
    _, results = job(tmp_path, 0)
    starts = sorted(r["start_s"] for r in results["requests"])
    for start, stamp in zip(starts, stamps, strict=True):
        assert stamp / 2000 <= start - starts[0] + 1e-3 < stamp / 2000 + 0.15
    assert results["summary"]["cache_hit_rate"] > 0  # the shared first block (hash id 1)


def test_the_load_can_target_any_endpoint_without_deploying(tmp_path):
    with worker(tmp_path, "w", speedup=20), frontend(tmp_path) as (_, url):
        result = sweep(tmp_path, "engine=mock", *SMALL, f"benchmark.url={url}", "model.served_name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    status, results = job(tmp_path, 0)
    assert status["url"] == url and results["summary"]["completed"] == 24
    job_dir = tmp_path / "sweep" / "0"
    assert not (job_dir / "frontend.log").exists() and not list(job_dir.glob("agg-*.log")), "nothing was deployed"


def test_a_recipe_carries_its_own_benchmark():
    cfg = compose_config("+recipe=llama70b_disagg", "engine=mock", "benchmark=recipe")
    b = cfg.benchmark
    assert (b.enabled, b.isl, b.osl, b.concurrency_per_gpu, b.seed) == (True, 8192, 1024, 16, 100)
    with pytest.raises(ConfigError, match="perf"):
        compose_config("+recipe=llama8b_agg", "engine=mock", "benchmark=recipe")
