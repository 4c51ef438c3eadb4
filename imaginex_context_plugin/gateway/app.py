"""The aiohttp application serving the platform's Agent Context API.

A request goes, in this order: throttle a client address with too many failed
authentications, authenticate the ``api-secret`` (nothing else is looked at before), rate
limit per secret, check the secret may address the agent code, read and validate
the body (size limit first), find the rooms where the agent is live, deliver to all of them at
once with a timeout, and answer with the platform's response shape plus a per-room list.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ..log import logger
from ..security import RateLimit
from ..version import __version__
from .answers import FAILURE_PRECEDENCE, answer
from .backend import AgentBackend
from .body import BodyReader
from .config import ApiSecrets, GatewayConfig
from .events import EventFeeds, EventsRoute, RoomHolder
from .fanout import FanOut
from .gatekeeper import Gatekeeper
from .idempotency import IdempotencyKeys
from .limits import DEFAULT_AUTH_FAILURE_LIMIT
from .messages import MessageWriter, Outgoing
from .middleware import AnswerMiddleware
from .models import (
    CONTROL_BODIES,
    AddContextBody,
    ControlBody,
    HealthResponse,
    SpeakBody,
)
from .openapi import build_openapi
from .refusals import STATUS_FOR, json_response
from .server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    start_gateway_server,
)
from .webhook import WEBHOOK_PATH, WebhookSource

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_GATEWAY_RATE_LIMIT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "FAILURE_PRECEDENCE",
    "STATUS_FOR",
    "create_app",
    "run_gateway",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8089
DEFAULT_DELIVERY_TIMEOUT_S: Final = 5.0
"""Seconds the agents have to acknowledge a message before the room counts as TIMEOUT."""
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
"""Largest HTTP body read; the message sent on to the agents must also fit in 15 KiB."""
DEFAULT_BODY_TIMEOUT_S: Final = 30.0
"""Seconds a client has to send a request's body once its headers are in."""
DEFAULT_GATEWAY_RATE_LIMIT: Final = RateLimit(per_second=10.0, burst=50)
"""Per api-secret: 10 requests a second, bursts of 50."""


