"""SGLang 0.5.23's KV-event wire format and page hash: what the mock engine publishes
and what a worker's relay reads from either engine.

On the wire (ZMQ PUB, one socket per DP rank at base port + rank) each message is
three frames: topic, an 8-byte big-endian sequence number, and a msgpack payload
`[ts, [event, ...], attn_dp_rank]`. Events are msgpack maps tagged by `type`
(`BlockStored`, `BlockRemoved`, `AllBlocksCleared`); optional fields left at None
are omitted. These structs mirror `sglang/srt/disaggregation/kv_events.py`.

Page hash (`sglang/srt/mem_cache/cpp_utils/hash_binding.cpp`): SHA-256 over the
previous page's 32-byte digest (none for the first page) followed by the page's
token ids as 4-byte little-endian unsigned ints; the published id is the first 8
bytes of the digest as a signed big-endian int64 (`hash_str_to_int64`).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Optional, Union

import msgspec


class EventBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[Any]
    attn_dp_rank: Optional[int] = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str] = None
    cache_salt: Optional[str] = None
    session_id: Optional[str] = None
    lora_name: Optional[str] = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: Optional[str] = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]


MEDIUM_GPU = "GPU"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KVEventBatch)


def encode_batch(batch: KVEventBatch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(payload: bytes) -> KVEventBatch:
    return _decoder.decode(payload)


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(frame: bytes) -> int:
    return int.from_bytes(frame, "big", signed=True)


def page_digests(token_ids: list[int], page_size: int, prior: bytes | None = None) -> list[bytes]:
    """The chained SHA-256 digest of every full page of `token_ids`."""
    digests = []
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        h = hashlib.sha256()
        if prior is not None:
            h.update(prior)
        h.update(struct.pack(f"<{page_size}I", *token_ids[start : start + page_size]))
        prior = h.digest()
        digests.append(prior)
    return digests


def digest_to_int64(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big", signed=True)
