"""`MockEngine`: a CPU simulator of an SGLang 0.5.23 engine behind the `Engine`
interface. It owns the DP ranks (one KV cache and scheduler loop each), validates
requests as SGLang's tokenizer manager does, routes them to a rank, turns each
request's results into a stream of `Chunk`s, and runs the disaggregated transfer
legs in that stream so that aborting or dropping the stream cancels them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from typing import AsyncIterator, Callable, Optional

from prometheus_client import CollectorRegistry

from orchestrator.engine.base import Engine, EngineError, EngineInfo
from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST, MockEngineConfig
from orchestrator.engine.mock.kv_cache import KvCache
from orchestrator.engine.mock.metrics import EngineMetrics
from orchestrator.engine.mock.request import LegReady, Phase, Request, Role
from orchestrator.engine.mock.scheduler import Scheduler
from orchestrator.engine.mock.sizing import PoolSize, resolve_pool
from orchestrator.engine.mock.timing import Roofline
from orchestrator.engine.mock.tokens import TokenModel, embedding
from orchestrator.engine.mock.transfer import KvTransfer, LegAborted, await_leg
from orchestrator.planes.messages import Chunk, ErrorKind, GenerateRequest

logger = logging.getLogger(__name__)

KvEventHook = Callable[[int, list], None]  # (dp_rank, events)

_ENGINE_TYPES = {"null": "unified", "prefill": "prefill", "decode": "decode"}


class MockEngine(Engine):
    """See `Engine` for the lifecycle. `on_kv_events(dp_rank, events)` receives each
    rank's KV events once per scheduler step; `transfer` moves KV between a prefill
    and a decode engine; `registry` receives the `sglang:*` metrics when
    `config.enable_metrics` (a private registry is made if none is given)."""

    def __init__(
        self,
        config: MockEngineConfig,
        on_kv_events: Optional[KvEventHook] = None,
        transfer: Optional[KvTransfer] = None,
        registry: Optional[CollectorRegistry] = None,
    ):
        if config.disaggregation_mode not in _ENGINE_TYPES:
            raise EngineError(ErrorKind.INVALID, f"unknown disaggregation_mode {config.disaggregation_mode!r}")
        self.config = config
        self.registry = (registry or CollectorRegistry()) if config.enable_metrics else None
        self._on_kv_events = on_kv_events
        self._transfer = transfer
        self._roofline = Roofline.of(config)
        self._model = TokenModel(config.model.vocab_size, config.model.eos_token_ids, config.echo)
        self._mode = config.disaggregation_mode
        self._pool: Optional[PoolSize] = None
        self._ranks: list[Scheduler] = []
        self._round_robin = itertools.count()
        self._inflight: dict[str, list[tuple[Scheduler, Request]]] = {}
        self._runner: Optional[asyncio.Task] = None
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> EngineInfo:
        if self._pool is not None:
            raise RuntimeError("MockEngine.start() called twice")
        config = self.config
        pool = self._pool = resolve_pool(config)
        metrics = None
        if self.registry is not None:
            metrics = EngineMetrics(self.registry, config.served_model_name, _ENGINE_TYPES[self._mode])
        # SGLang force-disables the radix cache on the decode side.
        radix = not config.disable_radix_cache and self._mode != "decode"
        for rank in range(config.dp_size * config.attn_dp_size):
            sink = functools.partial(self._on_kv_events, rank) if self._on_kv_events else None
            cache = KvCache(pool.max_total_tokens, pool.page_size, radix=radix, on_events=sink)
            self._ranks.append(
                Scheduler(rank, pool, config.max_prefill_tokens, cache, self._roofline, self._model, metrics)
            )
        self._runner = asyncio.create_task(self._run(), name="mock-engine")
        logger.info(
            "Mock engine for %s started: %d DP rank(s), mode %s, %d KV tokens and %d request slots per rank",
            config.served_model_name, len(self._ranks), self._mode, pool.max_total_tokens, pool.max_running_requests,
        )
        prefill = self._mode == "prefill"
        return EngineInfo(
            page_size=pool.page_size,
            context_length=config.context_length,
            dp_size=len(self._ranks),
            max_total_tokens=pool.max_total_tokens,
            max_running_requests=pool.max_running_requests,
            eos_token_ids=tuple(config.model.eos_token_ids),
            bootstrap_host=config.host if prefill else None,
            bootstrap_port=config.disaggregation_bootstrap_port if prefill else None,
            embedding_dim=config.model.hidden_size if config.is_embedding else None,
        )

    async def _run(self) -> None:
        """Own every scheduler loop; one crashing stops them all (health turns false)."""
        try:
            async with asyncio.TaskGroup() as group:
                for scheduler in self._ranks:
                    group.create_task(scheduler.run(), name=f"mock-scheduler-dp{scheduler.rank}")
        except* Exception:
            logger.error("Mock engine scheduler loops stopped after a crash")

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        in_flight = sum(len(entries) for entries in self._inflight.values())
        for entries in list(self._inflight.values()):
            for scheduler, req in entries:
                scheduler.abort(req)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait([self._runner])
        logger.info("Mock engine for %s shut down (%d request(s) aborted)", self.config.served_model_name, in_flight)

    async def health_check(self) -> bool:
        return (
            self._runner is not None and not self._runner.done() and not self._closed
            and not any(scheduler.stopped for scheduler in self._ranks)
        )

    def load(self) -> list[dict]:
        return [scheduler.load() for scheduler in self._ranks]

    async def flush_cache(self) -> bool:
        """Drop every rank's prefix cache (SGLang's `flush_cache`); False while busy."""
        return all([scheduler.flush_cache() for scheduler in self._ranks])

    # ---- requests ------------------------------------------------------------------
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Validate and queue at once (errors raise here, before anything is queued);
        the returned stream yields the chunks and aborts the request if dropped."""
        self._check_serving()
        if self.config.is_embedding:
            raise EngineError(ErrorKind.INVALID, "This model is an embedding model and does not support generation.")
        role = {"null": Role.GENERATE, "prefill": Role.PREFILL_LEG, "decode": Role.DECODE_LEG}[self._mode]
        bootstrap = request.bootstrap if role is not Role.GENERATE else None
        fake_backend = self.config.disaggregation_transfer_backend == "fake"
        if role is Role.PREFILL_LEG and bootstrap is None:
            raise EngineError(ErrorKind.INVALID, "A prefill engine needs bootstrap info: send the request through the router.")
        if role is Role.DECODE_LEG and bootstrap is None and not fake_backend:
            raise EngineError(ErrorKind.INVALID, "A decode engine needs bootstrap info to find the prefill engine's KV.")
        # SGLang's fake transfer (warm-up and health probes, or a fake backend) moves nothing.
        peer = bootstrap if bootstrap is not None and bootstrap.host != FAKE_BOOTSTRAP_HOST and not fake_backend else None
        if peer is not None and self._transfer is None:
            raise EngineError(ErrorKind.INTERNAL, "No KV transfer is configured for this disaggregated engine.")
        prompt = list(request.token_ids)
        max_new = self._validate(prompt, request.stop.max_tokens)
        scheduler = self._route(request)
        req = Request(
            rid=request.request_id,
            tokens=prompt,
            prompt_len=len(prompt),
            max_new_tokens=1 if role is Role.PREFILL_LEG else max_new,  # SGLang's prefill forces one token
            role=role,
            sampling=request.sampling,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
            bootstrap=peer,
        )
        self._register(request.request_id, [(scheduler, req)])
        scheduler.submit(req)
        return self._stream(scheduler, req)

    async def _stream(self, scheduler: Scheduler, req: Request) -> AsyncIterator[Chunk]:
        finished = False
        transfer_s = None
        try:
            while True:
                item = await req.outbox.get()
                if isinstance(item, EngineError):
                    raise item
                if isinstance(item, LegReady):
                    started = time.monotonic()
                    await self._leg(scheduler, req, item)
                    if req.role is Role.PREFILL_LEG and req.bootstrap is not None:
                        transfer_s = time.monotonic() - started
                    continue
                if item.finish_reason is not None and transfer_s is not None:
                    item.kv_transfer_s = transfer_s
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                scheduler.abort(req)  # the consumer went away (closed, cancelled) or the leg failed
            self._unregister(req.rid, req)

    async def _leg(self, scheduler: Scheduler, req: Request, ready: LegReady) -> None:
        """Move the KV of a disaggregated leg (nothing moves without a peer)."""
        if req.phase is Phase.FINISHED:
            return  # aborted before the stream got here: start no transfer
        peer, transfer = req.bootstrap, self._transfer
        try:
            if req.role is Role.PREFILL_LEG:
                assert ready.first_token is not None
                if peer is not None and transfer is not None:
                    seconds = self._roofline.wall(self._roofline.transfer_seconds(req.prompt_len))
                    await await_leg(req, transfer.send(peer, req.prompt_len, ready.first_token, seconds))
                scheduler.transferred(req)
            else:
                if peer is not None and transfer is not None:
                    first = await await_leg(req, transfer.receive(peer, req.prompt_len))
                else:
                    first = self._model.next_token(req.tokens, 0, req.sampling, req.stop)
                scheduler.received(req, first)
        except LegAborted:
            return  # the abort's final chunk is already in the outbox
        except EngineError:
            scheduler.fail(req)
            raise

    async def abort(self, request_id: str) -> None:
        for scheduler, req in self._inflight.get(request_id, ()):
            scheduler.abort(req)

    async def encode(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]:
        """One unit-norm vector of `hidden_size` per input, after each input's prefill."""
        self._check_serving()
        if not self.config.is_embedding:
            raise EngineError(ErrorKind.INVALID, "This model does not appear to be an embedding model.")
        if not inputs:
            raise EngineError(ErrorKind.INVALID, "No inputs to embed.")
        entries = []
        for index, tokens in enumerate(inputs):
            self._validate(list(tokens), max_tokens=0)
            rid = request_id if len(inputs) == 1 else f"{request_id}_{index}"
            req = Request(rid=rid, tokens=list(tokens), prompt_len=len(tokens), max_new_tokens=0, role=Role.EMBED)
            entries.append((self._ranks[next(self._round_robin) % len(self._ranks)], req))
        self._register(request_id, entries)
        try:
            for scheduler, req in entries:
                scheduler.submit(req)
            for _, req in entries:
                item = await req.outbox.get()
                if isinstance(item, EngineError):
                    raise item
                assert isinstance(item, Chunk)
                if item.finish_reason == "abort":
                    raise EngineError(ErrorKind.INTERNAL, f"Request {request_id} was aborted.")
        finally:
            for scheduler, req in entries:
                scheduler.abort(req)
            self._unregister(request_id, entries[0][1])
        return [embedding(tokens, self.config.model.hidden_size) for tokens in inputs]

    # ---- helpers -------------------------------------------------------------------
    def _check_serving(self) -> None:
        if self._closed:
            raise EngineError(ErrorKind.ENGINE_SHUTDOWN, "The engine is shutting down.")
        if self._pool is None:
            raise EngineError(ErrorKind.INTERNAL, "The engine has not been started.")

    def _validate(self, prompt: list[int], max_tokens: int) -> int:
        """SGLang's request checks; returns max_new_tokens clipped to what the pool holds."""
        assert self._pool is not None
        context = self.config.context_length
        n = len(prompt)
        if n == 0:
            raise EngineError(ErrorKind.INVALID, "The input is empty.")
        if n >= context:
            raise EngineError(ErrorKind.INVALID, f"The input ({n} tokens) is longer than the model's context length ({context} tokens).")
        if max_tokens and n + max_tokens >= context:
            raise EngineError(
                ErrorKind.INVALID,
                f"Requested token count exceeds the model's maximum context length of {context} tokens. "
                f"You requested a total of {n + max_tokens} tokens: {n} tokens from the input messages and "
                f"{max_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit.",
            )
        vocab = self.config.model.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise EngineError(ErrorKind.INVALID, f"The input_ids contain values outside the vocabulary ({vocab} tokens).")
        # The scheduler's own bound: a request must fit the KV pool on its own.
        max_req_len = min(context - 1, self._pool.max_total_tokens - 1)
        if n >= max_req_len:
            raise EngineError(
                ErrorKind.INVALID,
                f"Input length ({n} tokens) exceeds the maximum allowed length ({max_req_len} tokens) "
                f"of the KV cache ({self._pool.max_total_tokens} tokens).",
            )
        return max(1, min(max_tokens, max_req_len - n))

    def _route(self, request: GenerateRequest) -> Scheduler:
        ranks = len(self._ranks)
        if request.dp_rank is not None:
            if not 0 <= request.dp_rank < ranks:
                raise EngineError(ErrorKind.INVALID, f"dp_rank {request.dp_rank} is out of range [0, {ranks}).")
            return self._ranks[request.dp_rank]
        if self._mode == "prefill" and request.bootstrap is not None:
            return self._ranks[request.bootstrap.room % ranks]  # SGLang's follow_bootstrap_room
        return self._ranks[next(self._round_robin) % ranks]

    def _register(self, request_id: str, entries: list[tuple[Scheduler, Request]]) -> None:
        # A stream that was never iterated never unregisters; only live ids are duplicates.
        if any(req.phase is not Phase.FINISHED for _, req in self._inflight.get(request_id, ())):
            raise EngineError(ErrorKind.INVALID, f"Duplicate request ID detected: {request_id}")
        self._inflight[request_id] = entries

    def _unregister(self, request_id: str, first: Request) -> None:
        entries = self._inflight.get(request_id)
        if entries and entries[0][1] is first:  # not a later request that reused the id
            del self._inflight[request_id]
