"""Helpers shared by the tests."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from orchestrator.cli import CONF_DIR
from orchestrator.config import LaunchConfig, to_launch_config

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))


def compose_config(*overrides: str) -> LaunchConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_launch_config(compose(config_name="config", overrides=list(overrides)))
