"""`python -m orchestrator.benchmark` refuses what it cannot run with one line and exit 1,
before it sends anything; the result files it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from orchestrator.benchmark.__main__ import main
from orchestrator.benchmark.loadgen import Record
from orchestrator.benchmark.results import load_config, write_results
from orchestrator.benchmark.workload import WorkloadError
from orchestrator.config.schema import BenchmarkConfig


def _main(tmp_path: Path, yaml_text: str, capsys) -> tuple[int, str]:
    job = tmp_path / "job.yaml"
    job.write_text(yaml_text)
    # nothing listens on port 9: a request would fail, so an exit before one is the config's doing
    code = main(["--url", "http://127.0.0.1:9", "--model", "tiny", "--config", str(job), "--out", str(tmp_path / "o")])
    return code, capsys.readouterr().err


def test_a_missing_trace_exits_1_with_one_line(tmp_path: Path, capsys):
    code, err = _main(tmp_path, f"workload: trace\ntrace: {tmp_path / 'none.jsonl'}\n", capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("benchmark: cannot read the trace")
    assert not (tmp_path / "o").exists()


def test_an_unknown_config_key_exits_1(tmp_path: Path, capsys):
    code, err = _main(tmp_path, "concurrancy: 4\n", capsys)
    assert code == 1 and "concurrancy" in err


def test_an_unreachable_endpoint_exits_1(tmp_path: Path, capsys):
    code, err = _main(tmp_path, "num_requests: 1\n", capsys)
    assert code == 1 and err.startswith("benchmark: cannot reach http://127.0.0.1:9/v1/models")


def test_config_values_are_typed_by_the_schema(tmp_path: Path):
    job = tmp_path / "job.yaml"
    job.write_text("workload: shared_prefix\nconcurrency: 4\nslo:\n  ttft_ms: 200\n")
    cfg = load_config(job)
    assert isinstance(cfg, BenchmarkConfig) and cfg.concurrency == 4 and cfg.slo.ttft_ms == 200.0
    job.write_text("concurrency: many\n")
    with pytest.raises(WorkloadError, match="concurrency"):
        load_config(job)


def test_result_files_hold_every_request(tmp_path: Path):
    records = [Record(0, 0, 0.0, 8, 3, 5.0, [1.0, 3.0], 9.0, 8, 4, 3, None),
               Record(1, 0, 0.1, 8, 3, None, [], None, 8, 0, 0, "HTTP 503: overloaded")]
    write_results(tmp_path, BenchmarkConfig(), {"completed": 1, "errors": {"HTTP 503: overloaded": 1}}, records)
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["config"]["workload"] == "synthetic"
    assert [r["itl_ms"] for r in document["requests"]] == [[1.0, 3.0], []]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["itl_count"], r["itl_mean_ms"], r["error"]) for r in rows] == [("2", "2.0", ""),
                                                                             ("0", "", "HTTP 503: overloaded")]
    with open(tmp_path / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row == {"completed": "1", "errors": "HTTP 503: overloaded (1)"}
