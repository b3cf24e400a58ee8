"""Runs a launch plan: start, wait for health, supervise, stop in order.

Launch: stage by stage (workers, then the frontend); every process of a stage must
answer its health URL within the start timeout (a worker answers 200 only once it is
registered in discovery). A process that exits meanwhile fails the launch with one
line naming it and how it ended, then its log tail; whatever was started is stopped;
nothing started at boot is respawned.
Supervise: every health interval each process is checked; one that died, or failed
`unhealthy_after` probes in a row, is restarted on the same GPUs and ports after a
capped exponential backoff; more than `max_restarts` within the window marks it
failed, and by policy the deployment keeps serving or stops.
Stop (SIGTERM/SIGINT): workers drain first (they leave discovery and finish their
requests within the drain timeout), then the frontend stops; each step is logged with
its duration. A second signal kills everything at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.live import Live

from orchestrator.config.schema import LaunchConfig, SupervisorConfig
from orchestrator.errors import BootError, ConfigError, ExitCode
from orchestrator.plan import LaunchPlan
from orchestrator.plan.build import add_replicas
from orchestrator.roles import Role
from orchestrator.signals import Shutdown
from orchestrator.supervisor.child import Child, describe_exit
from orchestrator.supervisor import view
from orchestrator.supervisor.control import ControlServer
from orchestrator.supervisor.observability import observability_files
from orchestrator.supervisor.view import Load

log = logging.getLogger(__name__)


class State(enum.Enum):
    starting = "starting"
    ready = "ready"
    backoff = "backoff"
    failed = "failed"
    draining = "draining"
    exited = "exited"


@dataclass
class Managed:
    child: Child
    state: State = State.starting
    since: float = field(default_factory=time.monotonic)
    failed_probes: int = 0
    restarts: collections.deque = field(default_factory=collections.deque)  # times of recent restarts
    retry_at: float = 0.0
    healthy: bool = False
    load: Load = field(default_factory=Load)

    def set(self, state: State) -> None:
        if state is not self.state:
            log.info("%s: %s -> %s", self.child.spec.name, self.state.value, state.value)
            self.state, self.since = state, time.monotonic()


class Supervisor:
    """`run()` until a stop signal (or `stop()`); `ready` is set once every process is
    healthy. `live_view=False` keeps the terminal for someone else (a benchmark's
    progress) even when stdout is one."""

    def __init__(self, plan: LaunchPlan, launch_config: LaunchConfig, announce=print, live_view: bool = True):
        self.plan, self.launch_config, self.announce = plan, launch_config, announce
        self.config: SupervisorConfig = launch_config.supervisor
        self.procs = [Managed(Child(spec, plan.run_dir)) for spec in plan.processes]
        self.shutdown = Shutdown()
        self.ready = asyncio.Event()
        self._live_view = live_view
        self._restarts: asyncio.Queue[str] = asyncio.Queue()  # groups to restart, one at a time

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.shutdown.install(loop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._restarts.put_nowait("all"))
        self.plan.run_dir.mkdir(parents=True, exist_ok=True)
        self.plan.write_files()
        for path, content in observability_files(self.plan).items():
            Path(path).write_text(content)
        control = ControlServer(self.plan.run_dir, {
            "status": self._status, "restart": self._restart_command, "scale": self._scale_command,
            "stop": self._stop_command,
        })
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as self._http:
            try:
                started = time.monotonic()
                await control.start()
                if not await self._launch():
                    return ExitCode.OK  # asked to stop while starting
                self._ready(time.monotonic() - started)
                self.ready.set()
                async with asyncio.TaskGroup() as tasks:
                    restarter = tasks.create_task(self._rolling_restarts())
                    result = await self._supervise()
                    restarter.cancel()
                return result
            finally:
                await control.close()
                await self._stop()

    # -- launch ---------------------------------------------------------------------------------

    async def _launch(self) -> bool:
        for stage in sorted({p.child.spec.stage for p in self.procs}):
            group = [p for p in self.procs if p.child.spec.stage == stage]
            for p in group:
                await p.child.start()
            deadline = time.monotonic() + self.config.start_timeout_s
            while any(p.state is State.starting for p in group):
                if self.shutdown.requested.is_set():
                    return False
                for p in group:
                    if not p.child.running:
                        raise BootError(
                            f"{p.child.spec.name} {describe_exit(p.child.process.returncode)} while starting; "
                            f"its log ({p.child.log_path}) ends with:\n{p.child.log_tail()}"
                        )
                    if p.state is State.starting and await self._healthy(p):
                        p.set(State.ready)
                if time.monotonic() > deadline:
                    late = ", ".join(p.child.spec.name for p in group if p.state is State.starting)
                    raise BootError(f"{late} not healthy after {self.config.start_timeout_s:g}s",
                                    "raise supervisor.start_timeout_s or read the process logs in the run dir")
                await asyncio.sleep(0.2)
        return True

    def stop(self) -> None:
        """Ask `run()` to stop, as SIGTERM does."""
        self.shutdown.requested.set()

    def _ready(self, seconds: float) -> None:
        self.announce(
            f"Ready in {seconds:.1f}s: {len(self.procs)} processes, logs in {self.plan.run_dir}\n"
            f"  model: {self.plan.served_name}\n"
            f"  curl {self.plan.url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"model\": \"{self.plan.served_name}\", \"messages\": "
            f"[{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'"
        )

    # -- supervise ------------------------------------------------------------------------------

    async def _supervise(self) -> int:
        live = Live(console=Console(), auto_refresh=False) if self._live_view and sys.stdout.isatty() \
            else contextlib.nullcontext()
        with live:
            while not self.shutdown.requested.is_set():
                for p in self.procs:
                    verdict = await self._check(p)
                    if verdict is not None:
                        return verdict
                if isinstance(live, Live):
                    await asyncio.gather(*(self._scrape(p) for p in self.procs))
                    live.update(view.table(self._rows(), f"{self.plan.served_name} at {self.plan.url}"), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.health_interval_s):
                        await self.shutdown.requested.wait()
        return ExitCode.OK

    def _rows(self) -> list[dict]:
        return [
            {"name": p.child.spec.name, "role": p.child.spec.role.value, "group": p.child.spec.group,
             "replica": p.child.spec.replica, "state": p.state.value, "pid": p.child.pid,
             "gpus": list(p.child.spec.gpus), "ports": dict(p.child.spec.ports), "healthy": p.healthy,
             "restarts": len(p.restarts), "since_s": round(time.monotonic() - p.since, 1), "load": p.load}
            for p in self.procs
        ]

    async def _scrape(self, p: Managed) -> None:
        url = p.child.spec.health_url.rsplit("/", 1)[0] + "/metrics"
        try:
            async with self._http.get(url) as response:
                p.load.update(view.metric_sums(await response.text()))
        except (aiohttp.ClientError, TimeoutError):
            pass

    async def _check(self, p: Managed) -> int | None:
        now = time.monotonic()
        if p.state in (State.failed, State.draining):  # draining: a rolling restart owns it
            return None
        if p.state is State.backoff:
            if now >= p.retry_at:
                await p.child.start()
                p.set(State.starting)
            return None
        if not p.child.running:
            log.warning("%s %s", p.child.spec.name, describe_exit(p.child.process.returncode))
            return self._restart_later(p)
        healthy = await self._healthy(p)
        if p.state is State.starting:
            if healthy:
                p.set(State.ready)
            elif now - p.since > self.config.start_timeout_s:
                await p.child.stop(self.config.stop_timeout_s)
                return self._restart_later(p)
            return None
        p.failed_probes = 0 if healthy else p.failed_probes + 1
        if p.failed_probes >= self.config.unhealthy_after:
            log.warning("%s failed %d health probes in a row: restarting it", p.child.spec.name, p.failed_probes)
            p.failed_probes = 0
            await p.child.stop(self.config.stop_timeout_s)
            return self._restart_later(p)
        return None

    def _restart_later(self, p: Managed) -> int | None:
        policy, now = self.config.restart, time.monotonic()
        while p.restarts and now - p.restarts[0] > policy.window_s:
            p.restarts.popleft()
        returncode = p.child.process.returncode
        if policy.policy == "never" or (policy.policy == "on-failure" and returncode == 0) \
                or len(p.restarts) >= policy.max_restarts:
            p.set(State.failed)
            reason = (f"{p.child.spec.name} {describe_exit(returncode)} and was restarted {len(p.restarts)} "
                      f"times in {policy.window_s:g}s")
            if policy.on_failed == "stop":
                log.error("%s: stopping the deployment (supervisor.restart.on_failed=stop)", reason)
                return ExitCode.FAILED
            log.error("%s: serving with the rest", reason)
            return None
        p.restarts.append(now)
        delay = min(policy.backoff_initial_s * 2 ** (len(p.restarts) - 1), policy.backoff_max_s)
        p.retry_at = now + delay
        p.set(State.backoff)
        log.info("%s restarts in %.1fs (restart %d)", p.child.spec.name, delay, len(p.restarts))
        return None

    # -- control ------------------------------------------------------------------------------

    async def _status(self, request: dict) -> dict:
        rows = [{k: v for k, v in row.items() if k != "load"} for row in self._rows()]
        return {"processes": rows, "url": self.plan.url, "model": self.plan.served_name}

    async def _restart_command(self, request: dict) -> dict:
        group = request.get("group") or "all"
        groups = {p.child.spec.group for p in self.procs if p.child.spec.group}
        if group != "all" and group not in groups:
            raise ValueError(f"no worker group {group!r}; groups: {', '.join(sorted(groups))}")
        self._restarts.put_nowait(group)
        return {"message": f"rolling restart of {group} queued"}

    async def _scale_command(self, request: dict) -> dict:
        """New replicas take free GPUs and ports from the plan's inventory and join once
        healthy; removed replicas (the highest-numbered) drain and stop."""
        group, wanted = request.get("group"), request.get("replicas")
        if group not in self.launch_config.deployment.groups:
            raise ValueError(f"no worker group {group!r}; groups: {', '.join(self.launch_config.deployment.groups)}")
        if not isinstance(wanted, int) or wanted < 0:
            raise ValueError("replicas must be a whole number >= 0")
        members = [p for p in self.procs if p.child.spec.group == group]
        current = sorted({p.child.spec.replica for p in members})
        if wanted > len(current):
            plan = dataclasses.replace(self.plan, processes=tuple(p.child.spec for p in self.procs))
            try:
                specs = add_replicas(self.launch_config, plan, group, wanted - len(current))
            except ConfigError as e:
                raise ValueError(str(e)) from None
            for spec in specs:
                p = Managed(Child(spec, self.plan.run_dir))
                self.procs.insert(next(i for i, q in enumerate(self.procs) if q.child.spec.role is Role.frontend), p)
                await p.child.start()
            return {"message": f"{group}: starting {', '.join(s.name for s in specs)}"}
        leaving = [p for p in members if p.child.spec.replica in current[wanted:]]
        await self._drain(leaving)
        self.procs = [p for p in self.procs if p not in leaving]
        return {"message": f"{group}: stopped {', '.join(p.child.spec.name for p in leaving) or 'nothing'}"}

    async def _stop_command(self, request: dict) -> dict:
        self.shutdown.requested.set()
        return {"message": "stopping"}

    async def _rolling_restarts(self) -> None:
        """One replica at a time, losing no request. Where the cluster has room for one more
        replica, its replacement starts on free GPUs first and the old one drains once the
        new one is healthy; otherwise the old one drains first and the replacement takes its
        GPUs and ports. Requests in flight finish, or migrate through the frontend."""
        while True:
            group = await self._restarts.get()
            replicas: dict[tuple, list[Managed]] = collections.defaultdict(list)
            for p in self.procs:
                spec = p.child.spec
                if spec.role is Role.worker and group in ("all", spec.group):
                    replicas[(spec.group, spec.replica)].append(p)
            log.info("rolling restart of %s: %d replicas", group, len(replicas))
            for (name, replica), old in replicas.items():
                t0 = time.monotonic()
                plan = dataclasses.replace(self.plan, processes=tuple(p.child.spec for p in self.procs))
                try:
                    spare = add_replicas(self.launch_config, plan, name, 1)
                except ConfigError:
                    spare = None
                if spare:
                    new = [Managed(Child(spec, self.plan.run_dir)) for spec in spare]
                    self.procs[self.procs.index(old[0]):self.procs.index(old[0])] = new
                    await self._start_and_wait(new)
                    await self._drain(old)
                    self.procs = [p for p in self.procs if p not in old]
                else:
                    await self._drain(old)
                    await self._start_and_wait(old)
                log.info("replica %s-%d %s in %.1fs", name, replica,
                         "replaced on spare GPUs" if spare else "restarted in place", time.monotonic() - t0)

    async def _drain(self, members: list[Managed]) -> None:
        for p in members:
            p.set(State.draining)
        await asyncio.gather(*(p.child.stop(self.config.drain_timeout_s + self.config.stop_timeout_s)
                               for p in members))

    async def _start_and_wait(self, members: list[Managed]) -> None:
        for p in members:
            await p.child.start()
            p.set(State.starting)
        deadline = time.monotonic() + self.config.start_timeout_s
        while any(p.state is not State.ready for p in members) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # the supervise loop marks them ready

    async def _healthy(self, p: Managed) -> bool:
        try:
            async with self._http.get(p.child.spec.health_url) as response:
                p.healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            p.healthy = False
        return p.healthy

    # -- stop -----------------------------------------------------------------------------------

    async def _stop(self) -> None:
        """Workers drain first, then the frontend; a second signal kills everything."""
        workers = [p for p in self.procs if p.child.spec.role is Role.worker and p.child.process]
        frontends = [p for p in self.procs if p.child.spec.role is Role.frontend and p.child.process]
        for name, group, timeout in (
            ("workers", workers, self.config.drain_timeout_s + self.config.stop_timeout_s),
            ("frontend", frontends, self.config.stop_timeout_s),
        ):
            live = [p for p in group if p.child.running]
            if not live:
                continue
            t0 = time.monotonic()
            for p in live:
                p.set(State.draining)
            stopping = asyncio.gather(*(p.child.stop(timeout) for p in live))
            forced = asyncio.ensure_future(self.shutdown.forced.wait())
            done, _ = await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
            if forced in done:
                log.warning("second signal: killing every process")
                for p in self.procs:
                    p.child.kill()
                await stopping
            forced.cancel()
            for p in live:
                p.set(State.exited)
            log.info("stopped %s (%d) in %.1fs", name, len(live), time.monotonic() - t0)
        for p in self.procs:  # anything still starting or in backoff
            if p.child.running:
                await p.child.stop(self.config.stop_timeout_s)
