"""Helpers shared by the mock engine's tests: a tiny model, a fast config, stream collection."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from orchestrator.engine.mock.config import MockEngineConfig, ModelNumbers, Timing
from orchestrator.engine.mock.engine import MockEngine
from orchestrator.planes.messages import Chunk, GenerateRequest, StopConditions

TINY = ModelNumbers(
    num_params=1_000_000_000,
    hidden_size=32,
    num_layers=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=32000,
    eos_token_ids=(2, 3),
)

LLAMA_70B_FP8 = ModelNumbers(
    num_params=70_553_706_496,
    hidden_size=8192,
    num_layers=80,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=128256,
    eos_token_ids=(128001, 128008, 128009),
    weight_bytes=1.0,
    kv_bytes=2.0,
)

DEEPSEEK_R1 = ModelNumbers(
    num_params=671_026_419_200,
    active_params=37_000_000_000,
    hidden_size=7168,
    num_layers=61,
    num_kv_heads=1,
    head_dim=576,
    mla=True,
    vocab_size=129280,
    eos_token_ids=(1,),
    weight_bytes=1.0,
    kv_bytes=1.0,
)


def tiny_config(**overrides) -> MockEngineConfig:
    values = dict(
        served_model_name="tiny",
        model=TINY,
        timing=Timing(speedup_ratio=40),  # 50 µs steps: the engine keeps up with its clock, one step at a time
        context_length=1024,
        max_total_tokens=2048,
        page_size=4,
    )
    values.update(overrides)
    return MockEngineConfig(**values)


def request(rid: str, prompt: list[int], max_tokens: int = 16, **fields) -> GenerateRequest:
    stop_fields = {k: fields.pop(k) for k in ("min_tokens", "stop_token_ids", "ignore_eos") if k in fields}
    return GenerateRequest(rid, token_ids=prompt, stop=StopConditions(max_tokens=max_tokens, **stop_fields), **fields)


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def tokens_of(chunks: list[Chunk]) -> list[int]:
    return [token for chunk in chunks for token in chunk.token_ids]


@contextlib.asynccontextmanager
async def started(config: MockEngineConfig, **kwargs) -> AsyncIterator[MockEngine]:
    engine = MockEngine(config, **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


def prompt(start: int, length: int) -> list[int]:
    return list(range(start, start + length))
