"""Gateway state shared by replicas in Redis: Idempotency-Key records, rate limits and the
agents' replies already taken.

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
- ``{prefix}reply:<signature>``: an agent's reply taken (``SET NX PX``: one replica gets to
  take it), for :data:`~.gateway_state.REPLY_MEMORY_S`.
- ``{prefix}replies``: a pub/sub channel, not a key (:class:`RedisReplyRelay`): agents' replies
  that reached a replica not waiting for them, for the one that is.

Redis errors become :class:`~...errors.StateUnavailable` (the request is answered 503); the
client fails fast (one reconnect attempt, short timeouts), so a request never hangs on a dead
Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
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
    REPLY_MEMORY_S,
    Claim,
    IdempotencyStore,
    ReplyMemory,
    StoredAnswer,
)

__all__ = ["DEFAULT_REDIS_PREFIX", "DEFAULT_REDIS_TIMEOUT_S", "RedisReplyRelay", "RedisState"]

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


class _RedisReplies:
    def __init__(self, redis: Redis, prefix: str, window_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_ms = max(1, round(window_s * 1000))

    async def remember(self, signature: str) -> bool:
        taken = await _call(
            self._redis.set(f"{self._prefix}reply:{signature}", b"1", nx=True, px=self._window_ms)
        )
        return bool(taken)


class RedisState:
    """Gateway state in Redis, shared by every replica given the same URL and prefix.

    Args:
        url: ``redis://`` (or ``rediss://``, ``unix://``) URL, as ``redis-py`` reads it.
        prefix: Prefix of every key. Default ``imaginex:``.
        window_s: How long an Idempotency-Key stays bound and its answer kept. Default 600.
        timeout_s: Seconds to connect or to wait for one answer. Default 1.
        reply_window_s: How long an agent's reply is remembered once taken. Default 600.

    Nothing is connected until the first request; an unreachable Redis is answered 503 then.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_REDIS_PREFIX,
        window_s: float = IDEMPOTENCY_WINDOW_S,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
        reply_window_s: float = REPLY_MEMORY_S,
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
        self._replies = _RedisReplies(self._redis, prefix, reply_window_s)

    @property
    def idempotency(self) -> IdempotencyStore:
        return self._idempotency

    @property
    def buckets(self) -> _RedisBuckets:
        return self._buckets

    @property
    def replies(self) -> ReplyMemory:
        return self._replies

    @property
    def replicated(self) -> bool:
        return True

    @property
    def client(self) -> Redis:
        """The Redis client (the agent directory shares it rather than opening another)."""
        return self._redis

    async def aclose(self) -> None:
        await self._redis.aclose()


RELAY_RETRY_S: Final = 1.0
"""Pause before the relay subscribes again after losing Redis."""


class RedisReplyRelay:
    """Agents' replies handed between replicas over Redis pub/sub (``{prefix}replies``).

    A reply is verified by the replica it reached, then published; every replica's
    subscriber hands it to its inbox, which takes it only for a delivery waiting there. While
    Redis is away a publish fails (the agent's reply gets 503) and the subscriber keeps trying
    to come back; a reply published meanwhile is lost, and the delivery times out as for a
    lost packet (or is answered by its resend).

    Args:
        client: The Redis client (``RedisState.client``; left open).
        prefix: Prefix of the channel's name. Default ``imaginex:``.
    """

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_REDIS_PREFIX) -> None:
        self._client = client
        self._channel = f"{prefix}replies"
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def publish(self, room: str, request_id: str, ack: str) -> None:
        await _call(self._client.publish(self._channel, json.dumps([room, request_id, ack])))

    async def start(self, answer: Callable[[str, str, str], None]) -> None:
        """Subscribe (waits until subscribed, at most a few seconds) and hand every reply
        published from now on to ``answer``."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen(answer), name="imaginex_context.reply_relay"
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def _listen(self, answer: Callable[[str, str, str], None]) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    try:
                        room, request_id, ack = json.loads(message["data"])
                    except (ValueError, TypeError):
                        logger.warning("unreadable relayed reply ignored")
                        continue
                    answer(str(room), str(request_id), str(ack))
            except (RedisError, OSError) as exc:
                logger.warning("reply relay lost Redis", extra={"error": type(exc).__name__})
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8
            await asyncio.sleep(RELAY_RETRY_S)

    async def aclose(self) -> None:
        """Unsubscribe. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _call(pending: Any) -> Any:
    try:
        return await pending
    except (RedisError, OSError) as exc:
        logger.warning("redis unreachable", extra={"error": type(exc).__name__})
        raise StateUnavailable("Redis cannot be reached") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
