"""A lean HTTP/1.1 client for one server: the POSTs of a fan-out to LiveKit's Twirp API.

A fan-out makes one ``RoomService`` call per room, hundreds per request. Measured on the
gateway's machine, an aiohttp client request cost about 0.17 ms of CPU, this one about
0.05 ms (``benchmarks/bench_fanout.py``: most of what the gateway spends per room). It does
one thing: POST a body to a path on one ``http(s)://host:port``, over kept-alive
connections, and read the status and body of the answer.

What it reads: a ``Content-Length`` body, a ``chunked`` one, or one that ends with the
connection; informational (1xx) answers are skipped. A connection is reused while the server
keeps it alive, is closed on any error, timeout or cancellation mid-request, and is let go after
``IDLE_S`` unused. A request on a reused connection that the server closed meanwhile (the
keep-alive race: it fails before any byte of the answer) goes once more on a new connection;
the caller must be fine with a request arriving twice then, as ``PerformRpc`` callers here are
(the agents deduplicate by request id).

Errors: ``ConnectionError`` (an ``OSError``) when the connection fails or the answer is cut
short, :class:`Http1Error` (a ``ConnectionError``) for an answer that is not valid HTTP/1.1 or
too large, ``asyncio.TimeoutError`` when the deadline passes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, cast
from urllib.parse import urlparse

from ..version import __version__

MAX_CONNECTIONS: Final = 1_000
"""Most connections open at once; more requests wait for one."""
IDLE_S: Final = 20.0
"""A connection unused this long is closed rather than reused (servers drop idle ones)."""
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest status line and headers, and largest body, read; an answer from LiveKit's
RoomService is a few KiB."""
USER_AGENT: Final = f"imaginex-context-plugin/{__version__}"


class Http1Error(ConnectionError):
    """The server's answer is not HTTP/1.1 this client reads, or is too large."""


class _Answer:
    """An answer being read, one per request."""

    __slots__ = ("body", "chunk_left", "keep_alive", "length", "phase", "status")

    def __init__(self) -> None:
        self.phase = "head"  # head -> body | chunk-size | chunk-data | trailer | until-eof -> done
        self.status = 0
        self.keep_alive = True
        self.length = 0
        self.chunk_left = 0
        self.body = bytearray()


