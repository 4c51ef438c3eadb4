"""The agent directory in Redis, shared by gateway replicas, with the rules of
:mod:`.agent_directory`: a lookup is one ``HGETALL``, each write one Lua script."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ...errors import StateUnavailable
from .agent_directory import DEFAULT_ENTRY_TTL_S, DEFAULT_TOMBSTONE_TTL_S, Presence

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_KEY_PREFIX: Final = "imaginex:"
"""Prefix of every Redis key the directory writes."""



# Every write is one Lua script, so that replicas writing at once cannot interleave half-done
# changes. Keys are built inside the scripts from the prefix: this needs one Redis (or a
# primary with replicas), not Redis Cluster.
_LUA_COMMON: Final = """
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local tomb = tonumber(ARGV[4])
local rooms_key = prefix .. 'dir:rooms'
local function rkey(room) return prefix .. 'dir:room:' .. room end
local function ckey(code) return prefix .. 'dir:code:' .. code end
local function gkey(sid) return prefix .. 'dir:gone:' .. sid end
local function field(room, identity) return cjson.encode({room, identity}) end
local function buried(sid) return sid ~= '' and redis.call('EXISTS', gkey(sid)) == 1 end
local function bury(sid)
  if sid ~= '' then redis.call('SET', gkey(sid), '1', 'EX', tomb) end
end
local function drop(room, identity, entry)
  redis.call('HDEL', rkey(room), identity)
  redis.call('HDEL', ckey(entry.c), field(room, identity))
end
local function put(room, identity, code, sid)
  local rk = rkey(room)
  local old = redis.call('HGET', rk, identity)
  if old then
    local e = cjson.decode(old)
    if e.c ~= code then redis.call('HDEL', ckey(e.c), field(room, identity)) end
  end
  redis.call('HSET', rk, identity, cjson.encode({c = code, s = sid, t = now}))
  redis.call('EXPIRE', rk, ttl)
  local ck = ckey(code)
  redis.call('HSET', ck, field(room, identity), cjson.encode({s = sid, t = now}))
  redis.call('EXPIRE', ck, ttl)
  redis.call('ZADD', rooms_key, now, room)
  redis.call('EXPIRE', rooms_key, ttl)
end
local function forget_room_if_empty(room)
  if redis.call('HLEN', rkey(room)) == 0 then redis.call('ZREM', rooms_key, room) end
end
"""

_LUA_JOINED: Final = (
    _LUA_COMMON
    + """
local room, identity, code, sid = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if buried(sid) then return 0 end
put(room, identity, code, sid)
return 1
"""
)

_LUA_LEFT: Final = (
    _LUA_COMMON
    + """
local room, identity, sid = ARGV[5], ARGV[6], ARGV[7]
bury(sid)
local old = redis.call('HGET', rkey(room), identity)
if not old then return 0 end
local e = cjson.decode(old)
if sid ~= '' and e.s ~= '' and e.s ~= sid then return 0 end
drop(room, identity, e)
forget_room_if_empty(room)
return 1
"""
)

_LUA_ROOM_FINISHED: Final = (
    _LUA_COMMON
    + """
local room = ARGV[5]
local current = redis.call('HGETALL', rkey(room))
for i = 1, #current, 2 do
  local e = cjson.decode(current[i + 1])
  bury(e.s)
  drop(room, current[i], e)
end
redis.call('DEL', rkey(room))
redis.call('ZREM', rooms_key, room)
return 1
"""
)

# ARGV[5] = room, ARGV[6] = since (ms), then (identity, code, sid) triples
_LUA_RECONCILE_ROOM: Final = (
    _LUA_COMMON
    + """
local room, since = ARGV[5], tonumber(ARGV[6])
local wanted = {}
for i = 7, #ARGV, 3 do wanted[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]} end
local current = redis.call('HGETALL', rkey(room))
for i = 1, #current, 2 do
  local identity, e = current[i], cjson.decode(current[i + 1])
  local w = wanted[identity]
  if e.t >= since then
    if w ~= nil and w[2] ~= e.s then wanted[identity] = nil end
  elseif w == nil or w[1] ~= e.c or w[2] ~= e.s then
    drop(room, identity, e)
  end
