"""Continuous batching of one DP rank, step by step as SGLang's scheduler does it.

Each step is either a prefill batch or a decode batch (SGLang's default without
`--enable-mixed-chunk`): waiting requests are admitted first come, first served
while request slots, the step's token budget (`chunked_prefill_size`, with one
long prompt chunked across steps, and `max_prefill_tokens`) and KV pages allow,
keeping room for the running requests' expected output (SGLang's decaying
new-token ratio). A request that does not fit stops admission and waits at the
head of the queue. Otherwise every running request decodes one token; when the
pool cannot hold the next token, the newest request is retracted to the waiting
queue, its KV freed, to be recomputed later. A step lasts the roofline's time
divided by the speedup ratio (on a running clock: see `StepClock`).

Disaggregated legs step aside from the batch: a prefill leg, once prefilled, holds
its KV until its stream has sent it (`transferred`); a decode leg waits for pages
for its prompt, then until its stream has received the KV (`received`) before it
joins the decode batch. The streams (see `engine.py`) await the transfers; the
scheduler only hands them `LegReady` and takes them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.kv_cache import KvCache
from orchestrator.engine.mock.metrics import EngineMetrics
from orchestrator.engine.mock.request import LegReady, Phase, Request, Role
from orchestrator.engine.mock.sizing import PoolSize
from orchestrator.engine.mock.timing import Roofline, StepClock
from orchestrator.engine.mock.tokens import TokenModel
from orchestrator.planes.messages import Chunk, ErrorKind

logger = logging.getLogger(__name__)

# SGLang's defaults: the new-token ratio starts at 0.7 x schedule_conservativeness and
# decays over 600 decode steps to 0.14 of that; max_new_tokens is clipped to 4096 when
# estimating; decode stats are logged every 40 steps.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
CLIP_MAX_NEW_TOKENS = 4096
DECODE_LOG_INTERVAL = 40


@dataclass
class _Step:
    prefill: list[tuple[Request, int]]  # request, tokens computed for it this step
    decode: list[Request]
    seconds: float  # simulated
    hit_rate: float = 0.0
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    """The scheduler of DP rank `rank`.

    Lifecycle: the engine runs `run()` in a task for its whole life and cancels it to
    stop. `conservativeness` scales the KV kept back for running requests' future
    tokens (SGLang's `--schedule-conservativeness`; 0 admits greedily and retracts).
    `submit`, `abort`, `transferred`, `received` and `fail` are synchronous
    and may be called at any time from the same event loop; results reach each
    request's stream through `Request.outbox`.
    """

    def __init__(
        self,
        rank: int,
        pool: PoolSize,
        max_prefill_tokens: int,
        cache: KvCache,
        roofline: Roofline,
        model: TokenModel,
        metrics: Optional[EngineMetrics] = None,
        conservativeness: float = 1.0,
    ):
        self.rank = rank
        self.cache = cache
        self._pool = pool
        self._max_prefill_tokens = max_prefill_tokens
        self._roofline = roofline
        self._clock = StepClock(roofline)
        self._model = model
        self._metrics = metrics
        self._rank_metrics = metrics.rank(rank) if metrics else None
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # admission order: the newest is last
        self._chunked: Optional[Request] = None
        self._prealloc: deque[Request] = deque()
        self._held: list[Request] = []  # TRANSFERRING or RECEIVING
        self._live: set[Request] = set()
        self._wake = asyncio.Event()
        self._init_ratio = INIT_NEW_TOKEN_RATIO * conservativeness
        self._min_ratio = self._init_ratio * MIN_NEW_TOKEN_RATIO_FACTOR
        self._new_token_ratio = self._init_ratio
        self._decode_steps = 0
        self.stopped = False  # set once `run` has ended, by cancellation or a crash

    # ---- called by the engine --------------------------------------------------------
    def submit(self, req: Request) -> None:
        self._live.add(req)
        if req.role is Role.DECODE_LEG:
            req.phase = Phase.PREALLOC
            self._prealloc.append(req)
        else:
            self._waiting.append(req)
        self._wake.set()

    def abort(self, req: Request) -> None:
        """End a request now with finish reason "abort"; its KV is freed at once."""
        if req.phase is Phase.FINISHED:
            return
        if req.leg is not None:
            req.leg.cancel()  # the transfer's peer learns the leg was aborted
        self._finish(req, "abort")

    def transferred(self, req: Request) -> None:
        """A prefill leg's KV has left: finish with its one token (SGLang: length 0)."""
        if req.phase is Phase.TRANSFERRING:
            self._observe_token(req)
            self._finish(req, "length", token_ids=req.tokens[req.prompt_len :])

    def received(self, req: Request, first_token: int) -> None:
        """A decode leg's KV has arrived: it joins the decode batch with its first token."""
        if req.phase is not Phase.RECEIVING:
            return
        self._held.remove(req)
        req.computed = req.prompt_len
        req.phase = Phase.RUNNING
        self._running.append(req)
        self._emit(req, first_token)
        self._wake.set()

    def fail(self, req: Request) -> None:
        """A transfer failed (its peer aborted, timed out, went away): free the KV without
        caching it; the stream raises the error."""
        if req.phase is Phase.FINISHED:
            return
        if self._metrics:
            self._metrics.num_transfer_failed_reqs.inc()
        self._detach(req)
        if req.slot is not None:
            self.cache.release(req.slot)
        req.phase = Phase.FINISHED
        self._live.discard(req)
        self._wake.set()

    def flush_cache(self) -> bool:
        if self._live:
            return False
        flushed = self.cache.flush()
        self.cache.flush_events()
        return flushed

    def load(self) -> dict:
        return {
            "dp_rank": self.rank,
            "running": len(self._running) + (self._chunked is not None),
            "waiting": len(self._waiting) + len(self._prealloc),
            "kv_usage": self.cache.token_usage,
            "active_decode_blocks": sum(self.cache.pages(r.slot.tokens) for r in self._running if r.slot),
            "active_prefill_tokens": sum(r.pending_prefill for r in chain(self._waiting, self._prealloc))
            + (self._chunked.pending_prefill if self._chunked else 0),
            "total_blocks": self.cache.total_pages,
        }

    # ---- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                self._admit_prealloc()
                step = self._next_step()
                if step is None:
                    self._report(idle=True)
                    self.cache.flush_events()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._clock.step(step.seconds)
                self._complete(step)
                self.cache.flush_events()
        except Exception:
            logger.exception("Scheduler of DP rank %d crashed", self.rank)
            error = EngineError(ErrorKind.INTERNAL, f"the scheduler of DP rank {self.rank} crashed")
            for req in list(self._live):
                req.phase = Phase.FINISHED
                req.outbox.put_nowait(error)
            self._live.clear()
            raise
        finally:
            self.stopped = True

    def _active(self) -> int:
        return len(self._running) + len(self._held) + (self._chunked is not None)

    def _admit_prealloc(self) -> None:
        """Give waiting decode legs pages for their prompts, oldest first."""
        while self._prealloc and self._active() < self._pool.max_running_requests:
            req = self._prealloc[0]
            if req.prompt_len + self._outlook(req) + self._kept() > self.cache.available_tokens:
                return
            slot = self.cache.open(self.cache.match_prefix(req.tokens))
            if not self.cache.grow(slot, req.prompt_len):
                self.cache.release(slot)
                return
            self._prealloc.popleft()
            req.slot, req.phase, req.admitted = slot, Phase.RECEIVING, time.monotonic()
            self._held.append(req)
            req.outbox.put_nowait(LegReady(None))

    def _next_step(self) -> Optional[_Step]:
        step = self._schedule_prefill()
        if step is not None:
            return step
        decode = self._schedule_decode()
        if not decode:
            return None
        kv_tokens = sum(len(r.tokens) for r in decode)
        return _Step([], decode, self._roofline.step_seconds(0, kv_tokens, decoding=True))

    def _outlook(self, req: Request) -> float:
        """KV tokens a decoding request is expected to still need (SGLang's estimate)."""
        return min(req.max_new_tokens - req.generated, CLIP_MAX_NEW_TOKENS) * self._new_token_ratio

    def _kept(self) -> float:
        """KV kept back for the running requests' future tokens."""
        return sum(self._outlook(r) for r in self._running)

    def _schedule_prefill(self) -> Optional[_Step]:
        if not self._waiting and self._chunked is None:
            return None  # the common decode step: skip the KV outlook below
        page = self._pool.page_size
        budget = self._pool.chunked_prefill_size if self._pool.chunked_prefill_size > 0 else None
        rem_input = self._max_prefill_tokens
        kept = self._kept()  # grows with each request admitted to this step
        items: list[tuple[Request, int]] = []
        from_queue = hits = new_tokens = 0
        carry = [self._chunked] if self._chunked is not None else []
        for req in chain(carry, self._waiting):
            if rem_input <= 0 or (budget is not None and budget <= 0):
                break
            fresh = req.slot is None
            if fresh and self._active() + from_queue >= self._pool.max_running_requests:
                break
            if fresh:
                match = self.cache.match_prefix(req.tokens)
                req.slot, req.computed = self.cache.open(match), match.tokens
            assert req.slot is not None
            extend = req.pending_prefill
            take = extend if budget is None or extend <= budget else budget // page * page
            decodes_next = take == extend and req.role in (Role.GENERATE, Role.DECODE_LEG)
            outlook = self._outlook(req) if decodes_next else 0.0
            fits = take > 0 and take + outlook + kept <= self.cache.available_tokens
            if not fits or not self.cache.grow(req.slot, req.computed + take):
                if fresh:
                    self.cache.release(req.slot)
                    req.slot, req.computed = None, 0
                break
            if fresh:
                from_queue += 1
                hits += req.computed
                if req.admitted is None:
                    req.admitted = time.monotonic()
                    req.cached_tokens = req.computed
                    if self._rank_metrics:
                        self._rank_metrics.queue_time.observe(req.admitted - req.arrived)
            req.phase = Phase.PREFILLING
            items.append((req, take))
            kept += outlook
            rem_input -= take
            new_tokens += take
            if budget is not None:
                budget -= take
            if take < extend:
                break  # one chunked request at a time
        for _ in range(from_queue):
            self._waiting.popleft()
        if not items:
            return None
        hit_rate = hits / (hits + new_tokens) if hits + new_tokens else 0.0
        return _Step(items, [], self._roofline.step_seconds(new_tokens, 0, decoding=False), hit_rate)

    def _schedule_decode(self) -> list[Request]:
        """The running batch, after retracting the newest requests until the pool can
        hold one more token for every remaining one."""

        def growth(r: Request) -> int:
            assert r.slot is not None
            return self.cache.pages(len(r.tokens)) - self.cache.pages(r.slot.tokens)

        need = sum(growth(r) for r in self._running)
        while self._running and need * self._pool.page_size > self.cache.available_tokens:
            victim = self._running.pop()
            need -= growth(victim)
            self._retract(victim)
        for r in self._running:
            assert r.slot is not None
            self.cache.grow(r.slot, len(r.tokens))  # cannot fail: `need` pages are available
        return list(self._running)

    def _retract(self, req: Request) -> None:
        assert req.slot is not None
        self.cache.release(req.slot)
        req.slot, req.computed, req.phase = None, 0, Phase.WAITING
        req.retractions += 1
        self._waiting.append(req)
        self._new_token_ratio = self._init_ratio
        logger.info("KV cache of DP rank %d is full: retracted request %s", self.rank, req.rid)

    # ---- results -------------------------------------------------------------------
    def _complete(self, step: _Step) -> None:
        for req, take in step.prefill:
            if req.phase is Phase.PREFILLING:
                self._prefilled(req, take)
        for req in step.decode:
            if req.phase is Phase.RUNNING:
                req.computed = len(req.tokens)
                self._emit(req, self._sample(req))
        if step.prefill:
            self._report(hit_rate=step.hit_rate)
        if step.decode:
            self._decode_steps += 1
            decay = (self._init_ratio - self._min_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS
            self._new_token_ratio = max(self._new_token_ratio - decay, self._min_ratio)
            if self._rank_metrics:
                self._rank_metrics.decoded(len(step.decode), step.started)
            if self._decode_steps % DECODE_LOG_INTERVAL == 0:
                self._report(window_closed=True)

    def _prefilled(self, req: Request, take: int) -> None:
        assert req.slot is not None
        req.computed += take
        self.cache.cache(req.slot, req.tokens[: req.computed])
        if req.pending_prefill:
            self._chunked = req
            return
        if self._chunked is req:
            self._chunked = None
        if req.role is Role.EMBED:
            self._finish(req, "length")
        elif req.role is Role.PREFILL_LEG:
            req.tokens.append(self._sample(req))
            req.phase = Phase.TRANSFERRING
            self._held.append(req)
            req.outbox.put_nowait(LegReady(req.tokens[-1]))
        else:
            req.phase = Phase.RUNNING
            self._running.append(req)
            self._emit(req, self._sample(req))

    def _sample(self, req: Request) -> int:
        return self._model.next_token(req.tokens, req.generated, req.sampling, req.stop)

    def _emit(self, req: Request, token: int) -> None:
        """Stream one new token, finishing the request if it is a stop or the last one."""
        logprobs = top = None
        if req.top_logprobs is not None:
            chosen, alternatives = self._model.logprobs(req.tokens, token, req.top_logprobs)
            logprobs, top = [chosen], ([alternatives] if req.top_logprobs else None)
        req.tokens.append(token)
        self._observe_token(req)
        finish = self._model.finish(token, req.generated, req.stop, req.max_new_tokens)
        if finish is not None:
            self._finish(req, finish[0], finish[1], [token], logprobs, top)
        else:
            req.outbox.put_nowait(Chunk(req.rid, token_ids=[token], logprobs=logprobs, top_logprobs=top))

    def _observe_token(self, req: Request) -> None:
        now = time.monotonic()
        if self._metrics:
            self._metrics.token(req.arrived, req.last_token_at, now)
        req.last_token_at = now

    def _finish(self, req: Request, reason: str, matched: Optional[int] = None, token_ids: Optional[list[int]] = None,
                logprobs: Optional[list[float]] = None, top: Optional[list] = None) -> None:
        self._detach(req)
        if req.slot is not None:
            # Computed pages go into the radix tree, as SGLang's cache_finished_req does
            # for finished and aborted requests alike.
            self.cache.release(req.slot, req.tokens[: req.computed])
        req.phase = Phase.FINISHED
        self._live.discard(req)
        req.outbox.put_nowait(
            Chunk(req.rid, token_ids=token_ids or [], logprobs=logprobs, top_logprobs=top, finish_reason=reason,
                  matched_stop=matched, **req.usage())
        )
        if self._metrics:
            self._metrics.request_finished(req.prompt_len, req.generated, req.cached_tokens,
                                           time.monotonic() - req.arrived, aborted=reason == "abort")
        self._wake.set()

    def _detach(self, req: Request) -> None:
        """Take a request out of whichever queue or batch holds it."""
        if req.phase is Phase.WAITING:
            self._waiting.remove(req)
        elif req.phase is Phase.PREALLOC:
            self._prealloc.remove(req)
        elif req.phase is Phase.RUNNING:
            self._running.remove(req)
        elif req.phase in (Phase.TRANSFERRING, Phase.RECEIVING):
            self._held.remove(req)
        elif self._chunked is req:
            self._chunked = None

    def _report(self, hit_rate: Optional[float] = None, window_closed: bool = False, idle: bool = False) -> None:
        """Refresh the rank's gauges, when SGLang does: after each prefill batch, every
        DECODE_LOG_INTERVAL decode steps (closing a throughput window), and when idle."""
        if self._rank_metrics is None:
            return
        queued = len(self._waiting) + len(self._prealloc)
        self._rank_metrics.report(len(self._running), queued, self.cache.token_usage, self.cache.used_tokens, hit_rate)
        if window_closed or idle:
            self._rank_metrics.close_window(idle)
