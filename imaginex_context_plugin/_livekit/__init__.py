"""Everything a sender says to LiveKit: one RPC call, agent choice, tokens, room listing.

The client (``sender/``), the CLI and the gateway reach an agent the same way, through here:

- :func:`~.rpc.call_agent` performs the RPC, and :data:`~.rpc.RPC_FAILURES` is the one table
  from LiveKit's ``RpcError`` codes to our :class:`~..errors.ErrorCode`;
- :func:`~.agents.choose_agent` is the one rule for which participant is the agent;
- :func:`~.tokens.sender_token` / :func:`~.tokens.gateway_token` mint the join tokens;
- :class:`~.rooms.RoomDirectory` lists rooms and participants (``RoomService`` in production).
"""

from __future__ import annotations

from .agents import choose_agent
from .rooms import LiveKitRoomDirectory, ParticipantSummary, RoomDirectory
from .rpc import RPC_FAILURES, RpcFailure, call_agent, rpc_failure
from .settings import LiveKitSettings
from .tokens import DEFAULT_TOKEN_TTL, gateway_token, sender_token

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "RPC_FAILURES",
    "LiveKitRoomDirectory",
    "LiveKitSettings",
    "ParticipantSummary",
    "RoomDirectory",
    "RpcFailure",
    "call_agent",
    "choose_agent",
    "gateway_token",
    "rpc_failure",
    "sender_token",
]
