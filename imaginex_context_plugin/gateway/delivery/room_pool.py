"""The gateway's room connections: one pooled ``rtc.Room`` per room it delivers to, bounded.

Each pooled connection is a WebRTC peer connection to LiveKit (sockets, native threads, a few
MiB of memory: ``benchmarks/bench_fanout.py`` measures it), so the pool has limits:

- **a cap** (``max_rooms``): at the cap, opening a connection to a new room first closes the
  least recently used *idle* one (no delivery in flight, nobody holding it); when every pooled
  connection is busy, the newcomer waits until one is released (the caller's deadline bounds
  the wait);
- **a bound on joins under way** (``max_concurrent_joins``): a fan-out to hundreds of rooms the
  gateway has never joined would otherwise start hundreds of WebRTC handshakes at once, and on
  a small machine they would all time out together instead of most completing;
- **an idle timeout**: a connection unused for ``idle_timeout`` is closed (one timer for the
  whole pool).

A join is never cancelled half-way (a cancelled native connect may still complete and leave a
connection nobody closes): a caller that stops waiting leaves it to finish for the next caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from livekit import rtc

from ...errors import BackendError, ErrorCode
from ...log import logger

DEFAULT_MAX_ROOMS: Final = 1000
"""Most room connections held at once (joining included); about 2 MiB and a few sockets each."""
DEFAULT_MAX_CONCURRENT_JOINS: Final = 8
"""Most room joins (WebRTC handshakes) under way at once; later ones queue. Joins compete for
CPU: on 2 cores a first fan-out to 100 rooms joined all 100 within 10 s with 8 at once, and 1
with 32 (``benchmarks/bench_fanout.py --joins``)."""
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
"""A pooled room connection unused for this long is closed."""

_JOIN_FAILED: Final = "Could not join the agent's room on LiveKit."
_CLOSED: Final = "The gateway is shutting down."

Join = Callable[[rtc.Room, str], Awaitable[None]]
"""Connects an unconnected ``rtc.Room`` to the named room (token, URL and options are the
caller's)."""


@dataclass(eq=False)
class PooledRoom:
    """One pooled connection; ``in_flight`` counts its current users (never evicted then)."""

    name: str
    room: rtc.Room
    connecting: asyncio.Task[None]
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    # set while LiveKit's connection is down (the SDK reconnects on its own meanwhile)
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.room.on("reconnecting", self.lost.set)
        self.room.on("disconnected", self._on_disconnected)
        self.room.on("reconnected", self.lost.clear)

    def _on_disconnected(self, _reason: object) -> None:
        self.lost.set()

    def unwatch(self) -> None:
        self.room.off("reconnecting", self.lost.set)
        self.room.off("disconnected", self._on_disconnected)
        self.room.off("reconnected", self.lost.clear)

    def usable(self) -> bool:
        task = self.connecting
        if not task.done():
            return True
        return not task.cancelled() and task.exception() is None and self.room.isconnected()


class RoomPool:
    """Pooled, bounded room connections.

    Args:
        join: Connects a room (the backend's token and URL).
        room_factory: Makes the unconnected ``rtc.Room`` for a room name.
        max_rooms: Most connections held at once. Default :data:`DEFAULT_MAX_ROOMS`.
        max_concurrent_joins: Most joins under way at once. Default
            :data:`DEFAULT_MAX_CONCURRENT_JOINS`.
        idle_timeout: Seconds after which an unused connection is closed. Default 300.
    """

    def __init__(
        self,
        join: Join,
        room_factory: Callable[[str], rtc.Room],
        *,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        max_concurrent_joins: int = DEFAULT_MAX_CONCURRENT_JOINS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        if max_rooms < 1 or max_concurrent_joins < 1:
            raise ValueError("max_rooms and max_concurrent_joins must be at least 1")
        self._join = join
        self._room_factory = room_factory
        self._max_rooms = max_rooms
        self._idle_timeout = idle_timeout
        self._joins = asyncio.Semaphore(max_concurrent_joins)
        # least recently used first: eviction takes the first idle one
        self._rooms: OrderedDict[str, PooledRoom] = OrderedDict()
        self._released = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.evictions = 0
        """Idle connections closed to make room under the cap (since the start)."""

    @property
    def names(self) -> list[str]:
        """The rooms held (or being joined), least recently used first."""
        return list(self._rooms)

    @property
    def max_rooms(self) -> int:
        return self._max_rooms

    async def acquire(self, room_name: str) -> PooledRoom:
        """The joined connection to ``room_name``, counted as in use until :meth:`release`.

        Waits for a free place under the cap and for the join; cancelling the wait leaves the
        join to finish for the next caller.

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when the room cannot be joined or the pool
                is closed.
        """
        self._close_idle()
        pooled = await self._entry(room_name)
        # counted before the join completes, so that no newcomer evicts it meanwhile
        pooled.in_flight += 1
        self._rooms.move_to_end(room_name)
        try:
            await asyncio.shield(pooled.connecting)
        except asyncio.CancelledError:
            self.release(pooled)
            raise
        except Exception as exc:
            self.release(pooled)
            logger.warning(
                "could not join a room", extra={"room": room_name, "error": type(exc).__name__}
            )
            if self._rooms.get(room_name) is pooled:
                self._discard(room_name)
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _JOIN_FAILED) from None
        return pooled

    def release(self, pooled: PooledRoom) -> None:
        """One use of ``pooled`` has ended."""
        pooled.in_flight -= 1
        pooled.last_used = time.monotonic()
        self._wake()
        self._schedule_idle_check()

    async def _entry(self, room_name: str) -> PooledRoom:
        while True:
            # a caller that waited for a place while the pool closed must not open a room
            if self._closed:
                raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _CLOSED)
            pooled = self._rooms.get(room_name)
            if pooled is not None and not pooled.usable():
                self._discard(room_name)
                pooled = None
            if pooled is not None:
                return pooled
            if len(self._rooms) < self._max_rooms or self._evict_one():
                return self._open(room_name)
            # every connection is in use: wait until one is released, then look again
            released = self._released
            await released.wait()

    def _open(self, room_name: str) -> PooledRoom:
        room = self._room_factory(room_name)
        task = asyncio.create_task(self._connect(room, room_name), name="imaginex_gateway.connect")
        # a caller that stops waiting leaves the join to go on; its failure is read here so
        # that asyncio does not log it as never retrieved
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        pooled = PooledRoom(room_name, room, task)
        self._rooms[room_name] = pooled
        return pooled

    async def _connect(self, room: rtc.Room, room_name: str) -> None:
        async with self._joins:
            await self._join(room, room_name)

    def _evict_one(self) -> bool:
        for name, pooled in self._rooms.items():
            if pooled.in_flight == 0:
                self.evictions += 1
                logger.debug("closing the least recently used room", extra={"room": name})
                self._discard(name)
                return True
        return False

    def _wake(self) -> None:
        # every waiter looks again; a fresh event for the next wait
        released, self._released = self._released, asyncio.Event()
        released.set()

    def _close_idle(self) -> None:
        now = time.monotonic()
        for name, pooled in list(self._rooms.items()):
            if pooled.in_flight == 0 and now - pooled.last_used >= self._idle_timeout:
                self._discard(name)

    def _schedule_idle_check(self) -> None:
        # one timer for the whole pool, set for the connection that goes idle first; rooms
        # in use reschedule when they are released
        if self._idle_timer is not None or self._closed:
            return
        idle_since = [p.last_used for p in self._rooms.values() if p.in_flight == 0]
        if not idle_since:
            return
        delay = max(0.0, min(idle_since) + self._idle_timeout - time.monotonic())
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        self._close_idle()
        self._schedule_idle_check()

    def _discard(self, room_name: str) -> None:
        pooled = self._rooms.pop(room_name)
        task = asyncio.create_task(_disconnect(pooled), name="imaginex_gateway.disconnect")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._wake()

    async def aclose(self) -> None:
        """Close every connection (joins under way first finish). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for name in list(self._rooms):
            self._discard(name)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _disconnect(pooled: PooledRoom) -> None:
    # a join under way is not cancelled: a cancelled native connect could still complete and
    # leave a connection nobody closes. It ends within the connect timeout.
    await asyncio.wait([pooled.connecting])
    pooled.unwatch()
    with contextlib.suppress(Exception):  # the room may already be gone
        await pooled.room.disconnect()
