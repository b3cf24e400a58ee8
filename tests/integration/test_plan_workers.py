"""The workers of each recipe's plan, started by hand with exactly the argv and env that
`dry_run=json` prints (the frontend comes with its own step)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from orchestrator.planes import messages as m
from tests.integration.worker_support import collect, records, request, tokens_of
from tests.managed import ManagedProcess, port_bases
from tests.support import RECIPES

pytestmark = pytest.mark.slow


def plan_json(recipe: str, run_dir: Path) -> dict:
    base, sglang_base = port_bases()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dynamo-launch"), f"+recipe={recipe}", "engine=mock", "dry_run=json",
         "engine.mock.speedup_ratio=100", f"ports.base={base}", f"ports.sglang_base={sglang_base}",
         f"frontend.port={base + 199}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("recipe", RECIPES)
def test_plan_workers_run_as_printed(tmp_path, recipe):
    plan = plan_json(recipe, tmp_path)
    workers = [p for p in plan["processes"] if p["role"] == "worker"]
    with ExitStack() as stack:
        for p in workers:
            proc = stack.enter_context(
                ManagedProcess(p["argv"], tmp_path / f"{p['name']}.log", {**os.environ, **p["env"]}, p["health_url"])
            )
            proc.wait_healthy(60)
        registered = records(tmp_path)
        leaders = [p for p in workers if p["node_rank"] == 0]
        assert len(registered) == len(leaders), "follower nodes do not register"
        by_address = {r.request_address: r for r in registered.values()}
        for p in leaders:
            record = by_address[f"tcp://127.0.0.1:{p['ports']['request']}"]
            assert record.worker_type.value == p["worker_type"]
            assert record.system_url == p["health_url"].removesuffix("/health")
            assert record.dp_size == _flag(p["argv"], "--dp-size") * _flag(p["argv"], "--attn-dp-size")
        asyncio.run(_serve_one(registered))


def _flag(argv: list[str], name: str) -> int:
    return int(argv[argv.index(name) + 1]) if name in argv else 1


async def _serve_one(registered: dict) -> None:
    """One request through the deployment's workers, as the frontend will send it."""
    by_type = {}
    for record in registered.values():
        by_type.setdefault(record.worker_type.value, record)
    prompt = list(range(4000, 4040))
    if "embedding" in by_type:
        (reply,) = await collect(by_type["embedding"].request_address, m.EmbedRequest("e", inputs=[prompt]))
        assert isinstance(reply, m.Embeddings)
    elif "prefill" in by_type:
        prefill, decode = by_type["prefill"], by_type["decode"]
        info = m.BootstrapInfo(prefill.bootstrap_host, prefill.bootstrap_port, random.getrandbits(63))
        first, rest = await asyncio.gather(
            collect(prefill.request_address, request("p", prompt, max_tokens=1, bootstrap=info)),
            collect(decode.request_address, request("d", prompt, max_tokens=6, bootstrap=info)),
        )
        assert tokens_of(first) == tokens_of(rest)[:1] and len(tokens_of(rest)) == 6
    else:
        replies = await collect(by_type["aggregated"].request_address, request("a", prompt, max_tokens=6))
        assert replies[-1].finish_reason == "length" and len(tokens_of(replies)) == 6
