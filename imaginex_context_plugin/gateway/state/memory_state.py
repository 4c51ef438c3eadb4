"""A lone gateway's state, in this process: Idempotency-Key records and the agents' replies
already taken, with the semantics :mod:`.gateway_state` documents (the same as Redis')."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ...expiring import ExpiringCache
from .gateway_state import (
    IDEMPOTENCY_WINDOW_S,
    REPLY_MEMORY_S,
    Claim,
    IdempotencyStore,
    ReplyMemory,
    StoredAnswer,
    TokenBuckets,
)

__all__ = ["MemoryIdempotency", "MemoryReplies", "MemoryState"]

MEMORY_MAX_KEYS: Final = 10_000
"""Keys a lone gateway remembers at most; past that the oldest are forgotten first (and only
the agents' own dedup then catches a repeat)."""

MEMORY_MAX_REPLIES: Final = 100_000
"""Replies a lone gateway remembers at most; past that the oldest are forgotten first."""


@dataclass
class _Record:
    digest: bytes
    answer: StoredAnswer | None = None
    holder: str | None = None
    lease_until: float = 0.0


class MemoryIdempotency:
    """Idempotency-Key records in this process (a lone gateway).

    Args:
        window_s: How long a key stays bound. Default :data:`IDEMPOTENCY_WINDOW_S`.
        max_keys: Keys remembered at most; the oldest are forgotten first. Default 10 000.
        clock: Monotonic seconds (a fake clock in tests).
    """

    def __init__(
        self,
        *,
        window_s: float = IDEMPOTENCY_WINDOW_S,
        max_keys: int = MEMORY_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._records: ExpiringCache[_Record] = ExpiringCache(
            ttl_s=window_s, max_entries=max_keys, clock=clock
        )

    async def claim(self, key: str, digest: bytes, *, token: str, lease_ms: int) -> Claim:
        # no await inside: two concurrent claims cannot interleave
        records = self._records
        now = self._clock()
        record = records.get(key)
        if record is None:
            records.put(key, _Record(digest, holder=token, lease_until=now + lease_ms / 1000))
            return Claim("claimed")
        if record.digest != digest:
            return Claim("mismatch")
        if record.answer is not None:
            return Claim("done", answer=record.answer)
        if record.holder is not None and now < record.lease_until:
            return Claim("busy", retry_ms=max(1, round((record.lease_until - now) * 1000)))
        record.holder = token
        record.lease_until = now + lease_ms / 1000
        return Claim("claimed")

    async def finish(self, key: str, *, token: str, answer: StoredAnswer | None) -> bool:
        record = self._records.get(key)
        if record is None or record.holder != token or self._clock() >= record.lease_until:
            return False
        record.holder = None
        record.answer = answer
        return True


class MemoryReplies:
    """The agents' replies this process took (a lone gateway).

    Args:
        window_s: How long a reply is remembered. Default :data:`REPLY_MEMORY_S`.
        max_replies: Replies remembered at most; the oldest are forgotten first. Default
            100 000.
        clock: Monotonic seconds (a fake clock in tests).
    """

    def __init__(
        self,
        *,
        window_s: float = REPLY_MEMORY_S,
        max_replies: int = MEMORY_MAX_REPLIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen: ExpiringCache[None] = ExpiringCache(
            ttl_s=window_s, max_entries=max_replies, clock=clock
        )

    async def remember(self, signature: str) -> bool:
        # no await inside: two concurrent calls cannot both see it new
        if signature in self._seen:
            return False
        self._seen.put(signature, None)
        return True


class MemoryState:
    """A lone gateway's state: Idempotency-Key records and the replies taken in memory, each
    process its own rate limits (the gatekeeper's)."""

    def __init__(
        self,
        *,
        idempotency: MemoryIdempotency | None = None,
        replies: MemoryReplies | None = None,
    ) -> None:
        self._idempotency = idempotency if idempotency is not None else MemoryIdempotency()
        self._replies = replies if replies is not None else MemoryReplies()

    @property
    def idempotency(self) -> IdempotencyStore:
        return self._idempotency

    @property
    def buckets(self) -> TokenBuckets | None:
        return None

    @property
    def replies(self) -> ReplyMemory:
        return self._replies

    @property
    def replicated(self) -> bool:
        return False

    async def aclose(self) -> None:
        return None


