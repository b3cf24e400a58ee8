"""The worker's SGLang arguments read by SGLang 0.5.23's own parser
(`prepare_server_args`, `--config` merge included), as on a GPU node: the argv our
launch plans render is accepted, the disaggregation section reaches SGLang through
`--config` below the command line, a flag SGLang does not know is one ConfigError
line, and the mock engine is configured alike from SGLang's ServerArgs and from the
mock parser. Skipped where SGLang's parser does not import (tests/sglang_env.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

import orchestrator.models
from orchestrator.engine.factory import mock_engine_config
from orchestrator.errors import ConfigError
from orchestrator.roles import Role, WorkerType
from orchestrator.worker import sglang_flags
from orchestrator.worker.args import parse_worker_args
from tests.sglang_env import require_sglang
from tests.support import RECIPES

TINY = Path(orchestrator.models.__file__).parent / "tiny"
KV_EVENTS = {
    "publisher": "zmq",
    "topic": "kv-events",
    "endpoint": "tcp://127.0.0.1:20000",
    "replay_endpoint": "tcp://127.0.0.1:20001",
    "bind": True,
}
ENV = {"DYN_FILE_KV": "/nonexistent/discovery"}  # no stray DYN_* from the machine


@pytest.fixture(scope="module")
def server_args_module():
    (module,) = require_sglang("sglang.srt.server_args")
    return module


@pytest.fixture
def real(server_args_module, monkeypatch):
    """The worker's own import of SGLang's parser (not its per-process cache, which an
    earlier test may have filled before SGLang was importable)."""
    prepare = sglang_flags._sglang_prepare_server_args.__wrapped__()
    assert prepare is server_args_module.prepare_server_args
    monkeypatch.setattr(sglang_flags, "_sglang_prepare_server_args", lambda: prepare)
    return server_args_module


def parse_with_mock_parser(argv: list[str], monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(sglang_flags, "_sglang_prepare_server_args", lambda: None)
        return parse_worker_args(argv, environ=ENV)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    shutil.copy(TINY / "config.json", path)
    return path


def disagg_file(tmp_path: Path, sections: dict) -> Path:
    path = tmp_path / "disagg.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def prefill_argv(model_dir: Path, disagg: Path) -> list[str]:
    """A prefill worker's command line as our launch plan renders it."""
    sglang = [
        "--model-path", str(model_dir), "--served-model-name", "x", "--tokenizer-path", str(model_dir),
        "--context-length", "8192", "--tp-size", "2", "--page-size", "16", "--skip-tokenizer-init",
        "--host", "127.0.0.1", "--port", "30000", "--disaggregation-mode", "prefill",
        "--disaggregation-bootstrap-port", "12345", "--kv-events-config", json.dumps(KV_EVENTS, separators=(",", ":")),
        "--enable-metrics", "--mem-fraction-static", "0.85", "--chunked-prefill-size", "8192",
    ]  # fmt: skip
    ours = [
        "--namespace", "dynamo", "--component", "prefill", "--endpoint", "generate", "--engine", "mock",
        "--request-port", "20005", "--event-port", "20006", "--advertise-host", "127.0.0.1",
        "--disagg-config", str(disagg), "--disagg-config-key", "prefill", "--mock-num-params", "1000",
    ]  # fmt: skip
    return sglang + ours


def test_prefill_argv_gives_sglangs_own_server_args(real, model_dir, tmp_path):
    disagg = disagg_file(tmp_path, {"prefill": {"disaggregation-transfer-backend": "nixl"}, "decode": {}})
    args = parse_worker_args(prefill_argv(model_dir, disagg), environ=ENV)

    s = args.sglang
    assert type(s) is real.ServerArgs and type(s).__module__ == "sglang.srt.server_args"
    assert (s.model_path, s.served_model_name, s.tokenizer_path) == (str(model_dir), "x", str(model_dir))
    assert (s.context_length, s.tp_size, s.page_size, s.skip_tokenizer_init) == (8192, 2, 16, True)
    assert (s.disaggregation_mode, s.disaggregation_bootstrap_port) == ("prefill", 12345)
    assert s.disaggregation_transfer_backend == "nixl"  # from the section
    assert json.loads(s.kv_events_config) == KV_EVENTS
    assert (s.enable_metrics, s.mem_fraction_static, s.chunked_prefill_size) == (True, 0.85, 8192)
    assert (args.worker_type, args.component, args.request_port, args.event_port) == (
        WorkerType.prefill, "prefill", 20005, 20006
    )
    assert args.mock["num_params"] == 1000
    section_file = Path(args.sglang_argv[args.sglang_argv.index("--config") + 1])
    assert not section_file.exists(), "the section's temp YAML is removed after parsing"


