"""The console's calls list: the live agents a tenant owns, with their state, from the rooms.

One scan (``RoomService.ListRooms``, then ``ListParticipants`` per room, at most
:data:`MAX_CONCURRENT_LISTINGS` at once) serves every operator for :data:`DEFAULT_CALLS_TTL_S`,
whatever the number of consoles polling; each operator then sees only the agents whose code
its api-secret may address. An agent is a participant publishing ``imaginex.agent_code`` (as
``ContextPlugin`` does) that is not a sender; its state is the ``lk.agent.state`` attribute
``livekit-agents`` publishes (``initializing``, ``listening``, ``thinking``, ``speaking``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from livekit import api

from ...._livekit.rooms import ParticipantSummary, RoomDirectory
from ....errors import BackendError, ErrorCode
from ....log import logger
from ....protocol import AGENT_CODE_ATTRIBUTE, SENDER_ATTRIBUTE
from ...config import Principal
from .takeover import OPERATOR_ATTRIBUTE

__all__ = [
    "AGENT_STATE_ATTRIBUTE",
    "DEFAULT_CALLS_TTL_S",
    "MAX_CONCURRENT_LISTINGS",
    "Call",
    "CallsView",
]

AGENT_STATE_ATTRIBUTE: Final = "lk.agent.state"
"""The attribute ``livekit-agents`` keeps the agent's state in (``RoomIO``)."""
DEFAULT_CALLS_TTL_S: Final = 1.0
"""How long one scan of the rooms serves every console (they poll every 2 seconds)."""
MAX_CONCURRENT_LISTINGS: Final = 16
"""Most ``ListParticipants`` calls in flight at once while scanning."""


@dataclass(frozen=True)
class Call:
    """One live agent in one room, as the calls list shows it.

    Attributes:
        room: The room's name (the ``room_id`` of every control).
        agent_code: The code the agent publishes.
        agent_identity: Its participant identity.
        agent_state: ``lk.agent.state`` (``unknown`` when not published).
        started_at: When the agent joined, seconds since the epoch (0: not known).
        users: The identities of the other participants (the caller), senders and
            operators left out.
        operators: How many console operators are in the room (taking the call over).
    """

    room: str
    agent_code: str
    agent_identity: str
    agent_state: str
    started_at: float
    users: tuple[str, ...]
    operators: int

    def to_json(self) -> dict[str, object]:
        return {
            "room": self.room,
            "agent_code": self.agent_code,
            "agent_identity": self.agent_identity,
            "agent_state": self.agent_state,
            "started_at": self.started_at or None,
            "users": list(self.users),
            "operators": self.operators,
        }


def calls_in(room: str, participants: list[ParticipantSummary]) -> list[Call]:
    """The calls of one room: one per participant publishing an agent code (senders aside)."""
    agents = [
        p
        for p in participants
        if AGENT_CODE_ATTRIBUTE in p.attributes and SENDER_ATTRIBUTE not in p.attributes
    ]
    if not agents:
        return []
    operators = sum(1 for p in participants if OPERATOR_ATTRIBUTE in p.attributes)
    users = tuple(
        sorted(
            p.identity
            for p in participants
            if AGENT_CODE_ATTRIBUTE not in p.attributes
            and SENDER_ATTRIBUTE not in p.attributes
            and OPERATOR_ATTRIBUTE not in p.attributes
        )
    )
    return [
        Call(
            room=room,
            agent_code=agent.attributes[AGENT_CODE_ATTRIBUTE],
            agent_identity=agent.identity,
            agent_state=agent.attributes.get(AGENT_STATE_ATTRIBUTE, "unknown"),
            started_at=agent.joined_at,
            users=users,
            operators=operators,
        )
        for agent in agents
    ]


class CallsView:
    """Every live call, scanned at most once per ``ttl`` for all consoles.

    Args:
        rooms: How rooms and participants are listed (``RoomService``; a test seam).
        ttl: Seconds one scan serves. Default 1.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        rooms: RoomDirectory,
        *,
        ttl: float = DEFAULT_CALLS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rooms = rooms
        self._ttl = ttl
        self._clock = clock
        self._scanned: tuple[float, list[Call]] | None = None
        # concurrent consoles wait for the scan under way instead of starting their own
        self._lock = asyncio.Lock()

    async def calls_for(self, principal: Principal) -> list[Call]:
        """The calls ``principal`` may see, longest first.

        Raises:
            BackendError: ``LIVEKIT_UNAVAILABLE`` when the rooms cannot be listed.
        """
        return [c for c in await self._all() if principal.may_address(c.agent_code)]

    async def _all(self) -> list[Call]:
        async with self._lock:
            scanned = self._scanned
            if scanned is not None and self._clock() - scanned[0] < self._ttl:
                return scanned[1]
            try:
                calls = await self._scan()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, api.TwirpError) as exc:
                logger.warning(
                    "console room listing failed",
                    extra={"error": type(exc).__name__, "status": getattr(exc, "status", None)},
                )
                raise BackendError(
                    ErrorCode.LIVEKIT_UNAVAILABLE, "LiveKit could not be reached."
                ) from None
            self._scanned = (self._clock(), calls)
            return calls

    async def _scan(self) -> list[Call]:
        names = await self._rooms.list_rooms()
        limit = asyncio.Semaphore(MAX_CONCURRENT_LISTINGS)

        async def one(room: str) -> list[ParticipantSummary]:
            async with limit:
                return await self._rooms.list_participants(room)

        listings = await asyncio.gather(*(one(room) for room in names))
        calls = [
            call for room, ps in zip(names, listings, strict=True) for call in calls_in(room, ps)
        ]
        # the oldest call first (not known: last), then by room name
        calls.sort(key=lambda c: (c.started_at or float("inf"), c.room, c.agent_identity))
        return calls

    async def aclose(self) -> None:
        await self._rooms.aclose()

