"""The console's settings (``create_app(console=ConsoleOptions(...))``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from ...._livekit.rooms import LiveKitRoomDirectory, RoomDirectory
from ...._livekit.settings import LiveKitSettings
from .live_calls import DEFAULT_CALLS_TTL_S
from .sessions import DEFAULT_SESSION_IDLE_S, DEFAULT_SESSION_MAX_S, SessionStore

DEFAULT_STREAM_CHECK_S: Final = 30.0
"""How often the sessions of open events streams are checked."""

__all__ = ["DEFAULT_STREAM_CHECK_S", "ConsoleOptions"]


@dataclass(frozen=True)
class ConsoleOptions:
    """What the operator console needs beyond the REST API.

    Attributes:
        livekit: The LiveKit server and key pair: the calls list reads ``RoomService``, and
            take-over tokens are signed with the key pair.
        public_livekit_url: The LiveKit URL as operators' browsers reach it (for the
            take-over); default ``livekit.url``. The page's Content-Security-Policy allows
            connections to it and to the gateway only.
        session_idle_s: A session unused this long ends. Default 15 minutes.
        session_max_s: A session ends this long after sign-in. Default 8 hours.
        secure_cookies: The session cookie is ``Secure`` always (True), never (False), or when
            the request came over TLS (None, the default; behind a proxy that ends TLS, True).
        calls_ttl_s: How long one scan of the rooms serves every console. Default 1 second.
        stream_check_s: How often the sessions of open events streams are checked; a stream
            outlives its session's end by at most this much (signing out cuts them at once).
            Default 30 seconds.
        sessions: Where sessions live; default: the gateway's Redis when it has one (replicas
            share sessions), else this process.
        rooms: How rooms are listed for the calls list; default ``RoomService`` (a test seam).
    """

    livekit: LiveKitSettings
    public_livekit_url: str | None = None
    session_idle_s: float = DEFAULT_SESSION_IDLE_S
    session_max_s: float = DEFAULT_SESSION_MAX_S
    secure_cookies: bool | None = None
    calls_ttl_s: float = DEFAULT_CALLS_TTL_S
    stream_check_s: float = DEFAULT_STREAM_CHECK_S
    sessions: SessionStore | None = field(default=None, compare=False)
    rooms: RoomDirectory | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("session_idle_s", "session_max_s", "stream_check_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds")
        if not 0 <= self.calls_ttl_s < math.inf:
            raise ValueError("calls_ttl_s must be a number of seconds")
        url = self.browser_livekit_url
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("public_livekit_url must be a ws(s):// or http(s):// URL")

    @property
    def browser_livekit_url(self) -> str:
        return self.public_livekit_url or self.livekit.url

    def room_directory(self) -> RoomDirectory:
        return self.rooms if self.rooms is not None else LiveKitRoomDirectory(self.livekit)
