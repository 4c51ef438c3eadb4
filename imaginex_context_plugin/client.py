"""Compatibility module: the sender now lives in :mod:`imaginex_context_plugin.sender`.

``from imaginex_context_plugin.client import ContextClient`` (and every other name that was
public here) keeps working; new code imports from the package or from ``.sender``.
"""

from __future__ import annotations

from .sender import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_BACKOFF_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_PLAYOUT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOKEN_TTL,
    DEFAULT_VIA,
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    RETRYABLE_CODES,
    SENDER_IDENTITY_PREFIX,
    AckTimeoutError,
    ContextClient,
    ContextError,
    PlayoutTimeoutError,
    ServerSendResult,
    SpeakResult,
    Via,
    check_request_size,
    prepare_request,
    send_via_server_api,
    sender_token,
)

__all__ = [
    "DEFAULT_AGENT_TIMEOUT_S",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_PLAYOUT_TIMEOUT_S",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOKEN_TTL",
    "DEFAULT_VIA",
    "MAX_BACKOFF_S",
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_CODES",
    "SENDER_IDENTITY_PREFIX",
    "AckTimeoutError",
    "ContextClient",
    "ContextError",
    "PlayoutTimeoutError",
    "ServerSendResult",
    "SpeakResult",
    "Via",
    "check_request_size",
    "prepare_request",
    "send_via_server_api",
    "sender_token",
]
