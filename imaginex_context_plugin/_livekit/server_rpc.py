"""``RoomService.PerformRpc``: an RPC to a participant without joining its room.

LiveKit (v1.13.5) delivers it to the participant as an ordinary RPC request and answers the
HTTP call with the participant's answer. :class:`ServerRpc` makes that call through
:class:`~.room_service.RoomService` (each room's token signed once per few minutes).
"""

from __future__ import annotations

import asyncio

from livekit import api
from livekit.protocol.room import PerformRpcRequest, PerformRpcResponse

from ..protocol import RPC_METHOD
from .room_service import RoomService
from .rpc import server_rpc_failure


class ServerRpc(RoomService):
    """RPCs to participants through the server API, with per-room cached tokens."""

    async def perform(
        self, room: str, destination: str, method: str, payload: str, *, timeout: float
    ) -> str:
        """``destination``'s answer to ``method`` with ``payload`` in ``room``. LiveKit gives
        the participant ``timeout`` seconds to answer; the HTTP call has the same.

        Raises:
            livekit.api.TwirpError: LiveKit's refusal, or the RPC's failure.
            OSError: LiveKit could not be reached, or its answer was cut short.
            asyncio.TimeoutError: No answer within ``timeout``.
        """
        request = PerformRpcRequest(
            room=room,
            destination_identity=destination,
            method=method,
            payload=payload,
            response_timeout_ms=max(1, round(timeout * 1000)),
        )
        answer = await self.call("PerformRpc", room, request, PerformRpcResponse, timeout=timeout)
        return answer.payload

    async def call_agent(
        self,
        room: str,
        agent: str,
        payload: str,
        *,
        timeout: float,
        request_id: str | None = None,
    ) -> str:
        """Send one request JSON to ``agent`` in ``room`` over a server-API RPC and return
        its answer (the ack JSON); the same call as :func:`~.rpc.call_agent`, without a room
        connection.

        The agent sees a caller identity LiveKit makes up for the call (a fresh UUID, not a
        participant): only a signed request is trusted there.

        Raises:
            ContextError: The call failed; ``code`` and ``retryable`` come from the one RPC
                failure table (:func:`~.rpc.server_rpc_failure`).
        """
        try:
            return await self.perform(room, agent, RPC_METHOD, payload, timeout=timeout)
        except (api.TwirpError, OSError, asyncio.TimeoutError) as exc:
            raise server_rpc_failure(exc, agent=agent, request_id=request_id) from None
