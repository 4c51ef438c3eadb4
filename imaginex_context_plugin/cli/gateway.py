"""``imaginex-context gateway``: the platform's REST API in front of LiveKit.

Every default shown here is the constant the gateway itself uses (``--help`` prints them).
"""

from __future__ import annotations

import logging
from typing import Final

import click

from .._env import (
    AGENT_DIRECTORY_ENV,
    API_SECRETS_FILE_ENV,
    GATEWAY_BODY_TIMEOUT_ENV,
    GATEWAY_EVENT_LOOP_ENV,
    GATEWAY_HEADER_TIMEOUT_ENV,
    GATEWAY_MAX_CONNECTIONS_ENV,
    RECONCILE_INTERVAL_ENV,
    REDIS_URL_ENV,
)
from ..errors import ConfigError
from ..gateway.config import GatewayConfig
from ..gateway.delivery.room_delivery import DEFAULT_GATEWAY_IDENTITY
from ..gateway.delivery.room_pool import DEFAULT_MAX_CONCURRENT_JOINS, DEFAULT_MAX_ROOMS
from ..gateway.directory.sync import DEFAULT_RECONCILE_INTERVAL_S
from ..gateway.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOP_CHOICES, EventLoopChoice
from ..gateway.http.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_GATEWAY_RATE_LIMIT,
)
from ..gateway.http.messages import DEFAULT_GATEWAY_SENDER
from ..gateway.http.serving import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from ..gateway.run import DEFAULT_CONSOLE, DEFAULT_HOST, DEFAULT_PORT, run_gateway
from ..security import RateLimit
from .parameters import api_secret_warning_once, count_option, seconds_option

DELIVERIES: Final = ("server-rpc", "room")
"""``--delivery``: ``RoomService.PerformRpc`` (the default) or over room connections."""


@click.command("gateway")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port to listen on."
)
@click.option(
    "--secrets-file",
    type=click.Path(dir_okay=False),
    envvar=API_SECRETS_FILE_ENV,
    help="File of agent_code=secret lines (or a JSON object): one tenant per secret.",
)
@click.option(
    "--identity",
    default=None,
    help="Participant identity in the rooms, distinct per replica [default: "
    f"{DEFAULT_GATEWAY_IDENTITY}; with --redis-url {DEFAULT_GATEWAY_IDENTITY}-<random>]. "
    "Unsigned, agents must trust it.",
)
@click.option(
    "--redis-url",
    default=None,
    envvar=REDIS_URL_ENV,
    show_envvar=True,
    help="Redis shared by gateway replicas (Idempotency-Key records, rate limits); needs "
    "IMAGINEX_SIGNING_SECRET.",
)
@click.option(
    "--agent-directory",
    is_flag=True,
    envvar=AGENT_DIRECTORY_ENV,
    show_envvar=True,
    help="Find agents in a directory kept from LiveKit's webhooks (point LiveKit's webhook at "
    "/livekit/webhook) instead of listing every room per request; in Redis with --redis-url.",
)
@seconds_option(
    "--reconcile-interval",
    default=DEFAULT_RECONCILE_INTERVAL_S,
    envvar=RECONCILE_INTERVAL_ENV,
    help="Seconds between reconciliations of the agent directory with RoomService.",
)
@click.option(
    "--delivery",
    type=click.Choice(DELIVERIES),
    default=DELIVERIES[0],
    show_default=True,
    help="server-rpc: RoomService.PerformRpc, no room joined, the agent's ack is the RPC's "
    "answer; room: join each room and call the agent by RPC over that connection (the events "
    "stream's playout events need it).",
)
@count_option(
    "--max-rooms",
    default=DEFAULT_MAX_ROOMS,
    help="Room connections held at once; at the cap the least recently used idle one is closed.",
)
@count_option(
    "--max-concurrent-joins",
    default=DEFAULT_MAX_CONCURRENT_JOINS,
    help="Room joins under way at once (a fan-out to many new rooms joins them in this many "
    "lanes).",
)
@click.option(
    "--sender",
    default=DEFAULT_GATEWAY_SENDER,
    show_default=True,
    help="The sender signed messages name, the same on every replica.",
)
@click.option(
    "--no-sender",
    is_flag=True,
    help="Sign without naming a sender (protocol v1 envelopes), for agents older than protocol "
    "v1.2, which refuse envelopes naming one; not with --redis-url.",
)
@seconds_option(
    "--timeout",
    default=DEFAULT_DELIVERY_TIMEOUT_S,
    help="Seconds the agents have to answer.",
)
@click.option(
    "--rate-limit",
    default=DEFAULT_GATEWAY_RATE_LIMIT.per_second,
    show_default=True,
    help="Requests per second per api-secret (0 turns it off).",
)
@click.option(
    "--burst",
    default=DEFAULT_GATEWAY_RATE_LIMIT.burst,
    show_default=True,
    help="Requests at once per api-secret.",
)
@seconds_option(
    "--header-timeout",
    default=DEFAULT_HEADER_TIMEOUT_S,
    envvar=GATEWAY_HEADER_TIMEOUT_ENV,
    help="Seconds a client has to send a request's headers (and idle keep-alive limit).",
)
@seconds_option(
    "--body-timeout",
    default=DEFAULT_BODY_TIMEOUT_S,
    envvar=GATEWAY_BODY_TIMEOUT_ENV,
    help="Seconds a client has to send a request's body.",
)
@count_option(
    "--max-connections",
    default=DEFAULT_MAX_CONNECTIONS,
    envvar=GATEWAY_MAX_CONNECTIONS_ENV,
    help="Open connections at most; more are answered 503 and closed.",
)
@click.option(
    "--console/--no-console",
    default=DEFAULT_CONSOLE,
    show_default=True,
    help="Serve the operator console at /console (sign in with an api-secret).",
)
@click.option(
    "--console-livekit-url",
    default=None,
    help="The LiveKit URL as operators' browsers reach it, for taking a call over by voice "
    "[default: LIVEKIT_URL].",
)
@click.option(
    "--console-secure-cookies",
    is_flag=True,
    help="Mark the console's session cookie Secure even over plain HTTP (behind a proxy that "
    "ends TLS); over TLS it always is.",
)
@click.option(
    "--event-loop",
    type=click.Choice(EVENT_LOOP_CHOICES),
    default=DEFAULT_EVENT_LOOP,
    show_default=True,
    envvar=GATEWAY_EVENT_LOOP_ENV,
    show_envvar=True,
    help="auto: uvloop when installed (the [uvloop] extra; cheaper per request and per room), "
    "else asyncio's loop.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (includes message text).")
