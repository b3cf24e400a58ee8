"""KV-aware routing against round-robin on a replayed multi-turn trace, with an oracle.

The trace (deterministic from `--seed`): `--conversations` chat sessions, each opening
with one of `--system-prompts` shared system prompts (`--system-tokens` tokens) and a
user message, then `--turns` turns in all. Every turn's prompt is the previous turn's
prompt plus that turn's answer plus a new user message (150 to 500 tokens; answers
100 to 300). The answers are part of the trace, as in a recorded conversation, not
what the mock generated; so what a turn can find cached is the previous turn's
prompt, page-aligned. Sessions start as a Poisson process (`--session-rates` per
second), each turn follows the last one's reply after 0.5 to 2 s of "thinking".
Prompts are token ids sent to `/v1/completions` (streamed, `max_tokens`
`--max-tokens` with `ignore_eos`, usage included) with aiohttp, one task per session.

The deployment is the real CLI: `dynamo-launch +recipe=llama8b_kv_router engine=mock`
with `--workers` aggregated workers (KV events on, page size 16, Llama-3.1-8B timing on
H100 at `--speedup`), once with `router=kv` (at `--overlap-score-weight`), once with
`router=round_robin` and once for the oracle (below), freshly started (cold caches)
for every run. The runs alternate their order over `--repeats` repeats; medians are
reported.

Load: given several `--session-rates`, the whole comparison runs once per rate on the
same trace, its session starts compressed by the rate (the draws do not depend on it),
and a last table has a row per rate. Each run also records how busy the machine's CPUs
were while it replayed (`cpu_busy`, all cores, from /proc/stat): near 100 % the
processes' event loops, not the simulated GPUs, set the TTFT.

Per request the client records the time to the first streamed token (TTFT, from
sending) and `usage.prompt_tokens_details.cached_tokens`; a router's hit rate is
cached tokens over prompt tokens, all requests together, and `uncached/req` the
prompt tokens a request had to prefill, on average (what TTFT grows with).

The oracle is a third run that serves the trace knowing every cache exactly: the
client holds a copy of each worker's radix cache (the mock engine's own class,
`engine.mock.kv_cache.KvCache`, page size 16, matching as the engine does, leaving the
last prompt token to compute), fed with what it sent there. Each request goes to the
worker with the longest cached prefix, whatever its queue (ties to the one given the
fewest prompt tokens so far), named in Dynamo's `nvext.backend_instance_id`, which the
frontend obeys; its prompt is inserted into the copy when its first token arrives, as
the engine inserts a prompt once it is prefilled (SGLang's `cache_unfinished_req`).
The copies are unbounded, so the run counts the requests whose `cached_tokens` differ
from the copy's prediction (`mispredicted`, 0 when the copies are exact) and the
script reports the `removed` KV events the kv run's index applied (0: the workers
evicted nothing either).

The peer runs in the same loop on the same trace and client: NVIDIA Dynamo 1.6.1's
frontend (`--router-mode kv`, KV events on, the same overlap score weight) in front of
`--workers` of its mockers (`--engine-type sglang --block-size 16`, prefix caching on,
16,384 blocks each), started from `--peer-python` on file discovery, the TCP request
plane and the ZMQ event plane (`sides.peer_kv_side`); each mocker publishes its KV
events on the event plane by itself. Its usage carries no `cached_tokens`, so the
client asks for `nvext.timing` and takes the router's `kv_hit_rate` (overlap blocks
over the prompt's blocks, the last one partial) times the prompt's blocks as cached.
That is the frontend's view of the chosen worker's cache, which is the cache itself
only if the events arrive: the script reports the `stored` events the peer's index
applied (more than 0 means they do) and its hit rate is read against ours under
round-robin, which serves the same caches blindly.

Timing: the two mocks do not share a model. Ours follows a roofline: a prefill step
of n new tokens costs 2 ms + 32.5 us x n of simulated time (8.03 B parameters, 989
TFLOP/s at 50 %), a decode step about 8.9 ms. The peer's mocker (SGLang polynomial,
measured through its `nvext.timing.prefill_time_ms` at speedup 1) costs about 18 ms +
16 us x n for n up to 3,000, a decode step about 5 ms. No speedup makes both terms
match. The peer runs at `--peer-speedup`, by default `--speedup` x 16 / 32.5, which
gives the same cost per prefilled token, the part routing saves, and a decode step
within 15 % of ours (about 5.1 ms against 4.5 ms at our speedup 2); the price is a
fixed cost per prefill 9x ours (about 18 ms against 1 ms of wall time), so the peer's
TTFT carries about 17 ms that has nothing to do with routing. Hit rate and
uncached tokens per request compare routing; TTFT ratios include that constant.

Goals: kv's hit rate >= 95 % of the oracle's; kv's TTFT p50 at least 3x better than
round-robin's. The defaults are where they are checked: 128 conversations of 10 turns
at 3 sessions/s on GPUs 8x slower than the mock's H100 (speed-up 0.125: the work of
48 sessions/s at speed-up 2), where round-robin's prefills queue, and an overlap score
weight of 64, which keeps a conversation on its worker through a short queue there.

    python benchmarks/kv_routing.py --out /tmp/kv_routing.json
    python benchmarks/kv_routing.py --session-rates 2 3 4 --seed 1 --peer-python '' --out /tmp/kv_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import signal
import socket
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
from sides import Fleet, exit_on_sigterm, kv_events_applied, machine_cpu, peer_kv_side

from orchestrator.engine.mock.kv_cache import KvCache

PAGE = 16
PEER_SPEEDUP_SCALE = 16.0 / 32.5  # the peer's prefill cost per token over ours at equal speedup
REPO = Path(__file__).resolve().parent.parent
VOCAB = (1000, 100_000)  # token ids drawn from here: ordinary tokens of the served tokenizer


@dataclass
class Conversation:
    start_s: float
    prompts: list[list[int]] = field(default_factory=list)  # one per turn
    think_s: list[float] = field(default_factory=list)  # before each turn after the first


def trace(args, rate: float) -> list[Conversation]:
    rng = random.Random(args.seed)
    words = lambda n: [rng.randrange(*VOCAB) for _ in range(n)]
    systems = [words(args.system_tokens) for _ in range(args.system_prompts)]
    conversations, start = [], 0.0
    for _ in range(args.conversations):
        start += rng.expovariate(rate)
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
        if router == "kv":
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

    def instances(self) -> list[int]:
        return [int(i["instance_id"], 16) for i in json.loads(http_get(f"{self.url}/health"))["instances"]]

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerDeployment:
    """Dynamo 1.6.1's KV-routed frontend and mockers (`sides.Fleet`) for a `with` block."""

    model = "meta-llama/Llama-3.1-8B-Instruct"  # served from the tiny model's tokenizer: ids up to 128,000

    def __init__(self, args, log_dir: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        run_dir = Path(tempfile.mkdtemp(prefix="peer-", dir=log_dir))
        side = peer_kv_side(args.peer_python, str(REPO / "orchestrator" / "models" / "tiny"), self.model,
                            args.workers, args.peer_speedup, port, run_dir, args.overlap_score_weight)
        self.fleet = Fleet(side, self.url, self.model, log_dir, ready_timeout=180)

    def __enter__(self) -> Self:
        self.fleet.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.fleet.__exit__(*exc)


# -- the load ---------------------------------------------------------------------------------

async def request(session: aiohttp.ClientSession, url: str, model: str, prompt: list[int], max_tokens: int,
                  extra: dict, on_first=None) -> dict:
    payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}, **extra}
    sent = time.perf_counter()
    first, usage, timing = None, None, {}
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
            timing = (event.get("nvext") or {}).get("timing") or timing
            if first is None and any(c.get("text") or c.get("finish_reason") for c in event.get("choices", ())):
                first = time.perf_counter()
                if on_first is not None:
                    on_first()
    if first is None or usage is None:
        return {"sent": sent, "error": "no token or no usage"}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None and "kv_hit_rate" in timing:  # the peer: its router's overlap, in blocks
        blocks = -(-usage["prompt_tokens"] // PAGE)
        cached = min(round(timing["kv_hit_rate"] * blocks) * PAGE, usage["prompt_tokens"])
    return {"sent": sent, "first": first, "done": time.perf_counter(), "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": cached or 0}


class Oracle:
    """Every worker's radix cache, copied exactly from what was sent where (see above)."""

    def __init__(self, instances: list[int]):
        self.caches = {i: KvCache(max_total_tokens=2**40, page_size=PAGE) for i in instances}
        self.given = dict.fromkeys(instances, 0)  # prompt tokens sent to each worker

    def place(self, prompt: list[int]) -> tuple[int, int, object]:
        """(worker, cached tokens it holds, slot) for a prompt about to be sent."""
        matches = {i: cache.match_prefix(prompt) for i, cache in self.caches.items()}
        best = max(self.caches, key=lambda i: (matches[i].tokens, -self.given[i]))
        self.given[best] += len(prompt)
        slot = self.caches[best].open(matches[best])
        self.caches[best].grow(slot, len(prompt))
        return best, matches[best].tokens, slot

    def prefilled(self, worker: int, slot: object, prompt: list[int]) -> None:
        self.caches[worker].cache(slot, prompt)

    def done(self, worker: int, slot: object) -> None:
        self.caches[worker].release(slot)


async def replay(url: str, model: str, conversations: list[Conversation], max_tokens: int,
                 extra: dict, oracle: Oracle | None = None) -> list[dict]:
    records: list[dict] = []
    started = time.perf_counter()

    async def session_of(c: int, conv: Conversation, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(conv.start_s)
        for turn, prompt in enumerate(conv.prompts):
            if turn:
                await asyncio.sleep(conv.think_s[turn - 1])
            if oracle is None:
                record = await request(http, url, model, prompt, max_tokens, extra)
            else:
                worker, predicted, slot = oracle.place(prompt)
                record = await request(http, url, model, prompt, max_tokens, {"nvext": {"backend_instance_id": worker}},
                                       on_first=functools.partial(oracle.prefilled, worker, slot, prompt))
                oracle.done(worker, slot)
                record["predicted_cached"] = predicted
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


# -- the summaries ----------------------------------------------------------------------------

def summary(records: list[dict]) -> dict:
    ok = [r for r in records if "error" not in r]
    ttft = sorted(r["first"] - r["sent"] for r in ok)
    pct = lambda q: 1e3 * ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else float("nan")
    prompts, cached = sum(r["prompt_tokens"] for r in ok), sum(r["cached_tokens"] for r in ok)
    result = {"requests": len(records), "errors": len(records) - len(ok), "hit_rate": cached / max(prompts, 1),
              "uncached_per_request": (prompts - cached) / max(len(ok), 1),
              "ttft_p50_ms": pct(0.5), "ttft_p99_ms": pct(0.99),
              "duration_s": max((r["done"] for r in ok), default=0.0)}
    if any("predicted_cached" in r for r in ok):
        result["mispredicted"] = sum(r["cached_tokens"] != r["predicted_cached"] for r in ok)
    return result


def run_one(args, name: str, conversations: list[Conversation], log_dir: Path) -> dict:
    side, router = name.split("-")
    deployment = PeerDeployment(args, log_dir) if side == "peer" \
        else Deployment(args, "round_robin" if router == "oracle" else router, log_dir)  # the oracle names workers
    extra = {"nvext": {"extra_fields": ["timing"]}} if side == "peer" else {}
    with deployment:
        model = deployment.model if side == "peer" else deployment.model()
        oracle = Oracle(deployment.instances()) if router == "oracle" else None
        busy0, total0 = machine_cpu()
        records = asyncio.run(replay(deployment.url, model, conversations, args.max_tokens, extra, oracle))
        busy, total = machine_cpu()
        result = summary(records)
        result["cpu_busy"] = (busy - busy0) / max(total - total0, 1e-9)
        if router == "kv":
            metrics = http_get(f"{deployment.url}/metrics")
            result["stored_events"] = kv_events_applied(metrics, "stored")
            result["removed_events"] = kv_events_applied(metrics, "removed")
    result["records"] = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    return result


def measure(args, rate: float, log_dir: Path) -> dict:
    """Every side and router on the trace at `rate` sessions/s, `--repeats` times; print and return the medians."""
    conversations = trace(args, rate)
    print(f"\n{rate:g} sessions/s, trace: {sum(len(c.prompts) for c in conversations)} requests, "
          f"{sum(map(len, (p for c in conversations for p in c.prompts))):,} prompt tokens, last session starting "
          f"at {conversations[-1].start_s:.0f} s; logs in {log_dir}", flush=True)
    names = ["ours-kv", "ours-round_robin", "ours-oracle"] + (["peer-kv"] if args.peer_python else [])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            result = run_one(args, name, conversations, log_dir)
            runs[name].append(result)
            print(f"repeat {repeat + 1} {name}: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "records"),
                flush=True)

    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "records"}
           for name, rs in runs.items()}
    kv, rr, best = med["ours-kv"], med["ours-round_robin"], med["ours-oracle"]
    print(f"\n{args.workers} mock workers (Llama-3.1-8B on H100, speed-up {args.speedup:g}; the peer's mockers at "
          f"{args.peer_speedup:g}), {rate:g} sessions/s, medians of {args.repeats} repeats")
    print(f"{'side-router':17} {'hit rate':>9} {'uncached/req':>13} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'errors':>7} {'CPU busy':>9}")
    for name in names:
        m = med[name]
        print(f"{name:17} {m['hit_rate']:9.1%} {m['uncached_per_request']:13.0f} {m['ttft_p50_ms']:12.1f} "
              f"{m['ttft_p99_ms']:12.1f} {m['errors']:7.0f} {m['cpu_busy']:9.0%}")
    hit_ratio, ttft_ratio = kv["hit_rate"] / best["hit_rate"], rr["ttft_p50_ms"] / kv["ttft_p50_ms"]
    print(f"\nours-kv hit rate / oracle's: {hit_ratio:.3f}; round-robin TTFT p50 / kv's: {ttft_ratio:.2f}x; "
          f"p99: {rr['ttft_p99_ms'] / kv['ttft_p99_ms']:.2f}x; evictions in the kv runs: {kv['removed_events']:.0f}; "
          f"the oracle's mispredicted requests: {best['mispredicted']:.0f}")
    if "peer-kv" in med:
        peer = med["peer-kv"]
        med["ours-kv/peer-kv"] = {k: kv[k] / peer[k] for k in ("hit_rate", "uncached_per_request",
                                                               "ttft_p50_ms", "ttft_p99_ms") if peer[k]}
        print(f"peer-kv hit rate / the oracle's: {peer['hit_rate'] / best['hit_rate']:.3f}; "
              f"KV events its index applied: {peer['stored_events']:.0f} stored, {peer['removed_events']:.0f} removed")
        print("ours-kv / peer-kv: " + ", ".join(f"{k} {v:.2f}" for k, v in med["ours-kv/peer-kv"].items()))
    goals = {"kv hit rate >= 95% of oracle": hit_ratio >= 0.95,
             "kv TTFT p50 >= 3x better than round-robin": ttft_ratio >= 3}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    return {"session_rate": rate, "runs": runs, "medians": med, "goals": goals}


