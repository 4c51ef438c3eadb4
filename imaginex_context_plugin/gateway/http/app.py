"""The aiohttp application serving the platform's Agent Context API: :func:`create_app`.

It puts the routes (:mod:`.routes`) and the middleware together over a delivery, and serves
what the delivery can do beyond delivering, asked through the seam's capability protocols
(:mod:`..delivery.agent_backend`): the live events, LiveKit's webhooks, the agents' answers over
HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from aiohttp import web

from ...security import RateLimit
from ..config import ApiSecrets
from ..delivery.agent_backend import (
    AgentBackend,
    RoomHolder,
    SigningDelivery,
    WebhookSource,
)
from ..directory.webhook import WEBHOOK_PATH
from ..models import CONTROL_BODIES
from ..state.gateway_state import GatewayState, require_signing_for_replicas
from ..state.memory_state import MemoryState
from .body import BodyReader
from .console import (
    ApiRoute,
    ConsoleAdmission,
    ConsoleOptions,
    ConsoleRoutes,
    ConsoleSignIn,
    MemorySessions,
    SessionStore,
)
from .events import EventFeeds, EventsRoute
from .gatekeeper import Admission, Gatekeeper
from .limits import DEFAULT_AUTH_FAILURE_LIMIT
from .messages import DEFAULT_GATEWAY_SENDER, MessageWriter
from .middleware import AnswerMiddleware
from .routes import GatewayRoutes

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_GATEWAY_RATE_LIMIT",
    "DEFAULT_IDEMPOTENCY_LEASE_MARGIN_S",
    "DEFAULT_MAX_BODY_BYTES",
    "create_app",
]

DEFAULT_DELIVERY_TIMEOUT_S: Final = 5.0
"""Seconds the agents have to acknowledge a message before the room counts as TIMEOUT."""
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
"""Largest HTTP body read; the message sent on to the agents must also fit in 15 KiB."""
DEFAULT_BODY_TIMEOUT_S: Final = 30.0
"""Seconds a client has to send a request's body once its headers are in."""
DEFAULT_GATEWAY_RATE_LIMIT: Final = RateLimit(per_second=10.0, burst=50)
"""Per api-secret: 10 requests a second, bursts of 50."""
DEFAULT_IDEMPOTENCY_LEASE_MARGIN_S: Final = 5.0
"""Seconds an Idempotency-Key claim outlives the delivery timeout (finding the rooms, joining
one): a replica that dies mid-delivery holds its key this much longer than a delivery takes."""


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
    state: GatewayState | None = None,
    sender: str | None = DEFAULT_GATEWAY_SENDER,
    idempotency_lease_s: float | None = None,
    console: ConsoleOptions | None = None,
) -> web.Application:
    """Build the gateway's aiohttp application.

    Args:
        backend: The delivery (``ServerRpcBackend`` or ``LiveKitBackend`` in production, see
            :mod:`..delivery`). It is closed with the application.
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
        state: Idempotency-Key records and rate limits:
            :class:`~..state.memory_state.MemoryState` for a lone gateway
            (the default), :class:`~..state.redis_state.RedisState` for replicas, which then
            need ``signing_secret``. Closed with the application.
        sender: The sender signed messages name (``sign_request(sender=...)``), the same on
            every replica so that the agents apply a retry through another replica once.
            None: v1 envelopes (for agents older than protocol v1.2). Default
            ``imaginex-gateway``.
        idempotency_lease_s: How long a request holds its Idempotency-Key while delivering;
            a repeat waits this long for the first answer before 409, and once it has run out
            (the holder died) a repeat takes the key over and delivers again. Default
            ``delivery_timeout`` + 5 seconds.
        console: Serve the operator console at ``/console`` with these settings (see
            :mod:`.console`). Default None: no console.

    Raises:
        ConfigError: ``state`` is shared but there is no ``signing_secret``.
        ValueError: A timeout is not a positive number, or ``sender`` is not 1 to 128 visible
            characters.

    Returns:
        The application; serve it with :func:`~.serving.start_gateway_server` (which also limits
        the time to send headers and the number of connections), ``aiohttp.web.run_app`` or a
        test server.
    """
    if not 0 < delivery_timeout < math.inf:
        raise ValueError("delivery_timeout must be a positive number of seconds")
    if not 0 < body_timeout < math.inf:
        raise ValueError("body_timeout must be a positive number of seconds")
    lease_s = (
        delivery_timeout + DEFAULT_IDEMPOTENCY_LEASE_MARGIN_S
        if idempotency_lease_s is None
        else idempotency_lease_s
    )
    if not 0 < lease_s < math.inf:
        raise ValueError("idempotency_lease_s must be a positive number of seconds")
    state = state if state is not None else MemoryState()
    require_signing_for_replicas(state, signing_secret)
    gateway = GatewayRoutes(
        backend,
        gatekeeper=Gatekeeper(
            secrets,
            rate_limit=rate_limit,
            auth_failure_limit=auth_failure_limit,
            buckets=state.buckets,
        ),
        bodies=BodyReader(max_body_bytes=max_body_bytes, body_timeout=body_timeout),
        writer=MessageWriter(
            signing_secret=signing_secret or _delivery_secret(backend), sender=sender
        ),
        delivery_timeout=delivery_timeout,
        state=state,
        lease_s=lease_s,
    )
    answers = AnswerMiddleware(max_body_bytes=max_body_bytes)
    # client_max_size: aiohttp's own guard on request.read(); checked again with a JSON answer
    app = web.Application(middlewares=[answers.middleware], client_max_size=max_body_bytes)
    feeds: EventFeeds | None = None
    if isinstance(backend, RoomHolder):  # the live events need a held room connection
        feeds = EventFeeds(backend, writer=gateway.writer, timeout=delivery_timeout)
        app.on_cleanup.append(feeds.aclose)

    def api_routes(admission: Admission) -> list[ApiRoute]:
        """The REST API's routes, callers admitted by ``admission``."""
        served = gateway.admitted_by(admission)
        table: list[ApiRoute] = [
            ("POST", "/v1/agent/{agent_code}/speak", served.speak),
            ("POST", "/v1/agent/{agent_code}/add-context", served.add_context),
        ]
        for model, endpoint in CONTROL_BODIES.items():
            table.append(("POST", f"/v1/agent/{{agent_code}}/{endpoint}", served.control(model)))
        if feeds is not None:
            events = EventsRoute(gatekeeper=admission, fanout=gateway.fanout, feeds=feeds)
            table.append(("GET", "/v1/agent/{agent_code}/events", events.handle))
        return table

    for method, path, handler in api_routes(gateway.gatekeeper):
        app.router.add_route(method, path, handler)
    if console is not None:  # the same routes again under /console/api, by session
        _mount_console(app, console, gateway=gateway, state=state, api_routes=api_routes)
    hook = backend.livekit_webhook if isinstance(backend, WebhookSource) else None
    if hook is not None:  # the agent directory is kept from LiveKit's webhooks
        app.router.add_post(WEBHOOK_PATH, hook.handle)
        app.on_startup.append(hook.on_startup)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/openapi.json", gateway.openapi)
    gateway.describe(events=isinstance(backend, RoomHolder), webhook=hook is not None)
    app.on_cleanup.append(gateway.close)
    return app




def _mount_console(
    app: web.Application,
    options: ConsoleOptions,
    *,
    gateway: GatewayRoutes,
    state: GatewayState,
    api_routes: Callable[[Admission], list[ApiRoute]],
) -> None:
    sessions: SessionStore | None = options.sessions
    if sessions is None:
        client = getattr(state, "client", None)  # replicas share their sessions in Redis
        if client is not None:
            from .console.redis_sessions import RedisSessions

            sessions = RedisSessions(client)
        else:
            sessions = MemorySessions()
    sign_in = ConsoleSignIn(
        sessions,
        gateway.gatekeeper,
        bodies=gateway.bodies,
        idle_s=options.session_idle_s,
        max_s=options.session_max_s,
        secure_cookies=options.secure_cookies,
    )
    admission = ConsoleAdmission(sign_in, gateway.gatekeeper)
    routes = ConsoleRoutes(
        options, sign_in=sign_in, admission=admission, fanout=gateway.fanout, bodies=gateway.bodies
    )
    routes.mount(app, api_routes(admission))


def _delivery_secret(backend: AgentBackend) -> str | None:
    """The secret a delivery's messages must be signed with when the gateway has none."""
    return backend.unsigned_messages_secret if isinstance(backend, SigningDelivery) else None
