"""The GPU inventory: which node and which devices each worker replica gets.

A replica that fits in one node gets the lowest free devices of the first node that
has enough; a larger one takes whole free nodes (SGLang's multi-node TP needs every
node of the replica to contribute the same number of GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class NodeSlice:
    node: int
    gpus: tuple[int, ...]


class Inventory:
    def __init__(self, nodes: int, gpus_per_node: int):
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self._free = [list(range(gpus_per_node)) for _ in range(nodes)]

    def claim(self, node: int, gpus: tuple[int, ...]) -> None:
        """Mark devices as taken (by a process that already runs on them)."""
        self._free[node] = [g for g in self._free[node] if g not in gpus]

    def place(self, count: int, owner: str) -> list[NodeSlice]:
        """GPUs for one replica, one slice per node it spans (in node-rank order)."""
        if count <= self.gpus_per_node:
            for node, free in enumerate(self._free):
                if len(free) >= count:
                    taken, self._free[node] = free[:count], free[count:]
                    return [NodeSlice(node, tuple(taken))]
            raise ConfigError(
                "deployment",
                f"{owner} needs {count} GPUs on one node and no node has {count} free",
                "lower tp/dp/replicas or add nodes (cluster.nodes)",
            )
        if count % self.gpus_per_node:
            raise ConfigError(
                "deployment",
                f"{owner} needs {count} GPUs, more than a node's {self.gpus_per_node} but not a whole number of nodes",
                f"use a multiple of {self.gpus_per_node} GPUs per worker",
            )
        wanted = count // self.gpus_per_node
        whole = [n for n, free in enumerate(self._free) if len(free) == self.gpus_per_node][:wanted]
        if len(whole) < wanted:
            raise ConfigError(
                "deployment",
                f"{owner} needs {wanted} whole free nodes and only {len(whole)} are left",
                "add nodes (cluster.nodes) or shrink the worker",
            )
        slices = []
        for node in whole:
            slices.append(NodeSlice(node, tuple(self._free[node])))
            self._free[node] = []
        return slices
