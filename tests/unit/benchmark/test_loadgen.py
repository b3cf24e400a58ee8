"""The load generator's schedule, in virtual time: a fake clock that only sleeping moves."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.benchmark.client import Outcome, inter_token_latencies
from orchestrator.benchmark.loadgen import LoadGenerator, poisson_arrivals
from orchestrator.benchmark.workload import Session, Turn, Workload
from orchestrator.config.schema import BenchmarkConfig


class VirtualTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # what is ready runs first, as it would in the real sleep
        self.now += seconds
        await asyncio.sleep(0)


class FakeEndpoint:
    """Answers every request at once with `osl` tokens; records what was sent and when."""

    def __init__(self, time: VirtualTime) -> None:
        self.time, self.sent, self.inflight, self.max_inflight = time, [], 0, 0

    async def send(self, prompt: list[int], osl: int) -> Outcome:
        self.sent.append((self.time.now, list(prompt)))
        answer = f"answer{len(self.sent) - 1}"  # names the request by its index in `sent`
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        for _ in range(3):  # let the other lanes run while this request is "in flight"
            await asyncio.sleep(0)
        self.inflight -= 1
        return Outcome(ttft_ms=1.0, itl_ms=[0.5] * (osl - 1), e2e_ms=2.0, prompt_tokens=len(prompt),
                       output_tokens=osl, text=answer)


def _session(i: int, *segments: list[int], at: float | None = None) -> Session:
    return Session(i, [Turn(list(s), 4) for s in segments], arrival_s=at)


def _run(cfg: BenchmarkConfig, workload: Workload, retokenize=None):
    time = VirtualTime()
    endpoint = FakeEndpoint(time)
    done = []
    gen = LoadGenerator(cfg, endpoint.send, retokenize, clock=time.clock, sleep=time.sleep, on_done=done.append)
    result = asyncio.run(gen.run(workload))
    return result, endpoint, done


def test_trace_requests_are_sent_at_their_arrival_times():
    arrivals = [0.0, 0.5, 0.5, 2.0, 3.25]
    workload = Workload([_session(i, [i], at=at) for i, at in enumerate(arrivals)])
    result, endpoint, _ = _run(BenchmarkConfig(concurrency=1), workload)
    sent_at = [t - 100.0 for t, _ in endpoint.sent]
    assert sent_at == arrivals  # the concurrency does not apply to a trace
    assert [r.start_s for r in result.records] == arrivals


def test_request_rate_follows_the_seeded_poisson_arrivals():
    workload = Workload([_session(i, [i]) for i in range(20)])
    cfg = BenchmarkConfig(request_rate=4.0, seed=5)
    _, endpoint, _ = _run(cfg, workload)
    assert [t - 100.0 for t, _ in endpoint.sent] == pytest.approx(poisson_arrivals(4.0, 20, 5))


def test_poisson_arrivals_are_deterministic_with_the_rate_as_mean():
    times = poisson_arrivals(10.0, 4000, seed=1)
    assert times == poisson_arrivals(10.0, 4000, seed=1) != poisson_arrivals(10.0, 4000, seed=2)
    assert times[0] == 0.0 and times == sorted(times)
    assert 0.09 < times[-1] / (len(times) - 1) < 0.11


def test_concurrency_keeps_that_many_in_flight_and_sends_each_request_once():
    workload = Workload([_session(i, [i]) for i in range(13)], warmup=[_session(-1, [99])])
    result, endpoint, done = _run(BenchmarkConfig(concurrency=4), workload)
    assert endpoint.max_inflight == 4
    assert sorted(p[0] for _, p in endpoint.sent) == [*range(13), 99]
    assert sorted(r.session for r in result.records) == list(range(13))  # the warm-up is not recorded
    assert len(done) == 13


def test_multi_turn_prompts_carry_the_history_and_answers():
    workload = Workload([_session(0, [1, 2], [3], [4, 5]), _session(1, [7], [8])])

    def retokenize(text: str) -> list[int]:
        return [1000 + int(text.removeprefix("answer"))]

    result, endpoint, _ = _run(BenchmarkConfig(concurrency=2), workload, retokenize)
    by_session = {}
    for r in result.records:
        by_session.setdefault(r.session, []).append(r)
    assert [r.turn for r in by_session[0]] == [0, 1, 2]
    prompts = [p for _, p in endpoint.sent]
    first = prompts.index([1, 2])
    second = next(p for p in prompts if p[:2] == [1, 2] and len(p) == 4)
    assert second[2:] == [1000 + first, 3]  # the answer re-tokenized, then the new segment
    assert [r.isl for r in by_session[0]] == [2, 4, 7]


def test_duration_stops_new_requests():
    workload = Workload([_session(i, [i], at=float(i)) for i in range(10)])
    result, endpoint, _ = _run(BenchmarkConfig(duration_s=3.5), workload)
    assert len(endpoint.sent) == len(result.records) == 4  # sent at 0, 1, 2, 3


def test_a_chunk_of_k_tokens_counts_k_latencies():
    chunks = [(0.0, 1), (0.010, 1), (0.040, 3)]  # the last chunk brought 3 tokens in 30 ms
    assert inter_token_latencies(chunks, 5) == [10.0, 10.0, 10.0, 10.0]


def test_without_per_chunk_usage_the_tokens_spread_over_the_chunks():
    chunks = [(0.0, None), (0.010, None), (0.040, None)]
    itl = inter_token_latencies(chunks, 5)  # 4 tokens after the first over 2 chunks: 2 each
    assert itl == [5.0, 15.0]
    assert inter_token_latencies([(0.0, None)], 5) == []
