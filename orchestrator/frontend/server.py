"""The frontend's HTTP server: OpenAI routes plus /health, /live and /metrics.

Handlers are cancelled when their client disconnects (see `web`), which closes every
choice stream and so sends a cancel to each worker at once; the cancellation is
counted. Errors answer with OpenAI's JSON error body and an honest status; a stream
that fails after it started ends with an error event and [DONE].
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import defaultdict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from orchestrator.frontend import handlers as h
from orchestrator.frontend import web
from orchestrator.frontend.dispatch import Dispatcher, GenerationError
from orchestrator.frontend.generation import Delta
from orchestrator.frontend.models import ModelRegistry
from orchestrator.frontend.openai import errors, responses
from orchestrator.frontend.openai.requests import (
    parse_chat,
    parse_completion,
    parse_embedding,
)
from orchestrator.metrics import FrontendMetrics
from orchestrator.planes import messages as m
from orchestrator.router import KvPolicy, KvRouter

log = logging.getLogger(__name__)

# In-flight requests get this long to finish once the frontend is asked to stop.
GRACE_S = 60.0


class FrontendServer:
    def __init__(self, host: str, port: int, models: ModelRegistry, dispatcher: Dispatcher,
                 registry: CollectorRegistry, metrics: FrontendMetrics, sglang=None):
        self.host, self.port = host, port
        self.sglang = sglang  # SGLang's chat processor (--dyn-chat-processor sglang), or our own
        self.models, self.dispatcher, self.registry, self.metrics = models, dispatcher, registry, metrics
        self.shutting_down = False
        self.http = web.HttpServer(host, port, self._errors)
        for method, path, handler in [
            ("POST", "/v1/chat/completions", self.chat),
            ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/embeddings", self.embeddings),
            ("GET", "/v1/models", self.list_models),
            ("GET", "/health", self.health),
            ("GET", "/live", self.live),
            ("GET", "/metrics", self.prometheus),
            ("GET", "/busy_threshold", self.busy_threshold),
            ("POST", "/busy_threshold", self.busy_threshold),
        ]:
            self.http.route(method, path, handler)

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close(GRACE_S)

    async def _errors(self, handler, request: web.Request):
        try:
            return await handler(request)
        except errors.RequestError as e:
            return web.error_response(e)
        except GenerationError as e:
            return web.error_response(h.http_error(e))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.error_response(errors.internal_error())

    # -- generation ---------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.Response | web.EventStream:
        req = parse_chat(_body(request))
        model = h.model_of(self.models, req.model)
        jobs, prompt = h.chat_jobs(model, req, self.sglang)
        return await self._generate(request, "chat_completions", model, req, jobs, [len(prompt)])

    async def completions(self, request: web.Request) -> web.Response | web.EventStream:
        req = parse_completion(_body(request))
        model = h.model_of(self.models, req.model)
        jobs = h.completion_jobs(model, req)
        prompts = [len(job[1].token_ids) for job in jobs[:: req.n]]
        return await self._generate(request, "completions", model, req, jobs, prompts)

    async def _generate(self, request, endpoint, model, req, jobs, prompt_tokens) -> web.Response | web.EventStream:
        kind = "stream" if req.stream else "unary"
        labels = (model.name, endpoint, kind)
        self.metrics.inflight(model.name).inc()
        self.metrics.input_tokens(model.name).observe(sum(prompt_tokens))
        started = time.monotonic()
        status = "error"
        try:
            choices = h.Choices(self.dispatcher, model, self.metrics)
            body = self._stream(request, endpoint, model, req, choices, jobs, prompt_tokens) if req.stream \
                else self._unary(endpoint, model, req, choices, jobs, prompt_tokens)
            response = await body
            status = "success"
            if choices.first_token is not None:
                self.metrics.ttft(model.name).observe(choices.first_token - started)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.metrics.cancellations(*labels).inc()
            self.metrics.disconnected.inc()
            raise
        except GenerationError as e:
            if e.rejected:
                self.metrics.rejections(model.name, endpoint).inc()
            raise
        finally:
            self.metrics.requests(*labels, status).inc()
            self.metrics.inflight(model.name).dec()
            self.metrics.duration(model.name).observe(time.monotonic() - started)

    async def _unary(self, endpoint, model, req, choices, jobs, prompt_tokens) -> web.Response:
        collected: dict[int, list[Delta]] = defaultdict(list)
        async for index, delta in choices.run(jobs):
            collected[index].append(delta)
        deltas = [d for index in sorted(collected) for d in collected[index]]
        usage = self._usage(model, deltas, prompt_tokens)
        if endpoint == "chat_completions":
            body = responses.chat_completion(
                responses.chat_completion_id(), h.now(), model.name,
                [self._chat_choice(model, i, collected[i]) for i in sorted(collected)], usage,
            )
        else:
            body = responses.completion(
                responses.completion_id(), h.now(), model.name,
                [self._completion_choice(model, i, collected[i]) for i in sorted(collected)], usage,
            )
        return web.json_response(body)

    def _chat_choice(self, model, index: int, deltas: list[Delta]) -> dict:
        calls: dict[int, dict] = {}
        for d in deltas:
            for c in d.tool_calls:
                call = calls.setdefault(c.index, {"id": c.id, "name": c.name, "arguments": ""})
                call["arguments"] += c.arguments
        reasoning = "".join(d.reasoning for d in deltas)
        content = "".join(d.text for d in deltas)
        logprobs = [h.chat_logprobs(model, d) for d in deltas]
        message = responses.chat_message(
            content if content or not calls else None,
            reasoning_content=reasoning or None,
            tool_calls=[responses.tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())],
        )
        merged = {"content": [e for lp in logprobs if lp for e in lp["content"]]} if any(logprobs) else None
        return responses.chat_choice(index, message, deltas[-1].finish_reason, merged)

    def _completion_choice(self, model, index: int, deltas: list[Delta]) -> dict:
        text, logprobs, offset = "", None, 0
        for d in deltas:
            piece = h.completion_logprobs(model, d, offset)
            if piece is not None:
                logprobs = piece if logprobs is None else {k: logprobs[k] + piece[k] for k in logprobs}
            text += d.text
            offset = len(text)
        return responses.completion_choice(index, text, deltas[-1].finish_reason, logprobs)

    async def _stream(self, request, endpoint, model, req, choices, jobs, prompt_tokens) -> web.EventStream:
        chat = endpoint == "chat_completions"
        rid, created = (responses.chat_completion_id() if chat else responses.completion_id()), h.now()
        out = h.Responder(request)
        deltas: list[Delta] = []
        offsets: dict[int, int] = defaultdict(int)
        try:
            if chat:  # the opening chunks go out with the first delta
                for index, *_ in jobs:
                    out.hold(responses.chat_chunk(rid, created, model.name, index, role="assistant", content=""))
            async for index, delta in choices.run(jobs):
                deltas.append(delta)
                if chat:
                    chunk = responses.chat_chunk(
                        rid, created, model.name, index,
                        content=delta.text or None,
                        reasoning_content=delta.reasoning or None,
                        tool_calls=[responses.tool_call_delta(c.index, id=c.id, name=c.name, arguments=c.arguments)
                                    for c in delta.tool_calls] or None,
                        finish_reason=delta.finish_reason,
                        logprobs=h.chat_logprobs(model, delta),
                    )
                else:
                    chunk = responses.completion_chunk(
                        rid, created, model.name, index, text=delta.text, finish_reason=delta.finish_reason,
                        logprobs=h.completion_logprobs(model, delta, offsets[index]),
                    )
                    offsets[index] += len(delta.text)
                if delta.finish_reason:  # the stream's end follows at once, unless other choices go on
                    out.hold(chunk)
                elif delta.text or delta.reasoning or delta.tool_calls or delta.logprobs:
                    await out.send(chunk)
            usage = self._usage(model, deltas, prompt_tokens)
            if req.stream_options.include_usage:
                build = responses.chat_usage_chunk if chat else responses.completion_usage_chunk
                return await out.finish(build(rid, created, model.name, usage))
            return await out.finish()
        except GenerationError as e:
            return await out.finish(error=h.http_error(e))

    def _usage(self, model, deltas: list[Delta], prompt_tokens: list[int]) -> dict:
        finals = [d.usage for d in deltas if d.usage is not None]
        completion = sum(u.completion_tokens for u in finals)
        cached = max((u.cached_tokens for u in finals), default=0)
        self.metrics.output_tokens(model.name).observe(completion)
        self.metrics.cached_tokens(model.name).observe(cached)
        return responses.usage(sum(prompt_tokens), completion, cached)

    # -- embeddings, models, health ------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        req = parse_embedding(_body(request))
        model = h.model_of(self.models, req.model, embedding=True)
        inputs = [model.tokenizer.encode(x) if isinstance(x, str) else list(x) for x in req.inputs]
        for ids in inputs:
            h.budget(model, len(ids), 0, "input")
        instance = h.embedding_worker(model)
        instance.inflight += 1
        try:
            async for reply in instance.client.stream(m.EmbedRequest(request_id=responses.unique_hex(), inputs=inputs)):
                if isinstance(reply, m.ErrorReply):
                    raise GenerationError(400 if reply.kind == m.ErrorKind.INVALID else 503, reply.message)
                return web.json_response(
                    responses.embedding_list(model.name, reply.embeddings, reply.prompt_tokens, req.encoding_format)
                )
        finally:
            instance.inflight -= 1
        raise GenerationError(503, "the embedding worker gave no answer")

    async def list_models(self, request: web.Request) -> web.Response:
        cards = [responses.model_card(name, int(min(i.record.started_at for i in model.instances.values())))
                 for name, model in sorted(self.models.models.items())]
        return web.json_response(responses.model_list(cards))

    async def busy_threshold(self, request: web.Request) -> web.Response:
        """The KV router's busy thresholds (Dynamo's `/busy_threshold`): GET reads them,
        POST sets any of `active_decode_blocks_threshold` (a fraction of the KV pool) and
        `active_prefill_tokens_threshold`, and answers with what is now in force."""
        router = self.dispatcher.router
        if not isinstance(router, KvRouter):
            raise errors.invalid_request("busy thresholds belong to the KV router; start the frontend with "
                                         "--router-mode kv")
        if request.method == "POST":
            router.policy = _with_thresholds(router.policy, _json_object(request))
            log.info("busy thresholds now: KV usage %g, prefill tokens %d", router.policy.busy_kv_usage,
                     router.policy.busy_prefill_tokens)
        return web.json_response({"active_decode_blocks_threshold": router.policy.busy_kv_usage,
                                  "active_prefill_tokens_threshold": router.policy.busy_prefill_tokens})

    async def health(self, request: web.Request) -> web.Response:
        instances = [
            {"instance_id": f"{i.record.instance_id:x}", "model": name, "worker_type": i.record.worker_type.value,
             "endpoint": f"dyn://{i.record.namespace}.{i.record.component}.{i.record.endpoint}",
             "address": i.record.request_address,
             "inflight": i.inflight, "active_decode_blocks": i.active_decode_blocks}
            for name, model in sorted(self.models.models.items()) for i in model.instances.values()
        ]
        endpoints = sorted({entry["endpoint"] for entry in instances})
        # Without an instance nothing can be served: readiness waits for the first worker.
        status = "healthy" if instances else "unhealthy"
        return web.json_response({"status": status, "endpoints": endpoints, "instances": instances},
                                 status=200 if instances else 503)

    async def live(self, request: web.Request) -> web.Response:
        if self.shutting_down:
            return web.json_response({"status": "shutting_down", "message": "Service is shutting down"}, status=503)
        return web.json_response({"status": "live", "message": "Service is live"})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)


def _body(request: web.Request):
    try:
        return json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.invalid_request(f"the body is not valid JSON: {e}") from None


def _json_object(request: web.Request) -> dict:
    body = _body(request)
    if not isinstance(body, dict):
        raise errors.invalid_request("the body must be a JSON object")
    return body


def _with_thresholds(policy: KvPolicy, body: dict) -> KvPolicy:
    fields = {"active_decode_blocks_threshold": ("busy_kv_usage", float),
              "active_prefill_tokens_threshold": ("busy_prefill_tokens", int)}
    changes = {}
    for key, value in body.items():
        if key not in fields:
            raise errors.invalid_request(f"unknown threshold {key!r}; use {' or '.join(fields)}", key)
        name, kind = fields[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < 0 or (kind is int and value != int(value)):
            raise errors.invalid_request(f"{key} must be a non-negative {kind.__name__}", key)
        changes[name] = kind(value)
    return dataclasses.replace(policy, **changes)
