"""``RoomService`` calls about one room at a time, as plain Twirp POSTs, with each room's token
signed once per few minutes instead of once per call.

``livekit-api`` builds and signs a fresh JWT for every call (claims to a dict, JSON, HMAC);
profiled in the gateway on a fan-out to 50 rooms, that was about a fifth of its CPU per
request. A token for ``SendData`` or ``PerformRpc`` may name one room only (LiveKit checks
``room_admin`` for that very room), so tokens are kept per room, bounded, and reused for half
their lifetime: a token in use always has at least ``TOKEN_TTL / 2`` left, far more than any
call's deadline.

The POST is ours (:mod:`.http1`), not ``livekit-api``'s ``TwirpClient``: that one replays a
request that met a 5xx or a transport error against another region, which for ``PerformRpc``
would deliver a message twice behind our back; and an aiohttp request costs about three times
the CPU, which a fan-out pays per room. Here a call is made once, and its caller decides.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Final, TypeVar

from google.protobuf.message import Message
from livekit import api

from ..expiring import ExpiringCache
from .http1 import Http1Client
from .settings import LiveKitSettings

TOKEN_TTL: Final = timedelta(minutes=10)
"""Lifetime of a room's token."""
MAX_ROOM_TOKENS: Final = 10_000
"""Most rooms whose token is kept (about 0.5 KiB each); beyond it the oldest is signed again
when next needed."""
MAX_CONNECTIONS: Final = 1_000
"""Most HTTP connections to LiveKit at once. A ``PerformRpc`` holds its connection until the
agent answers, so a fan-out needs one per room in flight."""

_PATH: Final = "/twirp/livekit.RoomService/"
_PROTOBUF: Final = "application/protobuf"

_M = TypeVar("_M", bound=Message)


def twirp_error(status: int, body: bytes) -> api.TwirpError:
    """The ``livekit-api`` error for a Twirp answer other than 200 (its JSON error body, or
    the bare status when the body is not one, e.g. from a proxy)."""
    try:
        error = json.loads(body)
        code, message = str(error["code"]), str(error.get("msg", ""))
    except (ValueError, KeyError, TypeError):
        code, message = api.TwirpErrorCode.UNKNOWN, f"HTTP {status}"
    return api.TwirpError(code, message, status=status)


class RoomService:
    """Twirp calls to ``livekit.RoomService``, each about one room, with per-room cached tokens.

    Errors: :class:`livekit.api.TwirpError` for an answer other than 200, ``OSError`` (a
    ``ConnectionError`` mostly) when the server cannot be reached or the answer is cut short,
    and ``asyncio.TimeoutError`` when the call's deadline passes (LiveKit may have acted on
    it).

    Args:
        settings: The LiveKit server and the API key pair that signs the tokens.
        clock: Monotonic seconds, for the token cache. Default ``time.monotonic``.
    """

    def __init__(
        self, settings: LiveKitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._tokens: ExpiringCache[str] = ExpiringCache(
            ttl_s=TOKEN_TTL.total_seconds() / 2, max_entries=MAX_ROOM_TOKENS, clock=clock
        )
        self._http: Http1Client | None = None
        self.tokens_signed = 0
        """How many tokens were signed so far (one per room per ``TOKEN_TTL / 2``)."""

    def _authorization(self, room: str) -> str:
        header = self._tokens.get(room)
        if header is None:
            token = (
                api.AccessToken(self._settings.api_key, self._settings.api_secret)
                .with_grants(api.VideoGrants(room_admin=True, room=room))
                .with_ttl(TOKEN_TTL)
                .to_jwt()
            )
            header = f"Bearer {token}"
            self._tokens.put(room, header)
            self.tokens_signed += 1
        return header

    async def call(
        self, method: str, room: str, request: Message, answer: type[_M], *, timeout: float
    ) -> _M:
        """``RoomService.{method}`` about ``room``, within ``timeout`` seconds (connecting
        included); the answer parsed as ``answer``."""
        if self._http is None:
            # made on first use, inside the running loop its connections belong to
            self._http = Http1Client(self._settings.url, max_connections=MAX_CONNECTIONS)
        headers = {"Authorization": self._authorization(room), "Content-Type": _PROTOBUF}
        status, body = await self._http.post(
            _PATH + method, request.SerializeToString(), headers, timeout=timeout
        )
        if status != 200:
            raise twirp_error(status, body)
        return answer.FromString(body)

    async def aclose(self) -> None:
        """Close the connections to LiveKit. Idempotent."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
