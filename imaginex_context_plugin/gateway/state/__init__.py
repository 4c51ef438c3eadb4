"""What gateway replicas share: the :class:`GatewayState` seam, in memory and in Redis.

``gateway_state`` is the seam and its semantics, ``memory_state`` serves a lone gateway,
``redis_state`` serves replicas (it needs the optional ``redis`` package, so it is imported only
when asked for).
"""

from __future__ import annotations

from .gateway_state import (
    IDEMPOTENCY_WINDOW_S,
    REPLY_MEMORY_S,
    Claim,
    GatewayState,
    IdempotencyStore,
    ReplyMemory,
    StoredAnswer,
    TokenBuckets,
)
from .memory_state import MemoryIdempotency, MemoryReplies, MemoryState

__all__ = [
    "IDEMPOTENCY_WINDOW_S",
    "REPLY_MEMORY_S",
    "Claim",
    "GatewayState",
    "IdempotencyStore",
    "MemoryIdempotency",
    "MemoryReplies",
    "MemoryState",
    "ReplyMemory",
    "StoredAnswer",
    "TokenBuckets",
]
