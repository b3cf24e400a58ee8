"""The `sglang` engine: `sglang.Engine` in-process (GPU nodes; the `sglang` extra).

Token ids in, our request id passed as SGLang's `rid` (so an abort works before the
first token), disjoint streaming forced (each chunk carries only new tokens, as
Dynamo forces it), bootstrap fields and the routed DP rank passed through. Engine
operations use the TokenizerManager's coroutines: the Engine's own methods are
synchronous wrappers that cannot run inside our event loop. Facts relied on are in
the project's SGLang reference (§1 Engine API, §1.5 abort, §5.1 metrics).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, AsyncIterator

from prometheus_client import CollectorRegistry

from orchestrator.engine.base import Engine, EngineError, EngineInfo
from orchestrator.planes import messages as m

log = logging.getLogger(__name__)

SGLANG_ABORT = "abort"


def sampling_params(request: m.GenerateRequest) -> dict[str, Any]:
    """Our request in SGLang's sampling-parameter names."""
    s, stop = request.sampling, request.stop
    params: dict[str, Any] = {
        "max_new_tokens": stop.max_tokens,
        "min_new_tokens": stop.min_tokens,
        "stop_token_ids": list(stop.stop_token_ids),
        "ignore_eos": stop.ignore_eos,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "repetition_penalty": s.repetition_penalty,
    }
    if s.seed is not None:
        params["sampling_seed"] = s.seed
    return params


def generate_kwargs(request: m.GenerateRequest) -> dict[str, Any]:
    """Keyword arguments of `Engine.async_generate` for one of our requests."""
    kwargs: dict[str, Any] = {
        "input_ids": list(request.token_ids),
        "sampling_params": sampling_params(request),
        "stream": True,
        "rid": request.request_id,
    }
    if request.top_logprobs is not None:
        kwargs.update(return_logprob=True, top_logprobs_num=request.top_logprobs)
    if request.bootstrap is not None:
        kwargs.update(
            bootstrap_host=request.bootstrap.host,
            bootstrap_port=request.bootstrap.port,
            bootstrap_room=request.bootstrap.room,
        )
    if request.dp_rank is not None:
        kwargs["routed_dp_rank"] = request.dp_rank
    return kwargs


def to_chunk(request_id: str, output: dict, emitted: int, logprobs_seen: int) -> tuple[m.Chunk, int]:
    """One SGLang output dict as our chunk, and how many output logprobs have now been
    sent (the caller passes that back with the next dict).

    With disjoint streaming SGLang 0.5.23 slices its logprob lists to the new positions
    and counts all of them in `output_token_logprobs_length`; older versions kept the
    lists cumulative, without the count. The last `count - seen` entries are the new
    ones in both. An abort that carries an HTTP status is SGLang refusing the request
    (400 invalid, 503 queue timeout, 500 e.g. a failed KV transfer): an error for the
    caller, where a plain abort (ours) is a finish.
    """
    meta = output.get("meta_info", {})
    finish = meta.get("finish_reason") or {}
    status = finish.get("status_code")
    if finish.get("type") == SGLANG_ABORT and status is not None and 400 <= status < 600:
        kind = m.ErrorKind.INVALID if status < 500 else m.ErrorKind.OVERLOADED if status == 503 else m.ErrorKind.INTERNAL
        raise EngineError(kind, f"SGLang aborted the request ({status}): {finish.get('message')}")
    matched = finish.get("matched")  # a token id, or the stop string that matched
    chunk = m.Chunk(
        request_id=request_id,
        token_ids=list(output.get("output_ids", [])),
        finish_reason=finish.get("type"),
        matched_stop=matched if isinstance(matched, int) else None,
        prompt_tokens=meta.get("prompt_tokens", 0),
        completion_tokens=meta.get("completion_tokens", emitted),
        cached_tokens=meta.get("cached_tokens", 0),
    )
    logprobs = meta.get("output_token_logprobs") or []
    total = meta.get("output_token_logprobs_length", len(logprobs))
    new = min(total - logprobs_seen, len(logprobs))
    if new > 0:
        chunk.logprobs = [lp[0] for lp in logprobs[-new:]]  # (logprob, token id, text)
        tops = meta.get("output_top_logprobs")  # only with top_logprobs_num > 0
        if tops is not None:
            chunk.top_logprobs = [[m.TopLogprob(t[1], t[0]) for t in pos or []] for pos in tops[-new:]]
        logprobs_seen = total
    return chunk, logprobs_seen


