"""The request plane: frontend -> worker over ZMQ, typed msgpack messages.

Worker side, `RequestServer`: a ROUTER socket. Each request runs as a task in the
server's TaskGroup; its handler is an async iterator of replies, sent back as they
come. A `Cancel`, or a reply that can no longer reach its caller (ROUTER_MANDATORY
reports the peer gone), cancels the task, and closing the handler aborts the engine
request. After `stop_accepting()` new requests are refused with a migratable
`engine_shutdown` error.

Frontend side, `RequestClient`: one DEALER per worker carries any number of
concurrent requests, demultiplexed by request id. When the worker's connection
drops, every request in flight on it ends with a migratable `disconnected` error, and
a request to a worker that cannot be reached fails the same way after a connect timeout.
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
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def fail_all(self, kind: str, message: str) -> int:
        """End every request in flight with an error its caller can act on (a drain's
        last step: `engine_shutdown` makes the frontend migrate). Returns how many."""
        failed = list(self._tasks.items())
        for request_id, (identity, task) in failed:
            task.cancel()
            await self._send(identity, m.ErrorReply(request_id, kind, message))
        await self.wait_idle(5.0)
        return len(failed)

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            while True:
                identity, payload = await self._socket.recv_multipart()
                try:
                    message = m.decode_to_worker(payload)
                except Exception as e:  # a malformed frame must not stop the server
                    log.warning("dropping a malformed request-plane message: %s", e)
                    continue
                if isinstance(message, m.Cancel):
                    self._cancel(message.request_id)
                elif not self._accepting:
                    await self._send(identity, m.ErrorReply(message.request_id, m.ErrorKind.ENGINE_SHUTDOWN, "worker is draining"))
                elif message.request_id in self._tasks:
                    await self._send(identity, m.ErrorReply(message.request_id, m.ErrorKind.INVALID, "duplicate request id"))
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
                    if not await self._send(identity, reply):
                        if self._on_cancel:
                            self._on_cancel(request.request_id)
                        return
        except asyncio.CancelledError:
            pass  # a Cancel: closing the handler aborted the engine request
        finally:
            del self._tasks[request.request_id]
            if not self._tasks:
                self._idle.set()

    async def _send(self, identity: bytes, reply: m.FromWorker) -> bool:
        """False when the caller is gone."""
        try:
            await self._socket.send_multipart([identity, m.encode(reply)])
            return True
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise

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
        self._streams: dict[str, asyncio.Queue] = {}
        self._tasks: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> RequestClient:
        self._socket.connect(self.address)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._readers = [self._tasks.create_task(self._read()), self._tasks.create_task(self._watch())]
        return self

    async def __aexit__(self, *exc) -> None:
        self._fail_all(f"stopped talking to {self.address}")
        for task in self._readers:
            task.cancel()
        await self._tasks.__aexit__(None, None, None)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    async def stream(self, request: m.GenerateRequest | m.EmbedRequest) -> AsyncIterator[m.FromWorker]:
        """Replies until the final one; cancelling the consumer cancels the request."""
        queue: asyncio.Queue = asyncio.Queue()
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
            except TimeoutError:
                yield m.ErrorReply(request.request_id, m.ErrorKind.DISCONNECTED, f"cannot connect to {self.address}")
                return
        self._streams[request.request_id] = queue
        finished = False
        try:
            await self._socket.send(m.encode(request))
            while True:
                reply = await queue.get()
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
        for request_id, queue in list(self._streams.items()):
            queue.put_nowait(m.ErrorReply(request_id, m.ErrorKind.DISCONNECTED, message))

    async def cancel(self, request_id: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            await self._socket.send(m.encode(m.Cancel(request_id)))

    async def _read(self) -> None:
        while True:
            frames = [await self._socket.recv()]
            with contextlib.suppress(zmq.Again):  # take what is already queued without awaiting each
                while len(frames) < 256:
                    frames.append(self._socket.recv(zmq.NOBLOCK).result())
            for frame in frames:
                reply = m.decode_from_worker(frame)
                queue = self._streams.get(reply.request_id)
                if queue is not None:  # replies to a request already given up are dropped
                    queue.put_nowait(reply)

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected.set()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.clear()
                log.info("request plane: lost %s with %d requests in flight", self.address, len(self._streams))
                self._fail_all(f"lost {self.address}")
