"""What gateway replicas share: the :class:`GatewayState` seam, in memory and in Redis.

``gateway_state`` is the seam and its semantics, ``memory_state`` serves a lone gateway,
``redis_state`` serves replicas (it needs the optional ``redis`` package, so it is imported only
when asked for).
"""

from __future__ import annotations

from .gateway_state import (
    IDEMPOTENCY_WINDOW_S,
    Claim,
    GatewayState,
    IdempotencyStore,
    StoredAnswer,
    TokenBuckets,
)
from .memory_state import MemoryIdempotency, MemoryState

__all__ = [
    "IDEMPOTENCY_WINDOW_S",
    "Claim",
    "GatewayState",
    "IdempotencyStore",
    "MemoryIdempotency",
    "MemoryState",
    "StoredAnswer",
    "TokenBuckets",
]
