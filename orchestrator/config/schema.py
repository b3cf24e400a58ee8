"""The one schema of a deployment.

These dataclasses are registered in Hydra's ConfigStore (see `store.py`); the YAML
under `conf/` and `recipes/` only supplies values. The composed config is converted
once, at the CLI edge, into a `LaunchConfig`; everything past that takes these typed
objects. Required values are `MISSING`.

SGLang's own arguments are never modelled field by field: `sglang:` maps hold them
with their dashed CLI names and pass through verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from orchestrator.roles import ChatProcessor, EngineKind, RouterMode, WorkerType


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    fp4 = "fp4"


@dataclass
class ModelConfig:
    """What is served, and the architecture numbers the mock engine's timing needs."""

    path: str = MISSING  # local directory (or hub id) handed to SGLang's --model-path
    served_name: str = MISSING
    tokenizer: Optional[str] = None  # directory with tokenizer.json; default: path
    num_params: int = MISSING  # total parameters
    active_params: Optional[int] = None  # per-token parameters of a MoE; default: num_params
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_kv_heads: int = MISSING
    head_dim: int = MISSING
    mla: bool = False  # multi-head latent attention: one latent of head_dim per token and layer
    dtype: DType = DType.bf16  # weights
    kv_dtype: DType = DType.bf16  # KV cache; fp8 renders --kv-cache-dtype fp8_e4m3
    context_length: int = MISSING
    tool_call_parser: Optional[str] = None  # --dyn-tool-call-parser
    reasoning_parser: Optional[str] = None  # --dyn-reasoning-parser
    sglang: Dict[str, Any] = field(default_factory=dict)  # model-specific SGLang flags


@dataclass
class GpuSpec:
    name: str = MISSING
    memory_gb: float = MISSING
    peak_tflops: float = MISSING  # dense BF16
    peak_tflops_fp8: Optional[float] = None  # dense FP8; default: peak_tflops
    memory_bandwidth_tbs: float = MISSING  # TB/s


@dataclass
class ClusterConfig:
    """The GPUs the plan may use. With the mock engine the inventory is virtual: every
    node is this machine and no device is touched."""

    gpu: GpuSpec = field(default_factory=GpuSpec)
    nodes: int = 1
    gpus_per_node: int = 8
    hosts: List[str] = field(default_factory=list)  # one address per node (real engine)
    listen_host: str = "127.0.0.1"  # where every listener binds
    kv_link_gbs: float = 50.0  # GB/s between a prefill and a decode worker (KV transfer)


@dataclass
class WorkerGroupConfig:
    """A set of identical worker replicas. Worker types (`conf/worker/`) fill in
    `type`, `component`, `endpoint` and `disagg_key`; deployments set the topology."""

    type: WorkerType = MISSING
    component: str = MISSING  # discovery component: backend | prefill | ...
    endpoint: str = "generate"
    disagg_key: Optional[str] = None  # section of the disagg file this group reads
    replicas: int = 1
    tp: int = 1  # --tp-size
    dp: int = 1  # --dp-size: independent replicas inside one worker
    attn_dp: int = 1  # --attn-dp-size: attention-DP ranks inside the TP group
    pp: int = 1  # --pp-size
    kv_events: bool = False  # publish SGLang KV events (--kv-events-config)
    sglang: Dict[str, Any] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class DeploymentConfig:
    groups: Dict[str, WorkerGroupConfig] = field(default_factory=dict)
    page_size: Optional[int] = None  # --page-size of every worker (SGLang resolves None to 1)


@dataclass
class TokenizerConfig:
    chat_processor: ChatProcessor = ChatProcessor.dynamo


@dataclass
class RouterConfig:
    mode: RouterMode = RouterMode.round_robin
    overlap_score_weight: float = 1.0
    temperature: float = 0.0
    use_kv_events: bool = True  # false: approximate mode, routed prefixes assumed cached
    ttl_s: float = 120.0  # approximate mode: how long a routed prefix counts as cached
    busy_kv_usage: float = 1.0  # a DP rank using more of its KV pool than this is busy
    busy_prefill_tokens: int = 10_000_000  # ... or with more prompt tokens queued
    busy_policy: str = "reject"  # reject (503) | queue, when every worker is busy


@dataclass
class FrontendConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    migration_limit: int = 3


@dataclass
class RestartConfig:
    policy: str = "on-failure"  # always | on-failure | never
    max_restarts: int = 5  # within window_s, then the process is marked failed
    window_s: float = 300.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    on_failed: str = "keep-serving"  # keep-serving | stop


@dataclass
class SupervisorConfig:
    start_timeout_s: float = 600.0
    stop_timeout_s: float = 10.0
    drain_timeout_s: float = 30.0
    health_interval_s: float = 2.0
    unhealthy_after: int = 3  # consecutive failed probes
    restart: RestartConfig = field(default_factory=RestartConfig)


@dataclass
class MockEngineConfig:
    """Timing of the CPU simulator: a roofline over the model and GPU numbers."""

    speedup_ratio: float = 1.0  # divides every simulated duration
    prefill_efficiency: float = 0.5  # achieved fraction of peak FLOP/s
    decode_efficiency: float = 0.7  # achieved fraction of memory bandwidth
    step_overhead_ms: float = 2.0  # scheduler and launch overhead per batch step


@dataclass
class EngineConfig:
    kind: EngineKind = MISSING
    mock: MockEngineConfig = field(default_factory=MockEngineConfig)


@dataclass
class DiscoveryConfig:
    backend: str = "file"  # file | etcd
    etcd_endpoints: List[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    lease_ttl_s: float = 10.0


@dataclass
class PortsConfig:
    """Where the plan starts numbering. See `orchestrator.plan.ports`."""

    base: int = 20000  # system, request-plane, event-plane, KV-event, bootstrap ports
    sglang_base: int = 30000  # SGLang --port blocks, one per worker


@dataclass
class SloConfig:
    ttft_ms: Optional[float] = None
    itl_ms: Optional[float] = None


@dataclass
class BenchmarkConfig:
    """A load to drive at the deployment once it is ready."""

    enabled: bool = False
    url: Optional[str] = None  # any OpenAI-compatible endpoint; default: this deployment
    workload: str = "synthetic"  # synthetic | shared_prefix | multi_turn | trace
    isl: int = 512
    osl: int = 128
    isl_stddev: float = 0.0
    osl_stddev: float = 0.0
    shared_prefix_len: int = 0
    num_prefixes: int = 1
    turns: int = 1
    trace: Optional[str] = None  # Mooncake-style JSONL
    trace_speedup: float = 1.0
    trace_block_size: int = 512  # tokens per trace hash id (Mooncake's traces use 512)
    concurrency: Optional[int] = 8
    concurrency_per_gpu: Optional[float] = None  # instead of a concurrency: this many per GPU of the deployment
    request_rate: Optional[float] = None  # requests/s instead of a concurrency
    num_requests: int = 100
    duration_s: Optional[float] = None
    warmup_requests: int = 0
    seed: int = 0
    slo: SloConfig = field(default_factory=SloConfig)
    stop_on_failure: bool = False  # a failed job ends the sweep (else it is recorded and the sweep goes on)


@dataclass
class LaunchConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    disagg: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # role -> SGLang flags
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    perf: Dict[str, Any] = field(default_factory=dict)  # a recipe's own benchmark (benchmark=recipe)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    ports: PortsConfig = field(default_factory=PortsConfig)
    namespace: str = "dynamo"
    dry_run: Any = False  # false | true (a table) | json
