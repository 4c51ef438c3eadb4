"""What keeps the agent directory true: LiveKit's webhook events, a re-check of the room of an
agent that joined without its code, and periodic reconciliation with ``RoomService``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from livekit.protocol.models import ParticipantInfo

from ..._livekit.rooms import ParticipantSummary, RoomDirectory
from ...errors import BackendError, ErrorCode
from ...log import logger
from ...protocol import AGENT_CODE_ATTRIBUTE, SENDER_ATTRIBUTE
from .agent_directory import AgentDirectory, Presence, presences

DEFAULT_RECONCILE_INTERVAL_S: Final = 30.0
"""Seconds between two reconciliations with ``RoomService`` (one replica per interval)."""
DEFAULT_RECHECK_DELAYS_S: Final = (0.5, 2.0, 5.0)
"""When an agent joined without its code, its room is listed again after these delays (each
counted from the join) until the code shows or the agent is gone."""
FIRST_SYNC_RETRY_S: Final = 1.0
"""Until the directory has been filled once, lookups retry that at most this often."""
MAX_PENDING_RECHECKS: Final = 1_000
"""Agents waiting for a re-check at once; a join beyond that waits for reconciliation."""


_NOT_FILLED: Final = (
    "The agent directory has not been filled from LiveKit yet (LiveKit or the directory's "
    "store could not be reached); retry shortly."
)


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
            BackendError: ``LIVEKIT_UNAVAILABLE``: no reconciliation has succeeded yet.
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
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _NOT_FILLED)

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

