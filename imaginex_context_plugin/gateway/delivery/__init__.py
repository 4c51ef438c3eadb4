"""How a message reaches the agents: one module per delivery, behind one seam.

``agent_backend`` is the seam (:class:`AgentBackend`, and what a delivery may offer beyond it);
``room_delivery`` delivers over pooled room connections (``room_pool``) and finds agents for
every delivery; ``server_rpc_delivery`` delivers through ``RoomService.PerformRpc``, the
agent's ack being the RPC's answer; ``server_api_delivery`` delivers through
``RoomService.SendData``, its agents answering over HTTP. A new delivery is one more module
implementing :class:`AgentBackend`.
"""

from __future__ import annotations

from .agent_backend import (
    REPLIES_PATH,
    AgentBackend,
    AgentTarget,
    RepliesOverHttp,
    RoomHolder,
    WebhookSource,
)
from .room_delivery import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend
from .room_pool import DEFAULT_MAX_CONCURRENT_JOINS, DEFAULT_MAX_ROOMS, RoomPool
from .server_api_delivery import ReplyInbox, ServerApiBackend
from .server_rpc_delivery import ServerRpcBackend

__all__ = [
    "DEFAULT_GATEWAY_IDENTITY",
    "DEFAULT_MAX_CONCURRENT_JOINS",
    "DEFAULT_MAX_ROOMS",
    "REPLIES_PATH",
    "AgentBackend",
    "AgentTarget",
    "LiveKitBackend",
    "RepliesOverHttp",
    "ReplyInbox",
    "RoomHolder",
    "RoomPool",
    "ServerApiBackend",
    "ServerRpcBackend",
    "WebhookSource",
]
