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
import urllib.parse
from itertools import pairwise

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


class Exchange(asyncio.Protocol):
    """One connection's HTTP/1.1 client, lean on purpose: the load shares the machine's
    cores with the side under test, so every microsecond it spends is taken from the
    server. It sends requests one at a time and parses each response as it arrives:
    the status line and headers, the chunked (or sized) body, the SSE events in it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._reply: asyncio.Future | None = None
        self._on_data = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionResetError("connection closed mid-response"))

    async def exchange(self, request: bytes, on_data) -> None:
        """Send `request`; `on_data` gets the response bytes and returns True at its end."""
        if self.lost:
            raise ConnectionResetError("connection closed")
        self._reply = reply = asyncio.get_running_loop().create_future()

        def received(data: bytes) -> None:
            if reply.done():
                return
            try:
                if on_data(data):
                    reply.set_result(None)
            except ValueError as e:  # a malformed response
                reply.set_exception(e)

        self._on_data = received
        self.transport.write(request)
        await reply


class Stream:
    """A streamed chat completion's response, fed as its bytes arrive: records when
    content arrives and whether it ended with [DONE] and the expected usage."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.first: float | None = None  # a token that decodes to nothing ends TTFT with the finish chunk
        self.arrivals: list[float] = []
        self.completion_tokens = None
        self.done = self.failed = False
        self._raw = b""  # bytes not parsed yet: head, then chunk framing
        self._events = b""  # SSE text not parsed yet
        self._chunked = None  # the body's framing, once the head is read
        self._left = 0  # sized body: bytes still to come

    def feed(self, data: bytes) -> bool:
        """True once the whole response is in."""
        now = time.perf_counter()
        self._raw += data
        if self._chunked is None:
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self._raw = self._raw[:end].lower().split(b"\r\n"), self._raw[end + 4 :]
            self.status = int(head[0].split()[1])
            headers = dict((name.strip(), value.strip()) for name, _, value in (h.partition(b":") for h in head[1:]))
            self._chunked = headers.get(b"transfer-encoding") == b"chunked"
            self._left = int(headers.get(b"content-length", 0))
        if not self._chunked:
            self._left -= len(self._raw)
            self._events += self._raw
            self._raw = b""
            self._parse(now)
            return self._left <= 0
        while True:
            line = self._raw.find(b"\r\n")
            if line < 0:
                return False
            size = int(self._raw[:line].split(b";")[0], 16)
            if len(self._raw) < line + 2 + size + 2:
                return False
            if size == 0:
                self._parse(now)
                return True
            self._events += self._raw[line + 2 : line + 2 + size]
            self._raw = self._raw[line + 2 + size + 2 :]
            self._parse(now)

    def _parse(self, now: float) -> None:
        if self.status != 200:
            return
        *events, self._events = self._events.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: "):
                continue
            data = event[6:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            event = json.loads(data)
            if "error" in event:
                self.failed = True
                continue
            if event.get("usage"):
                self.completion_tokens = event["usage"].get("completion_tokens")
            choices = event.get("choices", ())
            if any(c.get("delta", {}).get("content") for c in choices):
                self.arrivals.append(now)
            if self.first is None and (self.arrivals or any(c.get("finish_reason") for c in choices)):
                self.first = now

    def result(self, max_tokens: int) -> dict:
        """Its timings in seconds, or an `error` key."""
        if self.status != 200:
            return {"error": f"HTTP {self.status}"}
        if self.failed:
            return {"error": "error event"}
        if not self.done or self.first is None:
            return {"error": "incomplete stream"}
        if self.completion_tokens != max_tokens:
            return {"error": f"completion_tokens {self.completion_tokens}"}
        itl = [b - a for a, b in pairwise(self.arrivals)]
        return {"ttft": self.first - self.started, "itl": itl, "e2e": time.perf_counter() - self.started,
                "events": len(self.arrivals)}


def request_bytes(host: str, path: str, payload: dict, fresh: bool) -> bytes:
    body = json.dumps(payload).encode()
    close = b"Connection: close\r\n" if fresh else b""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + close + b"\r\n" + body


async def one(client: "Client", payload: dict, max_tokens: int, timeout: float) -> dict:
    """Send one request; return its timings in seconds, or an `error` key."""
    stream = Stream(time.perf_counter())
    try:
        async with asyncio.timeout(timeout):
            conn = await client.connection()
            await conn.exchange(request_bytes(client.host, client.path, payload, client.fresh), stream.feed)
    except (asyncio.TimeoutError, OSError, ValueError) as e:
        client.drop()
        return {"error": type(e).__name__}
    if client.fresh:
        client.drop()
    return stream.result(max_tokens)


class Client:
    """One closed-loop client's connection: kept alive, or fresh per request."""

    def __init__(self, url: str, fresh: bool) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.address, self.host = (parsed.hostname, parsed.port or 80), parsed.netloc
        self.path = parsed.path or "/"
        self.fresh = fresh
        self._conn: Exchange | None = None

    async def connection(self) -> Exchange:
        if self._conn is None or self._conn.lost:
            _, self._conn = await asyncio.get_running_loop().create_connection(Exchange, *self.address)
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.transport.close()
            self._conn = None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1
    return round(ordered[rank] * 1000, 3)


async def phase(args, clients: list[Client], total: int, deadline: float) -> tuple[list[dict], float]:
    """Run `total` requests over the clients; stop early at `deadline`."""
    results: list[dict] = []
    counter = iter(range(total))

    async def run_client(client: Client) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                results.append({"error": "deadline"})
                continue
            results.append(await one(client, body(args.model, args.seed + i, args.max_tokens),
                                     args.max_tokens, args.timeout))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(run_client(client))
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
        # how the 16 tokens came: a side that merges tokens sends fewer, larger events
        "content_events_per_req": round(sum(r["events"] for r in ok) / len(ok), 2) if ok else None,
    }


async def run(args) -> dict:
    # fresh: every request opens its own connection and sends `Connection: close`;
    # kept alive, the warm-up leaves each client's connection open for the measured requests.
    clients = [Client(f"{args.url}/v1/chat/completions", args.mode == "fresh") for _ in range(args.concurrency)]
    deadline = time.monotonic() + args.time_limit
    cpu0 = time.process_time()
    try:
        await phase(args, clients, args.warmup, deadline)
        args.seed += args.warmup
        results, elapsed = await phase(args, clients, args.requests, deadline)
    finally:
        for client in clients:
            client.drop()
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
