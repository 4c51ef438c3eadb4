"""Signing in and out of the console, and admitting the console's requests by their session.

- ``POST /console/api/login`` ``{"api_secret": ...}``: the secret is checked as the API's
  ``api-secret`` header is (the same per-address throttle on failures, shared with the API,
  so a guesser gains nothing by trying both); the answer sets the session cookie and carries
  the CSRF token.
- Every other console request needs the cookie; one that changes something (any method but
  GET and HEAD) also needs the ``X-CSRF-Token`` header and, when the browser says where it
  comes from (``Origin``, ``Sec-Fetch-Site``), the console's own origin.
- ``POST /console/api/logout`` ends the session (and every events stream it opened).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ....errors import ErrorCode, StateUnavailable
from ...config import Principal
from ...refusals import Refusal, state_unavailable
from ..body import BodyReader
from ..gatekeeper import Gatekeeper
from .sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleSession,
    SessionStore,
    csrf_matches,
    new_session_id,
    session_key,
)

__all__ = [
    "COOKIE_PATH",
    "FORBIDDEN",
    "ConsoleAdmission",
    "ConsoleSignIn",
    "LoginBody",
    "SignedIn",
]

COOKIE_PATH: Final = "/console"
"""The cookie goes with the console's own requests only, never with the API's."""
FORBIDDEN: Final = "FORBIDDEN"
"""Error code (403) of a console request without its CSRF token, or from another origin."""
SIGN_IN_FIRST: Final = "Sign in to the console first: there is no session, or it has ended."
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginBody(BaseModel):
    """``POST /console/api/login``."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    api_secret: str = Field(min_length=1, max_length=4096)


@dataclass(frozen=True)
class SignedIn:
    """A request's session: its store key, the session, and the tenant it is for."""

    key: str
    session: ConsoleSession
    principal: Principal


class ConsoleSignIn:
    """Sessions: made at sign-in, checked on each console request, ended at sign-out.

    Args:
        store: Where sessions live.
        gatekeeper: Checks the api-secret (and throttles failures) as for the API.
        bodies: Reads the sign-in body (its size and time limits).
        idle_s: Seconds without a request after which a session ends.
        max_s: Seconds after sign-in after which a session ends.
        secure_cookies: ``Secure`` cookies always (True), never (False), or when the request
            came over TLS (None; behind a proxy that ends TLS, set True).
        clock: Wall-clock seconds.
    """

    def __init__(
        self,
        store: SessionStore,
        gatekeeper: Gatekeeper,
        *,
        bodies: BodyReader,
        idle_s: float,
        max_s: float,
        secure_cookies: bool | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < idle_s < math.inf or not 0 < max_s < math.inf:
            raise ValueError("session lifetimes must be positive numbers of seconds")
        self._store = store
        self._gatekeeper = gatekeeper
        self._bodies = bodies
        self._idle_s = idle_s
        self._max_s = max_s
        self._secure = secure_cookies
        self._clock = clock

    @property
    def store(self) -> SessionStore:
        return self._store

    @property
    def idle_s(self) -> float:
        return self._idle_s

    async def login(self, request: web.Request) -> web.Response:
        check_origin(request)
        body = await self._bodies.read(request, LoginBody)
        principal = self._gatekeeper.authenticate(request, body.api_secret)
        # a sign-in is one of the tenant's requests: a secret holder cannot mint sessions faster
        await self._gatekeeper.charge(principal)
        now = self._clock()
        session_id = new_session_id()
        session = ConsoleSession(
            principal=principal.name,
            csrf_token=new_session_id(),
            created_at=now,
            expires_at=now + self._max_s,
        )
        try:
            await self._store.create(session_key(session_id), session, idle_s=self._idle_s)
        except StateUnavailable:
            raise state_unavailable() from None
        response = web.json_response(self.describe(session, principal))
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            path=COOKIE_PATH,
            max_age=int(self._max_s),
            httponly=True,
            samesite="Strict",
            secure=self._secure if self._secure is not None else request.secure,
        )
        return response

    async def session(self, request: web.Request) -> web.Response:
        """``GET /console/api/session``: who is signed in, and the CSRF token (a reloaded
        page gets it back here; no other origin can read the answer)."""
        signed_in = await self.current(request)
        return web.json_response(self.describe(signed_in.session, signed_in.principal))

    async def logout(self, request: web.Request) -> web.Response:
        signed_in = await self.current(request)
        try:
            await self._store.delete(signed_in.key)
        except StateUnavailable:
            raise state_unavailable() from None
        response = web.json_response({"signed_out": True})
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response

    async def current(self, request: web.Request) -> SignedIn:
        """The request's session; for a request that changes something, also checked for its
        CSRF token and origin.

        Raises:
            Refusal: 401 without a live session, 403 without the CSRF token or from another
                origin, 503 when the shared store cannot be reached.
        """
        changing = request.method not in _SAFE_METHODS
        if changing:
            check_origin(request)
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, SIGN_IN_FIRST)
        key = session_key(session_id)
        try:
            session = await self._store.touch(key, idle_s=self._idle_s)
        except StateUnavailable:
            raise state_unavailable() from None
        principal = None if session is None else self._gatekeeper.principal_named(session.principal)
        if session is None or principal is None:
            # a tenant no longer configured (its secret was removed) has no session either
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, SIGN_IN_FIRST)
        if changing and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise Refusal(
                403,
                FORBIDDEN,
                f"The {CSRF_HEADER} header is missing or wrong; reload the console.",
            )
        return SignedIn(key, session, principal)

    def describe(self, session: ConsoleSession, principal: Principal) -> dict[str, object]:
        codes = None if principal.agent_codes is None else sorted(principal.agent_codes)
        return {
            "tenant": principal.name,
            "agent_codes": codes,
            "csrf_token": session.csrf_token,
            "expires_at": _iso(session.expires_at),
            "idle_timeout_s": self._idle_s,
        }


def check_origin(request: web.Request) -> None:
    """Refuse (403) a state-changing request a browser says comes from another origin.

    ``Sec-Fetch-Site`` (sent by every current browser) must be ``same-origin``; an ``Origin``
    header must name this host. A client that sends neither (not a browser) is judged by its
    cookie and CSRF token alone.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise Refusal(403, FORBIDDEN, "Console requests must come from the console's own page.")
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
        raise Refusal(403, FORBIDDEN, "Console requests must come from the console's own page.")


class ConsoleAdmission:
    """:class:`~..gatekeeper.Admission` by the console's session: the session (and CSRF
    token), the tenant's rate limit (the same as its api-secret's), the agent code."""

    def __init__(self, sign_in: ConsoleSignIn, gatekeeper: Gatekeeper) -> None:
        self._sign_in = sign_in
        self._gatekeeper = gatekeeper

    async def admit(self, request: web.Request, agent_code: str) -> Principal:
        return await self.admit_signed_in(await self._sign_in.current(request), agent_code)

    async def admit_signed_in(self, signed_in: SignedIn, agent_code: str) -> Principal:
        """:meth:`admit` for a request whose session was already checked (its body names the
        agent code, and the body is read only once the session is known)."""
        await self._gatekeeper.charge(signed_in.principal)
        return self._gatekeeper.may_address(signed_in.principal, agent_code)


def _iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
