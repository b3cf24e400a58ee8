"""The launch plan: an immutable description of every process of a deployment.

A plan is data only. `build_plan` makes it from a typed config; the supervisor
executes it; `dry_run` prints it. Files it lists (the disagg sections) are written
into the run dir before any process starts, so every argv runs as printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from orchestrator.roles import Role, WorkerType


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # "frontend", "<group>-<replica>", "<group>-<replica>.<node rank>"
    role: Role
    argv: tuple[str, ...]  # exactly what is executed
    env: Mapping[str, str]  # added to the orchestrator's environment
    node: int
    host: str  # where the node's listeners are reached
    health_url: str
    stage: int  # processes of one stage start together; a stage waits for the ones before
    ports: Mapping[str, int] = field(default_factory=_frozen)
    gpus: tuple[int, ...] = ()
    worker_type: WorkerType | None = None
    group: str | None = None
    replica: int | None = None
    node_rank: int = 0  # > 0: a follower node of a multi-node worker

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role.value,
            "worker_type": self.worker_type.value if self.worker_type else None,
            "group": self.group,
            "replica": self.replica,
            "node_rank": self.node_rank,
            "argv": list(self.argv),
            "env": dict(self.env),
            "gpus": list(self.gpus),
            "node": self.node,
            "host": self.host,
            "ports": dict(self.ports),
            "health_url": self.health_url,
            "stage": self.stage,
        }


@dataclass(frozen=True)
class LaunchPlan:
    run_dir: Path
    processes: tuple[ProcessSpec, ...]
    files: Mapping[str, str]  # absolute path -> content, written before the first start
    url: str  # where clients send OpenAI requests
    served_name: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "processes": [p.to_dict() for p in self.processes],
                "files": dict(self.files),
                "run_dir": str(self.run_dir),
                "url": self.url,
                "served_name": self.served_name,
            },
            indent=2,
        )

    def write_files(self) -> None:
        for path, content in self.files.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(content)