end
for identity, w in pairs(wanted) do
  if not buried(w[2]) then put(room, identity, w[1], w[2]) end
end
forget_room_if_empty(room)
return 1
"""
)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisAgentDirectory:
    """:class:`AgentDirectory` in Redis, shared by gateway replicas.

    A lookup is one ``HGETALL`` (one round trip); each write is one script call (atomic).

    Args:
        redis: A ``redis.asyncio.Redis`` client (``decode_responses`` either way). Not closed
            by :meth:`aclose` unless ``owns_client``.
        key_prefix: Prefix of every key. Default ``imaginex:``.
        entry_ttl: See :data:`DEFAULT_ENTRY_TTL_S`. Default 300.
        tombstone_ttl: See :data:`DEFAULT_TOMBSTONE_TTL_S`. Default 600.
        owns_client: Close ``redis`` in :meth:`aclose`. Default False.
        clock: Wall-clock seconds. Default ``time.time``.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        entry_ttl: float = DEFAULT_ENTRY_TTL_S,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL_S,
        owns_client: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._entry_ttl = entry_ttl
        self._ttl_args = (max(1, math.ceil(entry_ttl)), max(1, math.ceil(tombstone_ttl)))
        self._owns_client = owns_client
        self._clock = clock
        self._joined = redis.register_script(_LUA_JOINED)
        self._left = redis.register_script(_LUA_LEFT)
        self._finished = redis.register_script(_LUA_ROOM_FINISHED)
        self._reconcile_room = redis.register_script(_LUA_RECONCILE_ROOM)
        self._lock_token = secrets.token_hex(8)

    def _common(self) -> list[Any]:
        return [self._prefix, _ms(self._clock()), *self._ttl_args]

    async def rooms_of(self, agent_code: str) -> dict[str, list[str]]:
        with _redis_errors():
            raw = await self._redis.hgetall(f"{self._prefix}dir:code:{agent_code}")
        oldest = _ms(self._clock() - self._entry_ttl)
        found: dict[str, list[str]] = {}
        for key, value in raw.items():
            room, identity = json.loads(_text(key))
            if json.loads(_text(value))["t"] > oldest:
                found.setdefault(room, []).append(identity)
        return {room: sorted(identities) for room, identities in found.items()}

    async def joined(self, presence: Presence) -> bool:
        p = presence
        with _redis_errors():
            written = await self._joined(
                args=[*self._common(), p.room, p.identity, p.agent_code, p.sid]
            )
        return bool(written)

    async def left(self, room: str, identity: str, *, sid: str = "") -> None:
        with _redis_errors():
            await self._left(args=[*self._common(), room, identity, sid])

    async def room_finished(self, room: str) -> None:
        with _redis_errors():
            await self._finished(args=[*self._common(), room])

    async def reconcile(self, listing: Mapping[str, Sequence[Presence]], *, since: float) -> None:
        with _redis_errors():
            known = await self._redis.zrange(f"{self._prefix}dir:rooms", 0, -1)
        names = [_text(room) for room in known if isinstance(room, (bytes, str))]
        absent = {room: () for room in names if room not in listing}
        await self.reconcile_rooms({**listing, **absent}, since=since)

    async def reconcile_rooms(
        self, listing: Mapping[str, Sequence[Presence]], *, since: float
    ) -> None:
        if not listing:
            return
        common = self._common()
        with _redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for room, present in listing.items():
                    triples = [x for p in present for x in (p.identity, p.agent_code, p.sid)]
                    await self._reconcile_room(
                        args=[*common, room, _ms(since), *triples], client=pipe
                    )
                await pipe.execute()

    async def claim_reconciliation(self, *, ttl: float) -> bool:
        with _redis_errors():
            claimed = await self._redis.set(
                f"{self._prefix}dir:reconcile-lock",
                self._lock_token,
                nx=True,
                px=max(1, int(ttl * 1000)),
            )
        return bool(claimed)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    from redis.exceptions import RedisError  # redis is an optional dependency

    try:
        yield
    except RedisError as exc:
        raise StateUnavailable("the agent directory's Redis failed") from exc


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

