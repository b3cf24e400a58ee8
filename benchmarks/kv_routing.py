"""KV-aware routing against round-robin on a replayed multi-turn trace, with an oracle.

The trace (deterministic from `--seed`): `--conversations` chat sessions, each opening
with one of `--system-prompts` shared system prompts (`--system-tokens` tokens) and a
user message, then `--turns` turns in all. Every turn's prompt is the previous turn's
prompt plus that turn's answer plus a new user message (150 to 500 tokens; answers
100 to 300). The answers are part of the trace, as in a recorded conversation, not
what the mock generated; so what a turn can find cached is the previous turn's
prompt, page-aligned. Sessions start as a Poisson process (`--session-rate` per
second), each turn follows the last one's reply after 0.5 to 2 s of "thinking".
Prompts are token ids sent to `/v1/completions` (streamed, `max_tokens`
`--max-tokens` with `ignore_eos`, usage included) with aiohttp, one task per session.

The deployment is the real CLI: `dynamo-launch +recipe=llama8b_kv_router engine=mock`
with `--workers` aggregated workers (KV events on, page size 16, Llama-3.1-8B timing on
H100 at `--speedup`), once with the recipe's `router=kv` (its overlap score weight,
or `--overlap-score-weight`) and once with `router=round_robin`, freshly started (cold caches) for every run. The runs alternate
their order over `--repeats` repeats; medians are reported.

Per request the client records the time to the first streamed token (TTFT, from
sending) and `usage.prompt_tokens_details.cached_tokens`; a router's hit rate is
cached tokens over prompt tokens, all requests together, and `uncached/req` the
prompt tokens a request had to prefill, on average (what TTFT grows with).

The oracle is an offline replay that really holds every cache: the kv run's requests,
at the times they were sent and completed, go through `--workers` radix caches of the
mock engine itself (`engine.mock.kv_cache.KvCache`, page size 16, matching as the
engine does, leaving the last prompt token to compute). Each request goes to the
cache with the longest cached prefix (ties to the one given the fewest prompt tokens
so far) and its prompt is inserted there when the request completed in the kv run,
as the engine inserts a finished sequence. Its caches are unbounded, so the script
reports the `removed` KV events the kv run's index applied: 0 means the workers
evicted nothing either. The oracle has no TTFT: it serves nothing.

Goals: kv's hit rate >= 95 % of the oracle's; kv's TTFT p50 at least 3x better than
round-robin's.

    python benchmarks/kv_routing.py --out /tmp/kv_routing.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import aiohttp

from orchestrator.engine.mock.kv_cache import KvCache

PAGE = 16
VOCAB = (1000, 100_000)  # token ids drawn from here: ordinary tokens of the served tokenizer


@dataclass
class Conversation:
    start_s: float
    prompts: list[list[int]] = field(default_factory=list)  # one per turn
    think_s: list[float] = field(default_factory=list)  # before each turn after the first


def trace(args) -> list[Conversation]:
    rng = random.Random(args.seed)
    words = lambda n: [rng.randrange(*VOCAB) for _ in range(n)]
    systems = [words(args.system_tokens) for _ in range(args.system_prompts)]
    conversations, start = [], 0.0
    for _ in range(args.conversations):
        start += rng.expovariate(args.session_rate)
        conv = Conversation(start)
        prompt = rng.choice(systems) + words(rng.randint(150, 500))
        conv.prompts.append(prompt)
        for _ in range(args.turns - 1):
            prompt = prompt + words(rng.randint(100, 300)) + words(rng.randint(150, 500))
            conv.prompts.append(prompt)
            conv.think_s.append(rng.uniform(0.5, 2.0))
        conversations.append(conv)
    return conversations


# -- the deployment ---------------------------------------------------------------------------

class Deployment:
    """`dynamo-launch` in its own session for the length of a `with` block, on free ports."""

    def __init__(self, args, router: str, log_dir: Path):
        base = random.randrange(20000, 25800, 200)  # below the ephemeral range; sglang ports below 32768
        self.port = base + 199
        self.log = log_dir / f"{router}-{time.strftime('%H%M%S')}.log"
        self.argv = [args.dynamo_launch, "+recipe=llama8b_kv_router", "engine=mock", f"router={router}",
                     f"deployment.groups.agg.replicas={args.workers}", f"engine.mock.speedup_ratio={args.speedup}",
                     f"frontend.port={self.port}", f"ports.base={base}", f"ports.sglang_base={base + 4000}",
                     f"hydra.run.dir={self.log.with_suffix('')}"]
        if router == "kv" and args.overlap_score_weight is not None:
            self.argv.append(f"router.overlap_score_weight={args.overlap_score_weight}")
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = args.workers

    def __enter__(self) -> Self:
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.out, text=True,
                                     start_new_session=True)
        self.stdout: list[str] = []
        threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True).start()
        try:
            self._wait_ready(180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dynamo-launch exited {self.proc.returncode}, see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s, see {self.log}")
            if any(line.startswith("Ready in") for line in self.stdout):
                health = json.loads(http_get(f"{self.url}/health"))
                if len(health.get("instances", ())) >= self.workers:
                    return
            time.sleep(0.2)

    def model(self) -> str:
        return json.loads(http_get(f"{self.url}/v1/models"))["data"][0]["id"]

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.out.close()


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def removed_events(url: str) -> float:
    """KV `removed` events the frontend's index applied: evictions on the workers."""
    pattern = re.compile(r'^dynamo_router_kv_cache_events_applied_total\{[^}]*event_type="removed"[^}]*\} (\S+)$')
    return sum(float(m.group(1)) for line in http_get(f"{url}/metrics").splitlines() if (m := pattern.match(line)))


