"""The platform's Agent Context REST API, served in front of a self-hosted LiveKit.

``imaginex-context gateway`` runs it. Callers use the same requests as on the imaginex platform
(``POST /v1/agent/{agent_code}/speak`` and ``/add-context`` with an ``api-secret`` header); the
gateway finds the rooms where an agent running :class:`~imaginex_context_plugin.ContextPlugin`
serves that code and delivers the message to each over LiveKit RPC.

In code::

    from imaginex_context_plugin.gateway import GatewayConfig, LiveKitBackend, create_app

    config = GatewayConfig.from_env()
    app = create_app(LiveKitBackend(config.livekit), config.secrets)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .answers import FAILURE_PRECEDENCE
from .app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_GATEWAY_RATE_LIMIT,
    DEFAULT_MAX_BODY_BYTES,
    create_app,
    run_gateway,
)
from .backend import (
    DEFAULT_GATEWAY_IDENTITY,
    AgentBackend,
    AgentTarget,
    BackendError,
    LiveKitBackend,
    ParticipantSummary,
    RoomDirectory,
)
from .config import ApiSecrets, ConfigError, GatewayConfig, LiveKitSettings, Principal
from .directory import AgentDirectory, MemoryAgentDirectory, RedisAgentDirectory
from .openapi import build_openapi
from .refusals import STATUS_FOR
from .server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    GatewayServer,
    start_gateway_server,
)
from .server_api_backend import ReplyInbox, ServerApiBackend
from .state import GatewayState, MemoryState, StateUnavailable

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
    "StateUnavailable",
    "build_openapi",
    "create_app",
    "run_gateway",
    "start_gateway_server",
]

if TYPE_CHECKING:
    from .redis_state import RedisState


def __getattr__(name: str) -> Any:
    # RedisState needs the optional ``redis`` package: imported only when asked for
    if name == "RedisState":
        from .redis_state import RedisState

        return RedisState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