def test_disagg_section_flags_reach_sglang_and_the_command_line_beats_them(real, model_dir, tmp_path):
    disagg = disagg_file(
        tmp_path,
        {"prefill": {"page-size": 32, "max-running-requests": 64, "disaggregation-transfer-backend": "nixl",
                     "enable-hierarchical-cache": True}},
    )  # fmt: skip
    args = parse_worker_args(prefill_argv(model_dir, disagg), environ=ENV)
    assert args.sglang.page_size == 16  # section 32, command line 16
    assert args.sglang.max_running_requests == 64  # only in the section
    assert args.sglang.disaggregation_transfer_backend == "nixl"
    assert args.sglang.enable_hierarchical_cache is True


@pytest.mark.parametrize(
    "extra, section, named",
    [
        (["--not-an-sglang-flag", "1"], {}, "--not-an-sglang-flag"),
        ([], {"not-an-sglang-flag": 1}, "--not-an-sglang-flag"),  # through --config
        ([], {"page_size": 32}, "--page_size"),  # SGLang's YAML keys are the dashed flags
        (["--tp-size", "two"], {}, "--tp-size"),
        (["--disaggregation-mode", "both"], {}, "--disaggregation-mode"),
    ],
    ids=["unknown-flag", "unknown-section-key", "underscore-section-key", "bad-int", "bad-choice"],
)
def test_sglang_rejects_a_flag_in_one_config_error_line(real, model_dir, tmp_path, capsys, extra, section, named):
    disagg = disagg_file(tmp_path, {"prefill": section})
    with pytest.raises(ConfigError) as caught:
        parse_worker_args(prefill_argv(model_dir, disagg) + extra, environ=ENV)
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert caught.value.exit_code == 2
    assert "usage:" not in capsys.readouterr().err, "SGLang's 500-option usage is not printed"


@pytest.mark.parametrize("name, named", [("missing.yaml", "not found"), ("flags.json", "must be YAML")])
def test_a_config_file_sglang_refuses_is_a_config_error(real, model_dir, tmp_path, name, named):
    if name.endswith(".json"):
        (tmp_path / name).write_text("{}")
    argv = ["--model-path", str(model_dir), "--config", str(tmp_path / name), "--mock-num-params", "1000"]
    with pytest.raises(ConfigError, match=named):
        parse_worker_args(argv, environ=ENV)