class _Connection(asyncio.Protocol):
    """One kept-alive connection; reads the answer to the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False
        self.got_bytes = False
        self.idle_since = time.monotonic()
        self._buffer = bytearray()
        self._answer = _Answer()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; not always an asyncio.Transport subclass (uvloop's is not)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buffer += data
        try:
            self._read()
        except Http1Error as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._answer.phase == "until-eof":
            self._finish(keep_alive=False)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer.phase == "until-eof":
            self._finish(keep_alive=False)
        self._fail(ConnectionResetError("the server closed the connection"))

    # -- requests

    def send(self, request: bytes, waiter: asyncio.Future[tuple[int, bytes, bool]]) -> None:
        assert self.transport is not None
        self.waiter, self.got_bytes = waiter, False
        self._buffer.clear()
        self._answer = _Answer()
        self.transport.write(request)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if not isinstance(exc, ConnectionResetError):
            self.close()

    def _finish(self, *, keep_alive: bool) -> None:
        answer = self._answer
        answer.phase = "done"
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((answer.status, bytes(answer.body), keep_alive))

    # -- the parser

    def _read(self) -> None:
        answer, buffer = self._answer, self._buffer
        while True:
            if answer.phase == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise Http1Error("The answer's headers are too large.")
                    return
                head = bytes(buffer[:end]).decode("latin-1")
                del buffer[: end + 4]
                self._head(head)
            elif answer.phase == "body":
                if len(buffer) < answer.length:
                    return
                answer.body += buffer[: answer.length]
                del buffer[: answer.length]
                self._finish(keep_alive=answer.keep_alive)
            elif answer.phase == "chunk-size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
                del buffer[: end + 2]
                try:
                    answer.chunk_left = int(size_text, 16)
                except ValueError:
                    raise Http1Error("A chunk size is not a number.") from None
                if answer.chunk_left < 0:
                    raise Http1Error("A chunk size is not a number.")
                answer.phase = "chunk-data" if answer.chunk_left else "trailer"
            elif answer.phase == "chunk-data":
                if len(buffer) < answer.chunk_left + 2:
                    return
                answer.body += buffer[: answer.chunk_left]
                if len(answer.body) > MAX_BODY_BYTES:
                    raise Http1Error("The answer is too large.")
                del buffer[: answer.chunk_left + 2]
                answer.phase = "chunk-size"
            elif answer.phase == "trailer":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:  # the empty line after the trailers
                    self._finish(keep_alive=answer.keep_alive)
            elif answer.phase == "until-eof":
                answer.body += buffer
                buffer.clear()
                if len(answer.body) > MAX_BODY_BYTES:
                    raise Http1Error("The answer is too large.")
                return
            else:  # done: nothing should come until the next request
                if buffer:
                    raise Http1Error("The server sent more than its answer.")
                return

    def _head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
            raise Http1Error("The answer does not start with an HTTP/1.1 status line.")
        answer = self._answer
        answer.status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise Http1Error("An answer header is not 'name: value'.")
            headers[name.strip().lower()] = value.strip()
        if 100 <= answer.status < 200:  # informational: the real answer follows
            answer.status = 0
            return
        connection = headers.get("connection", "").lower()
        answer.keep_alive = parts[0] == "HTTP/1.1" and connection != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            answer.phase = "chunk-size"
        elif "content-length" in headers:
            try:
                answer.length = int(headers["content-length"])
            except ValueError:
                raise Http1Error("The answer's Content-Length is not a number.") from None
            if not 0 <= answer.length <= MAX_BODY_BYTES:
                raise Http1Error("The answer is too large.")
            answer.phase = "body"
        elif answer.status in (204, 304):
            answer.phase = "body"  # no body
        else:
            answer.keep_alive = False
            answer.phase = "until-eof"


class Http1Client:
    """POSTs to one HTTP/1.1 server over a pool of kept-alive connections.

    Args:
        base_url: ``http(s)://host[:port]`` (a ``ws(s)://`` URL is read as ``http(s)://``); its
            path, if any, prefixes every request's.
        max_connections: Most connections open at once. Default ``MAX_CONNECTIONS``.
        ssl_context: For ``https``; default: the system's trusted certificates.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parsed = urlparse(base_url)
        secure = parsed.scheme in ("https", "wss")
        if parsed.scheme not in ("http", "https", "ws", "wss") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parsed.hostname
        self._port = parsed.port or (443 if secure else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if secure else None
        default_port = self._port == (443 if secure else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = parsed.path.rstrip("/")
        self._max = max_connections
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._count = 0  # open, and being opened
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False
        self.connections_made = 0
        """How many connections were opened so far (reuse keeps it low)."""

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str], *, timeout: float
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path`` with ``headers``; the answer's status and body, within
        ``timeout`` seconds (waiting for a connection and connecting included)."""
        if self._closed:
            raise ConnectionError("the client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request = self._request(path, body, headers)
        for attempt in (1, 2):
            connection, reused = await self._acquire(deadline)
            waiter: asyncio.Future[tuple[int, bytes, bool]] = loop.create_future()
            expiry = loop.call_at(deadline, _expire, waiter)
            keep = False
            try:
                connection.send(request, waiter)
                status, answer, keep = await waiter
                return status, answer
            except ConnectionResetError:
                # a kept-alive connection the server had closed: nothing of the answer came
                if attempt == 1 and reused and not connection.got_bytes:
                    continue
                raise
            finally:
                expiry.cancel()
                self._release(connection, keep=keep)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [
            f"POST {self._prefix}{path} HTTP/1.1",
            f"Host: {self._host_header}",
            f"User-Agent: {USER_AGENT}",
            f"Content-Length: {len(body)}",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _acquire(self, deadline: float) -> tuple[_Connection, bool]:
        """A connection, and whether it was used before: an idle one, a new one while fewer
        than ``max_connections`` are open, else the first one released."""
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()  # the most recently used: the least likely dropped
                if not connection.closed and now - connection.idle_since < IDLE_S:
                    return connection, True
                self._drop(connection)
            if loop.time() >= deadline:
                raise asyncio.TimeoutError
            if self._count < self._max:
                return await self._connect(deadline), False
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            expiry = loop.call_at(deadline, _expire, waiter)
            try:
                handed = await waiter
            finally:
                expiry.cancel()
            if handed is not None:
                return handed, True
            # None: a connection was closed, there is room for a new one

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        self._count += 1
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                max(deadline - loop.time(), 0.001),
            )
        except BaseException:
            self._count -= 1
            self._wake(None)
            raise
        self.connections_made += 1
        self._open.add(connection)
        return connection

    def _wake(self, connection: _Connection | None) -> bool:
        """Hand ``connection`` (None: room for a new one) to the first request still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def _release(self, connection: _Connection, *, keep: bool) -> None:
        if keep and not connection.closed and not self._closed:
            connection.idle_since = time.monotonic()
            if not self._wake(connection):
                self._idle.append(connection)
            return
        self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        if connection in self._open:
            self._open.discard(connection)
            self._count -= 1
            self._wake(None)

    async def aclose(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the client is closed"))
        self._waiters.clear()
        for connection in list(self._open):
            self._drop(connection)
        await asyncio.sleep(0)  # let the transports finish closing


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        # asyncio's, as wait_for raises (on Python 3.10 it is not the builtin TimeoutError)
        waiter.set_exception(asyncio.TimeoutError())
