"""Who may call: the ``api-secret``, the per-address throttle on failed authentications, the
per-secret rate limit, and which agent codes a secret may address, in that order.

The per-secret rate limit is shared by gateway replicas when their state is (Redis:
``TokenBuckets``), so N replicas do not allow N times the limit. The failed-authentication
throttle stays per process on purpose: it is charged by unauthenticated callers, so sharing it
would let anyone drive Redis traffic (and, with Redis down, turn every wrong guess into a 503
instead of a 401); and a guesser spread over N replicas still gets only N times a few guesses
a second at secrets that cannot be guessed at that rate.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

from aiohttp import web

from ...errors import ErrorCode, StateUnavailable
from ...security import RateLimit, RateLimiter
from ..config import ApiSecrets, Principal
from ..refusals import Refusal, state_unavailable
from ..state.gateway_state import TokenBuckets
from .limits import FailureLimiter, client_key

API_SECRET_HEADER: Final = "api-secret"
UNAUTHORIZED_MESSAGE: Final = "Invalid api-secret"


class Gatekeeper:
    """Admits a request for an agent code, or refuses it (401, 404 or 429).

    Args:
        secrets: The accepted api-secrets.
        rate_limit: Per api-secret; ``None`` turns it off.
        auth_failure_limit: Failed authentications per client address; ``None`` turns it off.
        buckets: Where :meth:`admit` counts the rate limit (shared by replicas); None:
            in this process, as :meth:`admit` does. Default None.
    """

    def __init__(
        self,
        secrets: ApiSecrets,
        *,
        rate_limit: RateLimit | None,
        auth_failure_limit: RateLimit | None,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._secrets = secrets
        self._rate_limit = rate_limit
        self._buckets = buckets
        self._limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self._auth_failures = (
            FailureLimiter(auth_failure_limit) if auth_failure_limit is not None else None
        )

    async def admit(self, request: web.Request, agent_code: str) -> Principal:
        """The caller, once it may send to ``agent_code`` now: the rate limit is counted in
        the shared buckets if there are, else in this process.

        Raises:
            Refusal: 429 (throttled address or secret), 401 (bad secret), 404 (another
                tenant's code), 503 when the shared buckets cannot be reached.
        """
        principal = self.authenticate(request, request.headers.get(API_SECRET_HEADER))
        await self.charge(principal)
        return self.may_address(principal, agent_code)

    def authenticate(self, request: web.Request, presented: str | None) -> Principal:
        """The principal the api-secret ``presented`` identifies (from the header, or the
        console's sign-in form), a failure charged to the client's address.

        Raises:
            Refusal: 429 when the address used up its failures (the secret is then not even
                compared), 401 for a wrong secret.
        """
        client = client_key(request.remote)
        if self._auth_failures is not None:
            # a throttled client's secret is not even compared: its answer would be an oracle
            wait = self._auth_failures.retry_after(client)
            if wait:
                raise _rate_limited("Too many failed authentications from this address", wait)
        principal = self._secrets.authenticate(presented)
        if principal is None:
            if self._auth_failures is not None:
                self._auth_failures.charge(client)
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, UNAUTHORIZED_MESSAGE)
        return principal

    async def charge(self, principal: Principal) -> None:
        """Count one request against ``principal``'s rate limit.

        Raises:
            Refusal: 429 once it is used up, 503 when the shared buckets cannot be reached.
        """
        if self._buckets is None or self._rate_limit is None:
            self._charge_here(principal)
            return
        try:
            wait = await self._buckets.take(principal.name, self._rate_limit)
        except StateUnavailable:
            raise state_unavailable() from None
        if wait:
            raise _rate_limited("Too many requests for this api-secret", wait)

    def _charge_here(self, principal: Principal) -> None:
        if self._limiter is not None:
            wait = self._limiter.acquire(principal.name)
            if wait:
                raise _rate_limited("Too many requests for this api-secret", wait)

    @staticmethod
    def may_address(principal: Principal, agent_code: str) -> Principal:
        """``principal``, if its secret may address ``agent_code``.

        Raises:
            Refusal: 404 ``AGENT_NOT_FOUND`` for another tenant's code.
        """
        if not principal.may_address(agent_code):
            # a code of another tenant does not exist as far as this caller can tell
            raise Refusal(
                404, ErrorCode.AGENT_NOT_FOUND.value, f"Agent with code '{agent_code}' not found"
            )
        return principal

    def principal_named(self, name: str) -> Principal | None:
        """The configured principal called ``name`` (a console session names its tenant)."""
        return next((p for p in self._secrets.principals if p.name == name), None)


class Admission(Protocol):
    """Who may send to an agent code: the API's ``api-secret`` (:class:`Gatekeeper`) or the
    console's session cookie."""

    async def admit(self, request: web.Request, agent_code: str) -> Principal:
        """The caller, once it may send to ``agent_code`` now.

        Raises:
            Refusal: It may not (401, 403, 404, 429, 503).
        """
        ...


def _rate_limited(reason: str, wait: float) -> Refusal:
    return Refusal(
        429,
        ErrorCode.RATE_LIMITED.value,
        f"{reason}; retry after Retry-After seconds.",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
