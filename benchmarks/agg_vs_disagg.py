"""Aggregated against disaggregated serving of Llama-3.3-70B on the same 8 H100s.

One `dynamo-launch` sweep over the two recipes (`llama70b_agg`: two TP4 aggregated
workers; `llama70b_disagg`: two TP2 prefill workers and one TP4 decode worker) and
several concurrencies, on the mock engine, whose roofline timing stands in for the
GPUs: each step lasts what Llama-70B FP8 takes on H100s for that batch, divided by
`--speedup`. The load is synthetic (fixed ISL/OSL, `ignore_eos`), as in Dynamo's own
perf.yaml for this model, with fewer requests.

Times the sweep measures are wall times of the sped-up simulation; this script turns
them back into simulated GPU time (throughputs divided by the speed-up, latencies
multiplied by it) and prints, per concurrency, output tokens/s per GPU, TTFT and ITL
for both, and the ratio disaggregated / aggregated. At speed-up 1 nothing is scaled;
larger speed-ups run faster but let the simulation's own CPU cost (2 cores here) weigh
on the results, so keep it small.

    python benchmarks/agg_vs_disagg.py --out /tmp/agg_vs_disagg.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DYNAMO_LAUNCH = str(Path(sys.executable).parent / "dynamo-launch")
RECIPES = ("llama70b_agg", "llama70b_disagg")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="8,32,96", help="comma-separated concurrencies (whole deployment)")
    p.add_argument("--isl", type=int, default=4096)
    p.add_argument("--osl", type=int, default=256)
    p.add_argument("--requests-per-concurrency", type=int, default=3, help="requests = this x concurrency")
    p.add_argument("--speedup", type=float, default=1.0, help="mock engine speed-up (simulated / wall time)")
    p.add_argument("--out", type=Path, help="write the comparison as JSON here")
    p.add_argument("--sweep-dir", type=Path, help="keep the sweep here (default: a temporary directory)")
    args = p.parse_args()

    sweep_dir = args.sweep_dir or Path(tempfile.mkdtemp(prefix="agg_vs_disagg-"))
    if sweep_dir.exists() and args.sweep_dir:
        shutil.rmtree(sweep_dir)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    jobs = []
    for concurrency in concurrencies:  # one sweep per concurrency: the request count follows it
        command = [DYNAMO_LAUNCH, "-m", f"+recipe={','.join(RECIPES)}", "engine=mock", "benchmark=sweep",
                   f"benchmark.isl={args.isl}", f"benchmark.osl={args.osl}", f"benchmark.concurrency={concurrency}",
                   f"benchmark.num_requests={concurrency * args.requests_per_concurrency}",
                   f"benchmark.warmup_requests={min(concurrency, 8)}", f"engine.mock.speedup_ratio={args.speedup:g}",
                   "supervisor.start_timeout_s=120", f"hydra.sweep.dir={sweep_dir / f'c{concurrency}'}"]
        print(f"concurrency {concurrency}: {' '.join(command[1:])}", file=sys.stderr)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        for n, recipe in enumerate(RECIPES):
            job_dir = sweep_dir / f"c{concurrency}" / str(n)
            status = json.loads((job_dir / "status.json").read_text())
            if status["status"] != "ok":
                raise SystemExit(f"{recipe} at concurrency {concurrency} failed: {status['reason']}")
            summary = json.loads((job_dir / "results.json").read_text())["summary"]
            jobs.append({"recipe": recipe, "concurrency": concurrency, **_simulated(summary, args.speedup)})
    rows = _compare(jobs, concurrencies)
    _print(rows, args)
    if args.out:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out), "sweep_dir": str(sweep_dir)},
                                        "jobs": jobs, "comparison": rows}, indent=2, default=str))
    return 0


def _simulated(summary: dict, speedup: float) -> dict:
    return {
        "completed": summary["completed"],
        "failed": summary["failed"],
        "output_tps_per_gpu": summary["output_throughput_per_gpu"] / speedup,
        "ttft_p50_ms": summary["ttft_ms_p50"] * speedup,
        "ttft_p99_ms": summary["ttft_ms_p99"] * speedup,
        "itl_p50_ms": summary["itl_ms_p50"] * speedup,
        "itl_p99_ms": summary["itl_ms_p99"] * speedup,
    }


def _compare(jobs: list[dict], concurrencies: list[int]) -> list[dict]:
    rows = []
    for concurrency in concurrencies:
        agg, disagg = (next(j for j in jobs if j["recipe"] == r and j["concurrency"] == concurrency) for r in RECIPES)
        rows.append({
            "concurrency": concurrency,
            "agg": agg,
            "disagg": disagg,
            "tps_per_gpu_ratio": disagg["output_tps_per_gpu"] / agg["output_tps_per_gpu"],
            "ttft_p50_ratio": disagg["ttft_p50_ms"] / agg["ttft_p50_ms"],
            "itl_p50_ratio": disagg["itl_p50_ms"] / agg["itl_p50_ms"],
        })
    return rows


def _print(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"Llama-3.3-70B FP8 on 8 x H100 (mock roofline, speed-up {args.speedup:g}), ISL {args.isl} / OSL {args.osl}")
    print(f"{'conc':>5} | {'tok/s/GPU agg':>13} {'disagg':>7} {'ratio':>6} | {'TTFT p50/p99 ms agg':>19} {'disagg':>11} | "
          f"{'ITL p50/p99 ms agg':>18} {'disagg':>11}")
    for r in rows:
        a, d = r["agg"], r["disagg"]
        print(f"{r['concurrency']:>5} | {a['output_tps_per_gpu']:>13.1f} {d['output_tps_per_gpu']:>7.1f} "
              f"{r['tps_per_gpu_ratio']:>5.2f}x | {a['ttft_p50_ms']:>9.0f} / {a['ttft_p99_ms']:<7.0f} "
              f"{d['ttft_p50_ms']:>5.0f} / {d['ttft_p99_ms']:<5.0f}| {a['itl_p50_ms']:>9.1f} / {a['itl_p99_ms']:<6.1f} "
              f"{d['itl_p50_ms']:>4.1f} / {d['itl_p99_ms']:<5.1f}")


if __name__ == "__main__":
    sys.exit(main())
