"""The frontend's HTTP/1.1 server: asyncio protocols and httptools' parser (llhttp, the
pair uvicorn is built on), with only what an OpenAI endpoint needs.

Per request: a `Request` (method, path, headers, the whole body) goes to the handler
routed for its method and path, wrapped in a middleware; the handler returns a
`Response`, or answers through an `EventStream` (chunked `text/event-stream`).

- Keep-alive and pipelining: a connection serves its requests one after the other,
  and stops reading while one is in progress. HTTP/1.0 clients get their streams
  unchunked, ended by the close, and keep-alive only when they ask for it.
- A client that disconnects cancels its handler at once, streaming or not, so every
  worker request under it is cancelled too.
- Bodies are capped at `BODY_LIMIT` (413 before the body is read when its length is
  declared), the request line and headers at `HEAD_LIMIT` (431); `Expect:
  100-continue` is answered; a malformed request gets a 400 and the connection is
  closed; unknown paths and methods get OpenAI-style 404 / 405.
- A stream to a client that reads slowly waits for the socket to drain.
- `close()` stops accepting, closes idle connections and gives requests in flight a
  grace period.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Awaitable, Callable

import httptools
import msgspec

from orchestrator.frontend.openai import errors

log = logging.getLogger(__name__)

BODY_LIMIT = 64 * 1024 * 1024
HEAD_LIMIT = 64 * 1024  # the request line and headers together
BACKLOG = 2048
KEEPALIVE_S = 75.0  # an idle connection is closed after this long (aiohttp's default)
JSON = "application/json"
EVENT_STREAM = "text/event-stream"

_encode = msgspec.json.Encoder().encode
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_STREAM_HEADERS = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"


class Request:
    __slots__ = ("method", "path", "headers", "body", "connection")

    def __init__(self, method: str, target: bytes, headers: dict[str, str], body: bytes, connection: _Connection):
        self.method, self.path = method, target.decode("latin-1").partition("?")[0]  # no route reads a query
        self.headers, self.body, self.connection = headers, body, connection


class Response:
    __slots__ = ("status", "body", "content_type")

    def __init__(self, body: bytes, status: int = 200, content_type: str = JSON):
        self.body, self.status, self.content_type = body, status, content_type


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status)


def error_response(error: errors.RequestError) -> Response:
    return json_response(error.body(), error.status)


class EventStream:
    """A `text/event-stream` response, in chunks (to an HTTP/1.0 client: ended by closing
    the connection). Its status and headers go out with the first write, so a request
    that fails before it has anything to send still gets an honest status. Writing to a
    client that has gone raises `ConnectionResetError`."""

    __slots__ = ("_conn", "ended")

    def __init__(self, request: Request):
        self._conn = request.connection
        self.ended = False

    async def write(self, data: bytes, last: bool = False) -> None:
        """Send `data`; with `last`, end the stream in the same write."""
        conn = self._conn
        if conn.lost:
            raise ConnectionResetError("the client closed the connection")
        chunk = b"%x\r\n%b\r\n" % (len(data), data) if conn.http11 else data
        if not conn.streaming:
            conn.streaming = True
            chunk = conn.head(200, EVENT_STREAM, None, conn.keep_alive and conn.http11) + chunk
        if last:
            self.ended = True
            chunk += _LAST_CHUNK if conn.http11 else b""
        conn.transport.write(chunk)
        if conn.paused:
            await conn.drained()


Handler = Callable[[Request], Awaitable["Response | EventStream"]]
Middleware = Callable[[Handler, Request], Awaitable["Response | EventStream"]]


class HttpServer:
    """Routes (method, path) to handlers, each call wrapped in `middleware`."""

    def __init__(self, host: str, port: int, middleware: Middleware):
        self.host, self.port = host, port
        self.middleware = middleware
        self.routes: dict[str, dict[str, Handler]] = {}
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self._date, self._date_at = b"", 0

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes.setdefault(path, {})[method] = handler

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=BACKLOG)
        log.info("frontend listening on http://%s:%d", self.host, self.port)

    async def close(self, grace_s: float) -> None:
        """Stop accepting; requests in flight get `grace_s` seconds to finish."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.task is None:
                conn.transport.close()
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("%d connections still busy after %.0f s; closing them", len(self.connections), grace_s)
            for conn in list(self.connections):
                conn.transport.abort()

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date, self._date_at = formatdate(now, usegmt=True).encode(), now
        return self._date


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs them one at a time."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.pending: collections.deque[tuple[Request, bool, bool]] = collections.deque()
        self.task: asyncio.Task | None = None
        self.lost = self.paused = self.streaming = False
        self.http11 = True  # the request being served is HTTP/1.1 (else 1.0: no chunks)
        self.keep_alive = True  # ... and the connection stays open after it
        self._refusal: errors.RequestError | None = None  # why a parser callback stopped the parse
        self._drained: asyncio.Future | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._url, self._headers, self._body, self._size, self._head = b"", {}, [], 0, 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self._idle_timer()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(errors.invalid_request("protocol upgrades are not supported"))
        except httptools.HttpParserError as e:
            self._refuse(self._refusal or errors.invalid_request(f"malformed HTTP request: {e}"))

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drained(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained
        if self.lost:
            raise ConnectionResetError("the client closed the connection")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size, self._head = b"", {}, [], 0, 0
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head += size
        if self._head > HEAD_LIMIT:
            self._stop(errors.RequestError(431, f"The request line and headers exceed {HEAD_LIMIT} bytes."))

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > BODY_LIMIT:
            self._stop(errors.payload_too_large(BODY_LIMIT))
        # Not in the middle of another response: a client that gets no 100 sends its body anyway.
        if self.task is None and self._headers.get("expect", "").lower() == "100-continue":
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > BODY_LIMIT:
            self._stop(errors.payload_too_large(BODY_LIMIT))
        self._body.append(body)

    def _stop(self, refusal: errors.RequestError) -> None:
        """Stop parsing: `data_received` answers with `refusal` and closes."""
        self._refusal = refusal
        raise ValueError(refusal.message)  # feed_data raises it as HttpParserCallbackError

    def on_message_complete(self) -> None:
        request = Request(self.parser.get_method().decode(), self._url, self._headers, b"".join(self._body), self)
        self.pending.append((request, self.parser.should_keep_alive(), self.parser.get_http_version() != "1.0"))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())
        else:
            self.transport.pause_reading()  # pipelined: one at a time

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self.pending and not self.lost:
            request, keep_alive, self.http11 = self.pending.popleft()
            self.keep_alive = keep_alive = keep_alive and not self.server.closing
            self.streaming = False
            try:
                response = await self._respond(request)
            except (asyncio.CancelledError, ConnectionResetError):
                break  # the client went away: nobody to answer
            if self.lost:
                break
            if isinstance(response, EventStream):
                if not self.http11:
                    keep_alive = False  # the close ends the stream
                elif not response.ended:
                    self.transport.write(_LAST_CHUNK)
            elif self.streaming:  # the handler failed after its stream began: no way to say so but to close
                keep_alive = False
            else:
                self.transport.write(self.head(response.status, response.content_type, len(response.body),
                                               keep_alive) + response.body)
            if not keep_alive:
                self.transport.close()
                break
            self.transport.resume_reading()
        self.task = None
        if not self.lost and not self.transport.is_closing():
            self._idle_timer()

    async def _respond(self, request: Request) -> Response | EventStream:
        methods = self.server.routes.get(request.path)
        if methods is None:
            return error_response(errors.RequestError(404, f"no route {request.path}", type="not_found_error"))
        handler = methods.get(request.method)
        if handler is None:
            return error_response(errors.RequestError(
                405, f"{request.path} takes {', '.join(sorted(methods))}, not {request.method}"))
        return await self.server.middleware(handler, request)

    def head(self, status: int, content_type: str, length: int | None, keep_alive: bool = True) -> bytes:
        """The status line and headers; without a `length`, those of a stream."""
        if length is not None:
            framing = b"content-length: %d\r\n" % length
        else:
            framing = (b"transfer-encoding: chunked\r\n" if self.http11 else b"") + _STREAM_HEADERS
        if not keep_alive:
            framing += b"connection: close\r\n"
        elif not self.http11:  # HTTP/1.0 keeps a connection only when told so
            framing += b"connection: keep-alive\r\n"
        return b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\n%bdate: %b\r\n\r\n" % (
            status, _REASONS.get(status, b"Unknown"), content_type.encode(), framing, self.server.date())

    def _refuse(self, error: errors.RequestError) -> None:
        if self.task is None:
            body = _encode(error.body())
            self.transport.write(self.head(error.status, JSON, len(body), keep_alive=False) + body)
        self.transport.close()

    def _idle_timer(self) -> None:
        self._idle = asyncio.get_running_loop().call_later(KEEPALIVE_S, self.transport.close)


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
