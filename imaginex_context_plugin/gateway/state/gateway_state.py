"""The seam of what gateway replicas must share: Idempotency-Key records, the per-api-secret
rate limit, and the agents' replies already taken.

:class:`GatewayState` is the seam ``create_app(state=...)`` takes; ``memory_state.MemoryState``
serves a lone gateway (the default), ``redis_state.RedisState`` serves replicas
(``--redis-url``). Both give an :class:`IdempotencyStore` with the same semantics, which
``tests/gateway/test_redis_state.py`` runs against each:

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

A store that cannot be reached raises :class:`~...errors.StateUnavailable` (Redis down).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

from ...errors import ConfigError
from ...security import DEDUP_WINDOW_S, SIGNATURE_WINDOW_S, RateLimit

__all__ = [
    "IDEMPOTENCY_WINDOW_S",
    "REPLICAS_NEED_SIGNING",
    "REPLY_MEMORY_S",
    "Claim",
    "GatewayState",
    "IdempotencyStore",
    "ReplyMemory",
    "StoredAnswer",
    "TokenBuckets",
    "require_signing_for_replicas",
]

IDEMPOTENCY_WINDOW_S: Final = DEDUP_WINDOW_S
"""How long an Idempotency-Key stays bound to its request and its answer is kept: the agents'
10-minute dedup window, counted from the first claim."""

REPLY_MEMORY_S: Final = 2 * SIGNATURE_WINDOW_S
"""How long an agent's reply is remembered once taken: a reply's timestamp is accepted within
the signature window either side of the clock, so twice that covers every moment it could be
replayed."""

REPLICAS_NEED_SIGNING: Final = (
    "Gateway replicas sharing Redis need a signing secret (IMAGINEX_SIGNING_SECRET, the "
    "agents' ContextPlugin(secret=...)): each replica joins rooms under its own identity, and "
    "only the signed sender lets an agent recognise a retry that reaches it through another "
    "replica."
)


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



def require_signing_for_replicas(state: GatewayState, signing_secret: str | None) -> None:
    """Refuse replicas without a signing secret.

    Raises:
        ConfigError: ``state`` is shared and ``signing_secret`` is not set.
    """
    if state.replicated and not signing_secret:
        raise ConfigError(REPLICAS_NEED_SIGNING)

