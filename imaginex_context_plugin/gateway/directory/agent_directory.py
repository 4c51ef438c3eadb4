"""The agent directory: which rooms each agent code is live in, kept without asking LiveKit.

A lookup (``agent_code -> {room: identities}``) costs one dictionary read in memory, or one
Redis round trip when gateway replicas share the directory; it never lists rooms. The directory
is written by three sources, all with the same rules:

- LiveKit's webhooks (``participant_joined``, ``participant_left``,
  ``participant_connection_aborted``, ``room_finished``; see :mod:`.webhook`);
- a targeted re-check of one room when an agent joined before publishing its code (see
  :class:`~.sync.DirectorySync`);
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

``agent_directory`` is the seam (:class:`AgentDirectory`) and its rules, ``memory_directory`` and
``redis_directory`` the two implementations (one contract test runs against both), ``sync``
what keeps it true (:class:`~.sync.DirectorySync`), ``webhook`` the route LiveKit's webhooks
reach. A store that cannot be reached raises :class:`~...errors.StateUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ..._livekit.rooms import ParticipantSummary
from ...protocol import AGENT_CODE_ATTRIBUTE, SENDER_ATTRIBUTE

DEFAULT_ENTRY_TTL_S: Final = 300.0
"""An entry not confirmed for this long (by a webhook or a reconciliation) is gone."""

DEFAULT_TOMBSTONE_TTL_S: Final = 600.0
"""How long a connection that left stays buried: longer than a webhook's 5-minute signature
plus LiveKit's retries, so a late ``participant_joined`` cannot bring it back."""


def entry_ttl_for(reconcile_interval: float) -> float:
    """How long an entry lives when reconciliation runs every ``reconcile_interval`` seconds:
    :data:`DEFAULT_ENTRY_TTL_S`, or two intervals when that is longer. Only a reconciliation
    rewrites a live agent's entry, so an entry that lived less than an interval would vanish
    between two of them with its agent still there (every agent of a call longer than the TTL,
    with ``--reconcile-interval 3600``; seen at 200 rooms in ``bench_fanout.py``)."""
    return max(DEFAULT_ENTRY_TTL_S, 2 * reconcile_interval)


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
            StateUnavailable: When the store cannot be read.
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



def presences(room: str, participants: Iterable[ParticipantSummary]) -> list[Presence]:
    """The participants of ``room`` that publish an agent code, as directory entries."""
    return [
        Presence(room, p.identity, p.attributes[AGENT_CODE_ATTRIBUTE], p.sid)
        for p in participants
        if p.attributes.get(AGENT_CODE_ATTRIBUTE) and SENDER_ATTRIBUTE not in p.attributes
    ]