def print_sweep(sweep: list[dict]) -> None:
    """One row per session rate: kv against round-robin and the oracle."""
    print(f"\n{'sessions/s':>10} {'kv hit':>7} {'rr hit':>7} {'or hit':>7} {'kv p50':>7} {'kv p99':>7} {'rr p50':>7} "
          f"{'rr p99':>7} {'or p50':>7} {'p50 x':>6} {'p99 x':>6} {'kv CPU':>7}   (TTFT ms; x: round-robin's over kv's)")
    for point in sweep:
        med = point["medians"]
        kv, rr, best = med["ours-kv"], med["ours-round_robin"], med["ours-oracle"]
        print(f"{point['session_rate']:10g} {kv['hit_rate']:7.1%} {rr['hit_rate']:7.1%} {best['hit_rate']:7.1%} "
              f"{kv['ttft_p50_ms']:7.1f} {kv['ttft_p99_ms']:7.1f} {rr['ttft_p50_ms']:7.1f} {rr['ttft_p99_ms']:7.1f} "
              f"{best['ttft_p50_ms']:7.1f} {rr['ttft_p50_ms'] / kv['ttft_p50_ms']:6.2f} "
              f"{rr['ttft_p99_ms'] / kv['ttft_p99_ms']:6.2f} {kv['cpu_busy']:7.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--speedup", type=float, default=0.125, help="engine.mock.speedup_ratio")
    parser.add_argument("--conversations", type=int, default=128)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-prompts", type=int, default=8)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--session-rates", type=float, nargs="+", default=[3.0],
                        help="sessions started per second; one comparison per rate")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--overlap-score-weight", type=float, default=64.0,
                        help="the kv router's and the peer's (the recipe sets 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamo-launch", default=shutil.which("dynamo-launch")
                        or str(Path(sys.executable).parent / "dynamo-launch"))
    parser.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON", "/tmp/dynvenv/bin/python"),
                        help="python of the venv with ai-dynamo 1.6.1; '' leaves the peer out [PEER_PYTHON]")
    parser.add_argument("--peer-speedup", type=float,
                        help=f"its mockers' --speedup-ratio (default: --speedup x {PEER_SPEEDUP_SCALE:.3f}, see above)")
    parser.add_argument("--log-dir", help="process logs (default: a temporary directory)")
    parser.add_argument("--out", help="write the configuration and every run (with its requests) as JSON here")
    args = parser.parse_args()
    exit_on_sigterm()
    if args.peer_speedup is None:
        args.peer_speedup = round(args.speedup * PEER_SPEEDUP_SCALE, 3)
    if args.peer_python and not os.access(args.peer_python, os.X_OK):
        parser.error(f"--peer-python {args.peer_python} is not an executable python ('' to leave the peer out)")

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="kv_routing-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    sweep = [measure(args, rate, log_dir) for rate in args.session_rates]
    if len(sweep) > 1:
        print_sweep(sweep)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "sweep": sweep}, f, indent=2)


if __name__ == "__main__":
    main()
