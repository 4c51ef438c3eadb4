"""Error answers: :class:`Refusal`, raised anywhere in a request's handling, and its JSON body.

Every error the gateway gives has the platform's shape (``{"success": false, "error": ...,
"message": ...}``); :data:`STATUS_FOR` is the one table from an error code to its HTTP status.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from pydantic import BaseModel

from ..errors import ErrorCode
from .models import AnswerData, ErrorResponse

NOT_FOUND: Final = "NOT_FOUND"
"""Error code of an unknown route (the gateway's own; not an agent error)."""
METHOD_NOT_ALLOWED: Final = "METHOD_NOT_ALLOWED"
"""Error code of a known route called with the wrong method."""
REQUEST_TIMEOUT: Final = "REQUEST_TIMEOUT"
"""Error code of a body that did not arrive in time (the gateway's own; not an agent error)."""
REQUEST_IN_PROGRESS: Final = "REQUEST_IN_PROGRESS"
"""Error code (409) of a repeated Idempotency-Key whose first request is still being delivered
after the repeat waited for it."""
STATE_UNAVAILABLE: Final = "STATE_UNAVAILABLE"
"""Error code (503) when the replicas' shared state (Redis) cannot be reached."""
STATE_UNAVAILABLE_MESSAGE: Final = (
    "The gateway's shared state (Redis) cannot be reached, so the request could not be checked "
    "for repeats or rate limited; nothing was sent. Retry shortly."
)

REFUSAL_REASON: Final[ContextVar[str | None]] = ContextVar(
    "imaginex_refusal_reason", default=None
)
"""Why the request being handled was refused, for its access-log line (set by
:func:`note_refusal`, read and reset by the middleware)."""


def note_refusal(reason: str) -> None:
    """Say why the request being handled is refused: a refused request gets one INFO line, its
    access-log line, which carries ``reason`` (a static sentence, never the request's text)."""
    REFUSAL_REASON.set(reason)


# The HTTP status for each error code, when no room took the message.
STATUS_FOR: Final[dict[ErrorCode, int]] = {
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.AGENT_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NO_ACTIVE_ROOMS: 404,
    ErrorCode.BUSY: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.ID_REUSED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 502,
    ErrorCode.SPEECH_FAILED: 502,
    ErrorCode.NOT_READY: 503,
    ErrorCode.LIVEKIT_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


class Refusal(Exception):
    """An error answer, raised anywhere in a handler and rendered by the middleware.

    Args:
        status: The HTTP status.
        code: The ``error`` field: an :class:`ErrorCode` value or one of the gateway's own.
        message: The ``message`` field, one sentence for the caller.
        headers: Extra response headers (``Retry-After``, ``Allow``).
        data: The per-room results, when the message went to rooms and none took it.
        close: Close the connection after answering (the rest of the body may still come).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        data: AnswerData | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.data = data
        self.close = close


def invalid(message: str) -> Refusal:
    """A 400 ``VALIDATION_ERROR`` with ``message``."""
    return Refusal(400, ErrorCode.VALIDATION_ERROR.value, message)


def state_unavailable(message: str = STATE_UNAVAILABLE_MESSAGE) -> Refusal:
    """The one answer to :class:`~...errors.StateUnavailable` (the shared state, Redis, cannot
    be reached): 503 ``STATE_UNAVAILABLE``, retry after a second. ``message`` says what could
    not be done; the middleware answers an unexpected one with the default."""
    return Refusal(503, STATE_UNAVAILABLE, message, headers={"Retry-After": "1"})


def too_large(max_body_bytes: int) -> Refusal:
    """The answer to a body over ``max_body_bytes``."""
    return Refusal(
        413,
        ErrorCode.PAYLOAD_TOO_LARGE.value,
        f"Request body is over the {max_body_bytes} byte limit.",
    )


def from_http_exception(
    request: web.Request, exc: web.HTTPException, *, max_body_bytes: int
) -> Refusal:
    """aiohttp's own errors (no route, wrong method, body too large) in the platform's shape."""
    if exc.status == 404:
        return Refusal(404, NOT_FOUND, "No such endpoint; see /openapi.json.")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return Refusal(
            405,
            METHOD_NOT_ALLOWED,
            f"Method {request.method} is not allowed here; use {allow or 'another method'}.",
            headers={"Allow": allow} if allow else None,
        )
    if exc.status == 413:
        return too_large(max_body_bytes)
    code = ErrorCode.VALIDATION_ERROR.value if exc.status == 400 else "HTTP_ERROR"
    return Refusal(exc.status, code, exc.reason)


_DECODED_ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
"""The Content-Encodings aiohttp decompresses (any other value is read as it is)."""


def compressed_with(request: web.Request) -> str | None:
    """The Content-Encoding aiohttp decompressed ``request``'s body with, if any (only one it
    decodes, so no other header text is ever echoed)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return encoding if encoding in _DECODED_ENCODINGS else None


def unreadable_body(request: web.Request, exc: web.RequestPayloadError) -> str:
    """The sentence for a body aiohttp could not decode (``exc``, raised reading it)."""
    encoding = compressed_with(request)
    if isinstance(exc.__cause__, ContentEncodingError) and encoding is not None:
        return f"Request body is not valid {encoding} data (Content-Encoding)."
    return "Request body could not be read: its encoding is broken."


def json_response(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``model`` as a JSON response."""
    return web.Response(
        body=model.model_dump_json().encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(refusal: Refusal) -> web.Response:
    """The JSON answer for ``refusal`` (the connection marked to close if it asks so)."""
    body = ErrorResponse(error=refusal.code, message=refusal.message, data=refusal.data)
    response = json_response(body, status=refusal.status, headers=refusal.headers)
    if refusal.close:
        response.force_close()
    return response
