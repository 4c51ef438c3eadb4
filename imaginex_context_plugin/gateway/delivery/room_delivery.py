"""Delivery over room connections (``--delivery room``, the default): :class:`LiveKitBackend`.

It implements :class:`~.agent_backend.AgentBackend` on a LiveKit server:

- finding: with an agent directory (``agent_directory``, see :mod:`..directory`), one read of
  the directory, kept true by LiveKit's webhooks and a periodic reconciliation, never a listing
  per request; without one, ``RoomService.list_rooms`` then ``list_participants`` for each room
  (cached ``listing_ttl``). Either way a request naming a ``room_id`` the directory does not
  show the agent in is looked up directly (one ``list_participants``), and participants count
  when their ``imaginex.agent_code`` attribute (which ``ContextPlugin`` publishes) is the code;
  one agent per room, so a room hears a message once;
- delivering: RPC ``imaginex.context`` from one pooled sender connection per room
  (:mod:`.room_pool`). Its identity is the same in every room and for the gateway's whole life,
  because the receiver deduplicates by (sender identity, message id): that is what makes a
  retried HTTP call with the same ``Idempotency-Key`` be applied once.

Both halves are seams: ``directory`` (how rooms and participants are listed) and
``room_factory`` (which ``rtc.Room`` joins a room) can be replaced, which is how the tests run
this class against in-process rooms. The other deliveries find agents through this class too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from livekit import api, rtc

from ..._livekit.agents import AGENT_KIND, choose_agent
from ..._livekit.rooms import LiveKitRoomDirectory, ParticipantSummary, RoomDirectory
from ..._livekit.rpc import call_agent
from ..._livekit.settings import LiveKitSettings
from ..._livekit.tokens import gateway_token
from ...errors import BackendError, ErrorCode
from ...log import logger
from ...protocol import AGENT_CODE_ATTRIBUTE
from ...request_errors import ContextError
from ..directory.agent_directory import AgentDirectory
from ..directory.sync import DEFAULT_RECONCILE_INTERVAL_S, DirectorySync
from ..directory.webhook import LiveKitWebhook
from .agent_backend import AgentTarget
from .room_pool import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_JOINS,
    DEFAULT_MAX_ROOMS,
    PooledRoom,
    RoomPool,
)

DEFAULT_GATEWAY_IDENTITY: Final = "imaginex-gateway"
"""Participant identity the gateway joins rooms with; agents must trust it (or its signature)."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
"""Seconds to join a room before the delivery fails with ``LIVEKIT_UNAVAILABLE``."""
DEFAULT_LISTING_TTL_S: Final = 1.0
"""How long one scan of every room serves later requests (``room_id`` lookups are never cached)."""
SEND_RETRY_PAUSE_S: Final = 0.1
"""Pause before sending again a request the SDK could not send (within the same deadline)."""
MAX_CONCURRENT_LISTINGS: Final = 16
"""Most ``list_participants`` calls in flight at once while scanning rooms."""


_CONNECTION_LOST: Final = "The connection to LiveKit is down (reconnecting); retry shortly."
_LOST_IN_FLIGHT: Final = (
    "The connection to LiveKit was lost while the message was on its way; it may still be "
    "delivered once LiveKit is back, so retry with the same Idempotency-Key."
)

_JOINED_TOO_LATE: Final = (
    "The agent's room was joined too late to deliver the message in time; nothing was sent."
)

_UNAVAILABLE: Final = "LiveKit could not be reached."