# -- the load ---------------------------------------------------------------------------------

async def request(session: aiohttp.ClientSession, url: str, model: str, prompt: list[int], max_tokens: int) -> dict:
    payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first, usage = None, None
    async with session.post(f"{url}/v1/completions", json=payload) as resp:
        if resp.status != 200:
            return {"sent": sent, "error": f"HTTP {resp.status}"}
        async for line in resp.content:
            if not line.startswith(b"data: ") or line[6:].strip() == b"[DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"sent": sent, "error": str(event["error"])}
            usage = event.get("usage") or usage
            if first is None and any(c.get("text") or c.get("finish_reason") for c in event.get("choices", ())):
                first = time.perf_counter()
    if first is None or usage is None:
        return {"sent": sent, "error": "no token or no usage"}
    return {"sent": sent, "first": first, "done": time.perf_counter(), "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


async def replay(url: str, model: str, conversations: list[Conversation], max_tokens: int) -> list[dict]:
    records: list[dict] = []
    started = time.perf_counter()

    async def session_of(c: int, conv: Conversation, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(conv.start_s)
        for turn, prompt in enumerate(conv.prompts):
            if turn:
                await asyncio.sleep(conv.think_s[turn - 1])
            record = await request(http, url, model, prompt, max_tokens)
            records.append({"conversation": c, "turn": turn, "prompt": prompt, **record})

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http, \
            asyncio.TaskGroup() as tasks:
        for c, conv in enumerate(conversations):
            tasks.create_task(session_of(c, conv, http))
    for r in records:
        for key in ("sent", "first", "done"):
            if key in r:
                r[key] -= started
    return records


# -- the oracle and the summaries -------------------------------------------------------------

def oracle(records: list[dict], workers: int) -> dict:
    """Route the kv run's requests, on its timeline, to the true longest cached prefix."""
    caches = [KvCache(max_total_tokens=2**40, page_size=PAGE) for _ in range(workers)]
    given = [0] * workers  # prompt tokens routed to each cache
    timeline = sorted([(r["done"], 0, i) for i, r in enumerate(records)]  # completions first on a tie
                      + [(r["sent"], 1, i) for i, r in enumerate(records)])
    open_slots, cached = {}, 0
    for _, is_send, i in timeline:
        prompt = records[i]["prompt"]
        if is_send:
            matches = [c.match_prefix(prompt) for c in caches]
            w = max(range(workers), key=lambda k: (matches[k].tokens, -given[k]))
            given[w] += len(prompt)
            cached += matches[w].tokens
            slot = caches[w].open(matches[w])
            caches[w].grow(slot, len(prompt))
            open_slots[i] = (caches[w], slot)
        else:
            cache, slot = open_slots.pop(i)
            cache.release(slot, prompt)
    prompts = sum(len(r["prompt"]) for r in records)
    return {"hit_rate": cached / prompts, "uncached_per_request": (prompts - cached) / len(records)}


def summary(records: list[dict]) -> dict:
    ok = [r for r in records if "error" not in r]
    ttft = sorted(r["first"] - r["sent"] for r in ok)
    pct = lambda q: 1e3 * ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else float("nan")
    prompts, cached = sum(r["prompt_tokens"] for r in ok), sum(r["cached_tokens"] for r in ok)
    return {"requests": len(records), "errors": len(records) - len(ok), "hit_rate": cached / max(prompts, 1),
            "uncached_per_request": (prompts - cached) / max(len(ok), 1),
            "ttft_p50_ms": pct(0.5), "ttft_p99_ms": pct(0.99),
            "duration_s": max((r["done"] for r in ok), default=0.0)}


def run_one(args, router: str, conversations: list[Conversation], log_dir: Path) -> tuple[dict, list[dict]]:
    with Deployment(args, router, log_dir) as deployment:
        records = asyncio.run(replay(deployment.url, deployment.model(), conversations, args.max_tokens))
        result = summary(records)
        if router == "kv":
            result["removed_events"] = removed_events(deployment.url)
    result["records"] = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    return result, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--speedup", type=float, default=2.0, help="engine.mock.speedup_ratio")
    parser.add_argument("--conversations", type=int, default=48)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-prompts", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--session-rate", type=float, default=1.0, help="sessions started per second")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--overlap-score-weight", type=float, help="the kv router's (default: the recipe's, 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamo-launch", default=shutil.which("dynamo-launch")
                        or str(Path(sys.executable).parent / "dynamo-launch"))
    parser.add_argument("--log-dir", help="process logs (default: a temporary directory)")
    parser.add_argument("--out", help="write the configuration and every run (with its requests) as JSON here")
    args = parser.parse_args()

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="kv_routing-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    conversations = trace(args)
    print(f"trace: {sum(len(c.prompts) for c in conversations)} requests, "
          f"{sum(map(len, (p for c in conversations for p in c.prompts))):,} prompt tokens; logs in {log_dir}",
          flush=True)
    runs: dict[str, list[dict]] = {"kv": [], "round_robin": [], "oracle": []}
    for repeat in range(args.repeats):
        for router in ("kv", "round_robin") if repeat % 2 == 0 else ("round_robin", "kv"):
            result, records = run_one(args, router, conversations, log_dir)
            runs[router].append(result)
            if router == "kv":
                runs["oracle"].append(oracle([r for r in records if "error" not in r], args.workers))
            print(f"repeat {repeat + 1} {router}: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "records"),
                flush=True)

    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "records"}
           for name, rs in runs.items()}
    kv, rr, best = med["kv"], med["round_robin"], med["oracle"]
    print(f"\n{args.workers} mock workers (Llama-3.1-8B on H100, speed-up {args.speedup:g}), "
          f"medians of {args.repeats} repeats")
    print(f"{'router':12} {'hit rate':>9} {'uncached/req':>13} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'errors':>7}")
    for name, m in (("kv", kv), ("round_robin", rr)):
        print(f"{name:12} {m['hit_rate']:9.1%} {m['uncached_per_request']:13.0f} {m['ttft_p50_ms']:12.1f} "
              f"{m['ttft_p99_ms']:12.1f} {m['errors']:7.0f}")
    print(f"{'oracle':12} {best['hit_rate']:9.1%} {best['uncached_per_request']:13.0f} {'-':>12} {'-':>12} {'-':>7}")
    hit_ratio, ttft_ratio = kv["hit_rate"] / best["hit_rate"], rr["ttft_p50_ms"] / kv["ttft_p50_ms"]
    print(f"\nkv hit rate / oracle's: {hit_ratio:.3f}; round-robin TTFT p50 / kv's: {ttft_ratio:.2f}x; "
          f"p99: {rr['ttft_p99_ms'] / kv['ttft_p99_ms']:.2f}x; evictions in the kv runs: {kv['removed_events']:.0f}")
    goals = {"kv hit rate >= 95% of oracle": hit_ratio >= 0.95,
             "kv TTFT p50 >= 3x better than round-robin": ttft_ratio >= 3}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "runs": runs, "medians": med, "goals": goals}, f, indent=2)


if __name__ == "__main__":
    main()
