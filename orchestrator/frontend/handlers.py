"""The OpenAI endpoints: validate, prepare (template, tokens, budget), run every choice,
answer as one JSON body or as a Server-Sent Events stream.

A body that fails validation is answered with a 400 before anything reaches a worker.
Choices of one request run concurrently (n > 1 fans out); a client that goes away
cancels them, which cancels their worker requests.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

import jinja2

from orchestrator.frontend import web
from orchestrator.frontend.dispatch import Dispatcher, GenerationError, Pin
from orchestrator.frontend.generation import ChoiceOptions, Delta, choice_stream
from orchestrator.frontend.models import GENERATING, Model, ModelRegistry
from orchestrator.frontend.openai import errors, responses
from orchestrator.frontend.openai.requests import ChatRequest, CompletionRequest, GenerationRequest
from orchestrator.frontend.openai.sse import SSE_DONE, sse_error, sse_event
from orchestrator.metrics import FrontendMetrics
from orchestrator.planes import messages as m
from orchestrator.roles import WorkerType

if TYPE_CHECKING:  # the module is imported only in that mode: it is the one place that imports SGLang
    from orchestrator.frontend.preprocess.sglang_processor import SGLangChatProcessor


class Choices:
    """The n choices of one generation request, run concurrently; deltas tagged by index."""

    def __init__(self, dispatcher: Dispatcher, model: Model, metrics: FrontendMetrics):
        self.dispatcher, self.model = dispatcher, model
        self._queued = metrics.queued(model.name)
        self._itl = metrics.itl(model.name)
        self.first_token: float | None = None
        self._last_token: float | None = None

    def _on_token(self, now: float, count: int) -> None:
        if self.first_token is None:
            self.first_token = now
            self._queued.dec()
        elif self._last_token is not None and count:
            self._itl.observe((now - self._last_token) / count)
        self._last_token = now

    async def run(self, jobs: list[tuple[int, m.GenerateRequest, ChoiceOptions]]) -> AsyncIterator[tuple[int, Delta]]:
        self._queued.inc()
        try:
            if len(jobs) == 1:  # the usual case: one choice needs no tasks to fan in
                index, request, options = jobs[0]
                async for delta in choice_stream(self.dispatcher, self.model, request, options, self._on_token):
                    yield index, delta
            else:
                async for item in self._fan_in(jobs):
                    yield item
        finally:
            if self.first_token is None:
                self._queued.dec()

    async def _fan_in(self, jobs: list[tuple[int, m.GenerateRequest, ChoiceOptions]]) -> AsyncIterator[tuple[int, Delta]]:
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def one(index: int, request: m.GenerateRequest, options: ChoiceOptions) -> None:
            async for delta in choice_stream(self.dispatcher, self.model, request, options, self._on_token):
                await queue.put((index, delta))

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(*job)) for job in jobs]
                watcher = group.create_task(_when_all(tasks, queue, done))
                while (item := await queue.get()) is not done:
                    yield item
                await watcher
        except ExceptionGroup as group_error:
            # One failed choice fails the request; report its own error, not the group.
            raise group_error.exceptions[0] from None


async def _when_all(tasks, queue: asyncio.Queue, done) -> None:
    await asyncio.gather(*tasks)
    await queue.put(done)


def generate_requests(req: GenerationRequest, prompts: list[list[int]], max_tokens: list[int]) -> list:
    """One engine request per (prompt, choice). With n > 1 and sampling, each choice gets
    its own seed, so choices differ yet stay reproducible when the caller gave a seed."""
    base_id = responses.unique_hex()
    base_seed = req.sampling.seed if req.sampling.seed is not None else random.getrandbits(31)
    jobs = []
    for p, (ids, budget) in enumerate(zip(prompts, max_tokens, strict=True)):
        for c in range(req.n):
            sampling = req.sampling
            if req.n > 1 and sampling.temperature > 0:
                sampling = m.SamplingOptions(**{**_fields(sampling), "seed": base_seed + c})
            jobs.append(m.GenerateRequest(
                request_id=f"{base_id}-{p * req.n + c}",
                token_ids=ids,
                sampling=sampling,
                stop=m.StopConditions(max_tokens=budget, min_tokens=req.min_tokens,
                                      stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos),
                top_logprobs=req.logprobs,
            ))
    return jobs


def _fields(struct) -> dict:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


def budget(model: Model, prompt_tokens: int, max_tokens: int | None, param: str) -> int:
    """Tokens the request may generate; a prompt that leaves no room is a 400. SGLang
    refuses prompt + max_new_tokens >= context length, hence the one token kept back."""
    context = model.card.context_length
    room = context - prompt_tokens - 1
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        raise errors.context_length_exceeded(prompt_tokens, max_tokens, context, param)
    return room if max_tokens is None else max_tokens


def chat_jobs(model: Model, req: ChatRequest, sglang: SGLangChatProcessor | None = None) -> tuple[list, list[int]]:
    """With `sglang` (`--dyn-chat-processor sglang`), SGLang renders the prompt and parses the output."""
    if sglang is None:
        tokenizer = model.tokenizer
        try:
            text = tokenizer.apply_chat_template(
                req.messages, tools=req.tools or None, add_generation_prompt=True, **req.chat_template_kwargs
            )
        except jinja2.TemplateError as e:  # the template refused these messages (e.g. roles out of order)
            raise errors.invalid_request(f"the chat template cannot render these messages: {e}", "messages") from None
        ids = tokenizer.encode(text)
    else:
        ids = sglang.render(model, req)
    n_out = budget(model, len(ids), req.max_tokens, "messages")
    options = ChoiceOptions(
        stop=list(req.stop),
        pin=pin_of(model, req),
        reasoning_parser=model.card.reasoning_parser,
        tool_call_parser=model.card.tool_call_parser if req.tools and req.tool_choice != "none" else None,
    )
    if sglang is not None:
        if options.reasoning_parser:
            options.new_reasoning_parser = sglang.reasoning_parser(model, req, options.reasoning_parser)
        if options.tool_call_parser:
            options.new_tool_call_parser = sglang.tool_call_parser(model, req, options.tool_call_parser)
    return [(i, r, options) for i, r in enumerate(generate_requests(req, [ids], [n_out]))], ids


def completion_jobs(model: Model, req: CompletionRequest) -> list:
    tokenizer = model.tokenizer
    prompts = [tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in req.prompts]
    budgets = [budget(model, len(ids), req.max_tokens, "prompt") for ids in prompts]
    options = ChoiceOptions(stop=list(req.stop), pin=pin_of(model, req))
    return [(i, r, options) for i, r in enumerate(generate_requests(req, prompts, budgets))]


def pin_of(model: Model, req: GenerationRequest) -> Pin | None:
    """The worker (and rank) `nvext.backend_instance_id` (and `dp_rank`) name, which must
    be one of the model's generating workers now (`GET /health` lists them, ids in hex)."""
    if req.backend_instance_id is None:
        return None
    instance = model.instances.get(req.backend_instance_id)
    if instance is None or instance.record.worker_type not in GENERATING:
        raise errors.invalid_request(
            f"'nvext.backend_instance_id' {req.backend_instance_id} ({req.backend_instance_id:x} in hex) is not a "
            f"worker generating for {model.name}; GET /health lists them.", "nvext.backend_instance_id")
    if req.dp_rank is not None and req.dp_rank >= instance.record.dp_size:
        raise errors.invalid_request(
            f"'nvext.dp_rank' {req.dp_rank} is out of range: that worker has {instance.record.dp_size} DP rank(s).",
            "nvext.dp_rank")
    return Pin(req.backend_instance_id, req.dp_rank)


