"""Gateway state shared by replicas in Redis: Idempotency-Key records and rate limits.

Every step that reads and then writes is one Lua script, so two replicas can never both pass a
check. Keys live under a prefix (default ``imaginex:``); an Idempotency-Key is stored under a
SHA-256 of (agent code, key), so long or Unicode keys cost the same. Layout:

- ``{prefix}idem:{<hash>}``: a hash with ``digest`` (of the request the key is bound to), and
  once final ``status``, ``headers``, ``body`` (the answer); it expires the window after the
  first claim and is never refreshed.
- ``{prefix}idem:{<hash>}:lease``: the lease, ``SET NX PX`` to the holder's token. The braces
  keep both keys in one Redis Cluster slot.
- ``{prefix}rate:<name>``: a token bucket (``tokens``, ``at``), refilled from Redis' own clock
  (``TIME``), so replicas with skewed clocks share one bucket; it expires once full again.

Redis errors become :class:`~...errors.StateUnavailable` (the request is answered 503); the
client fails fast (one reconnect attempt, short timeouts), so a request never hangs on a dead
Redis.
"""

from __future__ import annotations

import json
from typing import Any, Final

try:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # an optional dependency: say how to get it
    from ...errors import ConfigError

    raise ConfigError(
        "Gateway replicas on Redis need the redis package: "
        "pip install 'imaginex-context-plugin[redis]'."
    ) from None

from ...errors import StateUnavailable
from ...log import logger
from ...security import RateLimit
from .gateway_state import (
    IDEMPOTENCY_WINDOW_S,
    Claim,
    IdempotencyStore,
    StoredAnswer,
)

__all__ = ["DEFAULT_REDIS_PREFIX", "DEFAULT_REDIS_TIMEOUT_S", "RedisState"]

DEFAULT_REDIS_PREFIX: Final = "imaginex:"
DEFAULT_REDIS_TIMEOUT_S: Final = 1.0
"""Seconds to connect to Redis or wait for one answer before the request is answered 503."""

# KEYS: record, lease. ARGV: digest, token, lease_ms, window_ms.
_CLAIM: Final = """
local digest = redis.call('HGET', KEYS[1], 'digest')
if digest and digest ~= ARGV[1] then return {'mismatch'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  return {'done', status, redis.call('HGET', KEYS[1], 'headers'),
          redis.call('HGET', KEYS[1], 'body')}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  if not digest then
    redis.call('HSET', KEYS[1], 'digest', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
  return {'claimed'}
end
return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
"""
# KEYS: record, lease. ARGV: token, status ('' for none), headers, body.
_FINISH: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
end
return 1
"""
# KEYS: bucket. ARGV: per_second, burst. Returns the wait in seconds, as text (a Lua number
# would come back as an integer).
_TAKE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class _RedisIdempotency:
    def __init__(self, redis: Redis, prefix: str, window_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_ms = max(1, round(window_s * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)

    def _keys(self, key: str) -> list[str]:
        record = f"{self._prefix}idem:{{{key}}}"
        return [record, record + ":lease"]

    async def claim(self, key: str, digest: bytes, *, token: str, lease_ms: int) -> Claim:
        reply = await _call(
            self._claim(
                keys=self._keys(key), args=[digest.hex(), token, lease_ms, self._window_ms]
            )
        )
        outcome = _text(reply[0])
        if outcome == "done":
            headers = json.loads(_text(reply[2]))
            return Claim("done", answer=StoredAnswer(int(reply[1]), bytes(reply[3]), headers))
        if outcome == "busy":
            return Claim("busy", retry_ms=max(1, int(reply[1])))
        if outcome == "mismatch":
            return Claim("mismatch")
        return Claim("claimed")

    async def finish(self, key: str, *, token: str, answer: StoredAnswer | None) -> bool:
        if answer is None:
            args: list[Any] = [token, "", "", b""]
        else:
            args = [token, answer.status, json.dumps(dict(answer.headers)), answer.body]
        kept = await _call(self._finish(keys=self._keys(key), args=args))
        return bool(kept)


class _RedisBuckets:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = prefix
        self._take = redis.register_script(_TAKE)

    async def take(self, name: str, limit: RateLimit) -> float:
        wait = await _call(
            self._take(keys=[f"{self._prefix}rate:{name}"], args=[limit.per_second, limit.burst])
        )
        return float(wait)


class RedisState:
    """Gateway state in Redis, shared by every replica given the same URL and prefix.

    Args:
        url: ``redis://`` (or ``rediss://``, ``unix://``) URL, as ``redis-py`` reads it.
        prefix: Prefix of every key. Default ``imaginex:``.
        window_s: How long an Idempotency-Key stays bound and its answer kept. Default 600.
        timeout_s: Seconds to connect or to wait for one answer. Default 1.

    Nothing is connected until the first request; an unreachable Redis is answered 503 then.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        window_s: float = IDEMPOTENCY_WINDOW_S,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
    ) -> None:
        # one reconnect, no backoff: a pooled connection broken by a Redis restart is retried
        # once on a fresh one, and a Redis that is down is reported at once
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._idempotency = _RedisIdempotency(self._redis, prefix, window_s)
        self._buckets = _RedisBuckets(self._redis, prefix)

    @property
    def idempotency(self) -> IdempotencyStore:
        return self._idempotency

    @property
    def buckets(self) -> _RedisBuckets:
        return self._buckets

    @property
    def replicated(self) -> bool:
        return True

    @property
    def client(self) -> Redis:
        """The Redis client (the agent directory shares it rather than opening another)."""
        return self._redis

    async def aclose(self) -> None:
        await self._redis.aclose()


async def _call(pending: Any) -> Any:
    try:
        return await pending
    except (RedisError, OSError) as exc:
        logger.warning("redis unreachable", extra={"error": type(exc).__name__})
        raise StateUnavailable("Redis cannot be reached") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