class LiveKitBackend:
    """:class:`~.agent_backend.AgentBackend` on a LiveKit server, delivering over room
    connections.

    Args:
        settings: LiveKit URL and API key pair.
        identity: Participant identity in every room. Keep it stable: the receiver dedups
            retried messages per sender identity. Two gateways sharing it in one room would
            disconnect each other, so give replicas distinct identities.
        connect_timeout: Seconds to join a room. Default 5.
        idle_timeout: Seconds after which an unused room connection is closed. Default 300.
        listing_ttl: Seconds one scan of every room is reused for, so that a burst of requests
            costs one scan rather than one per request. 0 scans for every request. Default 1.
        directory: How rooms and participants are listed. Default: ``RoomService``.
        agent_directory: Where agents are found without listing rooms (memory or Redis, see
            :mod:`..directory`); it must then get LiveKit's webhooks (the ``/livekit/webhook``
            route of :func:`~..http.app.create_app`). Default: None, rooms are scanned instead.
            Closed with the backend.
        reconcile_interval: Seconds between reconciliations of ``agent_directory`` with
            ``RoomService``. Default 30.
        room_factory: Makes the (unconnected) ``rtc.Room`` that joins a given room name.
            Default: ``rtc.Room()``.
        max_rooms: Most room connections held at once; at the cap the least recently used
            idle one is closed for a new room (see :mod:`.room_pool`). Default 1000.
        max_concurrent_joins: Most room joins under way at once. Default 8.
    """

    def __init__(
        self,
        settings: LiveKitSettings,
        *,
        identity: str = DEFAULT_GATEWAY_IDENTITY,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        listing_ttl: float = DEFAULT_LISTING_TTL_S,
        directory: RoomDirectory | None = None,
        agent_directory: AgentDirectory | None = None,
        reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL_S,
        room_factory: Callable[[str], rtc.Room] | None = None,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        max_concurrent_joins: int = DEFAULT_MAX_CONCURRENT_JOINS,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._listing_ttl = listing_ttl
        self._directory = CountedRoomDirectory(
            directory if directory is not None else LiveKitRoomDirectory(settings)
        )
        self._sync = (
            None
            if agent_directory is None
            else DirectorySync(
                agent_directory,
                self._directory,
                exclude=(identity,),
                reconcile_interval=reconcile_interval,
            )
        )
        self._webhook: LiveKitWebhook | None = None
        self._pool = RoomPool(
            self._connect,
            room_factory if room_factory is not None else _new_room,
            max_rooms=max_rooms,
            max_concurrent_joins=max_concurrent_joins,
            idle_timeout=idle_timeout,
        )
        self._scanned: tuple[float, list[tuple[str, list[ParticipantSummary]]]] | None = None
        # concurrent requests wait for the scan under way instead of starting their own
        self._scan_lock = asyncio.Lock()
        self._closed = False

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def pooled_rooms(self) -> list[str]:
        """Names of the rooms the gateway holds a connection to (or is joining), least recently
        used first."""
        return self._pool.names

    @property
    def pool(self) -> RoomPool:
        """The room connections (its cap, its evictions)."""
        return self._pool

    @property
    def room_service_calls(self) -> RoomServiceCalls:
        """How many ``RoomService`` calls this backend made (requests, webhooks, reconciling)."""
        return self._directory.calls

    @property
    def directory_sync(self) -> DirectorySync | None:
        """What keeps ``agent_directory`` true (the webhook route feeds it); None without one."""
        return self._sync

    @property
    def livekit_webhook(self) -> LiveKitWebhook | None:
        """The ``/livekit/webhook`` handler feeding ``agent_directory``; None without one."""
        if self._sync is None:
            return None
        if self._webhook is None:
            self._webhook = LiveKitWebhook(
                self._sync, api_key=self._settings.api_key, api_secret=self._settings.api_secret
            )
        return self._webhook

    # -- finding

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        self._check_open()
        try:
            if self._sync is not None:
                listings = await self._look_up(self._sync, agent_code, room_id)
            elif room_id is not None:
                listings = [(room_id, (await self._list_all([room_id]))[0])]
            else:
                listings = await self._scan()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, api.TwirpError) as exc:
            logger.warning(
                "LiveKit room listing failed",
                extra={"error": type(exc).__name__, "status": getattr(exc, "status", None)},
            )
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _UNAVAILABLE) from None
        targets = []
        for room, participants in listings:
            try:
                agent = choose_agent(
                    ((p.identity, p.kind, p.attributes) for p in participants),
                    agent_code=agent_code,
                    room=room,
                    exclude=(self._identity,),
                )
            except ContextError as exc:
                targets.append(AgentTarget(room, "", refusal=exc.message))
                continue
            if agent is not None:
                targets.append(AgentTarget(room, agent))
        return targets

    async def still_there(self, target: AgentTarget) -> bool | None:
        """Whether ``target``'s agent is still in its room: one ``ListParticipants`` call,
        for a delivery that went unanswered. None when the room no longer exists (or has
        nobody in it).

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when LiveKit cannot be asked.
        """
        self._check_open()
        try:
            participants = await self._directory.list_participants(target.room)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, api.TwirpError) as exc:
            logger.warning(
                "LiveKit room listing failed",
                extra={"error": type(exc).__name__, "status": getattr(exc, "status", None)},
            )
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _UNAVAILABLE) from None
        if not participants:
            return None
        return any(p.identity == target.identity for p in participants)

    async def _look_up(
        self, sync: DirectorySync, agent_code: str, room_id: str | None
    ) -> list[tuple[str, list[ParticipantSummary]]]:
        await sync.ready()
        rooms = await sync.directory.rooms_of(agent_code)
        if room_id is not None:
            if room_id not in rooms:
                # the directory may not know this room yet (a webhook on its way): one call
                since = time.time()
                participants = (await self._list_all([room_id]))[0]
                await sync.refresh_room(room_id, participants, since=since)
                return [(room_id, participants)]
            rooms = {room_id: rooms[room_id]}
        attributes = {AGENT_CODE_ATTRIBUTE: agent_code}
        return [
            (room, [ParticipantSummary(i, attributes, AGENT_KIND) for i in identities])
            for room, identities in rooms.items()
        ]

    async def _scan(self) -> list[tuple[str, list[ParticipantSummary]]]:
        async with self._scan_lock:
            scanned = self._scanned
            if scanned is not None and time.monotonic() - scanned[0] < self._listing_ttl:
                return scanned[1]
            rooms = await self._directory.list_rooms()
            listings = list(zip(rooms, await self._list_all(rooms), strict=True))
            self._scanned = (time.monotonic(), listings)
            return listings

    async def _list_all(self, rooms: list[str]) -> list[list[ParticipantSummary]]:
        limit = asyncio.Semaphore(MAX_CONCURRENT_LISTINGS)

        async def one(room: str) -> list[ParticipantSummary]:
            async with limit:
                return await self._directory.list_participants(room)

        results = await asyncio.gather(*(one(r) for r in rooms), return_exceptions=True)
        listings: list[list[ParticipantSummary]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            listings.append(result)
        return listings

    # -- delivering

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        self._check_open()
        # one deadline for the whole delivery: waiting for a place in the pool and joining the
        # room spend the same seconds the agent has to answer in
        deadline = time.monotonic() + timeout
        pooled = await self._pool.acquire(target.room)
        try:
            # a connection whose server went away is reconnecting (the SDK goes on trying for
            # the next call): nothing is sent then, so the caller may simply retry
            if pooled.lost.is_set():
                raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _CONNECTION_LOST)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendError(ErrorCode.TIMEOUT, _JOINED_TOO_LATE)
                try:
                    return await _call(pooled, target.identity, payload, remaining)
                except BackendError as exc:
                    # the SDK could not send the request at all (SEND_FAILED: a connection just
                    # joined may still be opening its data channel, seen under load): nothing
                    # reached the agent, so it is tried again while the deadline allows
                    if not (exc.code is ErrorCode.LIVEKIT_UNAVAILABLE and exc.retryable):
                        raise
                    if deadline - time.monotonic() <= SEND_RETRY_PAUSE_S:
                        raise
                    await asyncio.sleep(SEND_RETRY_PAUSE_S)
        finally:
            self._pool.release(pooled)

    async def hold_room(self, room_name: str) -> tuple[rtc.Room, Callable[[], None]]:
        """The pooled connection to ``room_name``, kept open (never evicted) until the returned
        ``release`` is called (the events stream listens on it).

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when the room cannot be joined.
        """
        self._check_open()
        pooled = await self._pool.acquire(room_name)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._pool.release(pooled)

        return pooled.room, release

    async def _connect(self, room: rtc.Room, room_name: str) -> None:
        token = gateway_token(self._settings, identity=self._identity, room=room_name)
        await room.connect(
            self._settings.url,
            token,
            rtc.RoomOptions(auto_subscribe=False, connect_timeout=self._connect_timeout),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, "The gateway is shutting down.")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.aclose()
        if self._sync is not None:
            await self._sync.aclose()
            await self._sync.directory.aclose()
        await self._directory.aclose()


