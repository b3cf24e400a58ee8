"""What a worker publishes in discovery, and where in the store it lives.

`InstanceRecord` is one serving endpoint of one worker process; `ModelCard` is what a
frontend needs to serve that worker's model (tokenizer, context length, KV block size,
parsers). Both are JSON in the store, through the one codec here. Unknown fields are
ignored when decoding, so a newer worker can add fields without breaking an older
frontend that watches the same store; breaking changes bump the `v1` in the key.
"""

from __future__ import annotations

import re
import secrets
from typing import Literal, Optional

import msgspec

from orchestrator.roles import WorkerType

ModelType = Literal["chat", "completions", "embedding", "prefill"]

INSTANCES_PREFIX = "v1/instances"

# Names become path segments (directories in the file store, key segments in etcd):
# no separators, no "." or "..", nothing a shell or a URL would need to quote.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAX_INSTANCE_ID = 2**63 - 1


class ModelCard(msgspec.Struct, frozen=True):
    served_name: str
    model_path: str
    tokenizer_path: str
    context_length: int
    kv_block_size: int  # SGLang's --page-size: the KV router hashes blocks of this size
    model_types: list[ModelType]
    eos_token_ids: list[int] = []
    tool_call_parser: Optional[str] = None
    reasoning_parser: Optional[str] = None
    max_running_requests: Optional[int] = None
    total_kv_blocks: Optional[int] = None
    embedding_dim: Optional[int] = None


class InstanceRecord(msgspec.Struct, frozen=True):
    """One endpoint of one worker process, live while its owner's lease is."""

    instance_id: int  # random 63-bit; see new_instance_id()
    namespace: str
    component: str
    endpoint: str
    worker_type: WorkerType
    model: ModelCard
    request_address: str  # e.g. tcp://127.0.0.1:20001
    pid: int
    started_at: float  # time.time() of the worker's start
    event_address: Optional[str] = None
    kv_sync_address: Optional[str] = None  # the KV relay's sync socket, when it relays KV events
    system_url: Optional[str] = None  # e.g. http://127.0.0.1:20000
    dp_size: int = 1
    bootstrap_host: Optional[str] = None
    bootstrap_port: Optional[int] = None

    def __post_init__(self) -> None:
        # Runs on construction and on decode (msgspec turns the ValueError into a
        # ValidationError there), so a bad record can be neither published nor read.
        if not 0 <= self.instance_id <= _MAX_INSTANCE_ID:
            raise ValueError(f"instance_id must be a 63-bit non-negative integer, got {self.instance_id}")
        for field in ("namespace", "component", "endpoint"):
            value = getattr(self, field)
            if not _NAME.fullmatch(value):
                raise ValueError(f"{field} {value!r} must match {_NAME.pattern}")


def new_instance_id() -> int:
    """A fresh random 63-bit instance id (collisions are negligible at fleet sizes)."""
    return secrets.randbits(63)


def namespace_prefix(namespace: str) -> str:
    """The key prefix under which every instance of `namespace` lives."""
    if not _NAME.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must match {_NAME.pattern}")
    return f"{INSTANCES_PREFIX}/{namespace}"


def instance_key(record: InstanceRecord) -> str:
    """`v1/instances/{namespace}/{component}/{endpoint}/{instance_id:x}` (Dynamo's layout)."""
    return f"{namespace_prefix(record.namespace)}/{record.component}/{record.endpoint}/{record.instance_id:x}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(InstanceRecord)


def encode_record(record: InstanceRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> InstanceRecord:
    """Raises `msgspec.DecodeError` (a `ValidationError` included) on bad input."""
    return _decoder.decode(data)
