"""Micro-benchmark of the KV router's prefix index and routing decision, on one core.

The index is built the way a fleet's KV events would build it: 1,000 slots (worker,
DP rank), each holding `--conversations` cached conversations of a shared system
prompt (one of `--system-prompts`, 64 pages) plus a private tail of 100 pages, for
about 1,000,000 distinct blocks in all at the defaults (page size 16). Sequence
hashes come from `hashing.sequence_hashes` over seeded random tokens, so the
prompts routed later really match what is indexed.

Measured, each `--repeats` times, medians reported, with the garbage collector on
(as in the frontend; the benchmark's own data is frozen out of its sight):

- events applied per second, `PrefixIndex.stored` / `.removed` called directly (the
  listener's decoding is not included). Every event carries 1 to 8 blocks (uniform;
  SGLang coalesces a new radix node's pages into one BlockStored and an evicted
  node's into one BlockRemoved). Mixes: `build` (stored only, from empty to the full
  index), `churn` (indexed pages removed and stored again on their slot) and
  `steady` (a stored event of a new conversation tail, then a removed event of an
  old one, and so on: the index keeps about its size). Blocks per second are
  reported next to events per second.
- routing-decision latency: `KvRouter.choose` over the 1,000 slots as candidates
  with random loads, sequence hashing of the prompt included. Prompts are 2,000 to
  4,000 tokens: an indexed conversation continued by a new turn, a known system
  prompt with a new question, or nothing indexed at all, in equal parts.

Goals: >= 1,000,000 events/s in the `steady` mix; decision p99 < 1 ms.

    python benchmarks/kv_index.py --out /tmp/kv_index.json
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import random
import statistics
import time

from orchestrator.router.base import Candidate
from orchestrator.router.hashing import sequence_hashes
from orchestrator.router.index import PrefixIndex
from orchestrator.router.kv import KvRouter

PAGE = 16
SYSTEM_PAGES, TAIL_PAGES = 64, 100
EVENT_BLOCKS = (1, 8)  # blocks per event, uniform


def tokens(rng: random.Random, n: int) -> list[int]:
    return array.array("I", rng.randbytes(4 * n)).tolist()


def chunks(rng: random.Random, hashes: list[int]) -> list[list[int]]:
    """Cut a page chain into events of a few blocks each."""
    out, at = [], 0
    while at < len(hashes):
        n = rng.randint(*EVENT_BLOCKS)
        out.append(hashes[at : at + n])
        at += n
    return out


class Fleet:
    """The synthetic cache contents: system prompts, and per slot its conversations."""

    def __init__(self, slots: int, conversations: int, system_prompts: int, seed: int) -> None:
        rng = random.Random(seed)
        self.systems = [tokens(rng, SYSTEM_PAGES * PAGE) for _ in range(system_prompts)]
        self.system_hashes = [sequence_hashes(s, PAGE) for s in self.systems]
        self.slots = [(i, 0) for i in range(slots)]
        self.conversations: list[tuple[tuple[int, int], int, list[int]]] = []  # (slot, system, tail tokens)
        self.events: list[tuple[tuple[int, int], list[int]]] = []  # the build: stored events
        for slot in self.slots:
            for _ in range(conversations):
                system = rng.randrange(system_prompts)
                tail = tokens(rng, TAIL_PAGES * PAGE)
                self.conversations.append((slot, system, tail))
                hashes = self.system_hashes[system] + sequence_hashes(tail, PAGE, self.system_hashes[system][-1])
                self.events.extend((slot, chunk) for chunk in chunks(rng, hashes))
        random.Random(seed + 1).shuffle(self.events)  # slots' events interleave on the event plane

    def fresh_tails(self, count: int, seed: int) -> list[tuple[tuple[int, int], list[list[int]]]]:
        """New conversation tails (as stored events) for the steady mix."""
        rng = random.Random(seed)
        out = []
        for _ in range(count):
            slot = rng.choice(self.slots)
            parent = self.system_hashes[rng.randrange(len(self.systems))][-1]
            out.append((slot, chunks(rng, sequence_hashes(tokens(rng, TAIL_PAGES * PAGE), PAGE, parent))))
        return out


def timed(events) -> tuple[float, int, int]:
    """(seconds, events, blocks) to apply `events`, a list of (index method, slot, hashes)."""
    gc.collect()
    started = time.perf_counter()
    for apply, slot, hashes in events:
        apply(slot, hashes)
    seconds = time.perf_counter() - started
    return seconds, len(events), sum(len(h) for _, _, h in events)


def rate(seconds: float, events: int, blocks: int) -> dict:
    return {"events": events, "blocks": blocks, "seconds": seconds,
            "events_per_s": events / seconds, "blocks_per_s": blocks / seconds}


def event_mixes(fleet: Fleet, args) -> tuple[PrefixIndex, dict]:
    index = PrefixIndex()
    stored, removed = index.stored, index.removed
    build = [(stored, slot, hashes) for slot, hashes in fleet.events]
    results = {"build": rate(*timed(build))}
    # churn: the same pages evicted and stored again on their slot
    churn = []
    for slot, hashes in fleet.events[: args.churn_events // 2]:
        churn.append((removed, slot, hashes))
        churn.append((stored, slot, hashes))
    results["churn"] = rate(*timed(churn))
    # steady: new tails come in while old ones go, so the index keeps its size
    old_tails = fleet.conversations[: args.steady_tails]
    rng = random.Random(args.seed + 2)
    steady = []
    for (slot, events), (old_slot, system, tail) in zip(fleet.fresh_tails(args.steady_tails, args.seed + 3), old_tails):
        drops = chunks(rng, sequence_hashes(tail, PAGE, fleet.system_hashes[system][-1]))
        for add, drop in zip(events, drops):
            steady.append((stored, slot, add))
            steady.append((removed, old_slot, drop))
    results["steady"] = rate(*timed(steady))
    return index, results


def prompts(fleet: Fleet, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:  # an indexed conversation, continued by a new turn
            _, system, tail = rng.choice(fleet.conversations)
            out.append(fleet.systems[system] + tail + tokens(rng, rng.randint(0, 1400)))
        elif kind == 1:  # a known system prompt, a new question
            out.append(rng.choice(fleet.systems) + tokens(rng, rng.randint(976, 2976)))
        else:  # nothing indexed
            out.append(tokens(rng, rng.randint(2000, 4000)))
    return out


def decisions(index: PrefixIndex, fleet: Fleet, args) -> dict:
    rng = random.Random(args.seed + 4)
    router = KvRouter(seed=args.seed)
    router.index = index
    candidates = [Candidate(instance_id=i, dp_rank=r, inflight=rng.randint(0, 8),
                            active_decode_blocks=rng.randint(0, 2000), kv_usage=rng.random() * 0.9,
                            prefill_tokens=rng.choice((0, 0, 0, rng.randint(0, 8000))))
                  for i, r in fleet.slots]
    latencies, overlaps = [], 0
    for token_ids in prompts(fleet, args.decisions, args.seed + 5):
        started = time.perf_counter()
        chosen = router.choose(token_ids, candidates, PAGE)
        latencies.append(time.perf_counter() - started)
        overlaps += chosen.overlap_blocks > 0
    latencies.sort()
    ms = lambda q: 1e3 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"decisions": len(latencies), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": 1e3 * latencies[-1],
            "mean_ms": 1e3 * statistics.fmean(latencies), "with_overlap": overlaps / len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=1000, help="workers x DP ranks in the index")
    parser.add_argument("--conversations", type=int, default=10, help="cached conversations per slot")
    parser.add_argument("--system-prompts", type=int, default=100)
    parser.add_argument("--steady-tails", type=int, default=10_000, help="tails replaced in the steady mix")
    parser.add_argument("--churn-events", type=int, default=500_000)
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    fleet = Fleet(args.slots, args.conversations, args.system_prompts, args.seed)
    gc.collect()
    gc.freeze()  # the benchmark's own millions of lists are no business of the collector's
    runs = []
    for repeat in range(args.repeats):
        index, mixes = event_mixes(fleet, args)
        runs.append({"index_blocks": len(index), "mixes": mixes, "decision": decisions(index, fleet, args)})
        del index
        rates = ", ".join(f"{m} {r['events_per_s'] / 1e6:.2f} M ev/s" for m, r in mixes.items())
        print(f"repeat {repeat + 1}: {rates}; decision p99 {runs[-1]['decision']['p99_ms']:.3f} ms", flush=True)

    def med(*path: str) -> float:
        """The median over the repeats of the value at `path` in each run."""
        values = []
        for run in runs:
            for key in path:
                run = run[key]
            values.append(run)
        return statistics.median(values)

    print(f"\n{args.slots} slots, {runs[0]['index_blocks']:,} indexed blocks, page size {PAGE}, "
          f"medians of {args.repeats} repeats")
    print(f"{'mix':8} {'events/s':>12} {'blocks/s':>12} {'blocks/event':>13}")
    for mix in runs[0]["mixes"]:
        r = runs[0]["mixes"][mix]
        print(f"{mix:8} {med('mixes', mix, 'events_per_s'):12,.0f} "
              f"{med('mixes', mix, 'blocks_per_s'):12,.0f} {r['blocks'] / r['events']:13.2f}")
    decision = {k: med("decision", k) for k in ("p50_ms", "p99_ms", "max_ms", "mean_ms")}
    print(f"\ndecision (KvRouter.choose, hashing included): p50 {decision['p50_ms']:.3f} ms, "
          f"p99 {decision['p99_ms']:.3f} ms, max {decision['max_ms']:.3f} ms")
    steady = med("mixes", "steady", "events_per_s")
    goals = {"events_per_s >= 1e6 (steady)": steady >= 1e6, "decision p99 < 1 ms": decision["p99_ms"] < 1.0}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "runs": runs, "median_decision": decision,
                       "median_steady_events_per_s": steady, "goals": goals}, f, indent=2)


if __name__ == "__main__":
    main()
