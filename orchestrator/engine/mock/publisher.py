"""The mock engine's KV-event publisher for one DP rank: SGLang 0.5.23's
`ZmqEventPublisher` (`sglang/srt/disaggregation/kv_events.py`), frame for frame.

Built from SGLang's `--kv-events-config` dict. A PUB socket sends every batch as
`[topic, seq (8-byte big-endian), msgpack KVEventBatch]`, `seq` counting from 0 per
publisher; the last `buffer_steps` batches are kept for replay. An optional ROUTER
socket at `replay_endpoint` answers `[identity, b"", start_seq]` with every kept batch
whose seq >= start_seq as `[identity, b"", topic, seq, payload]`, then the end marker
`[identity, b"", b"", seq=-1, b""]`. Both endpoints are offset by the DP rank exactly
as SGLang offsets them.

Encoding and sending happen on a publisher thread, as in SGLang, so `publish` costs
the event loop one queue append.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Literal, Optional

import msgspec
import zmq

from orchestrator.engine.sglang_kv_events import KVEventBatch, encode_seq

logger = logging.getLogger(__name__)

_END_SEQ = encode_seq(-1)
_IDLE_POLL_S = 0.1  # SGLang's queue wait: also bounds how long a replay request waits when idle


class KvEventsConfig(msgspec.Struct, frozen=True):
    """SGLang's `KVEventsConfig`: same fields, defaults and (ignored) unknown keys."""

    publisher: Literal["null", "zmq"] = "null"
    endpoint: str = "tcp://*:5557"
    bind: Optional[bool] = None  # None: bind wildcard, ipc and inproc endpoints; connect otherwise
    replay_endpoint: Optional[str] = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""
    format: Literal["default", "dynamo"] = "default"  # read by the event recorder, not here


def parse_kv_events_config(config: dict) -> KvEventsConfig:
    try:
        # strict=False: pydantic, which SGLang parses with, also coerces e.g. "true" -> True.
        return msgspec.convert(config, KvEventsConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid --kv-events-config: {exc}") from exc


def offset_endpoint_port(endpoint: Optional[str], dp_rank: int) -> Optional[str]:
    """SGLang's `ZmqEventPublisher.offset_endpoint_port`, including its substring tests."""
    if not endpoint or dp_rank == 0:
        return endpoint
    if "inproc" in endpoint:
        return f"{endpoint}_dp{dp_rank}"
    if "tcp" in endpoint:
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + dp_rank}"
    raise ValueError(f"invalid KV events endpoint {endpoint!r}: must contain 'inproc' or 'tcp'")


def _binds(endpoint: str, bind: Optional[bool]) -> bool:
    if bind is not None:
        return bind
    # SGLang tests substrings, not the parsed host, so e.g. tcp://[::1]:5557 binds too.
    return (
        "*" in endpoint
        or "::" in endpoint
        or "0.0.0.0" in endpoint
        or endpoint.startswith(("ipc://", "inproc://"))
    )


