"""SGLang's rule for turning a mapping of flags into command-line tokens (its
`--config` YAML merger): the key is the dashed flag name; `true` adds the bare flag;
`false` and null leave it out; a list gives one value per item; a mapping becomes a
JSON string; anything else is `str()`-ed. The launch plan renders worker argv with
it and the worker merges `--config` files with it, so both read YAML as SGLang does."""

from __future__ import annotations

import json
from typing import Any, Mapping


def flags_to_argv(flags: Mapping[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend(_scalar(v) for v in value)
        else:
            argv.append(_scalar(value))
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(value), separators=(",", ":"))
    return str(value)
