"""Builds the worker's engine from its parsed arguments.

The mock engine takes SGLang's arguments as they are, plus the `--mock-*` numbers;
a number not given comes from the model's `config.json` (the tokenizer directory's
when `--tokenizer-path` is set), so `--model-path <dir>` alone is enough for a model
whose files are here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from orchestrator.engine.base import Engine
from orchestrator.engine.mock.config import GpuNumbers, MockEngineConfig, ModelNumbers, Timing
from orchestrator.errors import ConfigError
from orchestrator.roles import EngineKind, WorkerType
from orchestrator.worker.args import WorkerArgs

BOOTSTRAP_TIMEOUT_ENV = "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT"  # SGLang's, in seconds
DTYPE_BYTES = {"fp32": 4.0, "float32": 4.0, "bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0, "float16": 2.0, "fp8": 1.0,
               "fp4": 0.5}


def model_files(sglang: Any) -> Path:
    """Where the model's config.json and tokenizer files are."""
    return Path(getattr(sglang, "tokenizer_path", None) or sglang.model_path)


def hf_config(sglang: Any) -> dict:
    path = model_files(sglang) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def special_token_ids(config: dict) -> tuple[int, tuple[int, ...]]:
    """(BOS, EOS ids) from config.json; SGLang's probes fall back to BOS 1."""
    eos = config.get("eos_token_id", ())
    return int(config.get("bos_token_id", 1)), tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def mock_engine_config(args: WorkerArgs) -> MockEngineConfig:
    """SGLang's fields are read by name from either SGLang's ServerArgs or the mock
    parser's namespace. SGLang 0.5.23's record holds the raw input (None where SGLang
    resolves a default at launch), so None means "the mock's default" here."""
    from dataclasses import MISSING, fields

    s, mock, hf = args.sglang, args.mock, hf_config(args.sglang)
    defaults = {f.name: f.default for f in fields(MockEngineConfig) if f.default is not MISSING}

    def arg(name: str):
        value = getattr(s, name, None)
        return defaults.get(name) if value is None else value

    def number(name: str, hf_key: str | None = None, derive=None):
        value = mock.get(name)
        if value is None and hf_key:
            value = hf.get(hf_key)
        if value is None and derive is not None:
            value = derive()
        if value is None:
            raise ConfigError(
                f"--mock-{name.replace('_', '-')}",
                f"not given and not in {model_files(s) / 'config.json'}",
                "pass it, or point --model-path/--tokenizer-path at the model's files",
            )
        return value

    hidden = number("hidden_size", "hidden_size")
    heads = hf.get("num_attention_heads")
    _, eos = special_token_ids(hf)
    kv_dtype = arg("kv_cache_dtype") or "auto"  # 0.5.23 adds mxfp8, nvfp4, fp4_mx_block16
    kv_bytes = 0.5 if "fp4" in kv_dtype else 1.0 if "fp8" in kv_dtype else 2.0
    dp_size, attn_dp_size = arg("dp_size"), arg("attn_dp_size")
    if arg("enable_dp_attention") and attn_dp_size == 1:
        # The deprecated `--dp-size N --enable-dp-attention`: SGLang keeps it raw in its
        # record and resolves it at launch into --attn-dp-size N (the mock parser at once).
        attn_dp_size, dp_size = dp_size, 1
    model = ModelNumbers(
        num_params=int(number("num_params", derive=lambda: _estimate_params(hf))),
        hidden_size=int(hidden),
        num_layers=int(number("num_layers", "num_hidden_layers")),
        num_kv_heads=int(number("num_kv_heads", "num_key_value_heads", derive=lambda: heads)),
        head_dim=int(number("head_dim", "head_dim", derive=lambda: hidden // heads if heads else None)),
        vocab_size=int(number("vocab_size", "vocab_size")),
        eos_token_ids=eos,
        active_params=mock.get("active_params"),
        mla=bool(mock.get("mla")),
        weight_bytes=DTYPE_BYTES[mock.get("weight_dtype") or hf.get("torch_dtype", "bf16")],
        kv_bytes=kv_bytes,
    )
    gpu, timing = GpuNumbers(), Timing()
    kv_events = arg("kv_events_config")
    return MockEngineConfig(
        served_model_name=arg("served_model_name") or s.model_path,
        model=model,
        gpu=GpuNumbers(
            memory_gb=mock.get("gpu_memory_gb") or gpu.memory_gb,
            tflops=mock.get("gpu_tflops") or gpu.tflops,
            bandwidth_tbs=mock.get("gpu_bandwidth_tbs") or gpu.bandwidth_tbs,
            kv_link_gbs=mock.get("kv_link_gbs") or gpu.kv_link_gbs,
        ),
        timing=Timing(
            speedup_ratio=mock.get("speedup_ratio") or timing.speedup_ratio,
            prefill_efficiency=mock.get("prefill_efficiency") or timing.prefill_efficiency,
            decode_efficiency=mock.get("decode_efficiency") or timing.decode_efficiency,
            step_overhead_ms=timing.step_overhead_ms if mock.get("step_overhead_ms") is None else mock["step_overhead_ms"],
        ),
        context_length=getattr(s, "context_length", None) or int(number("context_length", "max_position_embeddings")),
        tp_size=arg("tp_size"),
        dp_size=dp_size,
        attn_dp_size=attn_dp_size,
        pp_size=arg("pp_size"),
        page_size=arg("page_size"),
        mem_fraction_static=arg("mem_fraction_static"),
        max_total_tokens=arg("max_total_tokens"),
        max_running_requests=arg("max_running_requests"),
        chunked_prefill_size=arg("chunked_prefill_size"),
        max_prefill_tokens=arg("max_prefill_tokens"),
        schedule_policy=arg("schedule_policy"),
        disable_radix_cache=arg("disable_radix_cache"),
        disaggregation_mode=arg("disaggregation_mode"),
        disaggregation_transfer_backend=arg("disaggregation_transfer_backend"),
        disaggregation_bootstrap_port=arg("disaggregation_bootstrap_port"),
        host=arg("host"),
        kv_events_config=json.loads(kv_events) if isinstance(kv_events, str) else kv_events,
        enable_metrics=arg("enable_metrics"),
        is_embedding=args.worker_type is WorkerType.embedding or bool(arg("is_embedding")),
        bootstrap_timeout_s=float(os.environ.get(BOOTSTRAP_TIMEOUT_ENV, 300)),
        echo=bool(mock.get("echo")),
    )


def _estimate_params(hf: dict) -> int | None:
    """A Llama-shaped count from config.json (embeddings, attention, gated MLP, norms)."""
    try:
        h, layers, vocab = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]
        heads, kv_heads = hf["num_attention_heads"], hf.get("num_key_value_heads", hf["num_attention_heads"])
        head_dim = hf.get("head_dim", h // heads)
        inter = hf["intermediate_size"]
    except KeyError:
        return None
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if hf.get("tie_word_embeddings") else 2)
    return embeddings + layers * per_layer + h


def build_engine(args: WorkerArgs, registry: CollectorRegistry) -> Engine:
    if args.engine is EngineKind.sglang:
        from orchestrator.engine.sglang_engine import SGLangEngine

        return SGLangEngine(args, registry)
    from orchestrator.engine.mock.wiring import build_mock_engine

    return build_mock_engine(mock_engine_config(args), registry)
