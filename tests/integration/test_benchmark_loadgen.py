"""The load process against a real frontend and mock worker: `python -m orchestrator.benchmark`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.frontend_support import frontend
from tests.integration.worker_support import TINY, worker
from tests.managed import free_port

pytestmark = pytest.mark.slow


def _bench(tmp_path: Path, url: str, **config) -> subprocess.CompletedProcess:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "orchestrator.benchmark", "--url", url, "--model", "tiny", "--config", str(job),
            "--gpus", "2", "--out", str(tmp_path / "out"), "--tokenizer", TINY]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_shared_prefix_load_completes_with_exact_lengths_and_cache_hits(tmp_path: Path):
    config = {"workload": "shared_prefix", "isl": 96, "osl": 12, "shared_prefix_len": 64, "num_prefixes": 2,
              "concurrency": 4, "num_requests": 20, "warmup_requests": 2, "seed": 7}
    with worker(tmp_path, "worker", speedup=20), frontend(tmp_path) as (_, url):
        run = _bench(tmp_path, url, **config)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    summary, requests = results["summary"], results["requests"]
    assert results["config"]["workload"] == "shared_prefix"
    assert (summary["completed"], summary["failed"]) == (20, 0)
    assert len(requests) == 20
    assert all(r["error"] is None for r in requests)
    assert all(r["output_tokens"] == 12 and r["prompt_tokens"] == 96 for r in requests)
    # at most one latency per token after the first (a chunk may carry several tokens)
    assert all(len(r["itl_ms"]) <= 11 and min(r["itl_ms"], default=0) >= 0 for r in requests)
    assert summary["itl_ms_p50"] <= summary["itl_ms_p99"]
    assert all(r["ttft_ms"] <= r["e2e_ms"] for r in requests)
    assert summary["cache_hit_rate"] > 0
    assert summary["output_throughput_per_gpu"] == pytest.approx(summary["output_throughput"] / 2)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {row["output_tokens"] for row in rows} == {"12"}
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["completed"] == "20"


def test_multi_turn_conversations_grow_by_the_answers(tmp_path: Path):
    config = {"workload": "multi_turn", "isl": 20, "osl": 8, "turns": 3, "concurrency": 2, "num_requests": 6}
    with worker(tmp_path, "worker"), frontend(tmp_path) as (_, url):
        run = _bench(tmp_path, url, **config)
    assert run.returncode == 0, run.stderr
    requests = json.loads((tmp_path / "out" / "results.json").read_text())["requests"]
    assert len(requests) == 6 and all(r["error"] is None for r in requests)
    by_session: dict[int, list] = {}
    for r in sorted(requests, key=lambda r: r["turn"]):
        by_session.setdefault(r["session"], []).append(r)
    assert len(by_session) == 2
    for turns in by_session.values():
        assert [t["turn"] for t in turns] == [0, 1, 2]
        # each turn: the previous prompt, its answer re-tokenized (near 8 tokens), 20 new tokens
        for prev, nxt in zip(turns, turns[1:], strict=False):
            assert nxt["start_s"] >= prev["start_s"] + prev["e2e_ms"] / 1000
            assert prev["prompt_tokens"] + 20 < nxt["prompt_tokens"] <= prev["prompt_tokens"] + 20 + 3 * 8


def test_unreachable_endpoint_is_one_line_and_exit_1(tmp_path: Path):
    run = _bench(tmp_path, f"http://127.0.0.1:{free_port()}", num_requests=2)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("benchmark: cannot reach")
    assert not (tmp_path / "out").exists()
