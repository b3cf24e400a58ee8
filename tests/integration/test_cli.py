"""`dynamo-launch` as a user runs it: the console script in a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import CONF_DIR
from tests.support import RECIPES

DYNAMO_LAUNCH = str(Path(sys.executable).parent / "dynamo-launch")


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DYNAMO_LAUNCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def recipe_command(recipe: str) -> list[str]:
    """The command a recipe documents on its second line (after Hydra's package header)."""
    lines = (CONF_DIR / "recipe" / f"{recipe}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    command = shlex.split(lines[1].lstrip("# "))
    assert command == ["dynamo-launch", f"+recipe={recipe}"]
    return command[1:]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_command_plans_on_the_mock_engine(tmp_path, recipe):
    result = run(*recipe_command(recipe), "engine=mock", "dry_run=json", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)  # stdout is only JSON
    names = [p["name"] for p in plan["processes"]]
    assert names[-1] == "frontend" and len(names) >= 2
    for path in plan["files"]:
        assert Path(path).is_file(), "files the argv refers to exist after a dry run"


def test_dry_run_table_shows_every_process(tmp_path):
    result = run("+recipe=llama70b_disagg", "engine=mock", "dry_run=true", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("prefill-0", "prefill-1", "decode-0", "frontend"):
        assert name in result.stdout
    assert "--disagg-config-key prefill" in result.stdout


# Each case: overrides on top of a recipe, the key the error must name, a fragment of its reason.
INVALID = {
    "missing value": (["model.served_name=???"], "model.served_name", "required"),
    "too many GPUs": (["deployment.groups.agg.replicas=9"], "deployment", "needs 9 GPUs"),
    "disagg config without key": (
        ["+recipe=llama70b_disagg", "engine=mock", "deployment.groups.decode.disagg_key=null"],
        "deployment.groups.decode.disagg_key",
        "without --disagg-config-key",
    ),
    "disagg key without config": (
        ["+recipe=llama70b_disagg", "engine=mock", "disagg=none", "~disagg.prefill"],
        "deployment.groups.prefill.disagg_key",
        "without --disagg-config",
    ),
    "key not in the disagg file": (
        ["+recipe=llama70b_disagg", "engine=mock", "deployment.groups.prefill.disagg_key=prefil"],
        "deployment.groups.prefill.disagg_key",
        "no section 'prefil'",
    ),
    "port collision": (
        ["+recipe=llama70b_disagg", "engine=mock", "frontend.port=12346"],
        "ports",
        "port 12346 is claimed by both frontend.port and prefill-1",
    ),
    "prefill without decode": (
        ["+recipe=llama70b_disagg", "engine=mock", "deployment.groups.decode.replicas=0"],
        "deployment.groups",
        "a prefill group needs a decode group",
    ),
    "kv routing without kv events": (
        ["+recipe=llama8b_kv_router", "engine=mock", "deployment.groups.agg.kv_events=false"],
        "deployment.groups.agg.kv_events",
        "router=kv needs KV events",
    ),
    "kv routing with page size 1": (
        ["+recipe=llama8b_kv_router", "engine=mock", "deployment.page_size=1"],
        "deployment.page_size",
        "page size 1",
    ),
    "unknown busy policy": (
        ["+recipe=llama8b_kv_router", "engine=mock", "router.busy_policy=wait"],
        "router.busy_policy",
        "unknown policy 'wait'",
    ),
    "model path missing for sglang": (["+recipe=llama8b_agg"], "model.path", "does not exist"),
    "sglang flag the plan owns": (
        ["+deployment.groups.agg.sglang.tp-size=2"],
        "deployment.groups.agg.sglang.tp-size",
        "set by the launch plan",
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_config_exits_2_with_one_line_and_starts_nothing(tmp_path, case):
    overrides, key, reason = INVALID[case]
    run_dir = tmp_path / "run"
    result = run(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)  # a real launch, not a dry run
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dynamo-launch: {key}: ") and reason in lines[0], lines[0]
    assert "(hint: " in lines[0] or case == "missing value"
    materialized = {p.name for p in run_dir.iterdir()} - {".hydra", "dynamo-launch.log"} if run_dir.exists() else set()
    assert not materialized, f"nothing may be written or started: {materialized}"


def test_malformed_recipe_exits_2(tmp_path):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "broken.yaml").write_text("# @package _global_\ndeployment:\n  groups: [unclosed\n")
    result = run(f"hydra.searchpath=[file://{tmp_path}]", "+recipe=broken", cwd=tmp_path)
    assert result.returncode == 2
    assert "broken" in result.stderr


def test_unknown_recipe_lists_the_recipes(tmp_path):
    result = run("+recipe=llama70b_disag", cwd=tmp_path)
    assert result.returncode == 2
    assert "llama70b_disagg" in result.stderr


def test_help_lists_groups_and_recipes(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for line in ("router: kv, least_loaded, random, round_robin", "engine: mock, sglang", "llama70b_disagg"):
        assert line in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run("+recipe=llama70b_disagg", "engine=mock", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0
    assert "kind: mock" in result.stdout and "page_size: 16" in result.stdout


def test_multirun_sweeps_jobs(tmp_path):
    result = run(
        "-m", "+recipe=llama8b_kv_router", "engine=mock", "dry_run=json",
        "deployment.groups.agg.replicas=1,3", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
    assert result.stdout.count('"name": "frontend"') == 2


def test_shell_completion_offers_options(tmp_path):
    env = {**os.environ, "COMP_LINE": "dynamo-launch router="}
    result = subprocess.run([DYNAMO_LAUNCH, "-sc", "query=bash"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert set(result.stdout.split()) == {"router=kv", "router=least_loaded", "router=random", "router=round_robin"}


@pytest.mark.slow
def test_recipes_work_from_an_installed_wheel(tmp_path):
    checkout = Path(__file__).resolve().parents[2]
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(checkout)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), *map(str, wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    code = (
        "import sys, pkgutil, importlib, orchestrator, orchestrator.cli as cli;"
        f"assert cli.__file__.startswith({str(site)!r}), cli.__file__;"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(orchestrator.__path__, 'orchestrator.')];"
        "sys.argv = ['dynamo-launch', '+recipe=llama70b_disagg', 'engine=mock', 'dry_run=json'];"
        "cli.main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [p["name"] for p in plan["processes"]] == ["prefill-0", "prefill-1", "decode-0", "frontend"]
    tiny = site / "orchestrator" / "models" / "tiny"
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {p.name for p in tiny.iterdir()}
