"""The agent directory: which rooms each agent code is live in, kept without asking LiveKit.

A lookup (``agent_code -> {room: identities}``) costs one dictionary read in memory, or one
Redis round trip when gateway replicas share the directory; it never lists rooms. The directory
is written by three sources, all with the same rules:

- LiveKit's webhooks (``participant_joined``, ``participant_left``,
  ``participant_connection_aborted``, ``room_finished``; see :mod:`.webhook`);
- a targeted re-check of one room when an agent joined before publishing its code (see
  :class:`DirectorySync`);
- reconciliation with ``RoomService`` every ``reconcile_interval`` seconds, which heals a missed
  or dropped webhook (LiveKit drops a webhook it could not deliver within 30 s).

The rules, in both implementations:

- an entry is ``(room, identity) -> (agent code, participant sid, written at)``;
- ``participant_left`` removes the entry only if it is the same connection (sid), and buries
  the sid for ``tombstone_ttl`` so that a late or replayed ``participant_joined`` of a connection
  that already left is ignored;
- reconciliation replaces a room's entries with what ``RoomService`` listed, except entries
  written after the listing began (a webhook newer than the snapshot wins), and drops rooms
  ``RoomService`` no longer lists under the same rule;
- an entry not written for ``entry_ttl`` seconds is not returned (reconciliation rewrites every
  live entry, so only a dead one gets that old), and Redis keys expire with it.

Wall-clock times are used so that replicas can compare them; their clocks should agree to well
under a second (NTP), or a webhook racing a reconciliation may be undone until the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from livekit.protocol.models import ParticipantInfo

from .._livekit.rooms import ParticipantSummary, RoomDirectory
from ..expiring import ExpiringCache
from ..log import logger
from ..protocol import AGENT_CODE_ATTRIBUTE, SENDER_ATTRIBUTE

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_RECONCILE_INTERVAL_S: Final = 30.0
"""Seconds between two reconciliations with ``RoomService`` (one replica per interval)."""
DEFAULT_ENTRY_TTL_S: Final = 300.0
"""An entry not confirmed for this long (by a webhook or a reconciliation) is gone."""
DEFAULT_TOMBSTONE_TTL_S: Final = 600.0
"""How long a connection that left stays buried: longer than a webhook's 5-minute signature
plus LiveKit's retries, so a late ``participant_joined`` cannot bring it back."""
DEFAULT_KEY_PREFIX: Final = "imaginex:"
"""Prefix of every Redis key the directory writes."""
DEFAULT_RECHECK_DELAYS_S: Final = (0.5, 2.0, 5.0)
"""When an agent joined without its code, its room is listed again after these delays (each
counted from the join) until the code shows or the agent is gone."""
FIRST_SYNC_RETRY_S: Final = 1.0
"""Until the directory has been filled once, lookups retry that at most this often."""
MAX_TOMBSTONES: Final = 100_000
"""Buried connections remembered in memory (the oldest are forgotten first)."""
MAX_PENDING_RECHECKS: Final = 1_000
"""Agents waiting for a re-check at once; a join beyond that waits for reconciliation."""


class DirectoryError(Exception):
    """The directory's store (Redis) could not be read or written."""


@dataclass(frozen=True)
class Presence:
    """One agent in one room, as the directory records it."""

    room: str
    identity: str
    agent_code: str
    sid: str = ""


