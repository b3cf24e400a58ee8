"""Configuration: the dataclass schema, its registration with Hydra, and the one
conversion from a composed config to typed objects."""

from orchestrator.config.load import to_launch_config
from orchestrator.config.schema import LaunchConfig

__all__ = ["LaunchConfig", "to_launch_config"]
