"""The environment variables the package reads: each name once, here.

The CLI, the gateway's configuration, the sender and the receiver all read these names; a
change of name is made here and nowhere else. A variable's default is not here: it is the
constant of the module that uses the value (``gateway.http.serving.DEFAULT_HEADER_TIMEOUT_S``,
...), which the CLI shows too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

LIVEKIT_URL_ENV: Final = "LIVEKIT_URL"
"""The LiveKit server URL (``ws(s)://`` or ``http(s)://``)."""
LIVEKIT_API_KEY_ENV: Final = "LIVEKIT_API_KEY"
LIVEKIT_API_SECRET_ENV: Final = "LIVEKIT_API_SECRET"
"""The LiveKit API secret: tokens, RoomService, and the key server-API packets are signed with."""

AGENT_CODE_ENV: Final = "IMAGINEX_AGENT_CODE"
"""The agent code a receiver serves, and a sender addresses."""
CONTEXT_SECRET_ENV: Final = "IMAGINEX_CONTEXT_SECRET"
"""The shared secret the CLI signs its requests with (``ContextPlugin(secret=...)``)."""

API_SECRET_ENV: Final = "IMAGINEX_API_SECRET"
"""Gateway: one api-secret accepted for every agent code."""
API_SECRETS_FILE_ENV: Final = "IMAGINEX_API_SECRETS_FILE"
"""Gateway: path of a file of ``agent_code -> secret`` pairs (one tenant per distinct secret)."""
SIGNING_SECRET_ENV: Final = "IMAGINEX_SIGNING_SECRET"
"""Gateway: sign every message for the agents with this secret (``ContextPlugin(secret=...)``)."""
REDIS_URL_ENV: Final = "IMAGINEX_REDIS_URL"
"""Gateway: Redis shared by replicas (Idempotency-Key records, rate limits, agent directory)."""
AGENT_DIRECTORY_ENV: Final = "IMAGINEX_AGENT_DIRECTORY"
"""Gateway: find agents in a directory kept from LiveKit's webhooks instead of listing rooms."""
RECONCILE_INTERVAL_ENV: Final = "IMAGINEX_RECONCILE_INTERVAL"
"""Gateway: seconds between reconciliations of the agent directory with RoomService."""
GATEWAY_HEADER_TIMEOUT_ENV: Final = "IMAGINEX_GATEWAY_HEADER_TIMEOUT"
GATEWAY_BODY_TIMEOUT_ENV: Final = "IMAGINEX_GATEWAY_BODY_TIMEOUT"
GATEWAY_MAX_CONNECTIONS_ENV: Final = "IMAGINEX_GATEWAY_MAX_CONNECTIONS"
GATEWAY_EVENT_LOOP_ENV: Final = "IMAGINEX_GATEWAY_EVENT_LOOP"
"""Gateway: ``auto``, ``asyncio`` or ``uvloop``."""

LIVEKIT_ENV: Final = (LIVEKIT_URL_ENV, LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV)
"""The three variables that say which LiveKit server, and with which key pair."""


def env_or(value: str | None, name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``value`` unless it is empty or None, else the variable ``name`` (an empty one is None)."""
    if value:
        return value
    found = (os.environ if environ is None else environ).get(name)
    return found if found else None
