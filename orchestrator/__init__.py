"""dynamo-launch: serve LLMs with SGLang from composed Hydra configs."""

__version__ = "0.1.0"
