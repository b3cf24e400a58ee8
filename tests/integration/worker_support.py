"""Starting mock-engine workers and talking to them over the request plane."""

from __future__ import annotations

import asyncio
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from orchestrator.planes import messages as m
from orchestrator.planes.discovery import open_discovery
from orchestrator.planes.request import RequestClient
from orchestrator.config.store import package_path
from tests.managed import ManagedProcess, free_port, http_get

TINY = package_path("models/tiny")


@contextmanager
def worker(tmp_path: Path, name: str, *extra: str, env: dict | None = None, speedup: float = 200.0):
    """A mock-engine worker on OS-assigned ports; yields (process, system_url)."""
    system_port = free_port()
    argv = [
        sys.executable, "-m", "orchestrator.worker",
        "--model-path", TINY, "--served-model-name", "tiny", "--page-size", "16",
        "--enable-metrics", "--mock-speedup-ratio", str(speedup),
        "--discovery-dir", str(tmp_path / "discovery"), "--system-port", str(system_port), *extra,
    ]
    if "--embedding-worker" not in extra:
        argv.append("--skip-tokenizer-init")
    url = f"http://127.0.0.1:{system_port}"
    with ManagedProcess(argv, tmp_path / f"{name}.log", env, health_url=f"{url}/health") as proc:
        proc.wait_healthy(30)
        yield proc, url


def records(tmp_path: Path, lease_ttl_s: float = 10) -> dict:
    async def listing():
        discovery = open_discovery("file", root=str(tmp_path / "discovery"), etcd_endpoints=None, lease_ttl_s=lease_ttl_s)
        try:
            return await discovery.list("dynamo")
        finally:
            await discovery.close()

    return asyncio.run(listing())


def address_of(tmp_path: Path, worker_type: str = "aggregated") -> str:
    (record,) = [r for r in records(tmp_path).values() if r.worker_type.value == worker_type]
    return record.request_address


def request(rid: str, tokens: list[int], max_tokens: int = 8, **kw) -> m.GenerateRequest:
    """Generates exactly max_tokens: EOS is ignored (the mock ends a sequence at EOS like a model)."""
    stop = m.StopConditions(max_tokens=max_tokens, ignore_eos=True)
    return m.GenerateRequest(request_id=rid, token_ids=tokens, stop=stop, **kw)


async def collect(address: str, req) -> list:
    async with RequestClient(address) as client:
        return [reply async for reply in client.stream(req)]


def metric(url: str, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    _, text = http_get(f"{url}/metrics")
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    assert found, f"{name} not in /metrics"
    return total


def tokens_of(replies: list) -> list[int]:
    return [t for r in replies if isinstance(r, m.Chunk) for t in r.token_ids]
