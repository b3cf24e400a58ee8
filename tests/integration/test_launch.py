"""`dynamo-launch` running a deployment: launch, answer, restart, drain, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.frontend_support import client, wait_instances
from orchestrator.roles import RouterMode, WorkerType
from tests.managed import free_port, port_bases
from tests.support import RECIPES, compose_config

pytestmark = pytest.mark.slow
DYNAMO_LAUNCH = str(Path(sys.executable).parent / "dynamo-launch")
HELLO = [{"role": "user", "content": "Hello!"}]


class Launch:
    """`dynamo-launch` in its own session, on ports no other test uses."""

    def __init__(self, tmp_path: Path, *overrides: str, speedup: float = 100):
        self.port, (base, sglang_base) = free_port(), port_bases()
        self.run_dir = tmp_path / "run"
        self.argv = [DYNAMO_LAUNCH, *overrides, f"frontend.port={self.port}", f"ports.base={base}",
                     f"ports.sglang_base={sglang_base}", f"hydra.run.dir={self.run_dir}",
                     f"engine.mock.speedup_ratio={speedup}", "supervisor.health_interval_s=0.3",
                     "supervisor.restart.backoff_initial_s=0.2"]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Launch":
        self.out = open(self.run_dir.parent / "launch.out", "w")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.out, text=True,
                                     start_new_session=True)
        self.stdout: list[str] = []
        threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Ready in") for line in self.stdout):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log()}"
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return (self.run_dir.parent / "launch.out").read_text()[-3000:]

    def pids(self, name: str) -> list[int]:
        """Live processes of this deployment (their environment names its run dir) whose argv names `name`."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
                zombie = (entry / "stat").read_text().split(") ")[-1].startswith("Z")
            except (OSError, ValueError):
                continue
            if name.encode() in cmdline and str(self.run_dir).encode() in environ and not zombie:
                found.append(int(entry.name))
        return found

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.out.close()


def _inflight(url: str) -> int:
    import json

    from tests.managed import http_get

    _, body = http_get(f"{url}/health")
    return sum(i["inflight"] for i in json.loads(body)["instances"])


def worker_pids(launch: Launch) -> list[int]:
    return [p for p in launch.pids("orchestrator.worker")]


def test_the_embedded_default_answers_and_stops_cleanly(tmp_path):
    with Launch(tmp_path) as launch:
        launch.wait_ready()
        assert any(launch.url in line for line in launch.stdout), "it says where to send requests"
        answer = client(launch.url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=8)
        assert answer.choices[0].message.content
        scrape = (launch.run_dir / "prometheus.yml").read_text()
        assert f"127.0.0.1:{launch.port}" in scrape and "process: agg-0" in scrape
        assert json.loads((launch.run_dir / "grafana-dashboard.json").read_text())["panels"]
        launch.proc.send_signal(signal.SIGINT)
        assert launch.proc.wait(30) == 0
        assert not launch.pids("orchestrator"), "nothing of the deployment is left"
        assert "stopped workers" in launch.log() and "stopped frontend" in launch.log()


def test_a_killed_worker_is_restarted_and_the_deployment_answers_again(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2", "discovery.lease_ttl_s=1") as launch:
        launch.wait_ready()
        victim = worker_pids(launch)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (victim in worker_pids(launch) or len(worker_pids(launch)) < 2):
            time.sleep(0.2)
        assert len(worker_pids(launch)) == 2 and victim not in worker_pids(launch)
        wait_instances(launch.url, "tiny", 2)
        c = client(launch.url)
        for _ in range(4):
            assert c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4).choices
        assert "restarts in" in launch.log()


def test_sigterm_under_streaming_load_completes_every_request(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2", "model.num_params=8000000000", speedup=1) as launch:
        launch.wait_ready()
        c = client(launch.url)
        results: list = []
        streaming = threading.Semaphore(0)  # released once per request that has its first token

        def one() -> None:
            try:
                stream = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1000, stream=True,
                                                   extra_body={"ignore_eos": True})
                reasons, started = [], False
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content and not started:
                        started = True
                        streaming.release()
                    reasons += [chunk.choices[0].finish_reason] if chunk.choices else []
                results.append(reasons[-1])
            except Exception as e:  # shown by the assertion below
                results.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        # In flight means a worker is generating it: a request still on its way to a worker
        # when the worker starts draining is handed back, and with every worker draining it
        # has nowhere to go.
        for _ in threads:
            assert streaming.acquire(timeout=20), "the requests never got going"
        assert _inflight(launch.url) == 6
        launch.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert launch.proc.wait(60) == 0
    assert results == ["length"] * 6, "every in-flight request finished"