class KvEventPublisher:
    """Publishes one DP rank's KV events.

    Lifecycle: the constructor binds (or connects) the sockets and starts the
    publisher thread; `publish` may be called any number of times from the event
    loop; `close()` sends what is still queued, stops the thread and closes the
    sockets. `close()` is idempotent; `publish` after it raises. With publisher
    "null" nothing is opened and `publish` does nothing.

    `endpoint` and `replay_endpoint` are this rank's addresses: once bound, as ZMQ
    reports them (port 0 resolved; a wildcard host means "dial the worker's host").
    `dropped` counts batches refused because the queue was full.
    """

    def __init__(self, config: dict, dp_rank: int):
        self._config = parse_kv_events_config(config)
        self._dp_rank = dp_rank
        self._closed = False
        self.enabled = self._config.publisher == "zmq"
        self.endpoint: Optional[str] = None
        self.replay_endpoint: Optional[str] = None
        self.dropped = 0
        if not self.enabled:
            return

        self.endpoint = offset_endpoint_port(self._config.endpoint, dp_rank)
        self.replay_endpoint = offset_endpoint_port(self._config.replay_endpoint, dp_rank)
        self._topic = self._config.topic.encode()
        self._queue: queue.Queue[Optional[KVEventBatch]] = queue.Queue(maxsize=self._config.max_queue_size)
        self._stop = threading.Event()
        self._pub, self._replay = self._open_sockets()
        # The sockets move to the publisher thread here and back to this thread after
        # join(): ZMQ allows that across the full memory barriers start/join provide.
        self._thread = threading.Thread(target=self._run, name=f"kv-events-dp{dp_rank}", daemon=True)
        self._thread.start()
        logger.info(
            "KV events for DP rank %d on %s (replay %s)", dp_rank, self.endpoint, self.replay_endpoint
        )

    def _open_sockets(self) -> tuple[zmq.Socket, Optional[zmq.Socket]]:
        ctx = zmq.Context.instance()
        pub = ctx.socket(zmq.PUB)
        replay = None
        try:
            pub.set_hwm(self._config.hwm)
            if _binds(self.endpoint, self._config.bind):
                pub.bind(self.endpoint)
                self.endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                pub.connect(self.endpoint)
            if self.replay_endpoint is not None:
                replay = ctx.socket(zmq.ROUTER)
                replay.bind(self.replay_endpoint)
                self.replay_endpoint = replay.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            pub.close(linger=0)
            if replay is not None:
                replay.close(linger=0)
            raise
        return pub, replay

    def publish(self, events: list) -> None:
        """Queue one batch; the publisher owns `events` from now on. Never blocks: when
        the queue is full (SGLang would block its scheduler) the batch is dropped."""
        if not self.enabled:
            return
        if self._closed:
            raise RuntimeError("KV event publisher is closed")
        batch = KVEventBatch(ts=time.time(), events=events, attn_dp_rank=self._dp_rank)
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            if self.dropped == 0:
                logger.warning("KV event queue of DP rank %d is full: dropping batches", self._dp_rank)
            self.dropped += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wakes the thread after what is queued
        except queue.Full:
            pass  # then the thread is not waiting: it sees the stop once the queue is empty
        # Never long: PUB and ROUTER sends drop instead of blocking, so the thread only
        # has to drain what is queued.
        self._thread.join()
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        if self.dropped:
            logger.warning("DP rank %d dropped %d KV event batches", self._dp_rank, self.dropped)

    # -- publisher thread ---------------------------------------------------------

    def _run(self) -> None:
        encoder = msgspec.msgpack.Encoder()  # its own: the loop thread may be encoding too
        buffer: deque[tuple[int, bytes]] = deque(maxlen=self._config.buffer_steps)
        next_seq = 0
        while True:
            if self._replay is not None and self._replay.poll(0):
                try:
                    self._service_replay(buffer)
                except Exception:
                    logger.exception("KV event replay failed")
            try:
                batch = self._queue.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if batch is None:
                return
            # Like SGLang, a batch that fails still uses up its seq: subscribers see a gap.
            seq, next_seq = next_seq, next_seq + 1
            try:
                payload = encoder.encode(batch)
                self._pub.send_multipart((self._topic, encode_seq(seq), payload))
            except Exception:
                logger.exception("publishing KV event batch %d failed", seq)
                continue
            buffer.append((seq, payload))

    def _service_replay(self, buffer: deque[tuple[int, bytes]]) -> None:
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            logger.warning("invalid KV event replay request (%d frames): dropped", len(frames))
            return
        identity, _, start = frames
        start_seq = int.from_bytes(start, "big")  # unsigned, as SGLang reads it
        for seq, payload in buffer:
            if seq >= start_seq:
                self._replay.send_multipart((identity, b"", self._topic, encode_seq(seq), payload))
        self._replay.send_multipart((identity, b"", b"", _END_SEQ, b""))
