"""``ListedRooms``: a ``RoomDirectory`` (the ``RoomService`` seam) over a dictionary the test
edits, for the agent directory's tests that need exact listings (kinds, connection sids)."""

from __future__ import annotations

from dataclasses import dataclass, field

from imaginex_context_plugin._livekit.rooms import ParticipantSummary


@dataclass
class ListedRooms:
    """What ``RoomService`` would list: ``rooms[name]`` are the room's participants."""

    rooms: dict[str, list[ParticipantSummary]] = field(default_factory=dict)
    listed_rooms: int = 0
    listed_participants: list[str] = field(default_factory=list)
    down: bool = False
    """While set, every call fails as an unreachable server does."""

    async def list_rooms(self) -> list[str]:
        self.listed_rooms += 1
        if self.down:
            raise ConnectionRefusedError("RoomService is down")
        return list(self.rooms)

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        self.listed_participants.append(room)
        if self.down:
            raise ConnectionRefusedError("RoomService is down")
        return list(self.rooms.get(room, []))

    async def aclose(self) -> None:
        return None
