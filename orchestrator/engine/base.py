"""The engine interface a worker's handlers call.

Lifecycle: `await start()` once (model loaded, KV pool sized, bootstrap server up for
a prefill engine), then any number of concurrent `generate`/`encode` calls, `abort`
at any time (also before the first token: the request id is ours), and finally
`await shutdown()`. `generate` yields `Chunk`s with only the new tokens; the last
one has `finish_reason` and usage. An aborted request ends with a final chunk whose
finish reason is "abort" and its KV is freed at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from orchestrator.planes.messages import Chunk, GenerateRequest


class EngineError(Exception):
    """A request the engine cannot serve; `kind` is an `ErrorKind` value."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class EngineInfo:
    """What the engine resolved at start; registration and routing read it."""

    page_size: int
    context_length: int
    dp_size: int  # number of DP ranks (dp x attention-DP)
    max_total_tokens: int  # KV capacity per DP rank, in tokens
    max_running_requests: int
    eos_token_ids: tuple[int, ...]
    bootstrap_host: Optional[str] = None  # a prefill engine's bootstrap server
    bootstrap_port: Optional[int] = None
    embedding_dim: Optional[int] = None


class Engine(ABC):
    @abstractmethod
    async def start(self) -> EngineInfo: ...

    @abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...

    @abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abstractmethod
    async def encode(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]: ...

    @abstractmethod
    async def health_check(self) -> bool:
        """True when the engine can serve: used by the canary when the worker is idle."""

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    def load(self) -> list[dict]:
        """Per DP rank: running and waiting requests, KV usage, active blocks."""
