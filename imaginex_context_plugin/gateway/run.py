"""The gateway process: ``run_gateway`` builds the state, the agent directory, the delivery and
the application from a :class:`~.config.GatewayConfig`, and serves until SIGINT or SIGTERM
(what ``imaginex-context gateway`` runs)."""

from __future__ import annotations

import asyncio
import gc
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from ..errors import ConfigError
from ..log import logger
from ..security import RateLimit
from .config import GatewayConfig
from .delivery.agent_backend import AgentBackend
from .delivery.room_delivery import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend
from .delivery.room_pool import DEFAULT_MAX_CONCURRENT_JOINS, DEFAULT_MAX_ROOMS
from .delivery.server_rpc_delivery import ServerRpcBackend
from .directory.agent_directory import AgentDirectory, entry_ttl_for
from .directory.memory_directory import MemoryAgentDirectory
from .directory.redis_directory import RedisAgentDirectory
from .directory.sync import DEFAULT_RECONCILE_INTERVAL_S
from .event_loop import DEFAULT_EVENT_LOOP, EventLoopChoice, resolve_event_loop, run_on
from .http.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_GATEWAY_RATE_LIMIT,
    DEFAULT_MAX_BODY_BYTES,
    create_app,
)
from .http.console import ConsoleOptions
from .http.messages import DEFAULT_GATEWAY_SENDER, MessageWriter
from .http.serving import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, start_gateway_server
from .state.gateway_state import REPLICAS_NEED_SIGNING, GatewayState

