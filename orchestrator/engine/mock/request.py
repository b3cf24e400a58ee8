"""One request as a DP rank's scheduler holds it: its tokens, where it is in its life
(`Phase`), what kind of work it is (`Role`), its KV slot, the channel its stream
reads, and the wall-clock timestamps its metrics need.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.kv_cache import KvSlot
from orchestrator.planes.messages import (
    BootstrapInfo,
    Chunk,
    SamplingOptions,
    StopConditions,
)
from orchestrator.readerqueue import ChunkQueue


class Role(enum.Enum):
    GENERATE = "generate"  # aggregated serving: prefill then decode
    PREFILL_LEG = "prefill_leg"  # disaggregated prefill: prefill, transfer, one token
    DECODE_LEG = "decode_leg"  # disaggregated decode: receive the KV, then decode
    EMBED = "embed"  # prefill only, no token


class Phase(enum.Enum):
    WAITING = "waiting"  # in the FCFS queue (new, or retracted from decode)
    PREFILLING = "prefilling"  # in the step being computed, or the chunked request
    RUNNING = "running"  # in the decode batch
    TRANSFERRING = "transferring"  # prefill leg: KV held while the stream sends it
    PREALLOC = "prealloc"  # decode leg: waiting for pages for the prompt
    RECEIVING = "receiving"  # decode leg: pages held while the stream receives the KV
    FINISHED = "finished"


@dataclass(frozen=True)
class LegReady:
    """Scheduler to stream: the KV side of a disaggregated leg is ready, run the transfer.

    A prefill leg carries the first token it sampled; a decode leg carries None.
    """

    first_token: Optional[int]


Outgoing = Union[Chunk, LegReady, EngineError]


@dataclass(eq=False)
class Request:
    rid: str
    tokens: list[int]  # prompt, then every generated token
    prompt_len: int
    max_new_tokens: int
    role: Role
    sampling: SamplingOptions = SamplingOptions()
    stop: StopConditions = StopConditions()
    top_logprobs: Optional[int] = None
    bootstrap: Optional[BootstrapInfo] = None  # the transfer peer; None when no KV moves
    computed: int = 0  # tokens whose KV exists (cached or computed)
    slot: Optional[KvSlot] = None
    phase: Phase = Phase.WAITING
    cached_tokens: int = 0  # prefix-cache hit at first admission, as SGLang reports it
    retractions: int = 0
    outbox: ChunkQueue[Outgoing] = field(default_factory=ChunkQueue)
    leg: Optional[asyncio.Task] = None  # the transfer the stream awaits; abort cancels it
    arrived: float = field(default_factory=time.monotonic)
    admitted: Optional[float] = None
    last_token_at: Optional[float] = None

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def pending_prefill(self) -> int:
        """Tokens still to compute before the next token can be sampled."""
        return len(self.tokens) - self.computed

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_len, "completion_tokens": self.generated, "cached_tokens": self.cached_tokens}
