"""The agent directory in this process (one gateway alone), with the rules of
:mod:`.agent_directory`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ...expiring import ExpiringCache
from .agent_directory import DEFAULT_ENTRY_TTL_S, DEFAULT_TOMBSTONE_TTL_S, Presence

MAX_TOMBSTONES: Final = 100_000
"""Buried connections remembered in memory (the oldest are forgotten first)."""

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

