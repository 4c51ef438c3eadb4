"""The console's sessions in Redis, shared by gateway replicas (see :mod:`.sessions`).

``{prefix}session:<sha256 of the session id>`` holds the session's JSON. Its TTL is the idle
time, restarted atomically on every use by ``GETEX ... PX`` (Redis 6.2 or later) and never
longer than what is left of the session's life.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ....errors import StateUnavailable
from .sessions import ConsoleSession

__all__ = ["DEFAULT_REDIS_SESSION_PREFIX", "RedisSessions"]

DEFAULT_REDIS_SESSION_PREFIX: Final = "imaginex:console:"


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError):
        raise StateUnavailable("The console's sessions (Redis) cannot be reached.") from None


class RedisSessions:
    """:class:`~.sessions.SessionStore` in Redis.

    Args:
        client: The Redis client (the gateway's state shares its own).
        prefix: Key prefix. Default ``imaginex:console:``.
        clock: Wall-clock seconds.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_REDIS_SESSION_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._clock = clock

    def _name(self, key: str) -> str:
        return f"{self._prefix}session:{key}"

    def _ttl_ms(self, session: ConsoleSession, idle_s: float) -> int:
        return max(1, int(min(idle_s, session.expires_at - self._clock()) * 1000))

    async def create(self, key: str, session: ConsoleSession, *, idle_s: float) -> None:
        with _unavailable():
            await self._redis.set(
                self._name(key), session.to_json(), px=self._ttl_ms(session, idle_s)
            )

    async def touch(self, key: str, *, idle_s: float) -> ConsoleSession | None:
        with _unavailable():
            raw = await self._redis.getex(self._name(key), px=max(1, int(idle_s * 1000)))
        if raw is None:
            return None
        session = ConsoleSession.from_json(raw)
        left = session.expires_at - self._clock() if session is not None else 0.0
        if session is None or left <= 0:
            await self.delete(key)
            return None
        if left < idle_s:  # GETEX gave it the whole idle time: never past the session's end
            with _unavailable():
                await self._redis.pexpire(self._name(key), max(1, int(left * 1000)))
        return session

    async def delete(self, key: str) -> None:
        with _unavailable():
            await self._redis.delete(self._name(key))