def test_killing_the_orchestrator_leaves_no_process_behind(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2") as launch:
        launch.wait_ready()
        assert len(launch.pids("orchestrator")) == 3
        os.kill(launch.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while launch.pids("orchestrator") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launch.pids("orchestrator") == []


def test_a_worker_that_fails_at_boot_is_reported_not_respawned(tmp_path):
    with Launch(tmp_path, "model.num_params=900000000000") as launch:  # 1.8 TB of weights on one GPU
        assert launch.proc.wait(60) == 3
    log = launch.log()
    assert "agg-0 exited with code 3 while starting" in log and "does not fit" in log
    assert log.count("agg-0 started") == 1


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_comes_up_on_the_mock_engine_and_answers(tmp_path, recipe):
    overrides = [f"+recipe={recipe}", "engine=mock"]
    cfg = compose_config(*overrides)
    types = {g.type for g in cfg.deployment.groups.values() if g.replicas}
    with Launch(tmp_path, *overrides) as launch:
        launch.wait_ready()
        c = client(launch.url)
        if WorkerType.embedding in types:
            assert c.embeddings.create(model=cfg.model.served_name, input="hello").data
        else:
            answer = c.chat.completions.create(model=cfg.model.served_name, messages=HELLO, max_tokens=8)
            assert answer.choices[0].message.content is not None
        launch.proc.send_signal(signal.SIGTERM)
        assert launch.proc.wait(60) == 0


DYNAMO_CTL = str(Path(sys.executable).parent / "dynamo-ctl")


def ctl(launch: Launch, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DYNAMO_CTL, "--run-dir", str(launch.run_dir), *args], capture_output=True, text=True,
                          timeout=30)


def test_ctl_status_and_stop(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2") as launch:
        launch.wait_ready()
        status = json.loads(ctl(launch, "status", "--json").stdout)
        assert [(p["name"], p["state"]) for p in status["processes"]] == [
            ("agg-0", "ready"), ("agg-1", "ready"), ("frontend", "ready")]
        assert status["url"] == launch.url
        table = ctl(launch, "status").stdout
        assert "agg-1" in table and "ready" in table
        unknown = ctl(launch, "restart", "nope")
        assert unknown.returncode == 1 and "groups: agg" in unknown.stderr
        assert ctl(launch, "stop").returncode == 0
        assert launch.proc.wait(30) == 0


@pytest.mark.parametrize("trigger", ["dynamo-ctl", "SIGHUP"])
def test_rolling_restart_under_steady_load_loses_no_request(tmp_path, trigger):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2", "frontend.migration_limit=3",
                "discovery.lease_ttl_s=1") as launch:
        launch.wait_ready()
        before = set(worker_pids(launch))
        c = client(launch.url)
        outcomes: list = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16,
                                                  extra_body={"ignore_eos": True})
                    outcomes.append(r.usage.completion_tokens)
                except Exception as e:  # a lost request: reported below
                    outcomes.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1)
        if trigger == "SIGHUP":
            launch.proc.send_signal(signal.SIGHUP)
        else:
            assert ctl(launch, "restart", "agg").returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (set(worker_pids(launch)) & before or len(worker_pids(launch)) < 2):
            time.sleep(0.2)
        after = set(worker_pids(launch))
        assert len(after) == 2 and not after & before, "every replica was replaced"
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(30)
    assert outcomes and all(o == 16 for o in outcomes), [o for o in outcomes if o != 16][:3]


def test_a_terminal_gets_the_live_view(tmp_path):
    import pty

    launch = Launch(tmp_path)
    main, secondary = pty.openpty()
    proc = subprocess.Popen(launch.argv, stdout=secondary, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    os.close(secondary)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while b"in flight" not in screen and time.monotonic() < deadline:
            try:
                screen += os.read(main, 65536)
            except OSError:
                break
        assert b"in flight" in screen and b"agg-0" in screen and b"frontend" in screen
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        os.close(main)


def test_scale_up_and_down_changes_what_the_frontend_routes_to(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=1", "cluster.gpus_per_node=3") as launch:
        launch.wait_ready()
        up = ctl(launch, "scale", "agg=3")
        assert up.returncode == 0 and "agg-1, agg-2" in up.stdout
        wait_instances(launch.url, "tiny", 3)
        status = json.loads(ctl(launch, "status", "--json").stdout)["processes"]
        assert sorted(g for p in status for g in p["gpus"]) == [0, 1, 2], "new replicas took the free GPUs"
        full = ctl(launch, "scale", "agg=4")
        assert full.returncode == 1 and "no node has 1 free" in full.stderr
        down = ctl(launch, "scale", "agg=1")
        assert down.returncode == 0 and "agg-1, agg-2" in down.stdout
        wait_instances(launch.url, "tiny", 1)
        assert client(launch.url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4).choices
        assert len(worker_pids(launch)) == 1


def test_rolling_restart_starts_replacements_first_where_gpus_are_spare(tmp_path):
    with Launch(tmp_path, "deployment.groups.agg.replicas=2", "cluster.gpus_per_node=3",
                "frontend.migration_limit=3") as launch:
        launch.wait_ready()
        assert ctl(launch, "restart", "agg").returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "replaced on spare GPUs" not in launch.log().split("rolling restart")[-1]:
            time.sleep(0.2)
        while time.monotonic() < deadline and launch.log().count("replaced on spare GPUs") < 2:
            time.sleep(0.2)
        names = [p["name"] for p in json.loads(ctl(launch, "status", "--json").stdout)["processes"]]
        assert names == ["agg-2", "agg-3", "frontend"], "each old replica gave way to one started beside it"
        assert client(launch.url).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4).choices
