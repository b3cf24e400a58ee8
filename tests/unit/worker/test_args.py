"""The worker's command line without SGLang installed: our flags and their DYN_*
variables, the disagg sections, and SGLang flags the mock engine does not know."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.roles import EngineKind, WorkerType
from orchestrator.worker import sglang_flags
from orchestrator.worker.args import parse_worker_args


@pytest.fixture(autouse=True)
def mock_parser(monkeypatch):
    """These tests are about the mock engine's parser, whatever is installed."""
    monkeypatch.setattr(sglang_flags, "parse_with_sglang", lambda argv: None)


@pytest.fixture
def disagg_file(tmp_path):
    path = tmp_path / "disagg.yaml"
    path.write_text(yaml.safe_dump({
        "prefill": {"disaggregation-transfer-backend": "nixl", "page-size": 32, "max-running-requests": 8},
        "decode": {"disaggregation-transfer-backend": "nixl"},
    }))
    return str(path)


def test_environment_fills_in_and_the_command_line_wins():
    env = {"DYN_NAMESPACE": "prod", "DYN_REQUEST_PORT": "7001", "DYN_SYSTEM_PORT": "9090",
           "DYN_FILE_KV": "/tmp/kv", "DYN_HEALTH_CHECK_ENABLED": "false", "DYN_MOCK_SPEEDUP_RATIO": "50"}
    args = parse_worker_args(["--model-path", "m", "--request-port", "7002"], env)
    assert (args.namespace, args.request_port, args.system_port, args.discovery.root) == ("prod", 7002, 9090, "/tmp/kv")
    assert args.health_check is False and args.mock["speedup_ratio"] == 50.0
    assert args.engine is EngineKind.mock and args.worker_type is WorkerType.aggregated


def test_worker_type_comes_from_sglangs_disaggregation_mode():
    assert parse_worker_args(["--model-path", "m", "--disaggregation-mode", "prefill"], {}).component == "prefill"
    decode = parse_worker_args(["--model-path", "m", "--disaggregation-mode", "decode"], {})
    assert decode.worker_type is WorkerType.decode and decode.component == "backend"
    assert parse_worker_args(["--model-path", "m", "--embedding-worker"], {}).worker_type is WorkerType.embedding


def test_disagg_section_is_merged_and_the_command_line_beats_it(disagg_file):
    args = parse_worker_args(
        ["--model-path", "m", "--page-size", "16", "--disagg-config", disagg_file, "--disagg-config-key", "prefill"], {}
    )
    assert args.sglang.page_size == 16, "command line beats the section"
    assert args.sglang.max_running_requests == 8 and args.sglang.disaggregation_transfer_backend == "nixl"


def test_disagg_flags_come_together(disagg_file):
    with pytest.raises(ConfigError, match="go together"):
        parse_worker_args(["--model-path", "m", "--disagg-config", disagg_file], {})
    with pytest.raises(ConfigError, match="go together"):
        parse_worker_args(["--model-path", "m", "--disagg-config-key", "prefill"], {})


def test_a_missing_section_lists_the_available_ones(disagg_file):
    with pytest.raises(ConfigError, match="available: decode, prefill"):
        parse_worker_args(["--model-path", "m", "--disagg-config", disagg_file, "--disagg-config-key", "encode"], {})


def test_an_sglang_flag_the_mock_does_not_know_is_named_with_a_hint():
    with pytest.raises(ConfigError) as error:
        parse_worker_args(["--model-path", "m", "--enable-lora"], {})
    assert str(error.value).startswith("--enable-lora:") and "sglang extra" in str(error.value)


def test_the_deprecated_dp_attention_form_is_rewritten_as_sglang_does():
    args = parse_worker_args(["--model-path", "m", "--dp-size", "4", "--enable-dp-attention"], {})
    assert (args.sglang.dp_size, args.sglang.attn_dp_size) == (1, 4)


def test_use_sglang_tokenizer_is_deprecated_toward_the_chat_processor():
    with pytest.warns(FutureWarning, match="--dyn-chat-processor sglang"):
        assert parse_worker_args(["--model-path", "m", "--use-sglang-tokenizer"], {}).use_sglang_tokenizer