def chat_logprobs(model: Model, delta: Delta) -> dict[str, Any] | None:
    if delta.logprobs is None:
        return None
    decode = model.tokenizer.decode
    tops = delta.top_logprobs or [[] for _ in delta.token_ids]
    content = [
        responses.token_logprob(decode([t], skip_special_tokens=False), lp,
                                [(decode([alt.token_id], skip_special_tokens=False), alt.logprob) for alt in top])
        for t, lp, top in zip(delta.token_ids, delta.logprobs, tops, strict=False)
    ]
    return responses.chat_logprobs(content)


def completion_logprobs(model: Model, delta: Delta, offset: int) -> dict[str, Any] | None:
    if delta.logprobs is None:
        return None
    decode = model.tokenizer.decode
    tokens = [decode([t], skip_special_tokens=False) for t in delta.token_ids]
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    tops = [{decode([alt.token_id], skip_special_tokens=False): alt.logprob for alt in top}
            for top in (delta.top_logprobs or [[] for _ in tokens])]
    return responses.completion_logprobs(tokens, list(delta.logprobs), tops, offsets)


class Responder:
    """Writes a stream of events. Events are held until `send` or `finish`, which write
    everything held in one piece: fewer writes (and TCP segments) with the same bytes."""

    def __init__(self, request: web.Request):
        self.response = web.EventStream(request)
        self._held: list[bytes] = []

    def hold(self, obj: Any) -> None:
        """An event that can wait for the next one (a stream's opening chunk)."""
        self._held.append(sse_event(obj))

    async def send(self, obj: Any) -> None:
        self.hold(obj)
        await self.response.write(self._take())

    async def finish(self, last: Any = None, error: errors.RequestError | None = None) -> web.EventStream:
        """End the stream: the `last` event (the usage chunk) or the `error` event, then [DONE]."""
        if last is not None:
            self.hold(last)
        if error is not None:
            self._held.append(sse_error(error))
        self._held.append(SSE_DONE)
        await self.response.write(self._take(), last=True)
        return self.response

    def _take(self) -> bytes:
        data = b"".join(self._held)
        self._held.clear()
        return data


def http_error(error: GenerationError) -> errors.RequestError:
    if error.status == 400:
        return errors.invalid_request(str(error))
    if error.status == 503:
        return errors.service_unavailable(str(error))
    return errors.internal_error(str(error))


def now() -> int:
    return int(time.time())


def model_of(registry: ModelRegistry, name: str, *, embedding: bool = False) -> Model:
    model = registry.models.get(name)
    if model is None:
        raise errors.model_not_found(name)
    if embedding != model.is_embedding:
        kind = "an embedding model" if model.is_embedding else "a generative model"
        raise errors.invalid_request(f"`{name}` is {kind}", param="model")
    return model


def embedding_worker(model: Model):
    live = model.serving(WorkerType.embedding)
    if not live:
        raise errors.service_unavailable(f"no worker can take a request for {model.name} now")
    return min(live, key=lambda i: i.inflight)
