"""One streamed completion, timed: the only code that speaks HTTP to the endpoint.

Each request goes to `/v1/completions` with token ids as the prompt, `max_tokens` =
OSL and `ignore_eos`, so the output length is exact, and asks for usage on the last
chunk (`include_usage`) and, where the server supports it, on every chunk
(`continuous_usage_stats`, SGLang's and vLLM's extension).

Timing follows the chunks as they arrive. TTFT is the first chunk with text. A chunk
that carries k tokens counts as k inter-token latencies of gap/k each; k comes from the
per-chunk usage when the server sends it. Without it, the tokens after the first chunk
are spread evenly over the later chunks ((output - 1) / (chunks - 1) each), so the
mean ITL is (last chunk - first chunk) / (output - 1), AIPerf's definition, and one
token per chunk gives the exact gaps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Outcome:
    """What one request measured; times are in milliseconds from its send."""

    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    e2e_ms: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    text: str = ""
    error: str | None = None


class Completions:
    """Sends completions to one endpoint over one aiohttp session (open with `async with`)."""

    def __init__(self, url: str, model: str, clock: Callable[[], float] = time.perf_counter):
        self.endpoint = url.rstrip("/") + "/v1/completions"
        self.model, self.clock = model, clock
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Completions:
        # No connection cap and no total timeout: the load, not the client, decides the
        # concurrency, and a long generation is not a failure.
        connector = aiohttp.TCPConnector(limit=0)
        self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.close()

    async def send(self, prompt: list[int], osl: int) -> Outcome:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": osl, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        out, sent = Outcome(prompt_tokens=len(prompt)), self.clock()
        chunks: list[tuple[float, int | None]] = []  # (arrival, tokens in it when the usage says)
        try:
            async with self._http.post(self.endpoint, json=body) as resp:
                if resp.status != 200:
                    out.error = f"HTTP {resp.status}: {_error_message(await resp.text())}"
                    return out
                async for raw in resp.content:
                    now = self.clock()
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        out.error = _error_message(event)
                        break
                    _read_event(event, now, out, chunks)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:  # ValueError: a malformed event
            out.error = f"{type(e).__name__}: {e}".rstrip(": ")
        if out.error is None and not chunks:
            out.error = "the stream ended without text"
        if chunks:
            out.ttft_ms = (chunks[0][0] - sent) * 1000
            out.e2e_ms = (self.clock() - sent) * 1000
            out.itl_ms = inter_token_latencies(chunks, out.output_tokens)
        return out


def _read_event(event: dict, now: float, out: Outcome, chunks: list[tuple[float, int | None]]) -> None:
    usage = event.get("usage")
    before = out.output_tokens
    if usage:
        out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
        out.output_tokens = usage.get("completion_tokens", out.output_tokens)
        details = usage.get("prompt_tokens_details") or {}
        out.cached_tokens = details.get("cached_tokens") or out.cached_tokens
    text = "".join(c.get("text") or "" for c in event.get("choices", []))
    if text:
        out.text += text
        chunks.append((now, out.output_tokens - before if usage else None))


def inter_token_latencies(chunks: list[tuple[float, int | None]], output_tokens: int) -> list[float]:
    """One latency (ms) per token after the first chunk: see the module docstring."""
    if len(chunks) < 2:
        return []
    later = chunks[1:]
    known = all(k is not None and k > 0 for _, k in later)
    spread = max(1.0, (output_tokens - 1) / len(later)) if output_tokens > 1 else 1.0
    itl: list[float] = []
    for (prev, _), (t, k) in zip(chunks, later, strict=False):
        gap = (t - prev) * 1000
        if known:
            itl += [gap / k] * k
        else:  # the same weight for every chunk, so one value per chunk orders like one per token
            itl.append(gap / spread)
    return itl


def _error_message(payload: str | dict) -> str:
    """OpenAI's `{"error": {"message": ...}}`, or the raw body's first line."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload.strip().splitlines()[0][:200] if payload.strip() else "empty body"
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:200]


class EndpointError(Exception):
    """The endpoint cannot be benchmarked at all (unreachable, or the model is not served)."""


async def check_endpoint(url: str, model: str, timeout_s: float = 10.0) -> None:
    """Fails before any request when the endpoint is down or does not list `model`."""
    models_url = url.rstrip("/") + "/v1/models"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.get(models_url) as resp:
                if resp.status != 200:
                    message = _error_message(await resp.text())
                    raise EndpointError(f"{models_url} answered HTTP {resp.status}: {message}")
                served = [m.get("id") for m in (await resp.json()).get("data", [])]
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise EndpointError(f"cannot reach {models_url}: {type(e).__name__}: {e}") from e
    if model not in served:
        listed = ", ".join(map(str, served)) or "none"
        raise EndpointError(f"{url} does not serve the model {model!r} (it serves: {listed})")