class AgentDirectory(Protocol):
    """``agent_code -> {room: identities}``, written from webhooks and reconciliation.

    Times (``since``) are wall-clock seconds (``time.time()``).
    """

    async def rooms_of(self, agent_code: str) -> dict[str, list[str]]:
        """The rooms where ``agent_code`` is live and the identities publishing it there.

        Raises:
            DirectoryError: When the store cannot be read.
        """
        ...

    async def joined(self, presence: Presence) -> bool:
        """Record an agent; False (nothing written) when its connection already left."""
        ...

    async def left(self, room: str, identity: str, *, sid: str = "") -> None:
        """Forget an agent's connection ``sid`` (any connection when empty) and bury it."""
        ...

    async def room_finished(self, room: str) -> None:
        """Forget every agent of ``room``."""
        ...

    async def reconcile(self, listing: Mapping[str, Sequence[Presence]], *, since: float) -> None:
        """Make the listed rooms match ``listing`` and drop every room it does not list.

        Entries written at or after ``since`` (when the listing began) are kept as they are.
        """
        ...

    async def reconcile_rooms(
        self, listing: Mapping[str, Sequence[Presence]], *, since: float
    ) -> None:
        """Like :meth:`reconcile`, for the listed rooms only (other rooms are left alone)."""
        ...

    async def claim_reconciliation(self, *, ttl: float) -> bool:
        """True for the one caller (among replicas) that should reconcile for ``ttl`` seconds."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Entry:
    agent_code: str
    sid: str
    written: float


class MemoryAgentDirectory:
    """:class:`AgentDirectory` in this process (one gateway alone).

    Args:
        entry_ttl: See :data:`DEFAULT_ENTRY_TTL_S`. Default 300.
        tombstone_ttl: See :data:`DEFAULT_TOMBSTONE_TTL_S`. Default 600.
        clock: Wall-clock seconds. Default ``time.time``.
    """

    def __init__(
        self,
        *,
        entry_ttl: float = DEFAULT_ENTRY_TTL_S,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._entry_ttl = entry_ttl
        self._clock = clock
        self._rooms: dict[str, dict[str, _Entry]] = {}
        self._codes: dict[str, dict[str, set[str]]] = {}
        self._gone: ExpiringCache[bool] = ExpiringCache(
            ttl_s=tombstone_ttl, max_entries=MAX_TOMBSTONES, clock=clock
        )

    async def rooms_of(self, agent_code: str) -> dict[str, list[str]]:
        oldest = self._clock() - self._entry_ttl
        found: dict[str, list[str]] = {}
        for room, identities in self._codes.get(agent_code, {}).items():
            entries = self._rooms.get(room, {})
            live = sorted(i for i in identities if entries[i].written > oldest)
            if live:
                found[room] = live
        return found

    async def joined(self, presence: Presence) -> bool:
        if presence.sid and presence.sid in self._gone:
            return False
        self._put(presence.room, presence.identity, presence.agent_code, presence.sid)
        return True

    async def left(self, room: str, identity: str, *, sid: str = "") -> None:
        self._bury(sid)
        entry = self._rooms.get(room, {}).get(identity)
        if entry is None or (sid and entry.sid and entry.sid != sid):
            return  # a newer connection of the same identity stays
        self._drop(room, identity)

    async def room_finished(self, room: str) -> None:
        for identity, entry in list(self._rooms.get(room, {}).items()):
            self._bury(entry.sid)
            self._drop(room, identity)

    async def reconcile(self, listing: Mapping[str, Sequence[Presence]], *, since: float) -> None:
        absent = {room: () for room in self._rooms if room not in listing}
        await self.reconcile_rooms({**listing, **absent}, since=since)

    async def reconcile_rooms(
        self, listing: Mapping[str, Sequence[Presence]], *, since: float
    ) -> None:
        for room, present in listing.items():
            wanted = {p.identity: p for p in present}
            for identity, entry in list(self._rooms.get(room, {}).items()):
                listed = wanted.get(identity)
                if entry.written >= since:
                    if listed is not None and listed.sid != entry.sid:
                        del wanted[identity]  # the webhook saw a newer connection
                elif listed is None or (listed.agent_code, listed.sid) != (
                    entry.agent_code,
                    entry.sid,
                ):
                    self._drop(room, identity)
            for p in wanted.values():
                if not (p.sid and p.sid in self._gone):
                    self._put(room, p.identity, p.agent_code, p.sid)

    async def claim_reconciliation(self, *, ttl: float) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def _put(self, room: str, identity: str, agent_code: str, sid: str) -> None:
        entries = self._rooms.setdefault(room, {})
        old = entries.get(identity)
        if old is not None and old.agent_code != agent_code:
            self._unindex(old.agent_code, room, identity)
        entries[identity] = _Entry(agent_code, sid, self._clock())
        self._codes.setdefault(agent_code, {}).setdefault(room, set()).add(identity)

    def _drop(self, room: str, identity: str) -> None:
        entries = self._rooms.get(room)
        if entries is None or identity not in entries:
            return
        entry = entries.pop(identity)
        if not entries:
            del self._rooms[room]
        self._unindex(entry.agent_code, room, identity)

    def _unindex(self, agent_code: str, room: str, identity: str) -> None:
        rooms = self._codes.get(agent_code, {})
        identities = rooms.get(room)
        if identities is None:
            return
        identities.discard(identity)
        if not identities:
            del rooms[room]
            if not rooms:
                del self._codes[agent_code]

    def _bury(self, sid: str) -> None:
        if sid:
            self._gone.put(sid, True)


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
        raise DirectoryError("the agent directory's Redis failed") from exc


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def presences(room: str, participants: Iterable[ParticipantSummary]) -> list[Presence]:
    """The participants of ``room`` that publish an agent code, as directory entries."""
    return [
        Presence(room, p.identity, p.attributes[AGENT_CODE_ATTRIBUTE], p.sid)
        for p in participants
        if p.attributes.get(AGENT_CODE_ATTRIBUTE) and SENDER_ATTRIBUTE not in p.attributes
    ]


class DirectorySync:
    """Keeps an :class:`AgentDirectory` true: webhook events, re-checks, reconciliation.

    Args:
        directory: The directory written.
        rooms: How ``RoomService`` is asked (reconciliation and re-checks only).
        exclude: Identities never recorded (the gateway's own).
        reconcile_interval: Seconds between reconciliations. Default 30.
        recheck_delays: See :data:`DEFAULT_RECHECK_DELAYS_S`.
        clock: Wall-clock seconds. Default ``time.time``.
    """

    def __init__(
        self,
        directory: AgentDirectory,
        rooms: RoomDirectory,
        *,
        exclude: Collection[str] = (),
        reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL_S,
        recheck_delays: Sequence[float] = DEFAULT_RECHECK_DELAYS_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < reconcile_interval < math.inf:
            raise ValueError("reconcile_interval must be a positive number of seconds")
        self._directory = directory
        self._rooms = rooms
        self._exclude = frozenset(exclude)
        self._interval = reconcile_interval
        self._recheck_delays = tuple(recheck_delays)
        self._clock = clock
        self._first_sync: asyncio.Task[None] | None = None
        self._first_attempt = 0.0
        self._synced = False
        self._loop_task: asyncio.Task[None] | None = None
        self._rechecks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reconciliations = 0
        self._events = 0
        self._rechecked = 0
        self._closed = False

    @property
    def directory(self) -> AgentDirectory:
        return self._directory

    @property
    def reconciliations(self) -> int:
        """Reconciliations this process ran (a replica that lost the claim does not count)."""
        return self._reconciliations

    @property
    def events(self) -> int:
        """Webhook events applied (every verified event counts, even one that changed nothing)."""
        return self._events

    @property
    def rechecks(self) -> int:
        """Rooms listed again because an agent joined without its code."""
        return self._rechecked

    def start(self) -> None:
        """Start reconciling: once at once, then every interval. Later calls do nothing.

        The first reconciliation runs at once: a directory that was never filled would answer
        "no rooms" for agents that joined before this gateway started.
        """
        if self._first_sync is None and not self._closed:
            self._first_sync = asyncio.create_task(
                self._reconcile_logged(), name="imaginex_gateway.directory_first_sync"
            )
            self._loop_task = asyncio.create_task(
                self._reconcile_forever(), name="imaginex_gateway.directory_reconcile"
            )

    async def ready(self) -> None:
        """:meth:`start`, then wait until the directory has been filled once.

        Until one reconciliation has succeeded (here or, with Redis, on another replica), an
        empty directory cannot be told from one that was never filled: answering "no rooms"
        then would be wrong. So while none has, each call waits for an attempt (a new one at
        most every :data:`FIRST_SYNC_RETRY_S`) and raises if it failed.

        Raises:
            DirectoryError: No reconciliation has succeeded yet.
        """
        self.start()
        first = self._first_sync
        if self._synced or first is None:
            return
        if first.done() and time.monotonic() - self._first_attempt >= FIRST_SYNC_RETRY_S:
            first = self._first_sync = asyncio.create_task(
                self._reconcile_logged(), name="imaginex_gateway.directory_first_sync"
            )
        await asyncio.shield(first)
        if not self._synced:
            raise DirectoryError("the agent directory has not been filled from LiveKit yet")

    async def reconcile_now(self) -> bool:
        """One reconciliation, unless another replica holds this interval's claim.

        Returns:
            Whether this process reconciled.

        Raises:
            The ``RoomService`` or Redis error that stopped it.
        """
        if not await self._directory.claim_reconciliation(ttl=self._interval * 0.9):
            return False
        since = self._clock()
        room_names = await self._rooms.list_rooms()
        listed = await _list_participants(self._rooms, room_names)
        await self._directory.reconcile(
            {room: presences(room, people) for room, people in listed.items()}, since=since
        )
        self._reconciliations += 1
        logger.debug("agent directory reconciled", extra={"rooms": len(room_names)})
        return True

    async def refresh_room(
        self, room: str, participants: Sequence[ParticipantSummary], *, since: float
    ) -> None:
        """Record what a direct listing of ``room`` (begun at ``since``) showed."""
        await self._directory.reconcile_rooms(
            {room: presences(room, participants)}, since=since
        )

    async def on_event(self, event: Any) -> None:
        """Apply one verified webhook event (a ``livekit.protocol.webhook.WebhookEvent``)."""
        self._events += 1
        kind: str = event.event
        room: str = event.room.name
        if not room:
            return
        if kind == "room_finished":
            await self._directory.room_finished(room)
            return
        info: ParticipantInfo = event.participant
        if not info.identity or info.identity in self._exclude:
            return
        if kind in ("participant_left", "participant_connection_aborted"):
            task = self._rechecks.pop((room, info.identity), None)
            if task is not None:
                task.cancel()
            await self._directory.left(room, info.identity, sid=info.sid)
        elif kind == "participant_joined":
            attributes = dict(info.attributes)
            if SENDER_ATTRIBUTE in attributes:
                return
            code = attributes.get(AGENT_CODE_ATTRIBUTE)
            if code:
                await self._directory.joined(Presence(room, info.identity, code, info.sid))
            elif info.kind == ParticipantInfo.Kind.AGENT:
                # ContextPlugin publishes its code with set_attributes once connected, which
                # usually lands after LiveKit sent this event: look at this one room again
                self._schedule_recheck(room, info.identity)

    def _schedule_recheck(self, room: str, identity: str) -> None:
        key = (room, identity)
        if self._closed or key in self._rechecks or len(self._rechecks) >= MAX_PENDING_RECHECKS:
            return
        task = asyncio.create_task(
            self._recheck(room, identity), name="imaginex_gateway.directory_recheck"
        )
        self._rechecks[key] = task
        task.add_done_callback(self._recheck_done)

    def _recheck_done(self, task: asyncio.Task[None]) -> None:
        for key, pending in list(self._rechecks.items()):
            if pending is task:
                del self._rechecks[key]

    async def _recheck(self, room: str, identity: str) -> None:
        waited = 0.0
        for delay in self._recheck_delays:
            await asyncio.sleep(max(0.0, delay - waited))
            waited = delay
            since = self._clock()
            self._rechecked += 1
            try:
                people = await self._rooms.list_participants(room)
                await self.refresh_room(room, people, since=since)
            except Exception as exc:  # the next delay, or reconciliation, tries again
                logger.warning(
                    "agent directory re-check failed",
                    extra={"room": room, "error": type(exc).__name__},
                )
                continue
            person = next((p for p in people if p.identity == identity), None)
            if person is None or person.attributes.get(AGENT_CODE_ATTRIBUTE):
                return

    async def _reconcile_logged(self) -> None:
        self._first_attempt = time.monotonic()
        try:
            await self.reconcile_now()
            # False: another replica holds this interval's claim and fills the shared directory
            self._synced = True
        except Exception as exc:
            logger.warning(
                "agent directory reconciliation failed", extra={"error": type(exc).__name__}
            )

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._reconcile_logged()

    async def aclose(self) -> None:
        """Stop reconciling and re-checking. Idempotent; the directory is not closed."""
        self._closed = True
        tasks = [t for t in (self._first_sync, self._loop_task) if t is not None]
        tasks.extend(self._rechecks.values())
        self._rechecks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _list_participants(
    rooms: RoomDirectory, names: Sequence[str], *, concurrency: int = 16
) -> dict[str, list[ParticipantSummary]]:
    limit = asyncio.Semaphore(concurrency)

    async def one(room: str) -> list[ParticipantSummary]:
        async with limit:
            return await rooms.list_participants(room)

    results = await asyncio.gather(*(one(r) for r in names))
    return dict(zip(names, results, strict=True))
