"""``RoomService.SendData`` for a fan-out: one reliable packet into a room, through
:class:`~.room_service.RoomService` (each room's token signed once per few minutes)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from livekit import api

from .room_service import RoomService


class DataSender(RoomService):
    """Sends data packets into rooms through the server API, with per-room cached tokens.

    Errors are those of :class:`~.room_service.RoomService`: :class:`livekit.api.TwirpError`
    for an answer other than 200, ``aiohttp.ClientError`` when the server cannot be reached,
    and ``asyncio.TimeoutError`` when the call's deadline passes (the packet may have been
    sent).
    """

    async def send(
        self,
        room: str,
        data: bytes,
        *,
        destination_identities: Sequence[str],
        topic: str,
        timeout: float,
    ) -> None:
        """One reliable packet to ``destination_identities`` in ``room``, within ``timeout``
        seconds (connecting included)."""
        request = api.SendDataRequest(
            room=room,
            data=data,
            kind=api.DataPacket.Kind.RELIABLE,
            destination_identities=list(destination_identities),
            topic=topic,
            # as livekit-api does: the room drops a packet whose nonce it has already seen
            nonce=uuid.uuid4().bytes,
        )
        await self.call("SendData", room, request, api.SendDataResponse, timeout=timeout)
