"""Throttling failed authentication per client address, so api-secrets cannot be guessed fast.

Only failures are charged: a client presenting a valid secret never spends anything here. Once
an address has used up its failures, its requests are refused with 429 *before* the secret is
looked at, so a guess made while throttled tells the caller nothing.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from ...security import RateLimit

DEFAULT_AUTH_FAILURE_LIMIT: Final = RateLimit(per_second=5.0, burst=20)
"""Per client address: 20 failed authentications at once, then 5 a second."""
AUTH_FAILURE_MAX_CLIENTS: Final = 10_000
"""Addresses remembered at most; the one that failed longest ago is forgotten first."""
IPV6_CLIENT_PREFIX: Final = 64
"""IPv6 clients are counted per /64 network: one host usually holds a whole /64."""


def client_key(remote: str | None) -> str:
    """The key a client address is counted under (IPv6 addresses: their /64 network)."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


class FailureLimiter:
    """Token buckets per client, spent only by failures; bounded in size.

    Args:
        limit: ``burst`` failures at once, refilled at ``per_second``.
        max_clients: Clients remembered at most. Default 10 000.
        clock: Monotonic seconds (a fake clock in tests).
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_clients: int = AUTH_FAILURE_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._limit = limit
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, client: str, now: float) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            return float(self._limit.burst)
        tokens, at = bucket
        return min(float(self._limit.burst), tokens + (now - at) * self._limit.per_second)

    def retry_after(self, client: str) -> float:
        """0.0 if ``client`` may try now, else the seconds until it may fail once more."""
        tokens = self._tokens(client, self._clock())
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self._limit.per_second

    def charge(self, client: str) -> None:
        """Record one failure of ``client``."""
        now = self._clock()
        tokens = max(0.0, self._tokens(client, now) - 1.0)
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
