"""Joining the agent's room as a sender, for :meth:`ContextClient.connect`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import timedelta

from livekit import rtc

from .._env import LIVEKIT_API_KEY_ENV, LIVEKIT_API_SECRET_ENV, LIVEKIT_URL_ENV, env_or
from .._livekit.tokens import sender_token
from ..errors import ErrorCode
from ..log import logger
from ..request_errors import ContextError
from .options import SENDER_IDENTITY_PREFIX


def _settings(
    url: str | None, api_key: str | None, api_secret: str | None, room: str | None, hidden: bool
) -> tuple[str, str, str, str]:
    """The URL, key, secret and room, from the arguments or the environment; refuses gaps."""
    url = env_or(url, LIVEKIT_URL_ENV)
    api_key = env_or(api_key, LIVEKIT_API_KEY_ENV)
    api_secret = env_or(api_secret, LIVEKIT_API_SECRET_ENV)
    if not url:
        raise ValueError(f"No LiveKit URL: pass url or set {LIVEKIT_URL_ENV}.")
    if not api_key or not api_secret:
        raise ValueError(
            "No LiveKit API key and secret: pass them or set "
            f"{LIVEKIT_API_KEY_ENV} and {LIVEKIT_API_SECRET_ENV}."
        )
    if not room:
        raise ValueError("No room: pass the name of the room the agent is in.")
    if hidden:
        raise ValueError(
            "A hidden sender cannot be answered: LiveKit strips a hidden participant's "
            "identity from its RPCs and data packets. Leave hidden unset."
        )
    return url, api_key, api_secret, room


async def join_room(
    url: str | None,
    api_key: str | None,
    api_secret: str | None,
    room: str | None,
    *,
    identity: str | None,
    name: str | None,
    hidden: bool | None,
    connect_timeout: float,
    token_ttl: timedelta,
    room_factory: Callable[[], rtc.Room],
) -> rtc.Room:
    """A room joined with a sender token minted here (see ``ContextClient.connect``).

    Raises:
        ValueError: A setting is missing, or ``hidden`` is set.
        ContextError: ``LIVEKIT_UNAVAILABLE`` if the connection fails.
    """
    url, api_key, api_secret, room = _settings(url, api_key, api_secret, room, bool(hidden))
    identity = identity or SENDER_IDENTITY_PREFIX + uuid.uuid4().hex[:8]
    token = sender_token(
        api_key, api_secret, room=room, identity=identity, name=name, ttl=token_ttl
    )
    lk_room = room_factory()
    try:
        await asyncio.wait_for(
            lk_room.connect(url, token, rtc.RoomOptions(auto_subscribe=False)),
            connect_timeout,
        )
    except (rtc.ConnectError, asyncio.TimeoutError, OSError) as exc:
        with contextlib.suppress(Exception):
            await lk_room.disconnect()
        reason = (
            f"no answer within {connect_timeout:g} s"
            if isinstance(exc, asyncio.TimeoutError)
            else getattr(exc, "message", None) or str(exc) or type(exc).__name__
        )
        raise ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            f"Could not connect to LiveKit at {url}: {reason}.",
            retryable=False,
        ) from exc
    logger.info("context client connected", extra={"room": room, "identity": identity})
    return lk_room
