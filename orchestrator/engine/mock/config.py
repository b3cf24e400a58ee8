"""Everything the mock engine is built from: SGLang's own arguments (same names and
meaning, `None` where SGLang resolves a default) plus the model and GPU numbers its
timing needs (the worker's `--mock-*` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

FAKE_BOOTSTRAP_HOST = "2.2.2.2"  # SGLang's fake transfer: warm-up and health probes pair with no one


@dataclass(frozen=True)
class ModelNumbers:
    num_params: int
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    active_params: Optional[int] = None  # MoE: parameters touched per token
    mla: bool = False  # one latent of head_dim per token and layer, shared by all heads
    weight_bytes: float = 2.0  # per parameter
    kv_bytes: float = 2.0  # per KV element (--kv-cache-dtype)


@dataclass(frozen=True)
class GpuNumbers:
    memory_gb: float = 80.0
    tflops: float = 989.0  # dense peak for the weight dtype
    bandwidth_tbs: float = 3.35
    kv_link_gbs: float = 50.0  # prefill -> decode KV transfer


@dataclass(frozen=True)
class Timing:
    speedup_ratio: float = 1.0
    prefill_efficiency: float = 0.5
    decode_efficiency: float = 0.7
    step_overhead_ms: float = 2.0


@dataclass(frozen=True)
class MockEngineConfig:
    served_model_name: str
    model: ModelNumbers
    gpu: GpuNumbers = field(default_factory=GpuNumbers)
    timing: Timing = field(default_factory=Timing)
    # SGLang's arguments
    context_length: int = 8192
    tp_size: int = 1
    dp_size: int = 1
    attn_dp_size: int = 1
    pp_size: int = 1
    page_size: Optional[int] = None  # SGLang resolves None to 1
    mem_fraction_static: Optional[float] = None
    max_total_tokens: Optional[int] = None
    max_running_requests: Optional[int] = None
    chunked_prefill_size: Optional[int] = None
    max_prefill_tokens: int = 16384
    schedule_policy: str = "fcfs"
    disable_radix_cache: bool = False
    disaggregation_mode: str = "null"  # null | prefill | decode
    disaggregation_transfer_backend: str = "mooncake"
    disaggregation_bootstrap_port: int = 8998
    host: str = "127.0.0.1"
    kv_events_config: Optional[dict] = None  # SGLang's --kv-events-config, parsed
    enable_metrics: bool = False
    is_embedding: bool = False
    bootstrap_timeout_s: float = 300.0  # SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT / WAITING_TIMEOUT
    echo: bool = False  # the "model" repeats its prompt and ends (--mock-echo)
