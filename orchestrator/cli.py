"""`dynamo-launch`: compose (Hydra) -> convert once -> validate and plan -> dry run,
launch, or (with `benchmark.enabled`) a benchmark job against the deployment.

Exit codes: 0 ok, 2 invalid config (nothing started), 3 a process failed to start,
4 a process kept failing and the restart policy said stop.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from orchestrator.benchmark.job import run_job
from orchestrator.config import to_launch_config
from orchestrator.config.store import register
from orchestrator.errors import ExitCode, LaunchError
from orchestrator.plan import build_plan
from orchestrator.plan.render import print_table
from orchestrator.plan.validate import dry_run_mode
from orchestrator.supervisor import Supervisor

_HERE = Path(__file__).resolve().parent
# A wheel carries the configs inside the package; a checkout keeps them at the top.
CONF_DIR = next(p for p in (_HERE / "conf", _HERE.parent / "conf") if p.is_dir())

register()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        launch_cfg = to_launch_config(cfg)
        mode = dry_run_mode(launch_cfg.dry_run)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        plan = build_plan(launch_cfg, out_dir)
        plan.write_files()
        if mode == "json":
            print(plan.to_json())
        elif mode == "table":
            print_table(plan)
        elif launch_cfg.benchmark.enabled:
            multirun = HydraConfig.get().mode is RunMode.MULTIRUN
            (out_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            code = run_job(launch_cfg, plan, _deployment_key(cfg), out_dir, multirun)
            if code:  # in a sweep, returning lets Hydra go on to the next job
                sys.exit(code)
        else:
            sys.exit(asyncio.run(Supervisor(plan, launch_cfg).run()))
    except LaunchError as e:
        print(f"dynamo-launch: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def _deployment_key(cfg: DictConfig) -> str:
    """What decides the deployment: everything but the benchmark (and dry_run)."""
    return OmegaConf.to_yaml({k: v for k, v in cfg.items() if k not in ("benchmark", "dry_run")}, resolve=True)


def main() -> None:
    try:
        _app()
    except SystemExit as e:
        # Hydra exits 1 when it cannot compose: a malformed recipe, an unknown option,
        # a value of the wrong type. Those are config errors.
        if e.code == 1:
            raise SystemExit(ExitCode.CONFIG) from None
        raise


if __name__ == "__main__":
    main()
