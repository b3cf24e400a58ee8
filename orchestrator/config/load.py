"""The single conversion from a composed `DictConfig` to a typed `LaunchConfig`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from orchestrator.config.schema import LaunchConfig
from orchestrator.errors import ConfigError


def to_launch_config(cfg: DictConfig) -> LaunchConfig:
    """Resolve interpolations and build the dataclasses, or raise a ConfigError
    naming the offending key."""
    try:
        result = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(
            _key(e), "is required but has no value", f"set it in a recipe or on the command line: {_key(e)}=..."
        ) from None
    except OmegaConfBaseException as e:
        raise ConfigError(_key(e), _first_line(e)) from None
    if not isinstance(result, LaunchConfig):  # the schema is the first default of config.yaml
        raise ConfigError("defaults", "the composed config is not a LaunchConfig", "keep `launch_schema` first")
    return result


def _key(e: OmegaConfBaseException) -> str:
    return getattr(e, "full_key", None) or "config"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
