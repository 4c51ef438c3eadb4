"""The console's sign-in: an api-secret exchanged once for a short-lived session.

The operator types the api-secret once; the gateway answers with a random session id in a
cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS, scoped to ``/console``) and a
CSRF token in the body, which the page keeps in memory and sends back in the
``X-CSRF-Token`` header of every state-changing request. Neither the secret nor the session
ever appears in a URL or in the browser's storage.

The store keeps, per session, only the tenant's principal name and the CSRF token, under a
SHA-256 of the session id (a dump of the store holds no usable cookie). A session ends after
:data:`DEFAULT_SESSION_IDLE_S` without a request, after :data:`DEFAULT_SESSION_MAX_S` whatever
happens, or when signed out. :class:`MemorySessions` serves a lone gateway,
``redis_sessions.RedisSessions`` replicas (the same semantics; one contract test runs over
both).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "CSRF_HEADER",
    "DEFAULT_SESSION_IDLE_S",
    "DEFAULT_SESSION_MAX_S",
    "MAX_SESSIONS_PER_TENANT",
    "MEMORY_MAX_SESSIONS",
    "SESSION_COOKIE",
    "ConsoleSession",
    "MemorySessions",
    "SessionStore",
    "csrf_matches",
    "new_session_id",
    "session_key",
]

SESSION_COOKIE: Final = "imaginex_console"
CSRF_HEADER: Final = "X-CSRF-Token"
DEFAULT_SESSION_IDLE_S: Final = 15 * 60.0
"""A session unused this long (no request from the page, which polls while open) ends."""
DEFAULT_SESSION_MAX_S: Final = 8 * 3600.0
"""A session ends this long after sign-in, used or not: one working shift."""
MEMORY_MAX_SESSIONS: Final = 10_000
"""Sessions a lone gateway holds at most; past that the least recently used ends first."""
MAX_SESSIONS_PER_TENANT: Final = 100
"""Sessions one tenant holds at most in a lone gateway; past that its own least recently used
ends first, so that one tenant signing in over and over never ends another tenant's sessions."""


@dataclass(frozen=True)
class ConsoleSession:
    """One signed-in operator.

    Attributes:
        principal: The name of the tenant the api-secret identified (``tenant-1``, ...).
        csrf_token: The token state-changing requests must carry.
        created_at: Wall-clock seconds of the sign-in.
        expires_at: Wall-clock seconds after which the session ends, used or not.
    """

    principal: str
    csrf_token: str
    created_at: float
    expires_at: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "principal": self.principal,
                "csrf_token": self.csrf_token,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ConsoleSession | None:
        try:
            fields: dict[str, Any] = json.loads(raw)
            return cls(
                principal=str(fields["principal"]),
                csrf_token=str(fields["csrf_token"]),
                created_at=float(fields["created_at"]),
                expires_at=float(fields["expires_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def new_session_id() -> str:
    """A session id: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def session_key(session_id: str) -> str:
    """What the store files a session under: a SHA-256 of its id, never the id itself."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_matches(session: ConsoleSession, presented: str | None) -> bool:
    """Whether ``presented`` is the session's CSRF token (compared in constant time)."""
    if not presented:
        return False
    return hmac.compare_digest(
        session.csrf_token.encode(), presented.encode("utf-8", "surrogatepass")
    )


class SessionStore(Protocol):
    """Where the console's sessions live (shared by replicas when it is Redis).

    Raises (every method):
        StateUnavailable: The shared store cannot be reached.
    """

    async def create(self, key: str, session: ConsoleSession, *, idle_s: float) -> None:
        """File ``session`` under ``key``; it ends after ``idle_s`` without :meth:`touch`."""
        ...

    async def touch(self, key: str, *, idle_s: float) -> ConsoleSession | None:
        """The live session under ``key`` (its idle time restarted), None when there is none
        or it has ended."""
        ...

    async def delete(self, key: str) -> None:
        """End the session under ``key`` (nothing if there is none)."""
        ...


class MemorySessions:
    """:class:`SessionStore` in this process, bounded to ``max_sessions``.

    Args:
        max_sessions: Sessions held at most; the least recently used ends first. Default
            10 000.
        max_per_tenant: Sessions one tenant holds at most; its own least recently used ends
            first. Default 100.
        clock: Wall-clock seconds (a fake clock in tests).
    """

    def __init__(
        self,
        *,
        max_sessions: int = MEMORY_MAX_SESSIONS,
        max_per_tenant: int = MAX_SESSIONS_PER_TENANT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sessions < 1 or max_per_tenant < 1:
            raise ValueError("max_sessions and max_per_tenant must be at least 1")
        self._max = max_sessions
        self._max_per_tenant = max_per_tenant
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[ConsoleSession, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, key: str, session: ConsoleSession, *, idle_s: float) -> None:
        now = self._clock()
        self._sessions[key] = (session, now + idle_s)
        self._sessions.move_to_end(key)
        # least recently used first: the tenant's own oldest beyond its share, then anyone's
        mine = [k for k, (s, _) in self._sessions.items() if s.principal == session.principal]
        for old in mine[: max(0, len(mine) - self._max_per_tenant)]:
            del self._sessions[old]
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    async def touch(self, key: str, *, idle_s: float) -> ConsoleSession | None:
        found = self._sessions.get(key)
        if found is None:
            return None
        session, idle_until = found
        now = self._clock()
        if now >= idle_until or now >= session.expires_at:
            del self._sessions[key]
            return None
        self._sessions[key] = (session, now + idle_s)
        self._sessions.move_to_end(key)
        return session

    async def delete(self, key: str) -> None:
        self._sessions.pop(key, None)
