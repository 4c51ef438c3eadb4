"""The aiohttp application serving the platform's Agent Context API.

A request goes, in this order: throttle a client address with too many failed
authentications, authenticate the ``api-secret`` (nothing else is looked at before), rate
limit per secret, check the secret may address the agent code, read and validate
the body (size limit first), find the rooms where the agent is live, deliver to all of them at
once with a timeout, and answer with the platform's response shape plus a per-room list.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ..log import logger
from ..security import RateLimit
from ..version import __version__
from .answers import FAILURE_PRECEDENCE, answer
from .backend import AgentBackend
from .body import BodyReader
from .config import ApiSecrets, ConfigError, GatewayConfig
from .console import (
    ApiRoute,
    ConsoleAdmission,
    ConsoleOptions,
    ConsoleRoutes,
    ConsoleSignIn,
    MemorySessions,
    SessionStore,
)
from .directory import (
    DEFAULT_RECONCILE_INTERVAL_S,
    AgentDirectory,
    MemoryAgentDirectory,
    RedisAgentDirectory,
)
from .events import EventFeeds, EventsRoute, RoomHolder
from .fanout import FanOut, RoomOutcome
from .gatekeeper import Admission, Gatekeeper
from .idempotency import RETRY_MAY_CHANGE, IdempotencyKeys, Lease, replayed, to_store
from .limits import DEFAULT_AUTH_FAILURE_LIMIT
from .messages import DEFAULT_GATEWAY_SENDER, MessageWriter, Outgoing
from .middleware import AnswerMiddleware
from .models import (
    CONTROL_BODIES,
    AddContextBody,
    ControlBody,
    HealthResponse,
    SpeakBody,
)
from .openapi import build_openapi
from .pool import DEFAULT_MAX_CONCURRENT_JOINS, DEFAULT_MAX_ROOMS
from .refusals import STATUS_FOR, Refusal, error_response, json_response
from .server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    start_gateway_server,
)
from .server_api_backend import REPLIES_PATH, ServerApiBackend
from .state import (
    REPLICAS_NEED_SIGNING,
    GatewayState,
    MemoryState,
    StoredAnswer,
    require_signing_for_replicas,
)
from .webhook import WEBHOOK_PATH, WebhookSource

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_GATEWAY_RATE_LIMIT",
    "DEFAULT_HOST",
    "DEFAULT_IDEMPOTENCY_LEASE_MARGIN_S",
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
DEFAULT_IDEMPOTENCY_LEASE_MARGIN_S: Final = 5.0
"""Seconds an Idempotency-Key claim outlives the delivery timeout (finding the rooms, joining
one): a replica that dies mid-delivery holds its key this much longer than a delivery takes."""


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
        state: GatewayState,
        lease_s: float,
    ) -> None:
        self._backend = backend
        self._gatekeeper = gatekeeper
        self._admission: Admission = gatekeeper
        self._bodies = bodies
        self._writer = writer
        self._state = state
        # a repeat waits as long as the first request may hold its key: by then it has its
        # answer, or the lease ended and the repeat delivers itself
        self._keys = IdempotencyKeys(state.idempotency, lease_s=lease_s, wait_s=lease_s)
        self._fanout = FanOut(backend, writer=writer, delivery_timeout=delivery_timeout)
        self._timeout = delivery_timeout
        self._openapi = b"{}"
        """The OpenAPI document of the routes served (``describe`` writes it)."""

    @property
    def gatekeeper(self) -> Gatekeeper:
        return self._gatekeeper

    @property
    def bodies(self) -> BodyReader:
        return self._bodies

    def admitted_by(self, admission: Admission) -> _Gateway:
        """The same routes (same keys, fan-out and state) admitting callers by ``admission``
        instead of the ``api-secret`` (the console's session)."""
        routes = copy.copy(self)
        routes._admission = admission
        return routes

    @property
    def fanout(self) -> FanOut:
        return self._fanout

    @property
    def writer(self) -> MessageWriter:
        return self._writer

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(HealthResponse(version=__version__))

    def describe(self, *, events: bool, webhook: bool, replies: bool) -> None:
        """Serve the document of exactly these routes at ``/openapi.json``."""
        document = build_openapi(events=events, webhook=webhook, replies=replies)
        self._openapi = json.dumps(document).encode("utf-8")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def speak(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        await self._admission.admit(request, agent_code)
        body = await self._bodies.read(request, SpeakBody)
        outgoing = Outgoing("speak", body.fields(), "message", body.message)
        return await self._send(request, agent_code, outgoing, body.room_id)

    async def add_context(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        await self._admission.admit(request, agent_code)
        body = await self._bodies.read(request, AddContextBody)
        outgoing = Outgoing("add-context", body.fields(), "context", body.context)
        return await self._send(request, agent_code, outgoing, body.room_id)

    def control(self, model: type[ControlBody]) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The handler of one call-control endpoint (end-call, interrupt, ...): the same steps."""
        endpoint = CONTROL_BODIES[model]

        async def handle(request: web.Request) -> web.Response:
            agent_code = request.match_info["agent_code"]
            await self._admission.admit(request, agent_code)
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
        claimed = await self._keys.claim(
            request, agent_code, request_id, outgoing.fingerprint(room_id)
        )
        if claimed is None:
            return await self._deliver(agent_code, outgoing, request_id, room_id, None)
        if isinstance(claimed, Lease):
            return await self._deliver(agent_code, outgoing, request_id, room_id, claimed)
        return replayed(claimed)

    async def _deliver(
        self,
        agent_code: str,
        outgoing: Outgoing,
        request_id: str,
        room_id: str | None,
        lease: Lease | None,
    ) -> web.Response:
        """Deliver, answer, and keep the answer for the key's repeats when it is final."""
        try:
            targets = await self._fanout.targets(agent_code, room_id)
            outcomes = await self._fanout.deliver(targets, outgoing, request_id, agent_code)
        except Exception:
            # nothing (or not everything) was delivered: a repeat must deliver again
            if lease is not None:
                await lease.finish(None)
            raise
        try:
            response = answer(
                outgoing, agent_code, request_id, outcomes, delivery_timeout=self._timeout
            )
        except Refusal as refusal:
            if lease is not None:
                await lease.finish(_kept(error_response(refusal), outcomes))
            raise
        if lease is not None:
            await lease.finish(_kept(response, outcomes))
        return response

    async def close(self, app: web.Application) -> None:
        try:
            await self._backend.aclose()
        finally:
            await self._state.aclose()


def _kept(response: web.Response, outcomes: list[RoomOutcome]) -> StoredAnswer | None:
    """The answer to keep for an Idempotency-Key, or None when a retry may change it."""
    if any(o.error in RETRY_MAY_CHANGE for o in outcomes):
        return None
    return to_store(response)


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
        state: Idempotency-Key records, rate limits and the agents' replies taken (with
            server-API delivery): :class:`~.state.MemoryState` for a
            lone gateway (the default), ``redis_state.RedisState`` for replicas, which then
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
        The application; serve it with :func:`~.server.start_gateway_server` (which also limits
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
    if isinstance(backend, ServerApiBackend) and not signing_secret:
        raise ConfigError("Server-API delivery needs a signing secret (IMAGINEX_SIGNING_SECRET).")
    gateway = _Gateway(
        backend,
        gatekeeper=Gatekeeper(
            secrets,
            rate_limit=rate_limit,
            auth_failure_limit=auth_failure_limit,
            buckets=state.buckets,
        ),
        bodies=BodyReader(max_body_bytes=max_body_bytes, body_timeout=body_timeout),
        writer=MessageWriter(signing_secret=signing_secret, sender=sender),
        delivery_timeout=delivery_timeout,
        state=state,
        lease_s=lease_s,
    )
    answers = AnswerMiddleware(
        max_body_bytes=max_body_bytes,
        quiet_paths=frozenset({REPLIES_PATH})
        if isinstance(backend, ServerApiBackend)
        else frozenset(),
    )
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
    if isinstance(backend, ServerApiBackend):  # the agents' answers come back over HTTP
        # a reply is taken once across the replicas sharing the state
        backend.reply_inbox.replies = state.replies
        app.router.add_post(REPLIES_PATH, backend.reply_inbox.handle)
        server_api = backend

        async def start_taking_replies(app: web.Application) -> None:
            await server_api.start()

        app.on_startup.append(start_taking_replies)
    hook = backend.livekit_webhook if isinstance(backend, WebhookSource) else None
    if hook is not None:  # the agent directory is kept from LiveKit's webhooks
        app.router.add_post(WEBHOOK_PATH, hook.handle)
        app.on_startup.append(hook.on_startup)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/openapi.json", gateway.openapi)
    gateway.describe(
        events=isinstance(backend, RoomHolder),
        webhook=hook is not None,
        replies=isinstance(backend, ServerApiBackend),
    )
    app.on_cleanup.append(gateway.close)
    return app


def _mount_console(
    app: web.Application,
    options: ConsoleOptions,
    *,
    gateway: _Gateway,
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
    sender: str | None = DEFAULT_GATEWAY_SENDER,
    agent_directory: bool = False,
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL_S,
    public_url: str | None = None,
    max_rooms: int = DEFAULT_MAX_ROOMS,
    max_concurrent_joins: int = DEFAULT_MAX_CONCURRENT_JOINS,
    console: bool = True,
    console_livekit_url: str | None = None,
    console_secure_cookies: bool | None = None,
) -> None:
    """Serve the gateway until SIGINT or SIGTERM (what ``imaginex-context gateway`` runs).

    With ``config.redis_url`` the gateway is one of several replicas: its Idempotency-Key
    records and rate limits live in that Redis (:class:`~.redis_state.RedisState`).

    Args:
        config: LiveKit settings, api-secrets, signing secret, Redis (``GatewayConfig``).
        host: Interface to listen on. Default 127.0.0.1.
        port: Port. Default 8089.
        identity: The gateway's participant identity, distinct per replica (two participants
            with one identity in a room disconnect each other). Default ``imaginex-gateway``;
            with Redis ``imaginex-gateway-`` and 8 random hex digits.
        delivery_timeout: See :func:`create_app`.
        rate_limit: See :func:`create_app`.
        max_body_bytes: See :func:`create_app`.
        header_timeout: See :func:`~.server.start_gateway_server`. Default 10.
        body_timeout: See :func:`create_app`. Default 30.
        max_connections: See :func:`~.server.start_gateway_server`. Default 1024.
        sender: See :func:`create_app`. Default ``imaginex-gateway``.
        agent_directory: Find agents in a directory kept from LiveKit's webhooks (served at
            ``/livekit/webhook``) and reconciliation, in Redis with ``config.redis_url``, instead
            of listing every room. Default False.
        reconcile_interval: Seconds between reconciliations of that directory. Default 30.
        public_url: Deliver through ``RoomService.SendData`` without joining rooms, the agents
            posting their answers to this URL (the gateway as they reach it) plus
            ``/v1/internal/replies`` (see :mod:`.server_api_backend`); needs a signing secret.
            Default: None, deliver over room connections.
        max_rooms: Room connections held at once (see :class:`~.backend.LiveKitBackend`).
            Default 1000.
        max_concurrent_joins: Room joins under way at once. Default 8.
        console: Serve the operator console at ``/console``. Default True.
        console_livekit_url: The LiveKit URL as operators' browsers reach it (take-over);
            default ``config.livekit.url``.
        console_secure_cookies: See :class:`~.console.ConsoleOptions` ``secure_cookies``.

    Raises:
        ConfigError: Redis or ``public_url`` without a signing secret, or an unusable
            ``sender`` (checked before anything starts).
    """
    from .backend import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend

    if config.redis_url and not config.signing_secret:
        raise ConfigError(REPLICAS_NEED_SIGNING)
    if config.redis_url and sender is None:
        raise ConfigError(
            "Replicas (--redis-url) must name one sender in their signed messages (--sender): "
            "without it an agent cannot tell a retry through another replica from a new message."
        )
    if public_url is not None and not config.signing_secret:
        raise ConfigError(
            "Server-API delivery (--public-url) needs a signing secret (IMAGINEX_SIGNING_SECRET)."
        )
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise ConfigError("--public-url must be an http(s) URL the agents can reach.")
    try:
        MessageWriter(signing_secret=None, sender=sender)
    except ValueError as exc:
        raise ConfigError(f"--sender: {exc}.") from None
    if console:
        try:
            ConsoleOptions(livekit=config.livekit, public_livekit_url=console_livekit_url)
        except ValueError as exc:
            raise ConfigError(f"--console-livekit-url: {exc}.") from None
    if not identity:
        identity = DEFAULT_GATEWAY_IDENTITY
        if config.redis_url:
            identity = f"{DEFAULT_GATEWAY_IDENTITY}-{uuid.uuid4().hex[:8]}"

    async def make_app() -> web.Application:
        # built inside the loop: the backend's HTTP session and the Redis client bind to it
        state: GatewayState | None = None
        directory: AgentDirectory | None = MemoryAgentDirectory() if agent_directory else None
        if config.redis_url:
            from .redis_state import RedisState

            redis_state = RedisState(config.redis_url)
            state = redis_state
            if agent_directory:  # replicas share the directory, on the state's own client
                directory = RedisAgentDirectory(redis_state.client)
        backend = LiveKitBackend(
            config.livekit,
            identity=identity,
            agent_directory=directory,
            reconcile_interval=reconcile_interval,
            max_rooms=max_rooms,
            max_concurrent_joins=max_concurrent_joins,
        )
        _log_start(config, backend.identity)
        delivering: AgentBackend = backend
        if public_url is not None:
            relay = None
            if config.redis_url:  # replicas behind one URL: a reply may reach another one
                from .redis_state import RedisReplyRelay

                relay = RedisReplyRelay(redis_state.client)
            delivering = ServerApiBackend(
                backend,
                config.livekit,
                signing_secret=config.signing_secret,
                public_url=public_url,
                reply_relay=relay,
            )
        return create_app(
            delivering,
            config.secrets,
            signing_secret=config.signing_secret,
            delivery_timeout=delivery_timeout,
            rate_limit=rate_limit,
            max_body_bytes=max_body_bytes,
            body_timeout=body_timeout,
            state=state,
            sender=sender,
            console=ConsoleOptions(
                livekit=config.livekit,
                public_livekit_url=console_livekit_url,
                secure_cookies=console_secure_cookies,
            )
            if console
            else None,
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
            "replicated": config.redis_url is not None,
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