class _Gateway:
    """The routes: each API call is admitted, read, given its id, and fanned out to the rooms.

    Every step is a collaborator with one job; this class only puts them in order.
    """

    def __init__(
        self,
        backend: AgentBackend,
        *,
        gatekeeper: Gatekeeper,
        bodies: BodyReader,
        writer: MessageWriter,
        delivery_timeout: float,
    ) -> None:
        self._backend = backend
        self._gatekeeper = gatekeeper
        self._bodies = bodies
        self._writer = writer
        self._keys = IdempotencyKeys()
        self._fanout = FanOut(backend, writer=writer, delivery_timeout=delivery_timeout)
        self._timeout = delivery_timeout
        self._openapi = json.dumps(build_openapi()).encode("utf-8")

    @property
    def gatekeeper(self) -> Gatekeeper:
        return self._gatekeeper

    @property
    def fanout(self) -> FanOut:
        return self._fanout

    @property
    def writer(self) -> MessageWriter:
        return self._writer

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(HealthResponse(version=__version__))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def speak(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        self._gatekeeper.admit(request, agent_code)
        body = await self._bodies.read(request, SpeakBody)
        outgoing = Outgoing("speak", body.fields(), "message", body.message)
        return await self._send(request, agent_code, outgoing, body.room_id)

    async def add_context(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        self._gatekeeper.admit(request, agent_code)
        body = await self._bodies.read(request, AddContextBody)
        fields = {"type": body.type, "context": body.context}
        outgoing = Outgoing("add-context", fields, "context", body.context)
        return await self._send(request, agent_code, outgoing, body.room_id)

    def control(self, model: type[ControlBody]) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The handler of one call-control endpoint (end-call, interrupt, ...): the same steps."""
        endpoint = CONTROL_BODIES[model]

        async def handle(request: web.Request) -> web.Response:
            agent_code = request.match_info["agent_code"]
            self._gatekeeper.admit(request, agent_code)
            body = await self._bodies.read(request, model)
            outgoing = Outgoing(endpoint, body.fields(), body.text_field, body.long_text())
            return await self._send(request, agent_code, outgoing, body.room_id)

        return handle

    async def _send(
        self, request: web.Request, agent_code: str, outgoing: Outgoing, room_id: str | None
    ) -> web.Response:
        # the order matters: nothing is bound or asked of LiveKit for a message that cannot fit
        request_id = self._keys.request_id(request)
        self._writer.check_fits(outgoing, request_id, agent_code, room_id)
        self._keys.bind(request, agent_code, request_id, outgoing.fingerprint(room_id))
        targets = await self._fanout.targets(agent_code, room_id)
        outcomes = await self._fanout.deliver(targets, outgoing, request_id, agent_code)
        return answer(outgoing, agent_code, request_id, outcomes, delivery_timeout=self._timeout)

    async def close(self, app: web.Application) -> None:
        await self._backend.aclose()


def create_app(
    backend: AgentBackend,
    secrets: ApiSecrets,
    *,
    signing_secret: str | None = None,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
    rate_limit: RateLimit | None = DEFAULT_GATEWAY_RATE_LIMIT,
    auth_failure_limit: RateLimit | None = DEFAULT_AUTH_FAILURE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
) -> web.Application:
    """Build the gateway's aiohttp application.

    Args:
        backend: How LiveKit is reached (``LiveKitBackend`` in production). It is closed with
            the application.
        secrets: The accepted api-secrets.
        signing_secret: If set, every message to the agents is signed with it
            (``ContextPlugin(secret=...)`` on the agent side). Default: not signed; the agents
            must then trust the gateway's participant identity.
        delivery_timeout: Seconds the agents have to answer. Default 5.
        rate_limit: Per api-secret; ``None`` turns it off. Default 10/s, bursts of 50.
        auth_failure_limit: Failed authentications per client address (IPv6: per /64); once
            used up, the address gets 429 without its secret being checked. Valid secrets are
            not charged. ``None`` turns it off. Default 5/s, bursts of 20.
        max_body_bytes: Largest request body. Default 64 KiB.
        body_timeout: Seconds to receive the body once the headers are in; a late body is
            answered 408 ``REQUEST_TIMEOUT`` and the connection closed. Default 30.

    Returns:
        The application; serve it with :func:`~.server.start_gateway_server` (which also limits
        the time to send headers and the number of connections), ``aiohttp.web.run_app`` or a
        test server.
    """
    if not 0 < delivery_timeout < math.inf:
        raise ValueError("delivery_timeout must be a positive number of seconds")
    if not 0 < body_timeout < math.inf:
        raise ValueError("body_timeout must be a positive number of seconds")
    gateway = _Gateway(
        backend,
        gatekeeper=Gatekeeper(
            secrets, rate_limit=rate_limit, auth_failure_limit=auth_failure_limit
        ),
        bodies=BodyReader(max_body_bytes=max_body_bytes, body_timeout=body_timeout),
        writer=MessageWriter(signing_secret=signing_secret),
        delivery_timeout=delivery_timeout,
    )
    answers = AnswerMiddleware(max_body_bytes=max_body_bytes)
    # client_max_size: aiohttp's own guard on request.read(); checked again with a JSON answer
    app = web.Application(middlewares=[answers.middleware], client_max_size=max_body_bytes)
    app.router.add_post("/v1/agent/{agent_code}/speak", gateway.speak)
    app.router.add_post("/v1/agent/{agent_code}/add-context", gateway.add_context)
    for model, endpoint in CONTROL_BODIES.items():
        app.router.add_post(f"/v1/agent/{{agent_code}}/{endpoint}", gateway.control(model))
    if isinstance(backend, RoomHolder):  # the live events need a held room connection
        feeds = EventFeeds(backend, writer=gateway.writer, timeout=delivery_timeout)
        events = EventsRoute(gatekeeper=gateway.gatekeeper, fanout=gateway.fanout, feeds=feeds)
        app.router.add_get("/v1/agent/{agent_code}/events", events.handle)
    hook = backend.livekit_webhook if isinstance(backend, WebhookSource) else None
    if hook is not None:  # the agent directory is kept from LiveKit's webhooks
        app.router.add_post(WEBHOOK_PATH, hook.handle)
        app.on_startup.append(hook.on_startup)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/openapi.json", gateway.openapi)
    app.on_cleanup.append(gateway.close)
    return app


def run_gateway(
    config: GatewayConfig,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    identity: str | None = None,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
    rate_limit: RateLimit | None = DEFAULT_GATEWAY_RATE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve the gateway until SIGINT or SIGTERM (what ``imaginex-context gateway`` runs).

    Args:
        config: LiveKit settings and api-secrets (``GatewayConfig.from_env()``).
        host: Interface to listen on. Default 127.0.0.1.
        port: Port. Default 8089.
        identity: The gateway's participant identity. Default ``imaginex-gateway``.
        delivery_timeout: See :func:`create_app`.
        rate_limit: See :func:`create_app`.
        max_body_bytes: See :func:`create_app`.
        header_timeout: See :func:`~.server.start_gateway_server`. Default 10.
        body_timeout: See :func:`create_app`. Default 30.
        max_connections: See :func:`~.server.start_gateway_server`. Default 1024.
    """
    from .backend import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend

    async def make_app() -> web.Application:
        # built inside the loop: the backend's HTTP session binds to it
        backend = LiveKitBackend(
            config.livekit, identity=identity if identity else DEFAULT_GATEWAY_IDENTITY
        )
        _log_start(config, backend.identity)
        return create_app(
            backend,
            config.secrets,
            signing_secret=config.signing_secret,
            delivery_timeout=delivery_timeout,
            rate_limit=rate_limit,
            max_body_bytes=max_body_bytes,
            body_timeout=body_timeout,
        )

    asyncio.run(
        _serve_until_signal(
            make_app,
            host=host,
            port=port,
            header_timeout=header_timeout,
            max_connections=max_connections,
        )
    )


def _log_start(config: GatewayConfig, identity: str) -> None:
    logger.info(
        "gateway starting",
        extra={
            "livekit_url": config.livekit.url,
            "identity": identity,
            "principals": [p.name for p in config.secrets.principals],
            "signed": config.signing_secret is not None,
        },
    )


async def _serve_until_signal(
    make_app: Callable[[], Awaitable[web.Application]],
    *,
    host: str,
    port: int,
    header_timeout: float,
    max_connections: int,
) -> None:
    """Serve the application ``make_app`` builds until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await start_gateway_server(
        await make_app(),
        host=host,
        port=port,
        header_timeout=header_timeout,
        max_connections=max_connections,
    )
    logger.info("gateway listening", extra={"host": host, "port": server.port})
    try:
        await stop.wait()
    finally:
        await server.aclose()
