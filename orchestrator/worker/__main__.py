"""`python -m orchestrator.worker <SGLang args> <our args>`: parse, build, run."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile


def _sglang_metrics_dir(argv: list[str]) -> None:
    """SGLang's in-process metrics only reach a shared directory if it is set before
    anything imports prometheus_client, so this runs before our own imports."""
    engine = argv[argv.index("--engine") + 1] if "--engine" in argv[:-1] else os.environ.get("DYN_ENGINE", "mock")
    if engine == "sglang" and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sglang_metrics_")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _sglang_metrics_dir(argv)
    from orchestrator.errors import LaunchError
    from orchestrator.worker.args import parse_worker_args
    from orchestrator.worker.runtime import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_worker_args(argv)
        return asyncio.run(run_worker(args))
    except LaunchError as e:
        print(f"worker: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
