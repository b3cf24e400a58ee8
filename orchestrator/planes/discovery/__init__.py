"""Discovery: workers publish instance records under a lease, frontends watch them.

`open_discovery` picks a backend by name; `discovery_from_env` does the same from
Dynamo's environment variables (`DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`,
`ETCD_ENDPOINTS`, `DYN_LEASE_TTL_SECS`), so a worker or frontend started by hand
finds the same store as one started by the orchestrator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from orchestrator.planes.discovery.base import Discovery
from orchestrator.planes.discovery.file import FileDiscovery
from orchestrator.planes.discovery.records import (
    InstanceRecord,
    ModelCard,
    ModelType,
    instance_key,
    new_instance_id,
)

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "Discovery",
    "FileDiscovery",
    "InstanceRecord",
    "ModelCard",
    "ModelType",
    "discovery_from_env",
    "instance_key",
    "new_instance_id",
    "open_discovery",
]

DEFAULT_LEASE_TTL_S = 10.0


def open_discovery(
    backend: str,
    *,
    root: str | None,
    etcd_endpoints: list[str] | None,
    lease_ttl_s: float,
) -> Discovery:
    """The discovery store `backend` names; `root=None` means the default file root."""
    if backend == "file":
        return FileDiscovery(Path(root) if root else _default_file_root(os.environ), lease_ttl_s=lease_ttl_s)
    if backend == "etcd":
        raise ValueError("discovery backend 'etcd' is not available in this build; use file")
    raise ValueError(f"unknown discovery backend {backend!r}; use file")


def discovery_from_env(environ: Mapping[str, str] = os.environ) -> Discovery:
    endpoints = [e.strip() for e in environ.get("ETCD_ENDPOINTS", "").split(",") if e.strip()]
    return open_discovery(
        environ.get("DYN_DISCOVERY_BACKEND") or "file",
        root=environ.get("DYN_FILE_KV") or _default_file_root(environ),
        etcd_endpoints=endpoints or None,
        lease_ttl_s=_seconds(environ, "DYN_LEASE_TTL_SECS", DEFAULT_LEASE_TTL_S),
    )


def _default_file_root(environ: Mapping[str, str]) -> str:
    # Dynamo's default, `$TMPDIR/dynamo_store_kv` (Rust's temp_dir: TMPDIR, else /tmp),
    # so our processes and Dynamo's tools on one machine share a store by default.
    return os.path.join(environ.get("TMPDIR") or "/tmp", "dynamo_store_kv")


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value