def gateway_command(
    host: str,
    port: int,
    secrets_file: str | None,
    identity: str | None,
    redis_url: str | None,
    agent_directory: bool,
    reconcile_interval: float,
    delivery: str,
    max_rooms: int,
    max_concurrent_joins: int,
    sender: str,
    no_sender: bool,
    timeout: float,
    rate_limit: float,
    burst: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    console: bool,
    console_livekit_url: str | None,
    console_secure_cookies: bool,
    event_loop: EventLoopChoice,
    verbose: bool,
) -> None:
    """Serve the platform's REST API (/v1/agent/{agent_code}/speak, /add-context, and the
    call-control endpoints /end-call, /interrupt, ...) over LiveKit.

    Reads LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET and IMAGINEX_API_SECRET (or a
    secrets file), and optionally IMAGINEX_SIGNING_SECRET to sign messages for the agents
    and IMAGINEX_REDIS_URL (--redis-url) to run as one of several replicas. The operator
    console is at /console.
    """
    try:
        config = GatewayConfig.from_env(secrets_file=secrets_file, redis_url=redis_url)
        limit = RateLimit(per_second=rate_limit, burst=burst) if rate_limit > 0 else None
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    api_secret_warning_once(config.livekit.api_key, config.livekit.api_secret)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_gateway(
            config,
            host=host,
            port=port,
            identity=identity,
            delivery_timeout=timeout,
            rate_limit=limit,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
            sender=None if no_sender else sender,
            agent_directory=agent_directory,
            reconcile_interval=reconcile_interval,
            max_rooms=max_rooms,
            max_concurrent_joins=max_concurrent_joins,
            server_rpc=delivery == "server-rpc",
            console=console,
            console_livekit_url=console_livekit_url,
            console_secure_cookies=True if console_secure_cookies else None,
            event_loop=event_loop,
        )
    except ConfigError as exc:  # checked before anything starts
        raise click.ClickException(str(exc)) from None
