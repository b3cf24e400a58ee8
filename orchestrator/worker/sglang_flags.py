"""SGLang's command line, for the worker.

With `sglang` importable, SGLang's own parser reads the flags (`prepare_server_args`,
which also merges `--config`). Without it, this module accepts the flags the mock
engine understands, with SGLang's semantics: dashed names, `--config FILE` merged
before the command line so the command line wins, and any other flag rejected with
one line naming it.
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError
from orchestrator.sglang_config import flags_to_argv

log = logging.getLogger(__name__)

SGLANG_EXTRA_HINT = "it needs the sglang extra: pip install 'dynamo-launch[sglang]'"

# Flags the simulator reads, with SGLang's spellings and aliases.
_FLAGS: list[tuple[tuple[str, ...], dict]] = [
    (("--model-path", "--model"), {"dest": "model_path", "required": True}),
    (("--tokenizer-path",), {}),
    (("--served-model-name",), {}),
    (("--context-length",), {"type": int}),
    (("--tp-size", "--tensor-parallel-size", "--tp"), {"dest": "tp_size", "type": int, "default": 1}),
    (("--dp-size", "--data-parallel-size", "--dp"), {"dest": "dp_size", "type": int, "default": 1}),
    (("--attn-dp-size", "--attention-data-parallel-size"), {"dest": "attn_dp_size", "type": int, "default": 1}),
    (("--enable-dp-attention",), {"action": "store_true"}),
    (("--pp-size", "--pipeline-parallel-size"), {"dest": "pp_size", "type": int, "default": 1}),
    (("--page-size",), {"type": int}),
    (("--mem-fraction-static",), {"type": float}),
    (("--max-total-tokens",), {"type": int}),
    (("--max-running-requests",), {"type": int}),
    (("--chunked-prefill-size",), {"type": int}),
    (("--max-prefill-tokens",), {"type": int, "default": 16384}),
    (("--schedule-policy",), {"default": "fcfs", "choices": ["fcfs", "lpm", "random", "dfs-weight", "lof"]}),
    (("--disable-radix-cache",), {"action": "store_true"}),
    (("--skip-tokenizer-init",), {"action": "store_true"}),
    (("--kv-cache-dtype",), {"default": "auto", "choices": ["auto", "bf16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]}),
    (("--is-embedding",), {"action": "store_true"}),
    (("--host",), {"default": "127.0.0.1"}),
    (("--port",), {"type": int, "default": 30000}),
    (("--nnodes",), {"type": int, "default": 1}),
    (("--node-rank",), {"type": int, "default": 0}),
    (("--dist-init-addr",), {}),
    (("--disaggregation-mode",), {"default": "null", "choices": ["null", "prefill", "decode"]}),
    (("--disaggregation-transfer-backend",), {"default": "mooncake",
        "choices": ["mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp"]}),
    (("--disaggregation-bootstrap-port",), {"type": int, "default": 8998}),
    (("--kv-events-config",), {}),
    (("--enable-metrics",), {"action": "store_true"}),
]
# Accepted because they do not change what a simulator does (no weights, no devices).
_NO_EFFECT: list[tuple[tuple[str, ...], dict]] = [
    (("--trust-remote-code",), {"action": "store_true"}),
    (("--quantization",), {}),
    (("--load-format",), {}),
    (("--disaggregation-ib-device",), {}),
    (("--random-seed",), {"type": int}),
    (("--log-level",), {}),
    (("--enable-hierarchical-cache",), {"action": "store_true"}),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2
        raise ConfigError("sglang arguments", message, SGLANG_EXTRA_HINT if "unrecognized" in message else None)


def mock_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sglang serve (mock)", add_help=False, allow_abbrev=False)
    for names, kwargs in _FLAGS + _NO_EFFECT:
        parser.add_argument(*names, **kwargs)
    return parser


def merge_config(argv: list[str]) -> list[str]:
    """SGLang's `--config FILE` merge: the file's flags go before the command line
    (argparse keeps the last value, so the command line wins)."""
    if "--config" not in argv:
        return argv
    i = argv.index("--config")
    path = Path(argv[i + 1])
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of SGLang flags")
    return flags_to_argv(data) + argv[:i] + argv[i + 2 :]


def parse_mock(argv: list[str]) -> argparse.Namespace:
    unknown = [a for a in merge_config(argv) if a.startswith("--") and not _known(a)]
    if unknown:
        raise ConfigError(
            unknown[0].split("=")[0], "is an SGLang flag the mock engine does not understand", SGLANG_EXTRA_HINT
        )
    args = mock_parser().parse_args(merge_config(argv))
    if args.enable_dp_attention and args.dp_size > 1 and args.attn_dp_size == 1:  # SGLang 0.5.23's rewrite
        args.attn_dp_size, args.dp_size = args.dp_size, 1
    return args


def _known(token: str) -> bool:
    name = token.split("=")[0]
    return any(name in names for names, _ in _FLAGS + _NO_EFFECT)


def parse_with_sglang(argv: list[str]):
    """SGLang's own ServerArgs, or None when sglang does not import here.

    SGLang's argparse answers a bad flag by printing its usage (500-odd options) and
    exiting 2; that becomes one `ConfigError` line. `prepare_server_args` also
    reconfigures the root logger (`basicConfig(force=True)`); parsing must not, so the
    worker's handlers and level are put back.
    """
    import contextlib
    import io
    import sys

    prepare = _sglang_prepare_server_args()
    if prepare is None:
        return None
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            server_args = prepare(argv)
    except SystemExit as e:
        if not e.code:  # --help (our own parser answers it first)
            sys.stderr.write(stderr.getvalue())
            raise
        lines = stderr.getvalue().strip().splitlines() or [f"exit {e.code}"]
        reason = lines[-1].split(" error: ", 1)[-1]  # "sglang serve: error: unrecognized arguments: --x"
        raise ConfigError("sglang arguments", reason, "python -m sglang.launch_server --help lists them") from None
    except ValueError as e:  # SGLang's own checks (the --config file, values)
        raise ConfigError("sglang arguments", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    sys.stderr.write(stderr.getvalue())  # SGLang's warnings, e.g. for deprecated flags
    return server_args


@functools.cache
def _sglang_prepare_server_args():
    # Tried once per process: a failed import leaves half-initialised packages behind.
    try:
        from sglang.srt.server_args import prepare_server_args
    except ImportError as e:
        log.info("sglang is not importable (%s): reading SGLang flags with the mock engine's parser", e)
        return None
    return prepare_server_args
