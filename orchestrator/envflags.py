"""Command-line flags that also read a `DYN_*` environment variable (Dynamo's habit):
the variable is the flag's default, so the command line wins. A flag without a name in
the given table reads `DYN_` + its name in upper snake case; `--help` shows each name."""

from __future__ import annotations

import argparse
from typing import Mapping

_TRUE = {"1", "true", "yes", "on"}


def env_name(flag: str, names: Mapping[str, str]) -> str:
    return names.get(flag, "DYN_" + flag.upper().replace("-", "_"))


def env_flag_adder(parser: argparse.ArgumentParser, environ: Mapping[str, str], names: Mapping[str, str]):
    """`add(name, ...)`: a `--name` flag (`flag=True`: `--name/--no-name`) whose default
    comes from its variable."""

    def add(name: str, *, flag: bool = False, default=None, type=None, help: str = "", **kwargs):
        env = env_name(name, names)
        raw = environ.get(env)
        if flag:
            value = raw.strip().lower() in _TRUE if raw is not None else default
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=value, help=f"{help} [{env}]")
        else:
            value = (type or str)(raw) if raw is not None else default
            parser.add_argument(f"--{name}", type=type, default=value, help=f"{help} [{env}]", **kwargs)

    return add
