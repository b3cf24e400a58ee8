"""The mock engine's disaggregation rendezvous: SGLang's bootstrap server plus KV
sender (prefill side) and KV receiver (decode side), for engines in different
processes.

The prefill worker runs a `BootstrapServer` on its bootstrap host:port; its engine
calls `send` once the prompt is prefilled. The decode engine calls
`BootstrapClient.receive`, which opens one TCP connection per request to the
`BootstrapInfo` host:port. The two legs of a request meet in the server's room
`bootstrap.room`, whichever arrives first; each side waits at most `timeout_s` for the
other. Once paired, the prefill side sleeps `transfer_seconds` (the KV moving) and
hands over the first token.

Wire: frames of a 4-byte big-endian length and a msgpack message (msgspec structs):

    decode -> prefill   Hello{room, prompt_tokens}; later, only Abort{room, reason}
    prefill -> decode   Paired{room}, then one of Handover{room, first_token},
                        Abort{room, reason} or Failed{room, kind, message}

`Paired` starts the decode's second wait (for the KV itself), again at most
`timeout_s`. An Abort for a leg whose peer has not arrived yet is remembered for
`timeout_s`, so the peer fails at once instead of timing out. A room can be used
again once its pairing is over. Requests for SGLang's fake bootstrap host pair with
no one: `send` returns at once (SGLang's FakeKVSender); the engine derives the decode's
first token itself, so `receive` refuses them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Union

import msgspec

from orchestrator.engine.base import EngineError
from orchestrator.engine.mock.config import FAKE_BOOTSTRAP_HOST
from orchestrator.planes.messages import BootstrapInfo, ErrorKind

logger = logging.getLogger(__name__)


class Hello(msgspec.Struct, tag="hello"):
    room: int
    prompt_tokens: int


class Paired(msgspec.Struct, tag="paired"):
    room: int


class Handover(msgspec.Struct, tag="handover"):
    room: int
    first_token: int


class Abort(msgspec.Struct, tag="abort"):
    room: int
    reason: str


class Failed(msgspec.Struct, tag="failed"):
    room: int
    kind: str  # an ErrorKind value
    message: str


Message = Union[Hello, Paired, Handover, Abort, Failed]
_Final = (Handover, Abort, Failed)  # what ends a decode connection

_HEADER = struct.Struct(">I")
_MAX_FRAME = 1 << 16  # the messages are tiny; anything bigger is not our peer
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def _write(writer: asyncio.StreamWriter, message: Message) -> None:
    data = _encoder.encode(message)
    writer.write(_HEADER.pack(len(data)) + data)


async def _read(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` when the peer closed."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > _MAX_FRAME:
        raise ConnectionError(f"bootstrap frame of {size} bytes")
    return _decoder.decode(await reader.readexactly(size))


def _aborted(room: int, side: str, reason: str) -> EngineError:
    return EngineError(ErrorKind.INTERNAL, f"bootstrap room {room}: aborted by the {side} side ({reason})")


@dataclass(eq=False)
class _DecodeLeg:
    """A decode connection waiting in a room. Its handler owns the socket; `send` talks
    to it through `outbox` and learns through `gone` that the decode left."""

    room: int
    prompt_tokens: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # Message, or None: stop
    gone: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    claimed: bool = False  # a prefill took this leg
    finished: bool = False  # its final message is queued
    delivered: bool = False  # ... and handed to the decode's socket

    def finish(self, message: Message) -> None:
        if not self.finished:
            self.finished = True
            self.outbox.put_nowait(message)

    def leave(self, reason: str) -> None:
        if not self.gone.done():
            self.gone.set_result(reason)
        self.outbox.put_nowait(None)


@dataclass(eq=False)
class _Room:
    prefill: bool = False
    decode: Optional[_DecodeLeg] = None
    aborted: Optional[str] = None  # why the decode aborted before the prefill took it
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class BootstrapServer:
    """The prefill side: a TCP server and `send`.

    Lifecycle: `await start()` binds host:port (port 0: the OS picks; read `port`);
    `send` may then run for any number of rooms concurrently; `await close()` stops
    accepting, drops the decode connections (their `receive` fails) and makes waiting
    `send`s raise ENGINE_SHUTDOWN. Also an async context manager.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 300.0):
        self.host = host
        self.port = port
        self._timeout_s = timeout_s
        self._rooms: dict[int, _Room] = {}
        self._aborted: OrderedDict[int, tuple[str, float]] = OrderedDict()  # room -> reason, expiry
        self._server: Optional[asyncio.Server] = None
        # asyncio (before 3.12) does not wait for connection handlers on close: track them.
        self._handlers: set[asyncio.Task] = set()
        self._closed = False

    async def start(self) -> BootstrapServer:
        self._server = await asyncio.start_server(self._serve_decode, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("bootstrap server on %s:%d", self.host, self.port)
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for room in self._rooms.values():
            room.changed.set()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("bootstrap server on %s:%d closed", self.host, self.port)

    async def __aenter__(self) -> BootstrapServer:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def send(
        self, bootstrap: BootstrapInfo, prompt_tokens: int, first_token: int, transfer_seconds: float
    ) -> None:
        """Wait for the decode of `bootstrap.room`, move the KV, hand over `first_token`.
        Cancelling it aborts the decode leg."""
        if bootstrap.host == FAKE_BOOTSTRAP_HOST:
            return
        room_id = bootstrap.room
        room = self._enter_prefill(room_id)
        leg: Optional[_DecodeLeg] = None
        outcome = "prefill failed"
        try:
            leg = await self._await_decode(room_id, room)
            leg.claimed = True
            leg.outbox.put_nowait(Paired(room_id))
            if leg.prompt_tokens != prompt_tokens:
                message = (
                    f"bootstrap room {room_id}: KV shape mismatch: the prefill holds {prompt_tokens} "
                    f"prompt tokens, the decode expects {leg.prompt_tokens}"
                )
                leg.finish(Failed(room_id, ErrorKind.INTERNAL, message))
                raise EngineError(ErrorKind.INTERNAL, message)
            await asyncio.wait([leg.gone], timeout=transfer_seconds)
            if leg.gone.done():
                raise _aborted(room_id, "decode", leg.gone.result())
            leg.finish(Handover(room_id, first_token))
            # The handover counts once written: the handler leaves the leg right after.
            await leg.gone
            if not leg.delivered:
                raise _aborted(room_id, "decode", leg.gone.result())
        except asyncio.CancelledError:
            outcome = "prefill request aborted"
            if leg is None and room.decode is None:
                self._remember_abort(room_id, outcome)
            raise
        finally:
            peer = leg or room.decode  # a decode that arrived as the wait ended is told too
            if peer is not None:
                peer.finish(Abort(room_id, outcome))  # no-op after a final message
            if self._rooms.get(room_id) is room:
                del self._rooms[room_id]

    def _enter_prefill(self, room_id: int) -> _Room:
        if self._closed:
            raise EngineError(ErrorKind.ENGINE_SHUTDOWN, "bootstrap server closed")
        reason = self._take_abort(room_id)
        if reason is not None:
            raise _aborted(room_id, "decode", reason)
        room = self._rooms.setdefault(room_id, _Room())
        if room.prefill:
            raise EngineError(ErrorKind.INTERNAL, f"bootstrap room {room_id} already has a prefill request")
        room.prefill = True
        return room

    async def _await_decode(self, room_id: int, room: _Room) -> _DecodeLeg:
        try:
            async with asyncio.timeout(self._timeout_s):
                while room.decode is None:
                    if room.aborted is not None:
                        raise _aborted(room_id, "decode", room.aborted)
                    if self._closed:
                        raise EngineError(ErrorKind.ENGINE_SHUTDOWN, "bootstrap server closed")
                    room.changed.clear()
                    await room.changed.wait()
        except TimeoutError:
            raise EngineError(
                ErrorKind.BOOTSTRAP_TIMEOUT,
                f"bootstrap room {room_id}: no decode peer within {self._timeout_s:g}s",
            ) from None
        return room.decode

    # -- decode connections -------------------------------------------------------

    async def _serve_decode(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:  # accepted just before close() stopped the listener
            writer.close()
            return
        task = asyncio.current_task()
        self._handlers.add(task)
        leg = None
        try:
            async with asyncio.timeout(self._timeout_s):
                hello = await _read(reader)
            if not isinstance(hello, Hello):
                logger.warning("bootstrap: expected Hello, got %s", type(hello).__name__)
                return
            leg, refusal = self._enter_decode(hello)
            if refusal is not None:
                _write(writer, refusal)
                return
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(self._watch_decode(reader, leg))
                await self._relay(writer, leg)
                watcher.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, msgspec.DecodeError) as exc:
            logger.debug("bootstrap connection dropped: %r", exc)
        finally:
            if leg is not None:
                self._leave_decode(leg, None)
                leg.leave("bootstrap connection closed")  # no-op when the watcher saw why
            writer.close()
            self._handlers.discard(task)

    def _enter_decode(self, hello: Hello) -> tuple[Optional[_DecodeLeg], Optional[Message]]:
        reason = self._take_abort(hello.room)
        if reason is not None:
            return None, Abort(hello.room, reason)
        room = self._rooms.setdefault(hello.room, _Room())
        if room.decode is not None:
            message = f"bootstrap room {hello.room} already has a decode request"
            return None, Failed(hello.room, ErrorKind.INTERNAL, message)
        room.decode = leg = _DecodeLeg(hello.room, hello.prompt_tokens)
        room.changed.set()
        return leg, None

    async def _relay(self, writer: asyncio.StreamWriter, leg: _DecodeLeg) -> None:
        """Write what the prefill side queues until the final message or the decode leaves.
        Until a prefill takes the leg, wait at most the timeout."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        while True:
            try:
                async with asyncio.timeout_at(None if leg.claimed else deadline):
                    message = await leg.outbox.get()
            except TimeoutError:
                if leg.claimed:
                    continue  # taken just as the deadline passed
                self._leave_decode(leg, None)
                message = Failed(
                    leg.room,
                    ErrorKind.BOOTSTRAP_TIMEOUT,
                    f"bootstrap room {leg.room}: no prefill within {self._timeout_s:g}s",
                )
            if message is None:
                return
            _write(writer, message)
            if isinstance(message, _Final):
                # Set before the drain yields: the decode may read it and hang up first.
                leg.delivered = True
            try:
                await writer.drain()
            except ConnectionError:
                return  # the watcher tells the prefill side
            if leg.delivered:
                return

    async def _watch_decode(self, reader: asyncio.StreamReader, leg: _DecodeLeg) -> None:
        """Until the decode aborts or disconnects; then tell the prefill side."""
        try:
            message = await _read(reader)
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError):
            reason, abort = "decode disconnected", None
        else:
            reason = message.reason if isinstance(message, Abort) else f"unexpected {type(message).__name__}"
            abort = reason if isinstance(message, Abort) else None
        # Only an explicit Abort is remembered for a prefill still to come; a decode that
        # merely went away (e.g. timed out) leaves that prefill to its own timeout.
        self._leave_decode(leg, abort)
        leg.leave(reason)

    def _leave_decode(self, leg: _DecodeLeg, abort_reason: Optional[str]) -> None:
        """Take an unclaimed leg out of its room; a claimed one stays the prefill's."""
        room = self._rooms.get(leg.room)
        if room is None or room.decode is not leg or leg.claimed:
            return
        room.decode = None
        if room.prefill:
            if abort_reason is not None:
                room.aborted = abort_reason
                room.changed.set()
        else:
            del self._rooms[leg.room]
            if abort_reason is not None:
                self._remember_abort(leg.room, abort_reason)

    def _remember_abort(self, room_id: int, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        while self._aborted and next(iter(self._aborted.values()))[1] <= now:
            self._aborted.popitem(last=False)
        self._aborted.pop(room_id, None)
        self._aborted[room_id] = (reason, now + self._timeout_s)

    def _take_abort(self, room_id: int) -> Optional[str]:
        entry = self._aborted.pop(room_id, None)
        if entry is None or entry[1] <= asyncio.get_running_loop().time():
            return None
        return entry[0]


class BootstrapClient:
    """The decode side: `receive`. Stateless between requests; nothing to close."""

    def __init__(self, timeout_s: float = 300.0):
        self._timeout_s = timeout_s

    async def receive(self, bootstrap: BootstrapInfo, prompt_tokens: int) -> int:
        """Meet the prefill of `bootstrap.room`; the first token once the KV is here.
        Cancelling it aborts the prefill leg."""
        if bootstrap.host == FAKE_BOOTSTRAP_HOST:
            raise ValueError("a fake-bootstrap request has no prefill: the engine makes its first token")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        reader, writer = await self._connect(bootstrap, deadline)
        try:
            _write(writer, Hello(bootstrap.room, prompt_tokens))
            message = await self._next(reader, bootstrap, deadline)
            if isinstance(message, Paired):
                message = await self._next(reader, bootstrap, loop.time() + self._timeout_s)
        except asyncio.CancelledError:
            _write(writer, Abort(bootstrap.room, "decode request aborted"))  # flushed by close()
            raise
        finally:
            writer.close()
        if isinstance(message, Handover):
            return message.first_token
        if isinstance(message, Abort):
            raise _aborted(bootstrap.room, "prefill", message.reason)
        if isinstance(message, Failed):
            raise EngineError(message.kind, message.message)
        unexpected = type(message).__name__
        raise EngineError(ErrorKind.INTERNAL, f"bootstrap room {bootstrap.room}: unexpected {unexpected}")

    async def _connect(self, bootstrap: BootstrapInfo, deadline: float):
        """Retry until the prefill's bootstrap server listens (it may still be starting)."""
        backoff = 0.02
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        return await asyncio.open_connection(bootstrap.host, bootstrap.port)
                    except OSError:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 0.5)
        except TimeoutError:
            raise EngineError(
                ErrorKind.BOOTSTRAP_TIMEOUT,
                f"bootstrap room {bootstrap.room}: no bootstrap server at {bootstrap.host}:{bootstrap.port} "
                f"within {self._timeout_s:g}s",
            ) from None

    async def _next(self, reader: asyncio.StreamReader, bootstrap: BootstrapInfo, deadline: float) -> Message:
        try:
            async with asyncio.timeout_at(deadline):
                return await _read(reader)
        except TimeoutError:
            raise EngineError(
                ErrorKind.BOOTSTRAP_TIMEOUT,
                f"bootstrap room {bootstrap.room}: no prefill within {self._timeout_s:g}s",
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError) as exc:
            # The prefill side died before its KV arrived: the pair never met, so the
            # frontend blames the prefill worker and retries, as after a stalled one.
            raise EngineError(
                ErrorKind.BOOTSTRAP_TIMEOUT,
                f"bootstrap room {bootstrap.room}: connection to the prefill lost ({exc!r})",
            ) from None
