"""Every port a deployment uses is named and numbered here.

Per worker process (from `ports.base` upward, in plan order):
  system          DYN_SYSTEM_PORT: /health, /live, /metrics, /engine/*
  request         request plane (ZMQ ROUTER): requests in, streamed chunks out
  events          event plane (ZMQ PUB): relayed KV events and load figures
  kv_events_dp{r} SGLang's KV-event PUB for DP rank r (base + r, SGLang's rule)
  kv_replay_dp{r} SGLang's KV-event replay ROUTER for DP rank r
  bootstrap       --disaggregation-bootstrap-port (prefill leaders)

Per worker replica, a block of SGLANG_PORT_SPAN ports from `ports.sglang_base`:
SGLang's `--port` P (with attention-DP its internal ZMQ sockets use P+233 onward),
and for a replica that spans nodes a second block for `--dist-init-addr`.

Ports a user sets explicitly (frontend.port, a disagg section's bootstrap port) are
reserved first; the allocator never hands out a port twice, so only two explicit
choices can collide, and that is a config error.
"""

from __future__ import annotations

from orchestrator.errors import ConfigError

SGLANG_PORT_SPAN = 250  # SGLang's ZMQ_TCP_PORT_DELTA (233) plus its handful of sockets
MAX_PORT = 65535


class PortAllocator:
    """Hands out unique ports; remembers who owns each one for error messages."""

    def __init__(self, base: int, sglang_base: int):
        self._cursor = base
        self._sglang_cursor = sglang_base
        self._owner: dict[int, str] = {}

    def reserve(self, port: int, owner: str) -> int:
        """Claim a port the user chose; two owners of one port is a config error."""
        _check_range(port, owner)
        if port in self._owner:
            raise ConfigError(
                "ports",
                f"port {port} is claimed by both {self._owner[port]} and {owner}",
                "give one of them another port",
            )
        self._owner[port] = owner
        return port

    def hold(self, port: int, span: int = 1) -> None:
        """Ports already in use by a running process (`span` for an SGLang block)."""
        for p in range(port, port + span):
            self._owner.setdefault(p, "a running process")

    def take(self, owner: str, count: int = 1) -> int:
        """The first of `count` consecutive free ports from `ports.base` upward."""
        start = self._first_free_run(self._cursor, count, owner)
        for port in range(start, start + count):
            self._owner[port] = owner if count == 1 else f"{owner}+{port - start}"
        self._cursor = start + count
        return start

    def take_sglang_block(self, owner: str) -> int:
        """A whole block for SGLang's own port arithmetic; returns its first port."""
        start = self._first_free_run(self._sglang_cursor, SGLANG_PORT_SPAN, owner)
        for port in range(start, start + SGLANG_PORT_SPAN):
            self._owner[port] = owner
        self._sglang_cursor = start + SGLANG_PORT_SPAN
        return start

    def _first_free_run(self, start: int, count: int, owner: str) -> int:
        port = start
        while True:
            _check_range(port + count - 1, owner)
            clash = next((p for p in range(port, port + count) if p in self._owner), None)
            if clash is None:
                return port
            port = clash + 1


def _check_range(port: int, owner: str) -> None:
    if not 1 <= port <= MAX_PORT:
        raise ConfigError("ports", f"{owner} would need port {port}, outside 1..{MAX_PORT}", "lower ports.base")
