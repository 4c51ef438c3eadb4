"""The platform's Agent Context REST API, served in front of a self-hosted LiveKit.

``imaginex-context gateway`` runs it. Callers use the same requests as on the imaginex platform
(``POST /v1/agent/{agent_code}/speak`` and ``/add-context`` with an ``api-secret`` header); the
gateway finds the rooms where an agent running :class:`~imaginex_context_plugin.ContextPlugin`
serves that code and delivers the message to each over LiveKit.

In code::

    from imaginex_context_plugin.gateway import GatewayConfig, LiveKitBackend, create_app

    config = GatewayConfig.from_env()
    app = create_app(LiveKitBackend(config.livekit), config.secrets)

Inside, one room per concern: ``http/`` (the application, its routes, middleware and server),
``delivery/`` (how a message reaches the agents, one module per delivery behind the
``AgentBackend`` seam), ``directory/`` (where the agents are, kept from LiveKit's webhooks),
``state/`` (what replicas share, in memory or Redis); ``config``, ``models`` (the HTTP bodies),
``refusals`` (error answers) and ``run`` (the process) beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._livekit.rooms import ParticipantSummary, RoomDirectory
from .._livekit.settings import LiveKitSettings
from ..errors import BackendError, ConfigError, StateUnavailable
from .config import ApiSecrets, GatewayConfig, Principal
from .delivery import (
    DEFAULT_GATEWAY_IDENTITY,
    AgentBackend,
    AgentTarget,
    LiveKitBackend,
    ReplyInbox,
    ServerApiBackend,
    ServerRpcBackend,
)
from .directory import AgentDirectory, MemoryAgentDirectory, RedisAgentDirectory
from .http.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_GATEWAY_RATE_LIMIT,
    DEFAULT_MAX_BODY_BYTES,
    create_app,
)
from .http.openapi import build_openapi
from .http.responses import FAILURE_PRECEDENCE
from .http.serving import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    GatewayServer,
    start_gateway_server,
)
from .refusals import STATUS_FOR
from .run import run_gateway
from .state import GatewayState, MemoryState

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_GATEWAY_IDENTITY",
    "DEFAULT_GATEWAY_RATE_LIMIT",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "FAILURE_PRECEDENCE",
    "STATUS_FOR",
    "AgentBackend",
    "AgentDirectory",
    "AgentTarget",
    "ApiSecrets",
    "BackendError",
    "ConfigError",
    "GatewayConfig",
    "GatewayServer",
    "GatewayState",
    "LiveKitBackend",
    "LiveKitSettings",
    "MemoryAgentDirectory",
    "MemoryState",
    "ParticipantSummary",
    "Principal",
    "RedisAgentDirectory",
    "RedisState",
    "ReplyInbox",
    "RoomDirectory",
    "ServerApiBackend",
    "ServerRpcBackend",
    "StateUnavailable",
    "build_openapi",
    "create_app",
    "run_gateway",
    "start_gateway_server",
]

if TYPE_CHECKING:
    from .state.redis_state import RedisState


def __getattr__(name: str) -> Any:
    # RedisState needs the optional ``redis`` package: imported only when asked for
    if name == "RedisState":
        from .state.redis_state import RedisState

        return RedisState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
