"""The enums every process agrees on: what a process is and what a worker serves.

Member names are what configs spell (OmegaConf matches enums by name); values are
what goes on a command line.
"""

from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    frontend = "frontend"
    worker = "worker"


class WorkerType(str, Enum):
    """What a worker serves. SGLang's `--disaggregation-mode` selects among the
    first three; `--embedding-worker` selects the last."""

    aggregated = "aggregated"
    prefill = "prefill"
    decode = "decode"
    embedding = "embedding"

    @property
    def disaggregation_mode(self) -> str | None:
        return {WorkerType.prefill: "prefill", WorkerType.decode: "decode"}.get(self)


class EngineKind(str, Enum):
    mock = "mock"
    sglang = "sglang"


class RouterMode(str, Enum):
    """Dynamo's `--router-mode` spellings."""

    round_robin = "round-robin"
    random = "random"
    least_loaded = "least-loaded"
    kv = "kv"


class ChatProcessor(str, Enum):
    """Who turns a chat request into token ids (`--dyn-chat-processor`)."""

    dynamo = "dynamo"  # the frontend's own template + tokenizer
    sglang = "sglang"  # SGLang's chat processor, still sending token ids
