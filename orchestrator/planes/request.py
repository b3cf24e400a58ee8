"""The request plane: frontend -> worker over ZMQ, typed msgpack messages.

Worker side, `RequestServer`: a ROUTER socket. Each request runs as a task in the
server's TaskGroup; its handler is an async iterator of replies. Replies are queued
per caller and one sender task sends each caller's queue as one frame: the replies
one scheduler step makes for many requests cost one send, not one each. A `Cancel`,
or a reply that can no longer reach its caller (ROUTER_MANDATORY reports the peer
gone), cancels the task, and closing the handler aborts the engine request. After
`stop_accepting()` new requests are refused with a migratable `engine_shutdown` error.

Frontend side, `RequestClient`: one DEALER per worker carries any number of
concurrent requests, demultiplexed by request id. Requests made together go out as
one frame too, and so reach the worker's scheduler in one step. A stream whose
consumer fell behind gets the chunks already waiting for it merged into one, as
SGLang streams with a stream interval under load: the frontend then detokenizes,
matches stop strings and writes an event once for all of them. When the worker's
connection drops, every request in flight on it ends with a migratable `disconnected`
error, and a request to a worker that cannot be reached fails the same way after a
connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from orchestrator.planes import messages as m
from orchestrator.readerqueue import ChunkQueue

log = logging.getLogger(__name__)

Handler = Callable[[m.GenerateRequest | m.EmbedRequest], AsyncIterator[m.FromWorker]]


class RequestServer:
    """Lifecycle: `await start()` binds; `serve()` runs until cancelled; `stop_accepting()`
    refuses new work; `wait_idle(timeout)` waits for in-flight requests; `close()`."""

    def __init__(self, host: str, port: int, handler: Handler, on_cancel: Callable[[str], None] | None = None):
        self._address = f"tcp://{host}:{port}"
        self._handler = handler
        self._on_cancel = on_cancel
        self._ctx = zmq.asyncio.Context.instance()
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._tasks: dict[str, tuple[bytes, asyncio.Task]] = {}  # request id -> (caller, task)
        self._outgoing: dict[bytes, list[m.FromWorker]] = {}  # caller -> replies not yet sent
        self._ready = asyncio.Event()  # set when `_outgoing` has something
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self.port = port

    def start(self) -> int:
        if self.port:
            self._socket.bind(self._address)
        else:
            self.port = self._socket.bind_to_random_port(self._address.rsplit(":", 1)[0])
        return self.port

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def wait_idle(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()

    async def fail_all(self, kind: str, message: str) -> int:
        """End every request in flight with an error its caller can act on (a drain's
        last step: `engine_shutdown` makes the frontend migrate). Returns how many."""
        failed = list(self._tasks.items())
        for request_id, (identity, task) in failed:
            task.cancel()
            self._send(identity, m.ErrorReply(request_id, kind, message))
        await self.wait_idle(5.0)
        return len(failed)

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sender())
            while True:
                identity, payload = await self._socket.recv_multipart()
                try:
                    messages = m.decode_requests(payload)
                except Exception as e:  # a malformed frame must not stop the server
                    log.warning("dropping a malformed request-plane message: %s", e)
                    continue
                for message in messages:
                    self._take(tasks, identity, message)

    def _take(self, tasks: asyncio.TaskGroup, identity: bytes, message: m.ToWorker) -> None:
        if isinstance(message, m.Cancel):
            self._cancel(message.request_id)
        elif not self._accepting:
            self._send(identity, m.ErrorReply(message.request_id, m.ErrorKind.ENGINE_SHUTDOWN, "worker is draining"))
        elif message.request_id in self._tasks:
            self._send(identity, m.ErrorReply(message.request_id, m.ErrorKind.INVALID, "duplicate request id"))
        else:
            self._idle.clear()
            self._tasks[message.request_id] = (identity, tasks.create_task(self._run(identity, message)))

    def _cancel(self, request_id: str) -> None:
        if request_id in self._tasks:
            if self._on_cancel:
                self._on_cancel(request_id)
            self._tasks[request_id][1].cancel()

    async def _run(self, identity: bytes, request: m.GenerateRequest | m.EmbedRequest) -> None:
        try:
            async with contextlib.aclosing(self._handler(request)) as replies:
                async for reply in replies:
                    self._send(identity, reply)
        except asyncio.CancelledError:
            pass  # a Cancel, or the caller is gone: closing the handler aborted the engine request
        finally:
            del self._tasks[request.request_id]
            if not self._tasks:
                self._idle.set()

    def _send(self, identity: bytes, reply: m.FromWorker) -> None:
        """Queue a reply; `_sender` sends it, after every reply queued before it."""
        self._outgoing.setdefault(identity, []).append(reply)
        self._ready.set()

    async def _sender(self) -> None:
        """Send each caller's queued replies as one frame. Runs after the tasks woken
        with it, so one scheduler step's replies to a caller go out together."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            outgoing, self._outgoing = self._outgoing, {}
            for identity, replies in outgoing.items():
                try:
                    await self._socket.send_multipart([identity, m.encode_replies(replies)])
                except zmq.ZMQError as e:
                    if e.errno != zmq.EHOSTUNREACH:
                        raise
                    self._caller_gone(identity)

    def _caller_gone(self, identity: bytes) -> None:
        """Nobody reads this caller's replies any more: cancel its requests."""
        for request_id, (caller, task) in self._tasks.items():
            if caller == identity:
                if self._on_cancel:
                    self._on_cancel(request_id)
                task.cancel()

    def close(self) -> None:
        self._socket.close(linger=0)


