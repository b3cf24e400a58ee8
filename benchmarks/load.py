"""Closed-loop load generator for an OpenAI-compatible streaming chat endpoint.

Runs as its own process (the benchmark launches it once per measurement), so its CPU
use is visible and separate from the server's. `concurrency` clients each send one
streamed chat completion at a time until `requests` have completed after a warm-up.
Per request it records the time to the first chunk carrying content (TTFT; the finish
chunk when no token decoded to text), the gaps between content chunks (ITL), and the
end-to-end time. Connections are either kept
alive (one pooled session) or fresh (a new TCP connection per request, closed after).

Prints one JSON object on stdout: throughput, percentiles in milliseconds, errors.

    python benchmarks/load.py --url http://127.0.0.1:8000 --model tiny --concurrency 64 \
        --requests 2000 --mode keepalive
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

import aiohttp

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def prompt(i: int) -> str:
    """About 30 tokens after the chat template; distinct per request so no two share a prefix
    beyond the template."""
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(10))
    return f"Request {i}: please summarize these words in one short line: {words}"


def body(model: str, i: int, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one(session: aiohttp.ClientSession, url: str, payload: dict, max_tokens: int, timeout: float) -> dict:
    """Send one request; return its timings in seconds, or an `error` key."""
    started = time.perf_counter()
    first: float | None = None  # a token that decodes to nothing still ends TTFT with the finish chunk
    arrivals: list[float] = []
    completion_tokens = None
    done = False
    try:
        async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}"}
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return {"error": "error event"}
                if event.get("usage"):
                    completion_tokens = event["usage"].get("completion_tokens")
                now, choices = time.perf_counter(), event.get("choices", ())
                if any(c.get("delta", {}).get("content") for c in choices):
                    arrivals.append(now)
                if first is None and (arrivals or any(c.get("finish_reason") for c in choices)):
                    first = now
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        return {"error": type(e).__name__}
    end = time.perf_counter()
    if not done or first is None:
        return {"error": "incomplete stream"}
    if completion_tokens != max_tokens:
        return {"error": f"completion_tokens {completion_tokens}"}
    itl = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": first - started, "itl": itl, "e2e": end - started}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return round(ordered[rank] * 1000, 3)


async def phase(args, session: aiohttp.ClientSession, total: int, deadline: float) -> tuple[list[dict], float]:
    """Run `total` requests with `args.concurrency` clients; stop early at `deadline`."""
    url = f"{args.url}/v1/chat/completions"
    results: list[dict] = []
    counter = iter(range(total))

    async def client() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                results.append({"error": "deadline"})
                continue
            results.append(await one(session, url, body(args.model, args.seed + i, args.max_tokens),
                                     args.max_tokens, args.timeout))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(args.concurrency):
            group.create_task(client())
    return results, time.perf_counter() - started


def summarize(results: list[dict], elapsed: float) -> dict:
    ok = [r for r in results if "error" not in r]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    ttft = [r["ttft"] for r in ok]
    itl = [g for r in ok for g in r["itl"]]
    e2e = [r["e2e"] for r in ok]
    return {
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed_s": round(elapsed, 3),
        "req_per_s": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        "ttft_ms": {"p50": percentile(ttft, 50), "p90": percentile(ttft, 90), "p99": percentile(ttft, 99)},
        "itl_ms": {"p50": percentile(itl, 50), "p90": percentile(itl, 90), "p99": percentile(itl, 99)},
        "e2e_ms": {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99)},
    }


async def run(args) -> dict:
    # force_close: every request opens its own connection and sends `Connection: close`;
    # otherwise the warm-up leaves warm pooled connections for the measured requests.
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=args.mode == "fresh")
    deadline = time.monotonic() + args.time_limit
    cpu0 = time.process_time()
    async with aiohttp.ClientSession(connector=connector) as session:
        await phase(args, session, args.warmup, deadline)
        args.seed += args.warmup
        results, elapsed = await phase(args, session, args.requests, deadline)
    summary = summarize(results, elapsed)
    summary["load_cpu_s"] = round(time.process_time() - cpu0, 3)
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=300, help="measured requests, after the warm-up")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--mode", choices=["keepalive", "fresh"], default="keepalive")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds for warm-up plus measurement")
    p.add_argument("--seed", type=int, default=0, help="first prompt index")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    try:
        import uvloop  # a faster client leaves more of the shared CPU to the server under test
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    summary = runner(run(args))
    summary["event_loop"] = "uvloop" if runner is not asyncio.run else "asyncio"
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
