"""`python -m orchestrator.frontend`: parse, build, run."""

from __future__ import annotations

import asyncio
import logging
import sys

from orchestrator.errors import LaunchError
from orchestrator.frontend.args import parse_frontend_args
from orchestrator.frontend.runtime import run_frontend


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_frontend(parse_frontend_args(sys.argv[1:] if argv is None else argv)))
    except LaunchError as e:
        print(f"frontend: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
