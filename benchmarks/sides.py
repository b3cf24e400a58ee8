"""The two systems under test and the processes that run them.

A `Side` is a frontend plus mock workers, each started from that side's own venv:
ours (`orchestrator.frontend` + `orchestrator.worker --engine mock`) and the peer,
NVIDIA Dynamo 1.6.1 (`dynamo.frontend` + `dynamo.mocker`), which runs without etcd or
NATS on file discovery, the TCP request plane and the ZMQ event plane.

`Fleet` owns one side's processes for the length of a `with` block: it starts the
workers, then the frontend, each in its own session with its output in a log file,
and waits under one deadline (watching for early exits) until the frontend lists every
worker and answers a streamed request. Leaving the block terminates every process
group, waits, kills what is left, and reaps (also when the benchmark is terminated,
once it has called `exit_on_sigterm`). It also reads the CPU time the processes have
used, so the benchmark can charge CPU to the frontend and the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A side did not come up, or a measurement could not run."""


@dataclass
class Side:
    """What to start for one system under test: argv lists and extra environment."""

    name: str
    frontend: list[str]  # full argv
    workers: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def our_side(python: str, model_dir: str, model: str, workers: int, speedup: float, port: int,
             router_mode: str, run_dir: Path) -> Side:
    discovery = run_dir / "ours-discovery"
    discovery.mkdir(parents=True, exist_ok=True)
    worker = [python, "-m", "orchestrator.worker", "--engine", "mock", "--model-path", model_dir,
              "--served-model-name", model, "--page-size", "16", "--skip-tokenizer-init",
              "--mock-speedup-ratio", str(speedup), "--discovery-dir", str(discovery), "--no-health-check"]
    frontend = [python, "-m", "orchestrator.frontend", "--http-host", "127.0.0.1", "--http-port", str(port),
                "--router-mode", router_mode, "--discovery-dir", str(discovery)]
    return Side("ours", frontend, [worker] * workers)


def peer_side(python: str, model_dir: str, model: str, workers: int, speedup: float, port: int,
              router_mode: str, run_dir: Path, log_level: str, worker_args: tuple[str, ...] = (),
              frontend_args: tuple[str, ...] = ()) -> Side:
    discovery = run_dir / "peer-discovery"
    discovery.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_HUB_OFFLINE": "1", "DYN_LOG": log_level,
        "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(discovery),
        "DYN_REQUEST_PLANE": "tcp", "DYN_EVENT_PLANE": "zmq",
        "DYN_TCP_RPC_HOST": "127.0.0.1", "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1", "DYN_SYSTEM_HOST": "127.0.0.1",
    }
    worker = [python, "-m", "dynamo.mocker", "--model-path", model_dir, "--model-name", model,
              "--speedup-ratio", str(speedup), *worker_args]
    frontend = [python, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port),
                "--router-mode", router_mode, *frontend_args]
    return Side("peer", frontend, [worker] * workers, env)


def peer_kv_side(python: str, model_dir: str, model: str, workers: int, speedup: float, port: int,
                 run_dir: Path, overlap_score_weight: float) -> Side:
    """The peer as a KV-routed deployment: SGLang-style mockers with 16-token blocks and
    prefix caching, each publishing KV events on the ZMQ event plane (the mocker does so
    by itself; `--zmq-kv-events-ports` is only for relaying vLLM's wire format), and a
    frontend with `--router-mode kv`, KV events on (its default) and the given weight."""
    return peer_side(python, model_dir, model, workers, speedup, port, "kv", run_dir, "warn",
                     worker_args=("--engine-type", "sglang", "--block-size", "16", "--enable-prefix-caching"),
                     frontend_args=("--router-kv-events", "--router-kv-overlap-score-weight",
                                    f"{overlap_score_weight:g}"))


def probe_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "probe"}], "max_tokens": 2,
                       "ignore_eos": True, "stream": True}).encode()


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _streams(url: str, model: str) -> bool:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=probe_body(model),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200 and b"[DONE]" in resp.read()
    except (urllib.error.URLError, OSError):
        return False


def generate_instances(health: dict | None) -> int:
    """Instances serving a `generate` endpoint; both frontends list them in /health."""
    if not health:
        return 0
    return sum(1 for i in health.get("instances", ()) if str(i.get("endpoint", "")).endswith("generate"))


class Fleet:
    """One side's processes. `with Fleet(...)`: started and ready inside the block (or
    `BenchError`), every process group terminated, killed if need be, and reaped after it."""

    def __init__(self, side: Side, url: str, model: str, log_dir: Path, ready_timeout: float):
        self.side, self.url, self.model = side, url, model
        self.log_dir, self.ready_timeout = log_dir, ready_timeout
        self.frontend: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def __enter__(self) -> Fleet:
        try:
            self.workers = [self._spawn(argv, f"{self.side.name}-worker{i}")
                            for i, argv in enumerate(self.side.workers)]
            self.frontend = self._spawn(self.side.frontend, f"{self.side.name}-frontend")
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **self.side.env}, start_new_session=True)
        except OSError as e:
            raise BenchError(f"{self.side.name}: cannot start {argv[0]}: {e}") from None
        finally:
            log.close()  # the child holds its own descriptor

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            for proc in [self.frontend, *self.workers]:
                if proc.poll() is not None:
                    raise BenchError(f"{self.side.name}: `{' '.join(proc.args[:3])}` exited with {proc.returncode} "
                                     f"before it was ready; see the logs in {self.log_dir}")
            if generate_instances(_get_json(f"{self.url}/health")) >= len(self.workers) and \
                    _streams(self.url, self.model):
                return
            time.sleep(0.25)
        raise BenchError(f"{self.side.name}: not ready after {self.ready_timeout:.0f} s; see {self.log_dir}")

    def _stop(self) -> None:
        procs = [p for p in [self.frontend, *self.workers] if p is not None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the frontend and, summed, by the workers."""
        return process_cpu(self.frontend.pid), sum(process_cpu(w.pid) for w in self.workers)


def kv_events_applied(metrics: str, event_type: str) -> float:
    """KV events of `event_type` a frontend's index applied, from its /metrics text: ours
    count `dynamo_router_kv_cache_events_applied_total`, the peer's
    `dynamo_component_kv_cache_events_applied` with `status="ok"`."""
    total = 0.0
    for line in metrics.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        if name not in ("dynamo_router_kv_cache_events_applied_total", "dynamo_component_kv_cache_events_applied"):
            continue
        if f'event_type="{event_type}"' in labels and ('status="' not in labels or 'status="ok"' in labels):
            total += float(value)
    return total


def exit_on_sigterm() -> None:
    """Make SIGTERM leave the benchmark as an exception does: every `with` block it is in
    exits, so the processes it started (each in its own session) are stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def process_cpu(pid: int) -> float:
    """User plus system seconds of a process and its live descendants."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            total += sum(process_cpu(int(c)) for c in children.read_text().split())
        except OSError:
            continue
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, (busy + idle + iowait) / CLOCK_TICKS
