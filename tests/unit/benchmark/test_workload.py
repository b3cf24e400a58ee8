"""Workloads: deterministic from the seed, exact lengths, real shared prefixes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.benchmark.workload import (
    TOKEN_RANGE,
    WorkloadError,
    build_workload,
    load_trace,
)
from orchestrator.config.schema import BenchmarkConfig


def _prompts(workload) -> list[list[int]]:
    return [s.turns[0].segment for s in workload.sessions]


def test_synthetic_is_deterministic_from_the_seed_with_exact_lengths():
    cfg = BenchmarkConfig(workload="synthetic", isl=50, osl=7, num_requests=10, seed=3)
    first, again = build_workload(cfg), build_workload(cfg)
    assert _prompts(first) == _prompts(again)
    assert _prompts(first) != _prompts(build_workload(BenchmarkConfig(**{**cfg.__dict__, "seed": 4})))
    assert [len(p) for p in _prompts(first)] == [50] * 10
    assert {s.turns[0].osl for s in first.sessions} == {7}
    assert all(t in TOKEN_RANGE for p in _prompts(first) for t in p)
    assert len({tuple(p) for p in _prompts(first)}) == 10


def test_synthetic_lengths_follow_the_stddev_and_stay_positive():
    cfg = BenchmarkConfig(isl=4, osl=4, isl_stddev=10, osl_stddev=10, num_requests=200, seed=1)
    workload = build_workload(cfg)
    isls = [len(p) for p in _prompts(workload)]
    osls = [s.turns[0].osl for s in workload.sessions]
    assert min(isls) == 1 and min(osls) == 1  # clipped, and the clip is reached with this spread
    assert len(set(isls)) > 5 and len(set(osls)) > 5


def test_shared_prefix_requests_share_their_prefix_round_robin_and_differ_after_it():
    cfg = BenchmarkConfig(workload="shared_prefix", isl=40, shared_prefix_len=32, num_prefixes=3, num_requests=9)
    prompts = _prompts(build_workload(cfg))
    assert [len(p) for p in prompts] == [40] * 9
    prefixes = [tuple(p[:32]) for p in prompts]
    assert len(set(prefixes)) == 3
    assert prefixes[:3] == prefixes[3:6] == prefixes[6:]
    assert len({tuple(p[32:]) for p in prompts}) == 9


def test_shared_prefix_needs_a_prefix():
    with pytest.raises(WorkloadError, match="shared_prefix_len"):
        build_workload(BenchmarkConfig(workload="shared_prefix", shared_prefix_len=0))


def test_multi_turn_counts_requests_across_conversations():
    cfg = BenchmarkConfig(workload="multi_turn", isl=10, osl=5, turns=3, num_requests=7)
    workload = build_workload(cfg)
    assert [len(s.turns) for s in workload.sessions] == [3, 3, 1]
    assert workload.num_requests == 7
    assert all(len(t.segment) == 10 and t.osl == 5 for s in workload.sessions for t in s.turns)


def test_warmup_requests_are_separate_from_the_measured_ones():
    cfg = BenchmarkConfig(isl=16, num_requests=3, warmup_requests=2)
    workload = build_workload(cfg)
    assert len(workload.warmup) == 2 and len(workload.sessions) == 3
    assert not {tuple(s.turns[0].segment) for s in workload.warmup} & set(map(tuple, _prompts(workload)))


def _write_trace(path: Path, lines: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_trace_blocks_with_the_same_hash_id_are_the_same_tokens(tmp_path: Path):
    trace = _write_trace(tmp_path / "t.jsonl", [
        {"timestamp": 1000, "input_length": 10, "output_length": 3, "hash_ids": [1, 2, 3]},
        {"timestamp": 1500, "input_length": 9, "output_length": 4, "hash_ids": [1, 2, 4]},
        {"timestamp": 3000, "input_length": 12, "output_length": 5, "hash_ids": [5]},
        {"timestamp": 3000, "input_length": 10, "output_length": 5, "hash_ids": [1, 2, 3]},
    ])
    cfg = BenchmarkConfig(workload="trace", trace=trace, trace_speedup=2.0, num_requests=100)
    workload = build_workload(replace(cfg, trace_block_size=4))
    a, b, c, d = _prompts(workload)
    assert [len(a), len(b), len(c), len(d)] == [10, 9, 12, 10]
    assert a[:8] == b[:8] == d[:8]  # blocks 1 and 2
    assert a[8:] != d[8:]  # the partial last block is each request's own, whatever its hash id
    assert c[:4] not in (a[:4], a[4:8]) and c[4:8] != c[:4]  # blocks c's hash ids do not cover are its own
    assert [s.turns[0].osl for s in workload.sessions] == [3, 4, 5, 5]
    assert [s.arrival_s for s in workload.sessions] == [0.0, 0.25, 1.0, 1.0]  # relative to the first, / speedup
    assert workload.timed
    assert _prompts(build_workload(replace(cfg, trace_block_size=4))) == [a, b, c, d]


def test_trace_is_cut_at_num_requests(tmp_path: Path):
    lines = [{"timestamp": i, "input_length": 5, "output_length": 1, "hash_ids": []} for i in range(10)]
    cfg = BenchmarkConfig(workload="trace", trace=_write_trace(tmp_path / "t.jsonl", lines), num_requests=4)
    assert len(build_workload(cfg).sessions) == 4


def test_a_bad_trace_line_is_named(tmp_path: Path):
    trace = _write_trace(tmp_path / "t.jsonl", [{"timestamp": 0, "input_length": 5, "output_length": 1},
                                                {"timestamp": 1, "output_length": 1}])
    with pytest.raises(WorkloadError, match=r"t\.jsonl:2"):
        load_trace(trace)
    with pytest.raises(WorkloadError, match="cannot read"):
        load_trace(tmp_path / "missing.jsonl")


def test_unknown_workload_is_refused():
    with pytest.raises(WorkloadError, match="unknown workload"):
        build_workload(BenchmarkConfig(workload="replay"))
