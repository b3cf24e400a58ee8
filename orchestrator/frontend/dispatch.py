"""One generation, routed to a worker and kept alive across worker failures.

The router picks among the model's generating instances. When the worker ends the
stream with a migratable error (it drains: `engine_shutdown`; it died: `disconnected`;
the legs of a disaggregated request never met: `bootstrap_timeout`, blamed on the
prefill worker) and the migration limit allows, the request is sent to another worker
with the prompt plus every token generated so far and the token budget reduced; the caller sees one
continuous stream, with usage counted against the original prompt. Other errors end
the generation with the HTTP status they deserve.

Each leg is placed on one rank of one worker: the router's choice, with the DP rank
passed on to the worker when the router chooses ranks. Until the leg ends, the rank
counts it (its uncached prompt tokens until the first token comes back, its KV blocks
until the end), which is the load the KV router weighs. When every candidate is over
its busy threshold the request is refused with 503, or waits for load to drop when the
busy policy says queue. A request pinned to a worker (`Pin`, from Dynamo's
`nvext.backend_instance_id`) skips the router and busy thresholds, and does not migrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import AsyncIterator

import msgspec

from orchestrator.frontend.models import GENERATING, Instance, Model, RankState
from orchestrator.metrics import FrontendMetrics
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType
from orchestrator.router import Candidate, Router, RouterBusy

log = logging.getLogger(__name__)

_RETRY = m.ErrorKind.MIGRATABLE | {m.ErrorKind.BOOTSTRAP_TIMEOUT}
_STATUS = {m.ErrorKind.INVALID: 400, m.ErrorKind.OVERLOADED: 503, m.ErrorKind.BOOTSTRAP_TIMEOUT: 503}
PREFILL_SETTLE_S = 1.0  # how long a finished decode leg waits for its prefill leg's last reply


class GenerationError(Exception):
    def __init__(self, status: int, message: str, rejected: bool = False):
        super().__init__(message)
        self.status = status
        self.rejected = rejected  # load shedding: every worker was over a busy threshold


@dataclass(frozen=True)
class Pin:
    """The worker (and DP rank) a request names for itself: its generating leg goes
    there, whatever the router would choose, as when an external router decides."""

    instance_id: int
    dp_rank: int | None = None


class Placement:
    """One leg on one rank of one worker, counted in that rank's load until `release()`
    (the first call counts; later ones do nothing) and in the per-leg metrics."""

    def __init__(self, instance: Instance, candidate: Candidate, tokens: int, page_size: int,
                 metrics: FrontendMetrics, model: str):
        self.instance, self.dp_rank = instance, candidate.dp_rank
        self._labels = (model, instance.record.worker_type.value)
        self._metrics, self._sent, self._replied = metrics, time.monotonic(), False
        self._rank: RankState = instance.rank(candidate.dp_rank or 0)
        self._prefill = max(0, tokens - candidate.overlap_blocks * page_size)
        self._blocks = -(-tokens // max(page_size, 1))
        instance.inflight += 1
        self._rank.inflight += 1
        self._rank.prefill_tokens += self._prefill
        self._rank.decode_blocks += self._blocks
        self._released = False

    def replied(self) -> None:
        """A reply came: the prompt is prefilled (counted once)."""
        if self._replied:
            return
        self._replied = True
        self._metrics.leg_first_reply(*self._labels).observe(time.monotonic() - self._sent)
        self._rank.prefill_tokens -= self._prefill
        self._prefill = 0

    def release(self, status: str = "cancelled") -> None:
        if self._released:
            return
        self._released = True
        self._metrics.legs(*self._labels, status).inc()
        self._metrics.leg_duration(*self._labels).observe(time.monotonic() - self._sent)
        self._rank.prefill_tokens -= self._prefill
        self._rank.decode_blocks -= self._blocks
        self._rank.inflight -= 1
        self.instance.inflight -= 1


class Dispatcher:
    def __init__(self, router: Router, migration_limit: int, metrics: FrontendMetrics,
                 queue_when_busy: bool = False, busy_timeout_s: float = 60.0):
        self.router, self.migration_limit, self.metrics = router, migration_limit, metrics
        self.queue_when_busy, self.busy_timeout_s = queue_when_busy, busy_timeout_s
        self._load_changed = asyncio.Event()

    def load_changed(self) -> None:
        """Wake the requests queued while every worker was busy (a load report came, a leg ended)."""
        self._load_changed.set()
        self._load_changed = asyncio.Event()

    async def generate(self, model: Model, request: m.GenerateRequest, pin: Pin | None = None) -> AsyncIterator[m.Chunk]:
        prompt, budget = list(request.token_ids), request.stop
        generated: list[int] = []
        failed: set[int] = set()
        cached = None
        for attempt in range(self.migration_limit + 1):
            attempt_request = msgspec.structs.replace(
                request,
                request_id=request.request_id if attempt == 0 else f"{request.request_id}.{attempt}",
                token_ids=prompt + generated,
                stop=msgspec.structs.replace(
                    budget,
                    max_tokens=budget.max_tokens - len(generated),
                    min_tokens=max(0, budget.min_tokens - len(generated)),
                ),
            )
            error = culprit = None
            legs = self._disaggregated(model, attempt_request, failed, pin) if model.serving(WorkerType.prefill) \
                else self._aggregated(model, attempt_request, failed, pin)
            async with contextlib.aclosing(legs) as replies:
                async for culprit, reply in replies:
                    if isinstance(reply, m.ErrorReply):
                        error = reply
                        break
                    generated += reply.token_ids
                    cached = reply.cached_tokens if cached is None and reply.finish_reason else cached
                    if reply.finish_reason:
                        reply.prompt_tokens = len(prompt)
                        reply.completion_tokens = len(generated)
                        reply.cached_tokens = cached or 0
                    yield reply
            if error is None:
                return
            if error.kind not in _RETRY:
                raise GenerationError(_STATUS.get(error.kind, 500), error.message)
            if pin is not None:
                raise GenerationError(503, f"{error.message} (the request names its worker: it does not migrate)")
            failed.add(culprit.record.instance_id)
            if attempt == self.migration_limit:
                break
            kind = "ongoing_request" if generated else "new_request"
            self.metrics.migrations(model.name, kind).inc()
            log.info("migrating %s after %d tokens: %s", request.request_id, len(generated), error.message)
        raise GenerationError(503, f"Cannot recreate stream: {error.message} (migration limit {self.migration_limit})")

    async def _aggregated(self, model: Model, request: m.GenerateRequest, failed: set[int], pin: Pin | None):
        """One leg: (instance, reply) pairs from an aggregated (or decode-only) worker."""
        placed = await self._place(model, GENERATING, request.token_ids, failed, pin=pin)
        status = "cancelled"
        try:
            request = msgspec.structs.replace(request, dp_rank=placed.dp_rank)
            async with contextlib.aclosing(placed.instance.client.stream(request)) as replies:
                async for reply in replies:
                    placed.replied()
                    status = _status(reply) or status
                    yield placed.instance, reply
        finally:
            placed.release(status)
            self.load_changed()

    async def _disaggregated(self, model: Model, request: m.GenerateRequest, failed: set[int], pin: Pin | None):
        """Both legs at once, as SGLang's PD routers send them: the prefill leg (one token)
        and the decode leg share a bootstrap room, the answer streams from decode. A failed
        prefill leg ends the attempt at once rather than leaving decode to time out; ending
        the attempt (a client gone, an error) cancels both legs. A pin names the decode worker."""
        prefill = await self._place(model, (WorkerType.prefill,), request.token_ids, failed)
        try:
            decode = await self._place(model, (WorkerType.decode,), request.token_ids, failed,
                                       overlap_score_weight=0.0, pin=pin)
        except BaseException:
            prefill.release()
            raise
        room = random.getrandbits(63)
        if prefill.dp_rank is not None:  # SGLang's prefill side serves the room on rank room % dp_size
            dp_size = prefill.instance.record.dp_size
            room = room - room % dp_size + prefill.dp_rank
            room = room if room < 2**63 else room - dp_size
        info = m.BootstrapInfo(prefill.instance.record.bootstrap_host, prefill.instance.record.bootstrap_port, room)
        prefill_request = msgspec.structs.replace(
            request, request_id=f"{request.request_id}-prefill", bootstrap=info, dp_rank=prefill.dp_rank,
            stop=msgspec.structs.replace(request.stop, max_tokens=1, min_tokens=0),
        )

        async def prefill_leg() -> m.ErrorReply | None:
            status = "cancelled"
            try:
                async with contextlib.aclosing(prefill.instance.client.stream(prefill_request)) as replies:
                    async for reply in replies:
                        prefill.replied()
                        status = _status(reply) or status
                        if isinstance(reply, m.ErrorReply):
                            return reply
                        if reply.kv_transfer_s is not None:
                            self.metrics.kv_transfer(model.name).observe(reply.kv_transfer_s)
                return None
            finally:
                prefill.release(status)

        decode_replies = decode.instance.client.stream(
            msgspec.structs.replace(request, bootstrap=info, dp_rank=decode.dp_rank))
        decode_status = "cancelled"
        prefilling = asyncio.ensure_future(prefill_leg())
        next_reply = asyncio.ensure_future(anext(decode_replies))
        try:
            while True:
                watch = {next_reply} if prefilling.done() else {next_reply, prefilling}
                done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                if prefilling in done and prefilling.result() is not None:
                    yield prefill.instance, prefilling.result()
                    return
                if next_reply in done:
                    try:
                        reply = next_reply.result()
                    except StopAsyncIteration:
                        return
                    decode.replied()
                    decode_status = _status(reply) or decode_status
                    stalled = isinstance(reply, m.ErrorReply) and reply.kind == m.ErrorKind.BOOTSTRAP_TIMEOUT
                    yield (prefill if stalled else decode).instance, reply
                    if isinstance(reply, m.ErrorReply) or reply.finish_reason:
                        return
                    next_reply = asyncio.ensure_future(anext(decode_replies))
        finally:
            if decode_status == "ok" and not prefilling.done():
                # Decode finished, so the prefill leg's KV arrived and its own last reply is on
                # the way (a fast decode can beat it): let that reply settle the leg's outcome.
                await asyncio.wait({prefilling}, timeout=PREFILL_SETTLE_S)
            for task in (next_reply, prefilling):
                task.cancel()
            await asyncio.gather(next_reply, prefilling, return_exceptions=True)
            await decode_replies.aclose()
            prefill.release()  # if the prefill task was cancelled before it started
            decode.release(decode_status)
            self.load_changed()

    async def _place(self, model: Model, types: tuple, tokens: list[int], failed: set[int],
                     overlap_score_weight: float | None = None, pin: Pin | None = None) -> Placement:
        if pin is not None:
            return self._pinned(model, types, tokens, pin)
        deadline = asyncio.get_running_loop().time() + self.busy_timeout_s
        while True:
            live = [i for i in model.serving(*types) if i.record.instance_id not in failed]
            if not live:
                raise GenerationError(503, f"no worker can take a request for {model.name} now")
            candidates = _candidates(live, self.router.per_rank)
            try:
                chosen = self.router.choose(tokens, candidates, model.card.kv_block_size, overlap_score_weight)
                break
            except RouterBusy as e:
                left = deadline - asyncio.get_running_loop().time()
                if not self.queue_when_busy or left <= 0:
                    raise GenerationError(503, f"every worker of {model.name} is busy: {e}", rejected=True) from None
                changed = self._load_changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()
        instance = next(i for i in live if i.record.instance_id == chosen.instance_id)
        return Placement(instance, chosen, len(tokens), model.card.kv_block_size, self.metrics, model.name)

    def _pinned(self, model: Model, types: tuple, tokens: list[int], pin: Pin) -> Placement:
        instance = model.instances.get(pin.instance_id)
        if instance is None or instance.record.worker_type not in types:
            raise GenerationError(503, f"worker {pin.instance_id:x}, which the request names, no longer serves "
                                       f"{model.name}")
        chosen = Candidate(pin.instance_id, pin.dp_rank)  # no rank: the engine balances its ranks
        return Placement(instance, chosen, len(tokens), model.card.kv_block_size, self.metrics, model.name)


def _status(reply: m.FromWorker) -> str | None:
    """A leg's outcome, once a reply settles it."""
    if isinstance(reply, m.ErrorReply):
        return "error"
    return "ok" if reply.finish_reason else None


def _candidates(live: list[Instance], per_rank: bool) -> list[Candidate]:
    """One candidate per worker, or per DP rank of each worker for a router that picks ranks.
    A rank's load is what this frontend tracks there (as Dynamo's router does: a worker's
    reports lag its short requests by up to a report interval, long enough to make the
    rank holding a prefix look busy with the request that just left it); its KV usage,
    for the busy threshold, is what it reported."""
    if not per_rank:
        return [Candidate(i.record.instance_id, None, i.inflight, i.active_decode_blocks) for i in live]
    candidates = []
    for instance in live:
        for dp_rank in range(instance.record.dp_size):
            state = instance.rank(dp_rank)
            candidates.append(Candidate(
                instance.record.instance_id, dp_rank, state.inflight, state.decode_blocks,
                state.reported.kv_usage if state.reported else 0.0, state.prefill_tokens,
            ))
    return candidates