@dataclass
class RoomServiceCalls:
    """``RoomService`` calls made so far, by kind."""

    list_rooms: int = 0
    list_participants: int = 0

    @property
    def total(self) -> int:
        return self.list_rooms + self.list_participants


class CountedRoomDirectory:
    """A :class:`RoomDirectory` that counts the calls made through it (benchmarks read them)."""

    def __init__(self, inner: RoomDirectory) -> None:
        self._inner = inner
        self.calls = RoomServiceCalls()

    async def list_rooms(self) -> list[str]:
        self.calls.list_rooms += 1
        return await self._inner.list_rooms()

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        self.calls.list_participants += 1
        return await self._inner.list_participants(room)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _new_room(room_name: str) -> rtc.Room:
    return rtc.Room()


async def _call(pooled: PooledRoom, identity: str, payload: str, timeout: float) -> str:
    rpc = asyncio.ensure_future(
        call_agent(pooled.room.local_participant, identity, payload, timeout=timeout)
    )
    lost = asyncio.ensure_future(pooled.lost.wait())
    try:
        await asyncio.wait({rpc, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not rpc.done():
            # the SDK keeps the request and may still deliver it once it has reconnected
            # (seen on a real server): the outcome is unknown, as after a timeout
            raise BackendError(ErrorCode.TIMEOUT, _LOST_IN_FLIGHT)
        return rpc.result()
    except ContextError as exc:
        raise BackendError(exc.code, exc.message, retryable=exc.retryable) from None
    finally:
        for future in (rpc, lost):
            future.cancel()