class RequestClient:
    """Lifecycle: `async with RequestClient(address)`; `stream(request)` many times,
    concurrently; `cancel(request_id)`; leaving the block closes the socket."""

    def __init__(self, address: str, connect_timeout: float = 3.0):
        self.address = address
        self.connect_timeout = connect_timeout
        self._socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._connected = asyncio.Event()
        self._streams: dict[str, ChunkQueue[m.FromWorker]] = {}
        self._outgoing: list[m.ToWorker] = []  # not yet sent; `_sender` sends them as one frame
        self._ready = asyncio.Event()  # set when `_outgoing` has something
        self._tasks: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> RequestClient:
        self._socket.connect(self.address)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._background = [self._tasks.create_task(task) for task in (self._read(), self._watch(), self._sender())]
        return self

    async def __aexit__(self, *exc) -> None:
        self._fail_all(f"stopped talking to {self.address}")
        for task in self._background:
            task.cancel()
        await self._tasks.__aexit__(None, None, None)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    async def stream(self, request: m.GenerateRequest | m.EmbedRequest) -> AsyncIterator[m.FromWorker]:
        """Replies until the final one; cancelling the consumer cancels the request."""
        inbox = ChunkQueue()
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._connected.wait()
            except TimeoutError:
                yield m.ErrorReply(request.request_id, m.ErrorKind.DISCONNECTED, f"cannot connect to {self.address}")
                return
        self._streams[request.request_id] = inbox
        finished = False
        try:
            self._send(request)
            while True:
                reply = await inbox.get()
                # The worker is done once its last reply is here, even if the consumer
                # stops reading right after it: no cancel is owed then.
                finished = not isinstance(reply, m.Chunk) or reply.finish_reason is not None
                yield reply
                if finished:
                    return
        finally:
            del self._streams[request.request_id]
            if not finished:
                await self.cancel(request.request_id)

    @property
    def inflight(self) -> int:
        return len(self._streams)

    async def idle(self, poll_s: float = 0.05) -> None:
        """Returns once no request is in flight here (a departed worker finishing its drain)."""
        while self._streams:
            await asyncio.sleep(poll_s)

    def _fail_all(self, message: str) -> None:
        for request_id, inbox in list(self._streams.items()):
            inbox.put_nowait(m.ErrorReply(request_id, m.ErrorKind.DISCONNECTED, message))

    async def cancel(self, request_id: str) -> None:
        self._send(m.Cancel(request_id))

    def _send(self, message: m.ToWorker) -> None:
        self._outgoing.append(message)
        self._ready.set()

    async def _sender(self) -> None:
        """Send what the requests made since the last send as one frame: requests that
        come in together (several HTTP requests read in one loop turn) cost one send."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            outgoing, self._outgoing = self._outgoing, []
            try:
                await self._socket.send(m.encode_requests(outgoing))
            except zmq.ZMQError as e:  # the requests never left: end their streams as a lost worker would
                for message in outgoing:
                    if message.request_id in self._streams and not isinstance(message, m.Cancel):
                        self._streams[message.request_id].put_nowait(
                            m.ErrorReply(message.request_id, m.ErrorKind.DISCONNECTED, str(e)))

    async def _read(self) -> None:
        while True:
            frames = [await self._socket.recv()]
            with contextlib.suppress(zmq.Again):  # take what is already queued without awaiting each
                while len(frames) < 256:
                    frames.append(self._socket.recv(zmq.NOBLOCK).result())
            for frame in frames:
                for reply in m.decode_replies(frame):
                    inbox = self._streams.get(reply.request_id)
                    if inbox is not None:  # replies to a request already given up are dropped
                        inbox.put_nowait(reply)

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.clear()
                log.info("request plane: lost %s with %d requests in flight", self.address, len(self._streams))
                self._fail_all(f"lost {self.address}")
