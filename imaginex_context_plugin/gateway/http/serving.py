"""Serving the gateway's application with limits on how long and how many clients may hold on.

aiohttp has no timeout for reading a request's headers: a client that sends half a request line
and then nothing (or one byte a minute) holds its connection, and its file descriptor, for as
long as it likes. :func:`start_gateway_server` wraps every connection's aiohttp protocol in a
guard that

- closes the connection when a request's headers have not all arrived ``header_timeout`` seconds
  after it opened or after the previous response (aborted, logged at INFO, once any byte of
  the request came; an idle keep-alive connection is closed cleanly and logged at DEBUG only);
- refuses connections beyond ``max_connections`` with a ``503`` JSON answer and closes them,
  before aiohttp reads anything.

The guard learns that a request's headers are in from the gateway's middleware
(:func:`request_started` / :func:`request_finished`); the body has its own timeout, enforced
where the application reads it (``create_app(body_timeout=...)``).

aiohttp reads the rest of a body its route did not read after answering; a compressed body that
turns out not to decode raises out of that read, which aiohttp logs as an unhandled exception.
The server logs that case at DEBUG: the answer was given, and the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final, cast

from aiohttp import web

from ...log import logger

DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
"""Seconds a client has to send a request's headers (from connecting, or the last response)."""
DEFAULT_MAX_CONNECTIONS: Final = 1024
"""Open connections at most; more are answered 503 and closed."""
TOO_MANY_CONNECTIONS: Final = "TOO_MANY_CONNECTIONS"
"""Error code of the 503 answer to a connection over the limit (the gateway's own code)."""
SHUTDOWN_TIMEOUT_S: Final = 5.0

_BUSY_BODY: Final = json.dumps(
    {
        "success": False,
        "error": TOO_MANY_CONNECTIONS,
        "message": "The gateway has too many open connections; retry after Retry-After seconds.",
    }
).encode("utf-8")
_BUSY_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode("ascii") + b"\r\n\r\n" + _BUSY_BODY
)

_GUARDS_KEY: Final = web.AppKey("imaginex_connection_guards", dict)


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only from 3.11
    """aiohttp's protocol logger, with a body that did not decode after the answer at DEBUG."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), web.RequestPayloadError):
            logger.debug("unread request body did not decode; connection closed")
            return
        super().exception(msg, *args, **kwargs)


_PROTOCOL_LOG: Final = _ProtocolLog(logging.getLogger("aiohttp.server"), {})


def _guard_of(request: web.Request) -> _GuardedConnection | None:
    # None for an app served some other way (tests' TestServer): nothing is timed there
    guards = request.app.get(_GUARDS_KEY)
    return None if guards is None else guards.get(request.protocol)


def request_started(request: web.Request) -> None:
    """Called by the middleware once a request's headers are in: stop the header clock."""
    guard = _guard_of(request)
    if guard is not None:
        guard.disarm()


def request_finished(request: web.Request) -> None:
    """Called by the middleware when the handler is done: the next headers are due in time."""
    guard = _guard_of(request)
    if guard is not None:
        guard.arm()


@dataclass(eq=False)
class _Limits:
    header_timeout: float
    max_connections: int
    # aiohttp's protocol -> its guard, so the middleware can find the guard of its request
    guards: dict[object, _GuardedConnection] = field(default_factory=dict)
    refused: int = 0


class _GuardedConnection(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol, which it forwards everything to."""

    def __init__(self, limits: _Limits, make_protocol: web.Server) -> None:
        self._limits = limits
        self._make_protocol = make_protocol
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started_request = False
        """Whether any byte of the next request came since the timer was armed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; not always an asyncio.Transport subclass (uvloop's is not)
        stream = self._transport = cast(asyncio.Transport, transport)
        if len(self._limits.guards) >= self._limits.max_connections:
            self._limits.refused += 1
            logger.warning(
                "connection refused: too many open connections",
                extra={"max_connections": self._limits.max_connections},
            )
            stream.write(_BUSY_RESPONSE)
            stream.close()
            return
        inner = self._make_protocol()
        self._inner = inner
        self._limits.guards[inner] = self
        inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        self.disarm()
        self._started_request = False
        if self._transport is not None and not self._transport.is_closing():
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._limits.header_timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if not self._started_request:
            # an idle keep-alive connection (a client's, between requests): routine, and a
            # clean close lets the client see it go before it reuses it
            logger.debug("idle connection closed", extra={"idle_s": self._limits.header_timeout})
            self._transport.close()
            return
        logger.info(
            "connection closed: no complete request headers in time",
            extra={"header_timeout_s": self._limits.header_timeout},
        )
        # abort, not close: a client that reads nothing must not hold the socket either
        self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._started_request = True
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        inner, self._inner = self._inner, None
        if inner is not None:
            self._limits.guards.pop(inner, None)
            inner.connection_lost(exc)


class GatewayServer:
    """A running gateway: the listening socket, its connections and the application."""

    def __init__(
        self, runner: web.AppRunner, server: asyncio.base_events.Server, limits: _Limits
    ) -> None:
        self._runner = runner
        self._server = server
        self._limits = limits

    @property
    def port(self) -> int:
        """The port listened on (useful after asking for port 0)."""
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        return len(self._limits.guards)

    @property
    def refused_connections(self) -> int:
        """Connections refused so far because ``max_connections`` were open."""
        return self._limits.refused

    async def aclose(self) -> None:
        """Stop listening, let requests in progress finish, then clean the application up."""
        self._server.close()
        # before wait_closed, which (Python 3.12+) waits for every connection to end
        await self._runner.cleanup()
        await self._server.wait_closed()


async def start_gateway_server(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> GatewayServer:
    """Serve ``app`` on ``host:port`` with the connection guard described above.

    Args:
        app: The application (``create_app``); it must not have been started yet.
        host: Interface to listen on.
        port: Port; 0 picks a free one (see ``GatewayServer.port``).
        header_timeout: Seconds to receive a request's headers. Default 10.
        max_connections: Open connections at most. Default 1024.

    Raises:
        ValueError: For a non-positive timeout or limit.
    """
    if not header_timeout > 0 or header_timeout == float("inf"):
        raise ValueError("header_timeout must be a positive number of seconds")
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    limits = _Limits(header_timeout=header_timeout, max_connections=max_connections)
    app[_GUARDS_KEY] = limits.guards
    runner = web.AppRunner(
        app,
        access_log=None,  # the middleware writes one line per request instead
        logger=_PROTOCOL_LOG,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    make_protocol = runner.server
    assert make_protocol is not None
    try:
        server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedConnection(limits, make_protocol), host, port, reuse_address=True
        )
    except BaseException:
        await runner.cleanup()
        raise
    return GatewayServer(runner, server, limits)
