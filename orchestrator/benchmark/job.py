"""A benchmark job: a deployment up (or the one the sweep's previous job left running,
when only the workload changed, its prefix caches flushed so that no job starts warm
from the one before), the load process driven against it, the outcome in the job's
directory.

Hydra runs a sweep's jobs one after the other in this process. The deployment lives in
`DEPLOYMENT`, on one event loop kept across the jobs: between two jobs its processes
keep running and the next job whose deployment config is the same (everything but
`benchmark`) reuses it; a different one (a topology change) stops it first. The end of
the sweep (`callback.BenchmarkCallback`) stops the last one. With `benchmark.url` the
load goes to that endpoint and nothing is deployed.

Every job writes `benchmark.yaml` (its load config), `results.json` / `results.csv` /
`summary.csv` (from the load process) and `status.json` (ok or failed, with the
reason). A failed job is recorded and the sweep goes on, unless
`benchmark.stop_on_failure`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import aiohttp
import yaml

from orchestrator.config.schema import LaunchConfig
from orchestrator.errors import LaunchError
from orchestrator.plan import LaunchPlan
from orchestrator.plan.build import tokenizer_path
from orchestrator.roles import Role
from orchestrator.supervisor import Supervisor

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


class JobFailed(Exception):
    pass


class KeptDeployment:
    """At most one deployment, kept between the jobs of a sweep."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key: str | None = None
        self._supervisor: Supervisor | None = None
        self._task: asyncio.Task | None = None

    def run(self, coro):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def up(self, key: str, plan: LaunchPlan, cfg: LaunchConfig) -> bool:
        """Bring the deployment for `key` up; False when the running one is reused."""
        if self._key == key and self._task is not None and not self._task.done():
            await _flush_caches(self._supervisor.plan)
            return False
        await self.down()
        supervisor = Supervisor(plan, cfg, announce=lambda text: log.info("%s", text.splitlines()[0]), live_view=False)
        task = asyncio.ensure_future(supervisor.run())
        ready = asyncio.ensure_future(supervisor.ready.wait())
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            code = task.result()  # a LaunchError (boot failure) raises here
            raise JobFailed(f"the deployment stopped while starting (exit {code})")
        self._key, self._supervisor, self._task = key, supervisor, task
        return True

    async def down(self) -> None:
        if self._task is None:
            return
        self._supervisor.stop()
        try:
            await self._task
        except LaunchError as e:
            log.warning("the deployment stopped with an error: %s", e)
        self._key = self._supervisor = self._task = None

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        if self._loop is not None:
            self.run(self.down())
            self._loop.close()
            self._loop = None


DEPLOYMENT = KeptDeployment()


def run_job(cfg: LaunchConfig, plan: LaunchPlan, deployment_key: str, job_dir: Path, multirun: bool) -> int:
    """Run one job; returns the process exit code (non-zero only when this failure
    should end the run: a single run, or a sweep with `stop_on_failure`)."""
    bench, gpus = cfg.benchmark, _gpus(plan)
    if bench.concurrency_per_gpu:
        bench = replace(bench, concurrency=max(1, round(bench.concurrency_per_gpu * gpus)), concurrency_per_gpu=None)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "benchmark.yaml").write_text(yaml.safe_dump(asdict(bench), sort_keys=False))
    status: dict = {"status": "ok", "reason": None, "url": bench.url or plan.url, "reused_deployment": False}
    try:
        if bench.url is None:
            status["reused_deployment"] = not DEPLOYMENT.run(DEPLOYMENT.up(deployment_key, plan, cfg))
        DEPLOYMENT.run(_drive(cfg, gpus, job_dir, status["url"]))
        if bench.url is None and not DEPLOYMENT.alive():
            raise JobFailed("the deployment stopped during the benchmark (see the supervisor's log)")
    except (JobFailed, LaunchError) as e:
        status.update(status="failed", reason=str(e).splitlines()[0])
        log.error("benchmark job failed: %s", status["reason"])
    (job_dir / STATUS_FILE).write_text(json.dumps(status, indent=2))
    if not multirun:
        DEPLOYMENT.close()
    failed = status["status"] == "failed"
    return 1 if failed and (bench.stop_on_failure or not multirun) else 0


async def _flush_caches(plan: LaunchPlan) -> None:
    """SGLang's `flush_cache` on every worker (its `/engine/flush_cache`), which also
    tells the KV router's index through the workers' KV events."""
    urls = [p.health_url.removesuffix("/health") + "/engine/flush_cache"
            for p in plan.processes if p.role is Role.worker and p.node_rank == 0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for url in urls:
            async with http.post(url, json={}) as response:
                body = await response.json(content_type=None)
            if response.status != 200 or not body.get("success", False):
                raise JobFailed(f"cannot flush the prefix cache at {url}: {body}")


def _gpus(plan: LaunchPlan) -> int:
    return len({(p.node, g) for p in plan.processes for g in p.gpus}) or 1


async def _drive(cfg: LaunchConfig, gpus: int, job_dir: Path, url: str) -> None:
    argv = [sys.executable, "-m", "orchestrator.benchmark", "--url", url, "--model", cfg.model.served_name,
            "--config", str(job_dir / "benchmark.yaml"), "--gpus", str(gpus), "--out", str(job_dir)]
    tokenizer = tokenizer_path(cfg) or cfg.model.path
    if Path(tokenizer).is_dir():
        argv += ["--tokenizer", tokenizer]
    process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    last = ""
    async for line in process.stderr:  # shown as it comes (the progress), the last line kept as the reason
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
        last = line.decode(errors="replace").strip() or last
    if await process.wait() != 0:
        raise JobFailed(f"the load generator failed: {last}")
