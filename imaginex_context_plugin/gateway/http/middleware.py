"""The gateway's one middleware: every error in the platform's shape, one access-log line each.

A :class:`~..refusals.Refusal` raised by a handler becomes its JSON answer; a
:class:`~...errors.StateUnavailable` no route answered more precisely becomes the one 503
``STATE_UNAVAILABLE`` (:func:`~..refusals.state_unavailable`); aiohttp's own HTTP errors are
converted; anything unexpected becomes a generic 500 (never the exception's text).
A refused request gets one INFO line, its access line, carrying the reason a route noted
(:func:`~..refusals.note_refusal`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ...errors import ErrorCode, StateUnavailable
from ...log import logger
from ..refusals import (
    REFUSAL_REASON,
    Refusal,
    error_response,
    from_http_exception,
    state_unavailable,
)
from .serving import request_finished, request_started

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AnswerMiddleware:
    """Renders refusals and writes the access log; use :meth:`middleware` in the application.

    Args:
        max_body_bytes: The body limit, named in the answer to aiohttp's own 413.
        quiet_paths: Paths whose successful requests are logged at DEBUG, not INFO: the
            agents' replies, one per room per fan-out (their refusals stay at INFO).
    """

    def __init__(self, *, max_body_bytes: int, quiet_paths: frozenset[str] = frozenset()) -> None:
        self._max_body_bytes = max_body_bytes
        self._quiet_paths = quiet_paths

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        error: str | None = None
        request_started(request)
        noted = REFUSAL_REASON.set(None)
        try:
            response = await handler(request)
        except Refusal as refusal:
            error = refusal.code
            response = error_response(refusal)
            if refusal.close:
                await _send_and_close(request, response)
        except StateUnavailable:
            unavailable = state_unavailable()
            error = unavailable.code
            response = error_response(unavailable)
        except web.HTTPException as exc:
            converted = from_http_exception(request, exc, max_body_bytes=self._max_body_bytes)
            error = converted.code
            response = error_response(converted)
        except Exception:
            logger.exception("unexpected error in the gateway")
            error = ErrorCode.INTERNAL_ERROR.value
            response = error_response(
                Refusal(500, error, "The gateway failed unexpectedly; nothing was sent.")
            )
        finally:
            request_finished(request)
            reason = REFUSAL_REASON.get()
            REFUSAL_REASON.reset(noted)
        _let_a_broken_body_go(request, response)
        quiet = response.status < 400 and request.path in self._quiet_paths
        _log_access(
            request,
            response.status,
            error,
            time.perf_counter() - started,
            reason=reason,
            level=logging.DEBUG if quiet else logging.INFO,
        )
        return response


def _let_a_broken_body_go(request: web.Request, response: web.StreamResponse) -> None:
    """After a body that failed to decode (``Content-Encoding: gzip`` that is not gzip), close
    the connection once answered, without aiohttp's lingering read of the rest.

    aiohttp's parser stops at such a body and can read no further request on the connection,
    and its lingering read (for a route that did not read the body) would raise the decoding
    error out of the server, logged as an unhandled exception after a correct answer.
    """
    payload = request.content
    if payload.exception() is not None and not payload.is_eof():
        response.force_close()
        payload.feed_eof()  # nothing more comes: the parser feeds no data after its error


def _log_access(
    request: web.Request,
    status: int,
    error: str | None,
    duration_s: float,
    *,
    reason: str | None,
    level: int,
) -> None:
    if not logger.isEnabledFor(level):
        return
    duration_ms = duration_s * 1000
    # raw_path: the decoded path could carry a newline into the log
    path = request.rel_url.raw_path
    logger.log(
        level,
        "%s %s %d %.1fms",
        request.method,
        path,
        status,
        duration_ms,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 1),
            "agent_code": request.match_info.get("agent_code"),
            "error": error,
            "reason": reason,
        },
    )


async def _send_and_close(request: web.Request, response: web.Response) -> None:
    """Write the answer now and close the connection once it is flushed.

    Left to aiohttp, the connection would linger reading the rest of an unfinished body.
    """
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass
    if request.transport is not None:
        request.transport.close()
