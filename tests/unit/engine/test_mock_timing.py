"""The mock engine's sizing and roofline against hand calculations."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.config import GpuNumbers, MockEngineConfig, Timing
from orchestrator.engine.mock.sizing import (
    default_chunked_prefill_size,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    resolve_pool,
)
from orchestrator.engine.mock import timing
from orchestrator.engine.mock.timing import Roofline, StepClock, decode_seconds, prefill_seconds, transfer_seconds
from orchestrator.planes.messages import ErrorKind
from tests.unit.engine.mock_support import DEEPSEEK_R1, LLAMA_70B_FP8, TINY

H100 = GpuNumbers(memory_gb=80, tflops=989, bandwidth_tbs=3.35, kv_link_gbs=50)
H200 = GpuNumbers(memory_gb=141, tflops=989, bandwidth_tbs=4.8, kv_link_gbs=50)


def test_llama70b_fp8_tp4_h100_pool_is_plausible():
    config = MockEngineConfig("llama", LLAMA_70B_FP8, gpu=H100, tp_size=4, context_length=131072)
    pool = resolve_pool(config)
    # 80 layers x K and V x 2 KV heads per GPU x 128 x 2 bytes
    assert pool.kv_bytes_per_token == 80 * 2 * 2 * 128 * 2
    assert pool.chunked_prefill_size == 8192
    # reserved = 512 MiB + 1.5 MiB x 8192 + 4/8 GiB = 13312 MiB
    reserved = 13312 * 2**20
    assert pool.mem_fraction_static == pytest.approx((80e9 - reserved) / 80e9)
    by_hand = int((80e9 - reserved - 70_553_706_496 / 4) // 81920)
    assert pool.max_total_tokens == by_hand
    assert 450_000 < pool.max_total_tokens < 750_000
    # int(590k / 131072 * 512) clamped to [2048, 4096]
    assert pool.max_running_requests == int(pool.max_total_tokens / 131072 * 512)
    assert pool.page_size == 1


def test_deepseek_mla_pool_keeps_the_latent_whole_on_every_gpu():
    assert kv_bytes_per_token_per_gpu(DEEPSEEK_R1, tp_size=8, attn_dp_size=1, pp_size=1) == 61 * 576
    assert kv_bytes_per_token_per_gpu(DEEPSEEK_R1, tp_size=8, attn_dp_size=8, pp_size=1) == 61 * 576
    config = MockEngineConfig("r1", DEEPSEEK_R1, gpu=H200, tp_size=8, attn_dp_size=8, page_size=64, context_length=163840)
    pool = resolve_pool(config)
    fraction = pool.mem_fraction_static
    by_hand = int((141e9 * fraction - 671_026_419_200 / 8) // (61 * 576)) // 64 * 64
    assert pool.max_total_tokens == by_hand
    assert 800_000 < pool.max_total_tokens < 1_600_000
    assert pool.max_total_tokens % 64 == 0


def test_gqa_heads_split_over_attention_tp_but_never_below_one():
    # TP8 with 8 attention-DP ranks: attention TP is 1, every GPU holds all 8 KV heads.
    assert kv_bytes_per_token_per_gpu(LLAMA_70B_FP8, 8, 8, 1) == 80 * 2 * 8 * 128 * 2
    # TP16 over 8 heads: one head per GPU, replicated.
    assert kv_bytes_per_token_per_gpu(LLAMA_70B_FP8, 16, 1, 1) == 80 * 2 * 1 * 128 * 2
    assert kv_bytes_per_token_per_gpu(LLAMA_70B_FP8, 4, 1, 2) == 80 * 2 * 2 * 128 * 2 / 2


def test_user_values_cap_the_pool_and_running_requests():
    config = MockEngineConfig("tiny", TINY, max_total_tokens=1000, page_size=16, max_running_requests=64, attn_dp_size=2, tp_size=2)
    pool = resolve_pool(config)
    assert pool.max_total_tokens == 992  # whole pages
    assert pool.max_running_requests == 32  # divided over attention-DP ranks


def test_chunked_prefill_defaults_follow_gpu_memory():
    assert default_chunked_prefill_size(16) == 2048
    assert default_chunked_prefill_size(40) == 4096
    assert default_chunked_prefill_size(80) == 8192
    assert default_chunked_prefill_size(141) == 8192
    assert default_chunked_prefill_size(192) == 16384


def test_a_model_that_does_not_fit_fails_with_its_numbers():
    config = MockEngineConfig("llama", LLAMA_70B_FP8, gpu=GpuNumbers(memory_gb=24), tp_size=1)
    with pytest.raises(EngineError) as failure:
        resolve_pool(config)
    assert failure.value.kind == ErrorKind.INTERNAL
    assert "does not fit" in str(failure.value) and "70.55 GB of weights" in str(failure.value)


def test_roofline_matches_hand_calculations():
    timing = Timing()
    # Decode of one token is reading this GPU's quarter of 70.55 GB at 70% of 3.35 TB/s.
    one_token = decode_seconds(LLAMA_70B_FP8, H100, timing, 4, 1, 1, kv_tokens=1)
    assert one_token == pytest.approx(70_553_706_496 / 4 / (3.35e12 * 0.7), rel=1e-4)
    assert one_token == pytest.approx(7.52e-3, abs=0.05e-3)
    # Each KV token adds its bytes on this GPU.
    batch = decode_seconds(LLAMA_70B_FP8, H100, timing, 4, 1, 1, kv_tokens=100_000)
    assert batch - decode_seconds(LLAMA_70B_FP8, H100, timing, 4, 1, 1, kv_tokens=0) == pytest.approx(
        100_000 * 81920 / (3.35e12 * 0.7)
    )
    # Prefill: 2 FLOPs per active parameter per token at half of peak on 4 GPUs.
    assert prefill_seconds(LLAMA_70B_FP8, H100, timing, 4, 1, 1000) == pytest.approx(
        2 * 70_553_706_496 * 1000 / (4 * 989e12 * 0.5)
    )
    assert prefill_seconds(DEEPSEEK_R1, H200, timing, 8, 1, 1000) == pytest.approx(2 * 37e9 * 1000 / (8 * 989e12 * 0.5))
    # Transfer ships the whole model's KV: 80 x 2 x 8 x 128 x 2 bytes per token.
    assert kv_bytes_per_token(LLAMA_70B_FP8) == 327_680
    assert transfer_seconds(LLAMA_70B_FP8, H100, 1000) == pytest.approx(1000 * 327_680 / 50e9)


def test_step_time_adds_its_parts_and_the_overhead():
    roofline = Roofline(LLAMA_70B_FP8, H100, Timing(speedup_ratio=10, step_overhead_ms=2.0), tp_size=4)
    mixed = roofline.step_seconds(512, 4096, decoding=True)
    assert mixed == pytest.approx(2e-3 + roofline.prefill_seconds(512) + roofline.decode_seconds(4096))
    assert roofline.step_seconds(512, 0, decoding=False) == pytest.approx(2e-3 + roofline.prefill_seconds(512))
    assert roofline.wall(mixed) == pytest.approx(mixed / 10)


def test_step_clock_keeps_sub_millisecond_steps_at_their_speed(monkeypatch):
    """Steps shorter than the timer resolution are not each stretched to it: they yield
    until the running clock is a millisecond ahead, then sleep that off at once, so
    the wall time slept is the steps' time. Idle time is not banked. Steps that cost
    more CPU than their time yield once a millisecond."""
    wall = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        wall[0] += seconds

    monkeypatch.setattr(timing.time, "monotonic", lambda: wall[0])
    monkeypatch.setattr(timing.asyncio, "sleep", sleep)
    clock = StepClock(Roofline(LLAMA_70B_FP8, H100, Timing(speedup_ratio=1000)))

    async def steps(count: int, simulated: float) -> None:
        for _ in range(count):
            await clock.step(simulated)

    asyncio.run(steps(20, 0.2))  # 0.2 ms each on the wall
    assert sum(slept) == pytest.approx(20 * 0.2e-3)
    assert [s for s in slept if s] == pytest.approx([1e-3] * 4)
    assert slept.count(0) == 16

    wall[0] += 1.0  # idle: the next short step has no time in hand and only yields
    slept.clear()
    asyncio.run(steps(1, 0.2))
    assert slept == [0]

    wall[0] += 1.0
    slept.clear()
    asyncio.run(steps(1, 5.0))  # longer than the resolution: slept at once
    assert slept == pytest.approx([5e-3])

    async def costly_steps(count: int, simulated: float, cpu_s: float) -> None:
        for _ in range(count):
            wall[0] += cpu_s
            await clock.step(simulated)

    wall[0] += 1.0  # each step costs 50 µs of CPU for 10 µs of GPU time: behind the wall,
    slept.clear()  # the scheduler yields once a millisecond, not once a step
    asyncio.run(costly_steps(100, 0.01, 50e-6))
    assert slept == [0] * 5
