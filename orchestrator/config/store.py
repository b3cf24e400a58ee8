"""Registers the schema with Hydra's ConfigStore and the resolvers the YAML uses.

`conf/config.yaml` lists `launch_schema` first in its defaults, so every value a
group or recipe supplies is validated against `LaunchConfig` while Hydra composes.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from orchestrator.config.schema import LaunchConfig

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def package_path(relative: str) -> str:
    """`${package:models/tiny}`: a file shipped inside the orchestrator package."""
    return str(PACKAGE_DIR / relative)


def register() -> None:
    ConfigStore.instance().store(name="launch_schema", node=LaunchConfig)
    if not OmegaConf.has_resolver("package"):
        OmegaConf.register_new_resolver("package", package_path)
