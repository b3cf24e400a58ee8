"""`python -m orchestrator.benchmark`: the load process of one benchmark job.

    python -m orchestrator.benchmark --url URL --model NAME --config job.yaml \\
        --gpus N --out DIR [--tokenizer DIR]

`job.yaml` is the `benchmark:` config section. The load runs in its own process so its
event loop and CPU never share the deployment's. Writes DIR/results.json,
DIR/results.csv and DIR/summary.csv (see `results`). Exit codes: 0 when the load ran,
even with failed requests (they are in the results); 1 when it could not run (a bad
config or trace, an unreachable endpoint), with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from orchestrator.benchmark.client import Completions, EndpointError, check_endpoint
from orchestrator.benchmark.loadgen import LoadGenerator, LoadResult, Record, Retokenize
from orchestrator.benchmark.results import load_config, load_shape, write_results
from orchestrator.benchmark.stats import summarize
from orchestrator.benchmark.workload import (
    Workload,
    WorkloadError,
    build_workload,
    load_tokenizer,
)
from orchestrator.config.schema import BenchmarkConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--url", help="the OpenAI-compatible endpoint; default: the config's url")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--config", required=True, type=Path, help="the benchmark section as YAML")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of the deployment, for tokens/s per GPU")
    p.add_argument("--out", required=True, type=Path, help="the directory for the results")
    p.add_argument("--tokenizer", help="model directory (or tokenizer.json); needed by multi_turn")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        url = args.url or cfg.url
        if not url:
            raise WorkloadError("no endpoint: pass --url or set benchmark.url")
        workload = build_workload(cfg)
        retokenize = _retokenizer(args.tokenizer) if args.tokenizer else None
        result = asyncio.run(_run(url, args.model, cfg, workload, retokenize))
    except (WorkloadError, EndpointError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 1
    summary = {**load_shape(cfg), **summarize(result.records, result.duration_s, args.gpus, cfg.slo)}
    write_results(args.out, cfg, summary, result.records)
    print(f"benchmark: {summary['completed']} completed, {summary['failed']} failed in "
          f"{summary['duration_s']:.1f} s; results in {args.out}", file=sys.stderr)
    return 0


def _retokenizer(path: str) -> Retokenize:
    tokenizer = load_tokenizer(path)

    def retokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return retokenize


async def _run(
    url: str, model: str, cfg: BenchmarkConfig, workload: Workload, retokenize: Retokenize | None
) -> LoadResult:
    await check_endpoint(url, model)
    columns = (TextColumn("benchmark"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("load", total=workload.num_requests, failed=0)
        failed = 0

        def done(record: Record) -> None:
            nonlocal failed
            failed += record.error is not None
            progress.update(task, advance=1, failed=failed)

        async with Completions(url, model) as client:
            return await LoadGenerator(cfg, client.send, retokenize, on_done=done).run(workload)


if __name__ == "__main__":
    sys.exit(main())
