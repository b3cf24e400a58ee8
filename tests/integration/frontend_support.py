"""A frontend process in front of mock workers, and the official OpenAI client."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from openai import OpenAI

from tests.managed import ManagedProcess, free_port, http_get


@contextmanager
def frontend(tmp_path: Path, *extra: str, wait_for: str | None = "tiny", instances: int = 1):
    """Yields (process, base_url); waits until `wait_for` has `instances` live workers."""
    port = free_port()
    argv = [sys.executable, "-m", "orchestrator.frontend", "--http-port", str(port),
            "--discovery-dir", str(tmp_path / "discovery"), *extra]
    url = f"http://127.0.0.1:{port}"
    with ManagedProcess(argv, tmp_path / "frontend.log", health_url=f"{url}/live") as proc:
        proc.wait_healthy(30)
        if wait_for:
            wait_instances(url, wait_for, instances)
        yield proc, url


def wait_instances(url: str, model: str, count: int, timeout: float = 20) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = http_get(f"{url}/health")
        if sum(i["model"] == model for i in json.loads(body)["instances"]) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never had {count} instances: {http_get(f'{url}/health')}")


def client(url: str, **kw) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **kw)


def metric_value(url: str, name: str, **labels) -> float:
    from tests.integration.worker_support import metric

    return metric(url, name, **labels)
