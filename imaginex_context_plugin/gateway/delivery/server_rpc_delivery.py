"""Delivery without a room connection whose answer is the agent's own: ``RoomService.PerformRpc``.

:class:`ServerRpcBackend` finds agents with a :class:`~.room_delivery.LiveKitBackend` it
composes (the directory or the scan, unchanged) and delivers with one Twirp call per room
(:class:`~..._livekit.server_rpc.ServerRpc`, each room's token signed once per few minutes):
LiveKit hands the message to the agent as an ordinary RPC and answers the HTTP call with the
agent's ack. No WebRTC connection, no join, no memory per room, nothing for the agents to
allow or post back; the events stream (``GET .../events``) still joins the rooms it streams,
through the composed backend's pool.

Trust rests on the signature: the agent sees a caller identity LiveKit makes up for each call
(docs/livekit.md), so every message is signed, with the gateway's signing secret when it has
one (``ContextPlugin(secret=...)``), else with the LiveKit API secret, which the agents check
by default (``ContextPlugin(trust_server=True)``): the gateway's writer signs with it
(:attr:`ServerRpcBackend.unsigned_messages_secret`, one template for all of a fan-out's rooms),
and a payload that reaches :meth:`~ServerRpcBackend.deliver` unsigned is signed there. Every
failure reads through the one RPC failure table (``_livekit/rpc.py``); a call LiveKit could
not send (the agent still connecting) is sent again within the deadline, the same request id
each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from livekit import rtc

from ..._livekit.server_rpc import ServerRpc
from ..._livekit.settings import LiveKitSettings
from ...errors import BackendError, ErrorCode
from ...protocol import MAX_PAYLOAD_BYTES, oversize
from ...request_errors import ContextError
from ...security import ENVELOPE_START, sign_request
from ..directory.webhook import LiveKitWebhook
from .agent_backend import AgentTarget
from .room_delivery import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend

SEND_AGAIN_AFTER_S: Final = 0.1
"""Pause before sending again a call LiveKit could not send (within the same deadline)."""

_CLOSED: Final = "The gateway is shutting down."


class ServerRpcBackend:
    """:class:`~.agent_backend.AgentBackend` delivering through ``RoomService.PerformRpc``.

    Args:
        finder: Finds the agents (its directory or scan) and holds rooms for the events
            stream; its pool stays empty otherwise. Closed with this backend.
        settings: The LiveKit server and API key pair for ``PerformRpc``.
        server_rpc: What makes the calls (left open). Default: one made from ``settings``,
            closed with the backend.
        sender: The sender named by the messages this backend signs (those the gateway has
            not signed). Default ``imaginex-gateway``, the gateway's default sender (and
            participant identity).
    """

    def __init__(
        self,
        finder: LiveKitBackend,
        settings: LiveKitSettings,
        *,
        server_rpc: ServerRpc | None = None,
        sender: str | None = DEFAULT_GATEWAY_IDENTITY,
    ) -> None:
        self._finder = finder
        self._settings = settings
        self._rpc = server_rpc or ServerRpc(settings)
        self._owns_rpc = server_rpc is None
        self._sender = sender
        self._closed = False
        self.sent_again = 0
        """Calls sent again because LiveKit could not send them (the agent was connecting)."""

    @property
    def finder(self) -> LiveKitBackend:
        return self._finder

    @property
    def unsigned_messages_secret(self) -> str:
        """The LiveKit API secret: the gateway's writer signs with it when the gateway has no
        signing secret, writing each room's envelope from one template (what ``deliver``
        would otherwise sign here, room by room)."""
        return self._settings.api_secret

    @property
    def pooled_rooms(self) -> list[str]:
        """Rooms the gateway holds a connection to: only those with an events stream."""
        return self._finder.pooled_rooms

    @property
    def livekit_webhook(self) -> LiveKitWebhook | None:
        return self._finder.livekit_webhook

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        return await self._finder.find_agents(agent_code, room_id=room_id)

    async def hold_room(self, room_name: str) -> tuple[rtc.Room, Callable[[], None]]:
        return await self._finder.hold_room(room_name)

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        if self._closed:
            raise BackendError(ErrorCode.LIVEKIT_UNAVAILABLE, _CLOSED)
        deadline = time.monotonic() + timeout
        signed = payload
        # the gateway's writer signs (unsigned_messages_secret); another caller's payload is
        # signed here, with the LiveKit API secret (the agent cannot trust the caller LiveKit
        # makes up). Told apart by how it begins, not by parsing it: this runs for every room
        if not payload.startswith(ENVELOPE_START):
            signed = sign_request(payload, self._settings.api_secret, sender=self._sender)
            if oversize(signed) is not None:  # the writer's size check did not count this
                raise BackendError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"Signed, the message is over {MAX_PAYLOAD_BYTES} bytes.",
                )
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    ErrorCode.TIMEOUT, f"The agent did not answer within {timeout:g} s."
                )
            try:
                return await self._rpc.call_agent(
                    target.room, target.identity, signed, timeout=remaining
                )
            except ContextError as exc:
                # LiveKit could not send it (the agent's data channel not open yet, or LiveKit
                # out of reach): nothing reached the agent, so it goes again, same id
                sent_nothing = exc.code is ErrorCode.LIVEKIT_UNAVAILABLE and exc.retryable
                if not sent_nothing or deadline - time.monotonic() <= SEND_AGAIN_AFTER_S:
                    raise BackendError(exc.code, exc.message, retryable=exc.retryable) from None
            self.sent_again += 1
            await asyncio.sleep(SEND_AGAIN_AFTER_S)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._finder.aclose()
        finally:
            if self._owns_rpc:
                await self._rpc.aclose()
