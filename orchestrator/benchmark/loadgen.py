"""Driving a workload at an endpoint: when each session starts, and what each request measured.

The schedule, in order of precedence:
- a trace: each session starts at its timestamp (already divided by the speedup);
- `request_rate`: sessions arrive as a Poisson process of that rate (exponential gaps
  from the seed), however many are in flight;
- otherwise `concurrency`: that many sessions in flight, the next one starting as soon
  as one ends (a closed loop).
A multi-turn session sends its next turn only after the previous one finished, so its
turns never overlap; a failed turn ends its conversation.

Warm-up sessions run first, `concurrency` at a time, and are not recorded. The
measured phase stops starting requests once all were sent or `duration_s` has passed;
requests already in flight finish and count. Its duration runs from its first send to
its last answer, the span throughputs are divided by.

The clock and sleep are parameters so the schedule can be checked in virtual time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from orchestrator.benchmark.client import Outcome
from orchestrator.benchmark.workload import Session, Workload, WorkloadError
from orchestrator.config.schema import BenchmarkConfig

Send = Callable[[list[int], int], Awaitable[Outcome]]
Retokenize = Callable[[str], list[int]]


@dataclass
class Record:
    """One measured request, as results.json and results.csv hold it."""

    session: int
    turn: int
    start_s: float  # the send, in seconds after the measured phase began
    isl: int
    osl: int  # the output length asked for
    ttft_ms: float | None
    itl_ms: list[float]
    e2e_ms: float | None
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    error: str | None


@dataclass
class LoadResult:
    records: list[Record]
    duration_s: float


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    """n arrival times (s) of a Poisson process of `rate`/s; the first at 0."""
    rng, t, times = random.Random(f"{seed}/arrivals"), 0.0, []
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def arrivals(workload: Workload, cfg: BenchmarkConfig) -> list[float] | None:
    """Start times of the sessions, in order, or None for the closed (concurrency) loop."""
    if workload.timed:
        return [s.arrival_s for s in workload.sessions]
    if cfg.request_rate is not None:
        if cfg.request_rate <= 0:
            raise WorkloadError("request_rate must be positive")
        return poisson_arrivals(cfg.request_rate, len(workload.sessions), cfg.seed)
    return None


class LoadGenerator:
    """Runs one workload through `send` once; `on_done` is called after every measured request."""

    def __init__(
        self,
        cfg: BenchmarkConfig,
        send: Send,
        retokenize: Retokenize | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_done: Callable[[Record], None] = lambda record: None,
    ):
        self.cfg, self.send, self.retokenize = cfg, send, retokenize
        self.clock, self.sleep, self.on_done = clock, sleep, on_done
        self._records: list[Record] = []
        self._start = 0.0
        self._deadline = float("inf")

    async def run(self, workload: Workload) -> LoadResult:
        if any(len(s.turns) > 1 for s in workload.sessions) and self.retokenize is None:
            raise WorkloadError("a multi-turn workload needs a tokenizer (--tokenizer) for the answers")
        if workload.warmup:
            await self._closed_loop(iter(workload.warmup), record=False)
        self._records = []
        self._start = self.clock()
        if self.cfg.duration_s is not None:
            self._deadline = self._start + self.cfg.duration_s
        times = arrivals(workload, self.cfg)
        if times is None:
            await self._closed_loop(iter(workload.sessions), record=True)
        else:
            await self._open_loop(workload.sessions, times)
        ends = [r.start_s + r.e2e_ms / 1000 for r in self._records if r.e2e_ms is not None]
        first = min((r.start_s for r in self._records), default=0.0)
        duration = (max(ends) if ends else self.clock() - self._start) - first
        return LoadResult(sorted(self._records, key=lambda r: r.start_s), duration)

    async def _closed_loop(self, sessions: Iterator[Session], record: bool) -> None:
        async def lane() -> None:
            for session in sessions:  # one shared iterator: each session goes to exactly one lane
                if not await self._session(session, record):
                    return

        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, self.cfg.concurrency or 1)):
                tg.create_task(lane())

    async def _open_loop(self, sessions: list[Session], times: list[float]) -> None:
        async with asyncio.TaskGroup() as tg:
            for at, session in sorted(zip(times, sessions, strict=True), key=lambda p: p[0]):
                delay = self._start + at - self.clock()
                if delay > 0:
                    await self.sleep(delay)
                if self.clock() >= self._deadline:
                    return
                tg.create_task(self._session(session, record=True))

    async def _session(self, session: Session, record: bool) -> bool:
        """Sends the session's turns in order; False once the deadline has passed."""
        history: list[int] = []
        for k, turn in enumerate(session.turns):
            if record and self.clock() >= self._deadline:
                return False
            prompt = history + turn.segment
            sent = self.clock()
            outcome = await self.send(prompt, turn.osl)
            if record:
                r = Record(session.id, k, sent - self._start, len(prompt), turn.osl, outcome.ttft_ms, outcome.itl_ms,
                           outcome.e2e_ms, outcome.prompt_tokens, outcome.cached_tokens, outcome.output_tokens,
                           outcome.error)
                self._records.append(r)
                self.on_done(r)
            if outcome.error is not None:
                break
            if k + 1 < len(session.turns):
                # The answer's ids are not returned; its text re-tokenized may differ from
                # the generated ids by a few tokens at the edges.
                history = prompt + self.retokenize(outcome.text)
        return True
