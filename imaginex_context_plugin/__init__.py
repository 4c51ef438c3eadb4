"""imaginex-context-plugin: drive a running LiveKit voice agent from outside.

The receiver, :class:`ContextPlugin`, lives in the agent worker. Attach it with one line and the
agent accepts ``speak`` (say something now) and ``add_context`` (know something for the next
replies) messages on the LiveKit data channel and over RPC, and acknowledges every one::

    from imaginex_context_plugin import ContextPlugin

    plugin = ContextPlugin(agent_code="A12345678", allowed_identities=["backend"])
    await plugin.start(session, ctx.room)

The sender, :class:`ContextClient`, sends them from a backend and returns each ack::

    async with await ContextClient.connect(room="room-1", agent_code="A12345678") as client:
        await client.speak("Your order has shipped!")

The documentation (``docs/``: ``protocol.md``, ``security.md``, ...) has the wire protocol, the
error codes and the security model.
"""

from __future__ import annotations

from livekit.agents import Plugin

from .context import ContextBudget
from .errors import ErrorCode
from .log import logger
from .protocol import (
    ACK_TOPIC,
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    MAX_PAYLOAD_BYTES,
    RPC_METHOD,
    AddContextRequest,
    ErrorAck,
    GetStateRequest,
    RemoveContextRequest,
    SpeakRequest,
    SpeechFailedEvent,
    SpeechFinishedEvent,
    SpeechStartedEvent,
    SuccessAck,
)
from .receiver import AckTransport, ContextPlugin, PluginStats, accept_with_agent_code
from .security import RateLimit, sign_request
from .sender import (
    AckTimeoutError,
    ContextClient,
    ContextError,
    HistoryResult,
    PlayoutTimeoutError,
    ServerSendResult,
    SpeakResult,
    SpeechFailedError,
    send_via_server_api,
    sender_token,
)
from .version import __version__

__all__ = [
    "ACK_TOPIC",
    "AGENT_CODE_ATTRIBUTE",
    "CONTEXT_TOPIC",
    "MAX_PAYLOAD_BYTES",
    "RPC_METHOD",
    "AckTimeoutError",
    "AckTransport",
    "AddContextRequest",
    "ContextBudget",
    "ContextClient",
    "ContextError",
    "ContextPlugin",
    "ErrorAck",
    "ErrorCode",
    "GetStateRequest",
    "HistoryResult",
    "PlayoutTimeoutError",
    "PluginStats",
    "RateLimit",
    "RemoveContextRequest",
    "ServerSendResult",
    "SpeakRequest",
    "SpeakResult",
    "SpeechFailedError",
    "SpeechFailedEvent",
    "SpeechFinishedEvent",
    "SpeechStartedEvent",
    "SuccessAck",
    "__version__",
    "accept_with_agent_code",
    "send_via_server_api",
    "sender_token",
    "sign_request",
]


class ImaginexContextPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)


Plugin.register_plugin(ImaginexContextPlugin())
