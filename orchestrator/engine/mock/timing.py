"""The roofline the mock engine's clock follows: how long one scheduler step and one
disaggregated KV transfer take on the configured GPUs, in simulated seconds.

Prefill is compute-bound (2 FLOPs per active parameter per token over the TP x PP
GPUs at a fraction of peak); decode is bandwidth-bound (every step streams this
GPU's weights plus the KV of the whole batch). Dynamo's mocker fits polynomials to
profiles instead; a roofline needs no profile and scales with the model and GPU
numbers a recipe already has. The functions are pure so tests can check them
against hand calculations; `Roofline` binds them to one engine's config, and
`StepClock` waits a scheduler's steps out on the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from orchestrator.engine.mock.config import GpuNumbers, MockEngineConfig, ModelNumbers, Timing
from orchestrator.engine.mock.sizing import kv_bytes_per_token, kv_bytes_per_token_per_gpu, weight_bytes_per_gpu


def prefill_seconds(model: ModelNumbers, gpu: GpuNumbers, timing: Timing, tp_size: int, pp_size: int, new_tokens: int) -> float:
    """Compute time of `new_tokens` prompt tokens on one DP rank."""
    active = model.active_params or model.num_params
    flops = 2.0 * active * new_tokens
    return flops / (tp_size * pp_size * gpu.tflops * 1e12 * timing.prefill_efficiency)


def decode_seconds(
    model: ModelNumbers, gpu: GpuNumbers, timing: Timing, tp_size: int, attn_dp_size: int, pp_size: int, kv_tokens: int
) -> float:
    """Memory time of one decode step whose batch attends over `kv_tokens` in total."""
    kv_read = kv_tokens * kv_bytes_per_token_per_gpu(model, tp_size, attn_dp_size, pp_size)
    return (weight_bytes_per_gpu(model, tp_size, pp_size) + kv_read) / (gpu.bandwidth_tbs * 1e12 * timing.decode_efficiency)


def transfer_seconds(model: ModelNumbers, gpu: GpuNumbers, prompt_tokens: int) -> float:
    """Time to ship a prompt's KV (all layers, the whole model) over the KV link."""
    return prompt_tokens * kv_bytes_per_token(model) / (gpu.kv_link_gbs * 1e9)


@dataclass(frozen=True)
class Roofline:
    """The timing functions bound to one engine's model, GPU and parallelism."""

    model: ModelNumbers
    gpu: GpuNumbers
    timing: Timing
    tp_size: int = 1
    attn_dp_size: int = 1
    pp_size: int = 1

    @classmethod
    def of(cls, config: MockEngineConfig) -> Roofline:
        return cls(config.model, config.gpu, config.timing, config.tp_size, config.attn_dp_size, config.pp_size)

    def prefill_seconds(self, new_tokens: int) -> float:
        return prefill_seconds(self.model, self.gpu, self.timing, self.tp_size, self.pp_size, new_tokens)

    def decode_seconds(self, kv_tokens: int) -> float:
        return decode_seconds(self.model, self.gpu, self.timing, self.tp_size, self.attn_dp_size, self.pp_size, kv_tokens)

    def step_seconds(self, prefill_tokens: int, decode_kv_tokens: int, decoding: bool) -> float:
        """One forward pass: its prefill part, its decode part (if any request decodes), and the fixed overhead."""
        seconds = self.timing.step_overhead_ms / 1e3
        if prefill_tokens:
            seconds += self.prefill_seconds(prefill_tokens)
        if decoding:
            seconds += self.decode_seconds(decode_kv_tokens)
        return seconds

    def transfer_seconds(self, prompt_tokens: int) -> float:
        return transfer_seconds(self.model, self.gpu, prompt_tokens)

    def wall(self, simulated_seconds: float) -> float:
        """Real seconds to wait for `simulated_seconds` of GPU time."""
        return simulated_seconds / self.timing.speedup_ratio


# The event loop's timers fire no sooner than this after they are due (epoll waits in
# whole milliseconds).
TIMER_RESOLUTION = 1e-3


class StepClock:
    """Waits out one scheduler's steps on the wall clock, one after another.

    Sleeping for each step on its own would stretch every step shorter than the
    timer resolution to a millisecond: at a speed-up of 1000, a 5 ms decode step
    would take 1 ms instead of 5 µs, and the engine would run 200 times slower than
    asked. The steps are instead laid end to end on a running clock that never runs
    behind the wall (a GPU does not bank idle time), and a step sleeps only when that
    clock is at least the timer resolution ahead; a shorter step just yields to the
    loop, so requests still arrive and replies leave between steps. A scheduler that
    runs behind the wall (its steps cost more CPU than the GPU time they stand for)
    yields once per timer resolution instead of once per step: its streams then take
    the tokens of several steps at once, as SGLang's do when their reader falls
    behind the scheduler, instead of the loop spending a turn per token."""

    def __init__(self, roofline: Roofline):
        self._roofline = roofline
        self._due = self._yielded = 0.0

    async def step(self, simulated_seconds: float) -> None:
        now = time.monotonic()
        behind = self._due < now
        self._due = max(self._due, now) + self._roofline.wall(simulated_seconds)
        ahead = self._due - now
        if ahead >= TIMER_RESOLUTION:
            await asyncio.sleep(ahead)
        elif not behind or now - self._yielded >= TIMER_RESOLUTION:
            await asyncio.sleep(0)
        else:
            return  # behind the wall: the next step follows at once, as on a GPU
        self._yielded = time.monotonic()
