"""``GatedRoom``: a ``LinkedRoom`` whose ``connect()`` waits at a gate, as a slow join to a
real server does (the gateway's pool tests hold joins open with it)."""

from __future__ import annotations

import asyncio

from livekit import rtc
from livekit.rtc._proto import participant_pb2

from .network import LinkedRoom, RelayNetwork


class GatedRoom(LinkedRoom):
    """Joins the network only once ``gate`` is set; ``joining`` counts connects waiting."""

    def __init__(
        self, network: RelayNetwork, room_name: str, identity: str, gate: asyncio.Event
    ) -> None:
        info = participant_pb2.ParticipantInfo(
            sid=f"PA_gated_{id(self)}",
            identity=identity,
            kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
            state=participant_pb2.PARTICIPANT_STATE_ACTIVE,
        )
        super().__init__(network, room_name, info)
        self.gate = gate

    async def connect(
        self, url: str = "", token: str = "", options: rtc.RoomOptions | None = None
    ) -> None:
        await self.gate.wait()
        await super().connect(url, token, options)
