"""What gateway replicas must share, behind one small seam: Idempotency-Key records, the
per-api-secret rate limit, and the agents' replies already taken.

:class:`GatewayState` is the seam ``create_app(state=...)`` takes. :class:`MemoryState` serves a
lone gateway (the default); ``redis_state.RedisState`` serves replicas (``--redis-url``). Both
give an :class:`IdempotencyStore` with the same semantics, which ``tests/test_redis_state.py``
runs against each:

- ``claim`` binds a key to the digest of its first request for the store's window (default
  :data:`IDEMPOTENCY_WINDOW_S`, the agents' dedup window; never refreshed) and hands the
  first caller a lease (``lease_ms``) to deliver under;
- a claim of a bound key with another digest is a mismatch; with the same digest it is the
  stored answer if there is one, else busy while the lease runs, else a new lease (the holder
  died or gave up, so the retry takes over and delivers again: the agents dedup);
- ``finish`` by the lease holder either stores the final answer or only releases the lease;
  a holder whose lease ran out and was taken over stores nothing.

And a :class:`ReplyMemory` with the same semantics in both: ``remember`` a reply's signature
returns True the first time within the window (:data:`REPLY_MEMORY_S`) and False for every
repeat, wherever it was taken first; two replicas remembering one signature at once get one
True. The gateway takes a signed reply from an agent only on that True, so a replay is refused
on every replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

from ..errors import ConfigError
from ..expiring import ExpiringCache
from ..security import DEDUP_WINDOW_S, SIGNATURE_WINDOW_S, RateLimit

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
    "StateUnavailable",
    "StoredAnswer",
    "TokenBuckets",
]

IDEMPOTENCY_WINDOW_S: Final = DEDUP_WINDOW_S
"""How long an Idempotency-Key stays bound to its request and its answer is kept: the agents'
10-minute dedup window, counted from the first claim."""
MEMORY_MAX_KEYS: Final = 10_000
"""Keys a lone gateway remembers at most; past that the oldest are forgotten first (and only
the agents' own dedup then catches a repeat)."""

REPLY_MEMORY_S: Final = 2 * SIGNATURE_WINDOW_S
"""How long an agent's reply is remembered once taken: a reply's timestamp is accepted within
the signature window either side of the clock, so twice that covers every moment it could be
replayed."""
MEMORY_MAX_REPLIES: Final = 100_000
"""Replies a lone gateway remembers at most; past that the oldest are forgotten first."""


REPLICAS_NEED_SIGNING: Final = (
    "Gateway replicas sharing Redis need a signing secret (IMAGINEX_SIGNING_SECRET, the "
    "agents' ContextPlugin(secret=...)): each replica joins rooms under its own identity, and "
    "only the signed sender lets an agent recognise a retry that reaches it through another "
    "replica."
)


class StateUnavailable(Exception):
    """The shared state cannot be reached (Redis down): the request is answered 503 and nothing
    is delivered, since without the idempotency check a retry could be applied twice."""


@dataclass(frozen=True)
class StoredAnswer:
    """An HTTP answer as it was first given, for the repeats of its Idempotency-Key."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`IdempotencyStore.claim`.

    ``outcome``: ``claimed`` (deliver under the lease), ``done`` (``answer`` is the first
    answer), ``mismatch`` (bound to another request), ``busy`` (another holder's lease runs
    for ``retry_ms`` more).
    """

    outcome: Literal["claimed", "done", "mismatch", "busy"]
    answer: StoredAnswer | None = None
    retry_ms: int = 0


class IdempotencyStore(Protocol):
    """Idempotency-Key records (see the module docstring for the shared semantics)."""

    async def claim(
        self, key: str, digest: bytes, *, token: str, lease_ms: int
    ) -> Claim:
        """Claim ``key`` for the request whose digest is ``digest``, as holder ``token``.

        Raises:
            StateUnavailable: The store cannot be reached.
        """
        ...

    async def finish(self, key: str, *, token: str, answer: StoredAnswer | None) -> bool:
        """End ``token``'s lease, storing ``answer`` if given. False if the lease was lost.

        Raises:
            StateUnavailable: The store cannot be reached.
        """
        ...


class TokenBuckets(Protocol):
    """Rate-limit token buckets shared by every replica."""

    async def take(self, name: str, limit: RateLimit) -> float:
        """Take one token from ``name``'s bucket: 0.0 if allowed, else seconds to wait.

        Raises:
            StateUnavailable: The store cannot be reached.
        """
        ...


class ReplyMemory(Protocol):
    """The agents' replies the gateway took (see the module docstring)."""

    async def remember(self, signature: str) -> bool:
        """Remember the reply signed ``signature`` (lowercase hex): True the first time within
        the window, False when it was already taken (a replay).

        Raises:
            StateUnavailable: The store cannot be reached.
        """
        ...


@runtime_checkable
class GatewayState(Protocol):
    """What the gateway keeps outside a request: Idempotency-Key records, rate limits and the
    agents' replies already taken.

    Attributes:
        idempotency: The Idempotency-Key records.
        buckets: Shared per-api-secret rate limits; None: each process counts its own.
        replies: The agents' replies already taken (server-API delivery): a reply is taken
            once across every replica sharing the state.
        replicated: Whether other gateway processes see this state. Replicas join rooms under
            distinct identities, so they need a signing secret (the agents dedup a retry
            through another replica by the signed sender).
    """

    @property
    def idempotency(self) -> IdempotencyStore: ...

    @property
    def buckets(self) -> TokenBuckets | None: ...

    @property
    def replies(self) -> ReplyMemory: ...

    @property
    def replicated(self) -> bool: ...

    async def aclose(self) -> None:
        """Release connections; called when the application shuts down."""
        ...


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


def require_signing_for_replicas(state: GatewayState, signing_secret: str | None) -> None:
    """Refuse replicas without a signing secret.

    Raises:
        ConfigError: ``state`` is shared and ``signing_secret`` is not set.
    """
    if state.replicated and not signing_secret:
        raise ConfigError(REPLICAS_NEED_SIGNING)