def test_parsing_leaves_the_workers_logging_alone(real, model_dir, tmp_path):
    """prepare_server_args calls logging.basicConfig(force=True); the worker keeps its own."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    before = root.handlers[:]
    root.addHandler(handler)
    try:
        parse_worker_args(prefill_argv(model_dir, disagg_file(tmp_path, {"prefill": {}})), environ=ENV)
        assert root.handlers == before + [handler]
    finally:
        root.removeHandler(handler)


def plan_workers():
    """(id, argv, files) of every worker in every checked-in recipe, run with the mock engine."""
    from orchestrator.plan import build_plan
    from tests.support import compose_config

    out = []
    for recipe in RECIPES:
        plan = build_plan(compose_config(f"+recipe={recipe}", "engine=mock"), Path("/nonexistent/run"))
        for p in plan.processes:
            if p.role is Role.worker and p.name.endswith("-0"):
                out.append(pytest.param(list(p.argv[3:]), dict(plan.files), id=f"{recipe}-{p.name}"))
    return out


@pytest.mark.parametrize("argv, files", plan_workers())
def test_recipe_workers_configure_the_mock_alike_from_either_parser(real, monkeypatch, tmp_path, argv, files):
    for path, content in files.items():  # the plan's disagg.yaml, moved under tmp_path
        local = tmp_path / Path(path).name
        local.write_text(content)
        argv = [str(local) if a == path else a for a in argv]
    by_sglang = parse_worker_args(argv, environ=ENV)
    by_mock = parse_with_mock_parser(argv, monkeypatch)
    assert type(by_sglang.sglang) is real.ServerArgs
    assert by_sglang.worker_type is by_mock.worker_type
    assert mock_engine_config(by_sglang) == mock_engine_config(by_mock)


def test_the_briefs_prefill_argv_configures_the_mock_alike(real, monkeypatch, model_dir, tmp_path):
    disagg = disagg_file(tmp_path, {"prefill": {"disaggregation-transfer-backend": "nixl", "page-size": 32}})
    argv = prefill_argv(model_dir, disagg)
    config = mock_engine_config(parse_worker_args(argv, environ=ENV))
    assert config == mock_engine_config(parse_with_mock_parser(argv, monkeypatch))
    assert (config.page_size, config.tp_size, config.disaggregation_transfer_backend) == (16, 2, "nixl")
    assert config.kv_events_config == KV_EVENTS
    assert (config.model.num_params, config.model.hidden_size, config.model.eos_token_ids) == (1000, 1024, (1,))


@pytest.mark.parametrize(
    "flags, attn_dp, dp",
    [
        (["--dp-size", "2", "--enable-dp-attention"], 2, 1),  # deprecated spelling of --attn-dp-size 2
        (["--attn-dp-size", "2"], 2, 1),
        (["--dp-size", "2"], 1, 2),
    ],
)
def test_attention_dp_is_read_alike_from_either_parser(real, monkeypatch, model_dir, flags, attn_dp, dp):
    argv = ["--model-path", str(model_dir), "--tp-size", "2", *flags, "--mock-num-params", "1000"]
    by_sglang = mock_engine_config(parse_worker_args(argv, environ=ENV))
    assert (by_sglang.attn_dp_size, by_sglang.dp_size) == (attn_dp, dp)
    assert by_sglang == mock_engine_config(parse_with_mock_parser(argv, monkeypatch))


@pytest.mark.parametrize("dtype, kv_bytes", [("auto", 2.0), ("fp8_e4m3", 1.0), ("mxfp8", 1.0), ("nvfp4", 0.5)])
def test_kv_cache_dtype_sizes_the_mock_kv_cache(real, model_dir, dtype, kv_bytes):
    """SGLang 0.5.23 knows more KV dtypes than the mock parser; each must size the cache."""
    argv = ["--model-path", str(model_dir), "--kv-cache-dtype", dtype, "--mock-num-params", "1000"]
    assert mock_engine_config(parse_worker_args(argv, environ=ENV)).model.kv_bytes == kv_bytes


def test_defaulted_values_stay_unset_in_sglangs_record(real, model_dir):
    """0.5.23's ServerArgs holds the raw input (None where SGLang resolves a default
    later); the mock reads them as the mock parser's defaults."""
    args = parse_worker_args(["--model-path", str(model_dir), "--mock-num-params", "1000"], environ=ENV)
    s = args.sglang
    assert (s.page_size, s.context_length, s.served_model_name, s.chunked_prefill_size) == (None, None, None, None)
    config = mock_engine_config(args)
    assert (config.page_size, config.context_length, config.served_model_name) == (None, 8192, str(model_dir))
    assert args.worker_type is WorkerType.aggregated


MOCK_FLAG_SAMPLES = {
    "--model-path": "m", "--quantization": "fp8", "--load-format": "dummy", "--log-level": "info",
    "--kv-events-config": "{}", "--dist-init-addr": "127.0.0.1:5000", "--host": "127.0.0.1",
    "--disaggregation-ib-device": "mlx5_0", "--tokenizer-path": "m", "--served-model-name": "m",
}  # fmt: skip


def mock_flags():
    for action in sglang_flags.mock_parser()._actions:
        name = action.option_strings[0]
        value = [] if action.nargs == 0 else [MOCK_FLAG_SAMPLES.get(name) or (action.choices or ["1"])[0]]
        for spelling in action.option_strings:
            yield pytest.param([spelling, *value], id=spelling)


@pytest.mark.parametrize("flag", list(mock_flags()))
def test_every_flag_the_mock_accepts_is_accepted_by_sglang(real, flag):
    """A command line that runs with the mock engine must also run on a GPU node."""
    argv = flag if flag[0] in ("--model-path", "--model") else ["--model-path", "m", *flag]
    sglang_flags.parse_with_sglang(argv)
