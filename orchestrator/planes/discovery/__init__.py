"""Discovery: workers publish instance records under a lease, frontends watch them.

`open_discovery` picks a backend by name; `discovery_from_env` does the same from
Dynamo's environment variables (`DYN_DISCOVERY_BACKEND`, `DYN_FILE_KV`,
`ETCD_ENDPOINTS`, `DYN_LEASE_TTL_SECS`), so a worker or frontend started by hand
finds the same store as one started by the orchestrator. `add_discovery_flags` and
`DiscoveryArgs` are the same four settings on a worker's or frontend's command line.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
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
    "DISCOVERY_ENV_NAMES",
    "Discovery",
    "DiscoveryArgs",
    "FileDiscovery",
    "InstanceRecord",
    "ModelCard",
    "ModelType",
    "add_discovery_flags",
    "discovery_from_env",
    "instance_key",
    "new_instance_id",
    "open_discovery",
]

DEFAULT_LEASE_TTL_S = 10.0
DISCOVERY_ENV_NAMES = {"discovery-dir": "DYN_FILE_KV", "etcd-endpoints": "ETCD_ENDPOINTS",
                       "lease-ttl": "DYN_LEASE_TTL_SECS"}  # and DYN_DISCOVERY_BACKEND


@dataclass(frozen=True)
class DiscoveryArgs:
    """Where a process's discovery store is, as its command line says."""

    backend: str
    root: str
    etcd_endpoints: list[str]
    lease_ttl_s: float

    @classmethod
    def from_flags(cls, ns: argparse.Namespace) -> DiscoveryArgs:
        return cls(ns.discovery_backend, ns.discovery_dir, [e for e in ns.etcd_endpoints.split(",") if e], ns.lease_ttl)

    def open(self) -> Discovery:
        return open_discovery(self.backend, root=self.root, etcd_endpoints=self.etcd_endpoints,
                              lease_ttl_s=self.lease_ttl_s)


def add_discovery_flags(add) -> None:
    """The discovery flags, through an `envflags.env_flag_adder` given `DISCOVERY_ENV_NAMES`."""
    add("discovery-backend", default="file", choices=["file", "etcd"])
    add("discovery-dir", default=_default_file_root(os.environ))
    add("etcd-endpoints", default="http://127.0.0.1:2379")
    add("lease-ttl", type=float, default=DEFAULT_LEASE_TTL_S)


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
