"""Aggregate the repeats of a frontend-overhead run and judge them against the goal.

Every measured value is kept per repeat; the table shows the median over repeats (with
two repeats, their mean) and every repeat's requests/s. Errors are summed, the foreign
CPU load is the worst seen. The comparison uses the highest concurrency measured for
throughput and concurrency 1 for added latency, per connection mode.
"""

from __future__ import annotations

import statistics

RPS_GOAL = 1.5  # ours / peer requests/s at high concurrency
TTFT_GOAL_MS = 2.0  # ours - peer TTFT at concurrency 1

METRICS = {
    "ttft_p50": ("ttft_ms", "p50"), "ttft_p99": ("ttft_ms", "p99"),
    "itl_p50": ("itl_ms", "p50"), "itl_p99": ("itl_ms", "p99"),
    "e2e_p50": ("e2e_ms", "p50"), "e2e_p99": ("e2e_ms", "p99"),
}
CPU = ("frontend_cpu_ms_per_req", "workers_cpu_ms_per_req", "load_cpu_ms_per_req")
PLAIN = (*CPU, "content_events_per_req")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize(runs: list[dict]) -> dict:
    grouped: dict[tuple, list[dict]] = {}
    for run in runs:
        for cell in run["cells"]:
            grouped.setdefault((run["side"], cell["concurrency"], cell["mode"]), []).append(cell)
    cells = []
    for (side, concurrency, mode), repeats in grouped.items():
        row = {"side": side, "concurrency": concurrency, "mode": mode,
               "req_per_s_each": [c["req_per_s"] for c in repeats],
               "req_per_s": _median([c["req_per_s"] for c in repeats]),
               "errors": sum(c["errors"] for c in repeats),
               "other_cpu_cores_max": max(c["other_cpu_cores"] for c in repeats)}
        for name, (group, q) in METRICS.items():
            row[name] = _median([c[group][q] for c in repeats])
        for name in PLAIN:
            row[name] = _median([c.get(name) for c in repeats])
        cells.append(row)
    return {"cells": cells, "comparison": compare(cells),
            "idle_before": [{"side": r["side"], "repeat": r["repeat"], **r["idle_before"]} for r in runs]}


def compare(cells: list[dict]) -> list[dict]:
    """Per connection mode: the throughput ratio at the top concurrency and the added TTFT at 1."""
    index = {(c["side"], c["concurrency"], c["mode"]): c for c in cells}
    top = max(c["concurrency"] for c in cells)
    out = []
    for mode in sorted({c["mode"] for c in cells}):
        row = {"mode": mode, "top_concurrency": top}
        ours, peer = index.get(("ours", top, mode)), index.get(("peer", top, mode))
        if ours and peer and peer["req_per_s"]:
            row["req_per_s_ratio"] = round(ours["req_per_s"] / peer["req_per_s"], 3)
            # Repeat r of each side ran back to back, so their ratio is the least exposed to drift.
            row["req_per_s_ratio_each"] = [round(o / p, 3) for o, p in zip(ours["req_per_s_each"],
                                                                          peer["req_per_s_each"]) if p]
            row["req_per_s_goal_met"] = row["req_per_s_ratio"] >= RPS_GOAL
        ours, peer = index.get(("ours", 1, mode)), index.get(("peer", 1, mode))
        if ours and peer and ours["ttft_p50"] is not None and peer["ttft_p50"] is not None:
            row["added_ttft_p50_ms"] = round(ours["ttft_p50"] - peer["ttft_p50"], 3)
            row["added_ttft_p99_ms"] = round(ours["ttft_p99"] - peer["ttft_p99"], 3)
            # Dynamo on a reused connection stalls each request ~40 ms (Nagle against delayed ACK):
            # no baseline to judge against.
            stalled = (peer["e2e_p50"] or 0) >= 40.0
            row["ttft_goal_met"] = None if stalled else row["added_ttft_p50_ms"] <= TTFT_GOAL_MS
        out.append(row)
    return out


def _verdict(met: bool | None) -> str:
    return "n/a (peer Nagle-stalled)" if met is None else "met" if met else "MISSED"


def _fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def print_table(summary: dict) -> None:
    print()
    print(f"{'side':<5} {'c':>3} {'conn':<9} {'req/s':>8} {'(each repeat)':<17} {'TTFT p50':>8} {'p99':>7} "
          f"{'ITL p50':>7} {'p99':>6} {'E2E p50':>7} {'events':>6} {'err':>4} {'FE cpu':>7} {'wk cpu':>7} {'other':>5}")
    print(f"{'':<5} {'':>3} {'':<9} {'':>8} {'':<17} {'ms':>8} {'ms':>7} {'ms':>7} {'ms':>6} {'ms':>7} {'/req':>6} "
          f"{'':>4} {'ms/req':>7} {'ms/req':>7} {'cores':>5}")
    for c in sorted(summary["cells"], key=lambda c: (c["concurrency"], c["mode"], c["side"])):
        each = "/".join(f"{v:.0f}" for v in c["req_per_s_each"])
        print(f"{c['side']:<5} {c['concurrency']:>3} {c['mode']:<9} {_fmt(c['req_per_s'], 8, 1)} {each:<17} "
              f"{_fmt(c['ttft_p50'], 8)} {_fmt(c['ttft_p99'], 7)} {_fmt(c['itl_p50'], 7, 3)} {_fmt(c['itl_p99'], 6)} "
              f"{_fmt(c['e2e_p50'], 7)} {_fmt(c['content_events_per_req'], 6, 1)} {c['errors']:>4} "
              f"{_fmt(c['frontend_cpu_ms_per_req'], 7)} "
              f"{_fmt(c['workers_cpu_ms_per_req'], 7)} {_fmt(c['other_cpu_cores_max'], 5)}")
    print()
    for row in summary["comparison"]:
        if "req_per_s_ratio" in row:
            each = "/".join(f"{v:.2f}" for v in row["req_per_s_ratio_each"])
            print(f"{row['mode']:<9} req/s ours/peer at c={row['top_concurrency']}: {row['req_per_s_ratio']:.2f}x "
                  f"(each repeat {each}); goal >= {RPS_GOAL}x: {_verdict(row['req_per_s_goal_met'])}")
        if "added_ttft_p50_ms" in row:
            print(f"{row['mode']:<9} added TTFT at c=1: p50 {row['added_ttft_p50_ms']:+.2f} ms, p99 "
                  f"{row['added_ttft_p99_ms']:+.2f} ms; goal <= {TTFT_GOAL_MS} ms: {_verdict(row['ttft_goal_met'])}")
    idle = summary["idle_before"]
    print("machine busy before each side: " + ", ".join(f"{i['side']}#{i['repeat'] + 1} {i['busy_fraction']:.0%}"
                                                         for i in idle))