class SGLangEngine(Engine):
    def __init__(self, args, registry: CollectorRegistry):
        self._server_args = args.sglang
        self._registry = registry
        self._engine = None
        self._inflight: dict[str, int | None] = {}  # rid -> DP rank

    async def start(self) -> EngineInfo:
        import sglang

        _force_disjoint_streaming(self._server_args)
        self._engine = sglang.Engine(server_args=self._server_args)  # blocks until the schedulers are ready
        _attach_engine_metrics(self._registry)
        info = self._engine.get_server_info()
        return EngineInfo(
            page_size=int(info.get("page_size") or 1),
            context_length=int(info.get("context_length") or self._server_args.context_length or 0),
            dp_size=int(info.get("dp_size") or 1) * int(info.get("attn_dp_size") or 1),
            max_total_tokens=int(info.get("max_total_num_tokens") or 0),
            max_running_requests=int(info.get("max_running_requests") or 0),
            eos_token_ids=tuple(info.get("eos_token_ids") or ()),
            bootstrap_host=self._server_args.host,
            bootstrap_port=info.get("disaggregation_bootstrap_port"),
        )

    async def generate(self, request: m.GenerateRequest) -> AsyncIterator[m.Chunk]:
        self._inflight[request.request_id] = request.dp_rank
        emitted = logprobs_seen = 0
        try:
            stream = await self._engine.async_generate(**generate_kwargs(request))
            async for output in stream:
                chunk, logprobs_seen = to_chunk(request.request_id, output, emitted, logprobs_seen)
                emitted += len(chunk.token_ids)
                chunk.completion_tokens = emitted
                if chunk.token_ids or chunk.finish_reason:
                    yield chunk
        except ValueError as e:  # SGLang raises ValueError for a request it rejects (e.g. too long)
            raise EngineError(m.ErrorKind.INVALID, str(e)) from None
        finally:
            self._inflight.pop(request.request_id, None)
            # Closing SGLang's generator early aborts the request on the scheduler.

    async def abort(self, request_id: str) -> None:
        tm = self._engine.tokenizer_manager
        for _ in range(50):  # SGLang drops an abort for a rid it has not registered yet
            if request_id in tm.rid_to_state:
                tm.abort_request(rid=request_id)
                return
            if request_id not in self._inflight:
                return
            await asyncio.sleep(0.01)

    async def encode(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]:
        from sglang.srt.managers.io_struct import EmbeddingReqInput

        request = EmbeddingReqInput(input_ids=inputs, rid=request_id)
        result = await self._engine.tokenizer_manager.generate_request(request, None).__anext__()
        return [r["embedding"] for r in (result if isinstance(result, list) else [result])]

    async def health_check(self) -> bool:
        for pid in self._engine.get_all_child_pids():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
        return True

    async def shutdown(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

    def load(self) -> list[dict]:
        ranks: dict[int, int] = {}
        for rank in self._inflight.values():
            ranks[rank or 0] = ranks.get(rank or 0, 0) + 1
        return [{"dp_rank": r, "running": n} for r, n in sorted(ranks.items())]

    async def flush_cache(self) -> dict:
        result = await self._engine.tokenizer_manager.flush_cache()
        return {"success": bool(result.success), "message": getattr(result, "message", "")}

    async def start_profile(self, options: dict) -> dict:
        await self._engine.tokenizer_manager.start_profile(**options)
        return {"success": True, "message": "profiling started"}

    async def stop_profile(self) -> dict:
        await self._engine.tokenizer_manager.stop_profile()
        return {"success": True, "message": "profiling stopped"}

    async def release_memory(self, tags: list[str]) -> None:
        from sglang.srt.managers.io_struct import ReleaseMemoryOccupationReqInput

        await self._engine.tokenizer_manager.release_memory_occupation(ReleaseMemoryOccupationReqInput(tags=tags), None)

    async def resume_memory(self, tags: list[str]) -> None:
        from sglang.srt.managers.io_struct import ResumeMemoryOccupationReqInput

        await self._engine.tokenizer_manager.resume_memory_occupation(ResumeMemoryOccupationReqInput(tags=tags), None)


def _force_disjoint_streaming(server_args) -> None:
    """Each chunk must carry only its new tokens (SGLang's default is cumulative)."""
    for name in ("incremental_streaming_output", "stream_output"):  # 0.5.23, then older
        if hasattr(server_args, name):
            setattr(server_args, name, True)
            return
    raise EngineError(m.ErrorKind.INTERNAL, "this SGLang has no disjoint-streaming switch; pin sglang==0.5.23")


def _attach_engine_metrics(registry: CollectorRegistry) -> None:
    """SGLang writes its metrics to PROMETHEUS_MULTIPROC_DIR (set before anything
    imported prometheus_client); serve them from our registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
