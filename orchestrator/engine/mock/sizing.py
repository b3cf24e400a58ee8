"""How big one DP rank of the mock engine is: SGLang's resolution of page size,
chunked-prefill size, static memory fraction, KV pool capacity and request slots
from the model and GPU numbers (`arg_groups/memory_hook.py`,
`mem_cache/kv_cache_configurator.py`, `resolve_max_num_reqs` in SGLang 0.5.23).

Also the byte counts the roofline reuses: weights and KV per GPU, and the KV of
one token for the whole model (what a disaggregated transfer moves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.config import MockEngineConfig, ModelNumbers
from orchestrator.planes.messages import ErrorKind

logger = logging.getLogger(__name__)

GIB = float(1 << 30)
MIB = float(1 << 20)


@dataclass(frozen=True)
class PoolSize:
    """The resolved numbers of one DP rank."""

    page_size: int
    chunked_prefill_size: int  # -1: chunking disabled
    mem_fraction_static: float
    kv_bytes_per_token: float  # per GPU, all layers of this GPU's pipeline stage
    max_total_tokens: int  # KV capacity of the rank, a whole number of pages
    max_running_requests: int

    @property
    def total_pages(self) -> int:
        return self.max_total_tokens // self.page_size


def weight_bytes_per_gpu(model: ModelNumbers, tp_size: int, pp_size: int) -> float:
    return model.num_params * model.weight_bytes / (tp_size * pp_size)


def kv_bytes_per_token_per_gpu(model: ModelNumbers, tp_size: int, attn_dp_size: int, pp_size: int) -> float:
    """KV bytes one token occupies on one GPU.

    MLA keeps one latent per layer replicated on every TP rank; GQA/MHA splits the
    KV heads over the attention-TP group (tp / attention-DP), never below one head
    per GPU (heads are replicated when there are fewer heads than ranks).
    """
    if model.mla:
        return model.num_layers * model.head_dim * model.kv_bytes / pp_size
    attention_tp = max(1, tp_size // attn_dp_size)
    heads = max(1.0, model.num_kv_heads / attention_tp)
    return model.num_layers * 2 * heads * model.head_dim * model.kv_bytes / pp_size


def kv_bytes_per_token(model: ModelNumbers) -> float:
    """KV bytes of one token for the whole model: what prefill ships to decode."""
    if model.mla:
        return model.num_layers * model.head_dim * model.kv_bytes
    return model.num_layers * 2 * model.num_kv_heads * model.head_dim * model.kv_bytes


def default_chunked_prefill_size(gpu_memory_gb: float) -> int:
    gib = gpu_memory_gb * 1e9 / GIB
    if gib < 20:
        return 2048
    if gib < 60:
        return 4096
    if gib < 160:
        return 8192
    return 16384


def default_mem_fraction_static(gpu_memory_gb: float, chunked_prefill_size: int, tp_size: int, pp_size: int) -> float:
    """SGLang's reserve for activations and CUDA graphs, as a fraction of the GPU.

    The CUDA-graph term of SGLang's formula depends on the captured batch sizes;
    the 10 GB floor on large GPUs dominates it in practice, so it is left out.
    """
    memory = gpu_memory_gb * 1e9
    reserved = 512 * MIB + 1.5 * MIB * max(chunked_prefill_size, 2048) + tp_size * pp_size / 8 * GIB
    if gpu_memory_gb > 60:
        reserved = max(reserved, 10e9)
    return (memory - reserved) / memory


def default_max_running_requests(max_total_tokens: int, context_length: int) -> int:
    by_context = int(max_total_tokens / context_length * 512)
    return min(min(max(by_context, 2048), 4096), max_total_tokens // 2)


def resolve_pool(config: MockEngineConfig) -> PoolSize:
    """Size one DP rank; raises `EngineError(INTERNAL)` when the model does not fit."""
    model, gpu = config.model, config.gpu
    page_size = config.page_size or 1
    chunked = config.chunked_prefill_size
    if chunked is None:
        chunked = default_chunked_prefill_size(gpu.memory_gb)
    if 0 < chunked < page_size:
        chunked = page_size  # a chunk is a whole number of pages
    fraction = config.mem_fraction_static
    if fraction is None:
        fraction = default_mem_fraction_static(gpu.memory_gb, chunked, config.tp_size, config.pp_size)

    weights = weight_bytes_per_gpu(model, config.tp_size, config.pp_size)
    available = gpu.memory_gb * 1e9 * fraction - weights
    per_token = kv_bytes_per_token_per_gpu(model, config.tp_size, config.attn_dp_size, config.pp_size)
    fitted = int(available // per_token) // page_size * page_size if available > 0 else 0
    if fitted <= 0:
        raise EngineError(
            ErrorKind.INTERNAL,
            f"The model does not fit: {weights / 1e9:.2f} GB of weights per GPU against "
            f"{gpu.memory_gb * fraction:.2f} GB static memory ({gpu.memory_gb} GB x "
            f"mem_fraction_static {fraction:.3f}) leaves {available / 1e9:.2f} GB for a KV cache "
            f"of {per_token:.0f} bytes per token (tp={config.tp_size}, pp={config.pp_size}).",
        )
    max_total = fitted
    if config.max_total_tokens is not None:
        # SGLang takes the smaller of the user's value and what memory allows.
        max_total = min(fitted, config.max_total_tokens // page_size * page_size)
        if max_total <= 0:
            raise EngineError(ErrorKind.INVALID, f"max_total_tokens {config.max_total_tokens} is below one page of {page_size}")

    if config.max_running_requests is None:
        max_running = default_max_running_requests(max_total, config.context_length)
    else:
        max_running = min(max(1, config.max_running_requests // config.attn_dp_size), max_total // 2)
    max_running = max(1, max_running)

    logger.info(
        "KV pool per DP rank: %d tokens (%d pages of %d), %.0f bytes/token/GPU, mem_fraction_static %.3f, "
        "max_running_requests %d, chunked_prefill_size %d",
        max_total, max_total // page_size, page_size, per_token, fraction, max_running, chunked,
    )
    return PoolSize(
        page_size=page_size,
        chunked_prefill_size=chunked,
        mem_fraction_static=fraction,
        kv_bytes_per_token=per_token,
        max_total_tokens=max_total,
        max_running_requests=max_running,
    )
