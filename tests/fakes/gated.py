"""Slow and flaky gateway connections for the pool tests: ``GatedRoom`` (a ``LinkedRoom`` whose
``connect()`` waits at a gate, as a slow join to a real server does) and ``SendFailingRoom``
(whose first RPCs cannot be sent)."""

from __future__ import annotations

import asyncio

from livekit import rtc
from livekit.rtc._proto import participant_pb2

from .network import LinkedLocalParticipant, LinkedRoom, RelayNetwork, _owned


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


class _SendFailingParticipant(LinkedLocalParticipant):
    def __init__(
        self, room: LinkedRoom, owned_info: participant_pb2.OwnedParticipant, failures: int
    ) -> None:
        super().__init__(room, owned_info)
        self.failures = failures

    async def _perform_rpc_ffi(self, call: rtc.RpcCallInfo) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.SEND_FAILED)
        return await super()._perform_rpc_ffi(call)


class SendFailingRoom(LinkedRoom):
    """Joins at once, but its first ``failures`` RPCs cannot be sent (``SEND_FAILED``), as a
    connection just joined on a loaded machine whose data channel is still opening."""

    def __init__(
        self, network: RelayNetwork, room_name: str, identity: str, failures: int
    ) -> None:
        info = participant_pb2.ParticipantInfo(
            sid=f"PA_failing_{id(self)}",
            identity=identity,
            kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
            state=participant_pb2.PARTICIPANT_STATE_ACTIVE,
        )
        super().__init__(network, room_name, info)
        self.failures = failures

    def _join(self) -> None:
        super()._join()
        self._local_participant = _SendFailingParticipant(
            self, _owned(self.participant_info), self.failures
        )

    @property
    def sends_failed(self) -> int:
        """How many of the ``failures`` are used up."""
        participant = self._local_participant
        assert isinstance(participant, _SendFailingParticipant)
        return self.failures - participant.failures
