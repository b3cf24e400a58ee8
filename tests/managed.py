"""Real processes for integration tests (after Dynamo's ManagedProcess).

A process starts in its own session; `wait_healthy` polls its health URL under one
deadline while watching for early exit (and then shows the log tail); leaving the
context kills the whole process group, always.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class ManagedProcess:
    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, health_url: str | None = None):
        self.argv, self.log_path, self.health_url = argv, log_path, health_url
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ManagedProcess:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self._log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_healthy(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[:3]} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                status, body = http_get(self.health_url, timeout=1.0)
                if status == 200:
                    return json.loads(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not healthy after {timeout}s:\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def worker_argv(model_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.worker", "--model-path", model_dir, *extra]


def port_bases() -> tuple[int, int]:
    """(ports.base, ports.sglang_base) for one deployment under test: random, so tests
    don't share ports, and below Linux's ephemeral range (32768 and up), where any
    outgoing connection may be holding a port."""
    base = random.randrange(20000, 25800, 200)
    return base, base + 4000


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port whose successor is free too (the base of two DP ranks' streams)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((host, 0))
            base = a.getsockname()[1]
            try:
                b.bind((host, base + 1))
            except OSError:
                continue
            return base
    raise RuntimeError("no two consecutive free ports")
