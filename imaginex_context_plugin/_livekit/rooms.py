"""Listing rooms and their participants, behind a seam the tests replace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
from livekit import api, rtc
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.room import ListParticipantsRequest, ListRoomsRequest

from .settings import LiveKitSettings

DEFAULT_API_TIMEOUT_S: Final = 5.0
"""Seconds for one RoomService call."""
NOT_AN_AGENT: Final = -1
"""The kind given to every participant that is not of kind AGENT (the only kind that matters)."""


@dataclass(frozen=True)
class ParticipantSummary:
    """What a sender needs to know of a participant to choose the agent."""

    identity: str
    attributes: Mapping[str, str]
    kind: int = NOT_AN_AGENT
    """``rtc.ParticipantKind.PARTICIPANT_KIND_AGENT`` for an agent, else ``NOT_AN_AGENT``."""
    sid: str = ""
    """The server's id of this connection (a rejoin under the same identity gets a new one)."""
    joined_at: float = 0.0
    """When it joined, in seconds since the epoch (0 when not known)."""


def summarize(info: ParticipantInfo) -> ParticipantSummary:
    """A RoomService participant as a summary (the server API numbers kinds on its own)."""
    kind = (
        rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        if info.kind == ParticipantInfo.Kind.AGENT
        else NOT_AN_AGENT
    )
    return ParticipantSummary(
        info.identity, dict(info.attributes), kind, info.sid, float(info.joined_at)
    )


class RoomDirectory(Protocol):
    """Lists rooms and their participants (on a LiveKit server: ``RoomService``)."""

    async def list_rooms(self) -> list[str]:
        """Names of the open rooms (some may have no participant left)."""
        ...

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        """The connected participants of ``room``; empty when there is no such room."""
        ...

    async def aclose(self) -> None: ...


class LiveKitRoomDirectory:
    """:class:`RoomDirectory` over ``livekit-api``'s ``RoomService``."""

    def __init__(
        self, settings: LiveKitSettings, *, timeout: float = DEFAULT_API_TIMEOUT_S
    ) -> None:
        self._settings = settings
        self._timeout = timeout
        self._api: api.LiveKitAPI | None = None

    def _client(self) -> api.LiveKitAPI:
        # created on first use: its aiohttp session must be made inside the running loop
        if self._api is None:
            self._api = api.LiveKitAPI(
                self._settings.url,
                self._settings.api_key,
                self._settings.api_secret,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._api

    async def list_rooms(self) -> list[str]:
        response = await self._client().room.list_rooms(ListRoomsRequest())
        # not filtered on num_participants: a real server (v1.13) reports 0 for a room whose
        # participants are connected, so the filter hid every live agent
        return [room.name for room in response.rooms]

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        try:
            response = await self._client().room.list_participants(
                ListParticipantsRequest(room=room)
            )
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                return []
            raise
        return [
            summarize(p)
            for p in response.participants
            if p.state != ParticipantInfo.State.DISCONNECTED
        ]

    async def aclose(self) -> None:
        if self._api is not None:
            client, self._api = self._api, None
            await client.aclose()