DEFAULT_HOST: Final = "127.0.0.1"
"""The interface the gateway listens on."""
DEFAULT_PORT: Final = 8089
"""The port the gateway listens on."""
DEFAULT_CONSOLE: Final = True
"""The operator console is served at ``/console`` unless turned off."""


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
    max_rooms: int = DEFAULT_MAX_ROOMS,
    max_concurrent_joins: int = DEFAULT_MAX_CONCURRENT_JOINS,
    server_rpc: bool = True,
    console: bool = DEFAULT_CONSOLE,
    console_livekit_url: str | None = None,
    console_secure_cookies: bool | None = None,
    event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP,
) -> None:
    """Serve the gateway until SIGINT or SIGTERM (what ``imaginex-context gateway`` runs).

    With ``config.redis_url`` the gateway is one of several replicas: its Idempotency-Key
    records and rate limits live in that Redis (:class:`~.state.redis_state.RedisState`).

    Args:
        config: LiveKit settings, api-secrets, signing secret, Redis (``GatewayConfig``).
        host: Interface to listen on. Default 127.0.0.1.
        port: Port. Default 8089.
        identity: The gateway's participant identity, distinct per replica (two participants
            with one identity in a room disconnect each other). Default ``imaginex-gateway``;
            with Redis ``imaginex-gateway-`` and 8 random hex digits.
        delivery_timeout: See :func:`~.http.app.create_app`.
        rate_limit: See :func:`~.http.app.create_app`.
        max_body_bytes: See :func:`~.http.app.create_app`.
        header_timeout: See :func:`~.http.serving.start_gateway_server`. Default 10.
        body_timeout: See :func:`~.http.app.create_app`. Default 30.
        max_connections: See :func:`~.http.serving.start_gateway_server`. Default 1024.
        sender: See :func:`~.http.app.create_app`. Default ``imaginex-gateway``.
        agent_directory: Find agents in a directory kept from LiveKit's webhooks (served at
            ``/livekit/webhook``) and reconciliation, in Redis with ``config.redis_url``, instead
            of listing every room. Default False.
        reconcile_interval: Seconds between reconciliations of that directory. Default 30.
        max_rooms: Room connections held at once (see
            :class:`~.delivery.room_delivery.LiveKitBackend`).
            Default 1000.
        max_concurrent_joins: Room joins under way at once. Default 8.
        server_rpc: Deliver through ``RoomService.PerformRpc`` without joining rooms, the
            agent's ack being the RPC's answer (see :mod:`.delivery.server_rpc_delivery`).
            Default True; False: join each room and call the agent over the room connection.
        console: Serve the operator console at ``/console``. Default True.
        console_livekit_url: The LiveKit URL as operators' browsers reach it (take-over);
            default ``config.livekit.url``.
        console_secure_cookies: See :class:`~.http.console.ConsoleOptions`
            ``secure_cookies``.
        event_loop: ``auto`` (uvloop when installed, else asyncio's loop), ``asyncio`` or
            ``uvloop`` (see :mod:`.event_loop`). Default ``auto``.

    Raises:
        ConfigError: Redis without a signing secret, an unusable ``sender``, or ``uvloop``
            asked for and not installed (checked before anything starts).
    """
    loop = resolve_event_loop(event_loop)
    if config.redis_url and not config.signing_secret:
        raise ConfigError(REPLICAS_NEED_SIGNING)
    if config.redis_url and sender is None:
        raise ConfigError(
            "Replicas (--redis-url) must name one sender in their signed messages (--sender): "
            "without it an agent cannot tell a retry through another replica from a new message."
        )
    try:
        MessageWriter(signing_secret=None, sender=sender)
    except ValueError as exc:
        raise ConfigError(f"--sender: {exc}.") from None
    console_options = None
    if console:
        try:
            console_options = ConsoleOptions(
                livekit=config.livekit,
                public_livekit_url=console_livekit_url,
                secure_cookies=console_secure_cookies,
            )
        except ValueError as exc:
            raise ConfigError(f"--console-livekit-url: {exc}.") from None
    if not identity:
        identity = DEFAULT_GATEWAY_IDENTITY
        if config.redis_url:
            identity = f"{DEFAULT_GATEWAY_IDENTITY}-{uuid.uuid4().hex[:8]}"

    async def make_app() -> web.Application:
        # built inside the loop: the backend's HTTP session and the Redis client bind to it
        state: GatewayState | None = None
        entry_ttl = entry_ttl_for(reconcile_interval)
        directory: AgentDirectory | None = (
            MemoryAgentDirectory(entry_ttl=entry_ttl) if agent_directory else None
        )
        if config.redis_url:
            from .state.redis_state import RedisState

            redis_state = RedisState(config.redis_url)
            state = redis_state
            if agent_directory:  # replicas share the directory, on the state's own client
                directory = RedisAgentDirectory(redis_state.client, entry_ttl=entry_ttl)
        backend = LiveKitBackend(
            config.livekit,
            identity=identity,
            agent_directory=directory,
            reconcile_interval=reconcile_interval,
            max_rooms=max_rooms,
            max_concurrent_joins=max_concurrent_joins,
        )
        _log_start(config, backend.identity, loop)
        delivering: AgentBackend = backend
        if server_rpc:
            delivering = ServerRpcBackend(backend, config.livekit, sender=sender)
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
            console=console_options,
        )

    run_on(
        loop,
        _serve_until_signal(
            make_app,
            host=host,
            port=port,
            header_timeout=header_timeout,
            max_connections=max_connections,
        )
    )


def _log_start(config: GatewayConfig, identity: str, event_loop: str) -> None:
    logger.info(
        "gateway starting",
        extra={
            "livekit_url": config.livekit.url,
            "identity": identity,
            "principals": [p.name for p in config.secrets.principals],
            "signed": config.signing_secret is not None,
            "replicated": config.redis_url is not None,
            "event_loop": event_loop,
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
    app = await make_app()
    # as LiveKit's job processes do after preloading: what lives for the whole run (modules,
    # the application) leaves the cyclic GC's reach, so that a full collection walks only what
    # requests made; it took about a fifth of the gateway's CPU in a fan-out to 200 rooms
    gc.collect()
    gc.freeze()
    server = await start_gateway_server(
        app,
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

