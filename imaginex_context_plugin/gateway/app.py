"""The aiohttp application serving the platform's Agent Context API.

A request goes, in this order: throttle a client address with too many failed
authentications, authenticate the ``api-secret`` (nothing else is looked at before), rate
limit per secret, check the secret may address the agent code, read and validate
the body (size limit first), find the rooms where the agent is live, deliver to all of them at
once with a timeout, and answer with the platform's response shape plus a per-room list.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .._packet import oversize
from ..errors import BackendError, validation_sentence
from ..expiring import ExpiringCache
from ..log import logger
from ..protocol import (
    ADD_CONTEXT_SUCCESS_MESSAGE,
    MAX_ID_LENGTH,
    MAX_PAYLOAD_BYTES,
    SPEAK_SUCCESS_MESSAGE,
    AddContextRequest,
    ErrorCode,
    SpeakRequest,
    SuccessAck,
    parse_ack,
    utc_timestamp,
)
from ..security import DEDUP_WINDOW_S, RateLimit, RateLimiter, sign_request
from ..version import __version__
from .backend import AgentBackend, AgentTarget
from .config import ApiSecrets, GatewayConfig, Principal
from .limits import DEFAULT_AUTH_FAILURE_LIMIT, FailureLimiter, client_key
from .models import (
    CONTEXT_TYPES,
    AddContextBody,
    AddContextData,
    AddContextResponse,
    ContextType,
    ErrorResponse,
    HealthResponse,
    RoomResult,
    SpeakBody,
    SpeakData,
    SpeakResponse,
)
from .openapi import build_openapi
from .server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    request_finished,
    request_started,
    start_gateway_server,
)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8089
DEFAULT_DELIVERY_TIMEOUT_S: Final = 5.0
"""Seconds the agents have to acknowledge a message before the room counts as TIMEOUT."""
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
DEFAULT_BODY_TIMEOUT_S: Final = 30.0
"""Seconds a client has to send a request's body once its headers are in."""
REQUEST_TIMEOUT: Final = "REQUEST_TIMEOUT"
"""Error code of a body that did not arrive in time (the gateway's own; not an agent error)."""
"""Largest HTTP body read; the message sent on to the agents must also fit in 15 KiB."""
DEFAULT_GATEWAY_RATE_LIMIT: Final = RateLimit(per_second=10.0, burst=50)
"""Per api-secret: 10 requests a second, bursts of 50."""
IDEMPOTENCY_WINDOW_S: Final = DEDUP_WINDOW_S
"""How long an Idempotency-Key stays bound to its request: the agents' 10-minute dedup window."""
IDEMPOTENCY_MAX_KEYS: Final = 10_000
"""Keys remembered at most; past that the oldest are forgotten and only the agents check them."""

API_SECRET_HEADER: Final = "api-secret"
IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"

NOT_FOUND: Final = "NOT_FOUND"
"""Error code of an unknown route (the gateway's own; not an agent error)."""
METHOD_NOT_ALLOWED: Final = "METHOD_NOT_ALLOWED"
"""Error code of a known route called with the wrong method."""

UNAUTHORIZED_MESSAGE: Final = "Invalid api-secret"
ID_REUSED_MESSAGE: Final = (
    "This Idempotency-Key was already used for a different request (another body or endpoint) "
    "in the last 10 minutes; send a new key. Nothing was sent."
)
NO_ACTIVE_ROOMS_MESSAGE: Final = "No active sessions found for agent"

# The HTTP status for each error code, when no room took the message.
STATUS_FOR: Final[dict[ErrorCode, int]] = {
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.AGENT_NOT_FOUND: 404,
    ErrorCode.NO_ACTIVE_ROOMS: 404,
    ErrorCode.BUSY: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.ID_REUSED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 502,
    ErrorCode.NOT_READY: 503,
    ErrorCode.LIVEKIT_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}

# When every room failed, the first code here that some room reported is the answer: the
# caller's own mistakes first (retrying will not help), then "wait and retry", then "the agent
# is gone", then transient trouble, then the agent refusing or failing.
FAILURE_PRECEDENCE: Final[tuple[ErrorCode, ...]] = (
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.ID_REUSED,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.BUSY,
    ErrorCode.RATE_LIMITED,
    ErrorCode.AGENT_NOT_FOUND,
    ErrorCode.NO_ACTIVE_ROOMS,
    ErrorCode.NOT_READY,
    ErrorCode.LIVEKIT_UNAVAILABLE,
    ErrorCode.TIMEOUT,
    ErrorCode.UNAUTHORIZED,
    ErrorCode.INTERNAL_ERROR,
)

_M = TypeVar("_M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refusal(Exception):
    """An error answer, raised anywhere in a handler and rendered by the middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        data: SpeakData | AddContextData | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.data = data
        self.close = close


class _Outcome:
    """One room's delivery result, with what the HTTP answer needs beyond ``RoomResult``."""

    __slots__ = ("error", "result", "retry_after")

    def __init__(
        self,
        result: RoomResult,
        *,
        error: ErrorCode | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.result = result
        self.error = error
        self.retry_after = retry_after


def _json_response(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _error_response(refusal: _Refusal) -> web.Response:
    body = ErrorResponse(error=refusal.code, message=refusal.message, data=refusal.data)
    response = _json_response(body, status=refusal.status, headers=refusal.headers)
    if refusal.close:
        response.force_close()
    return response


def _sentence(exc: ValidationError) -> str:
    return validation_sentence(exc, types=CONTEXT_TYPES)


class _Gateway:
    def __init__(
        self,
        backend: AgentBackend,
        secrets: ApiSecrets,
        *,
        signing_secret: str | None,
        delivery_timeout: float,
        rate_limit: RateLimit | None,
        auth_failure_limit: RateLimit | None,
        max_body_bytes: int,
        body_timeout: float,
    ) -> None:
        self._backend = backend
        self._secrets = secrets
        self._signing_secret = signing_secret
        self._timeout = delivery_timeout
        self._limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self._auth_failures = (
            FailureLimiter(auth_failure_limit) if auth_failure_limit is not None else None
        )
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout
        self._openapi = json.dumps(build_openapi()).encode("utf-8")
        # (agent code, Idempotency-Key) -> digest of the request it was first used for: the
        # agents dedup per (gateway identity, id), and each agent serves one code
        self._idempotency: ExpiringCache[bytes] = ExpiringCache(
            ttl_s=IDEMPOTENCY_WINDOW_S, max_entries=IDEMPOTENCY_MAX_KEYS
        )

    # -- middleware: error bodies and the access log

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        error: str | None = None
        request_started(request)
        try:
            response = await handler(request)
        except _Refusal as refusal:
            error = refusal.code
            response = _error_response(refusal)
            if refusal.close:
                await self._send_and_close(request, response)
        except web.HTTPException as exc:
            converted = self._from_http_exception(request, exc)
            error = converted.code
            response = _error_response(converted)
        except Exception:
            logger.exception("unexpected error in the gateway")
            error = ErrorCode.INTERNAL_ERROR.value
            response = _error_response(
                _Refusal(500, error, "The gateway failed unexpectedly; nothing was sent.")
            )
        finally:
            request_finished(request)
        duration_ms = (time.perf_counter() - started) * 1000
        # raw_path: the decoded path could carry a newline into the log
        path = request.rel_url.raw_path
        logger.info(
            "%s %s %d %.1fms",
            request.method,
            path,
            response.status,
            duration_ms,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status,
                "duration_ms": round(duration_ms, 1),
                "agent_code": request.match_info.get("agent_code"),
                "error": error,
            },
        )
        return response

    @staticmethod
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

    def _from_http_exception(self, request: web.Request, exc: web.HTTPException) -> _Refusal:
        if exc.status == 404:
            return _Refusal(404, NOT_FOUND, "No such endpoint; see /openapi.json.")
        if exc.status == 405:
            allow = exc.headers.get("Allow", "")
            return _Refusal(
                405,
                METHOD_NOT_ALLOWED,
                f"Method {request.method} is not allowed here; use {allow or 'another method'}.",
                headers={"Allow": allow} if allow else None,
            )
        if exc.status == 413:
            return self._too_large()
        code = ErrorCode.VALIDATION_ERROR.value if exc.status == 400 else "HTTP_ERROR"
        return _Refusal(exc.status, code, exc.reason)

    def _too_large(self) -> _Refusal:
        return _Refusal(
            413,
            ErrorCode.PAYLOAD_TOO_LARGE.value,
            f"Request body is over the {self._max_body_bytes} byte limit.",
        )

    # -- plain endpoints

    async def healthz(self, request: web.Request) -> web.Response:
        return _json_response(HealthResponse(version=__version__))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    # -- the two API endpoints

    async def speak(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        self._admit(request, agent_code)
        body = self._validate(SpeakBody, await self._read_object(request))
        return await self._send(
            request, agent_code, "speak", body.message, body.room_id, endpoint="speak"
        )

    async def add_context(self, request: web.Request) -> web.Response:
        agent_code = request.match_info["agent_code"]
        self._admit(request, agent_code)
        body = self._validate(AddContextBody, await self._read_object(request))
        return await self._send(
            request, agent_code, body.type, body.context, body.room_id, endpoint="add-context"
        )

    def _admit(self, request: web.Request, agent_code: str) -> Principal:
        client = client_key(request.remote)
        if self._auth_failures is not None:
            # a throttled client's secret is not even compared: its answer would be an oracle
            wait = self._auth_failures.retry_after(client)
            if wait:
                raise _Refusal(
                    429,
                    ErrorCode.RATE_LIMITED.value,
                    "Too many failed authentications from this address; retry after "
                    "Retry-After seconds.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        principal = self._secrets.authenticate(request.headers.get(API_SECRET_HEADER))
        if principal is None:
            if self._auth_failures is not None:
                self._auth_failures.charge(client)
            raise _Refusal(401, ErrorCode.UNAUTHORIZED.value, UNAUTHORIZED_MESSAGE)
        if self._limiter is not None:
            wait = self._limiter.acquire(principal.name)
            if wait:
                raise _Refusal(
                    429,
                    ErrorCode.RATE_LIMITED.value,
                    "Too many requests for this api-secret; retry after Retry-After seconds.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        if not principal.may_address(agent_code):
            # a code of another tenant does not exist as far as this caller can tell
            raise _Refusal(
                404, ErrorCode.AGENT_NOT_FOUND.value, f"Agent with code '{agent_code}' not found"
            )
        return principal

    async def _read_object(self, request: web.Request) -> dict[str, Any]:
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise self._too_large()
        try:
            raw = await asyncio.wait_for(request.read(), self._body_timeout)
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        except asyncio.TimeoutError:
            # the rest of the body may still come; the connection cannot serve another request
            raise _Refusal(
                408,
                REQUEST_TIMEOUT,
                f"The request body did not arrive within {self._body_timeout:g} seconds.",
                close=True,
            ) from None
        if not raw.strip():
            raise _Refusal(
                400, ErrorCode.VALIDATION_ERROR.value, "Request body is empty; send a JSON object."
            )
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Refusal(
                400, ErrorCode.VALIDATION_ERROR.value, "Request body is not valid JSON."
            ) from None
        if not isinstance(obj, dict):
            raise _Refusal(
                400, ErrorCode.VALIDATION_ERROR.value, "Request body must be a JSON object."
            )
        return obj

    def _validate(self, model: type[_M], obj: dict[str, Any]) -> _M:
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise _Refusal(400, ErrorCode.VALIDATION_ERROR.value, _sentence(exc)) from None

    def _request_id(self, request: web.Request) -> str:
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if key is None:
            return uuid.uuid4().hex
        key = key.strip()
        if not key or len(key) > MAX_ID_LENGTH:
            raise _Refusal(
                400,
                ErrorCode.VALIDATION_ERROR.value,
                f"Header {IDEMPOTENCY_KEY_HEADER} must be 1 to {MAX_ID_LENGTH} characters.",
            )
        return key

    def _bind_key(
        self,
        request: web.Request,
        agent_code: str,
        request_id: str,
        fingerprint: tuple[str, ContextType, str, str | None],
    ) -> None:
        """Refuse a key already bound to another request, else bind it to this one.

        Synchronous, so two concurrent calls with one key cannot both pass.
        """
        if IDEMPOTENCY_KEY_HEADER not in request.headers:
            return  # a key the gateway made up is never reused
        canonical = json.dumps(fingerprint, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()
        bound = self._idempotency.get((agent_code, request_id))
        if bound is None:
            # not refreshed by repeats: the key stays bound no longer than the agents remember it
            self._idempotency.put((agent_code, request_id), digest)
        elif bound != digest:
            raise _Refusal(422, ErrorCode.ID_REUSED.value, ID_REUSED_MESSAGE)

    def _payload(
        self, kind: ContextType, text: str, request_id: str, agent_code: str, room: str | None
    ) -> str:
        request: SpeakRequest | AddContextRequest
        if kind == "speak":
            request = SpeakRequest(
                type="speak", id=request_id, message=text, agent_code=agent_code, room_id=room
            )
        else:
            request = AddContextRequest(
                type="add_context", id=request_id, context=text, agent_code=agent_code, room_id=room
            )
        body = request.model_dump_json(exclude_defaults=True)
        if self._signing_secret:
            return sign_request(body, self._signing_secret)
        return body

    async def _send(
        self,
        request: web.Request,
        agent_code: str,
        kind: ContextType,
        text: str,
        room_id: str | None,
        *,
        endpoint: Literal["speak", "add-context"],
    ) -> web.Response:
        request_id = self._request_id(request)
        # refuse text that cannot fit before asking LiveKit anything
        size = oversize(self._payload(kind, text, request_id, agent_code, room_id))
        if size is not None:
            field = "message" if endpoint == "speak" else "context"
            raise _Refusal(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE.value,
                f"Field '{field}' is too long: the message for the agent would be {size} bytes; "
                f"the limit is {MAX_PAYLOAD_BYTES} bytes (15 KiB).",
            )
        self._bind_key(request, agent_code, request_id, (endpoint, kind, text, room_id))
        try:
            targets = await self._backend.find_agents(agent_code, room_id=room_id)
        except BackendError as exc:
            raise _Refusal(STATUS_FOR[exc.code], exc.code.value, exc.message) from None
        if not targets:
            raise _Refusal(404, ErrorCode.NO_ACTIVE_ROOMS.value, NO_ACTIVE_ROOMS_MESSAGE)

        outcomes = await asyncio.gather(
            *(self._deliver_one(t, kind, text, request_id, agent_code) for t in targets)
        )
        delivered = sum(1 for o in outcomes if o.result.delivered)
        rooms = [o.result for o in outcomes]
        timestamp = utc_timestamp()
        data: SpeakData | AddContextData
        if endpoint == "speak":
            data = SpeakData(
                agent_code=agent_code,
                delivered_to_rooms=delivered,
                timestamp=timestamp,
                request_id=request_id,
                rooms=rooms,
            )
        else:
            data = AddContextData(
                agent_code=agent_code,
                context_type=kind,
                delivered_to_rooms=delivered,
                timestamp=timestamp,
                request_id=request_id,
                rooms=rooms,
            )
        # the access log has the request; this line adds where it went, at INFO when a room
        # failed
        logger.log(
            logging.INFO if delivered < len(rooms) else logging.DEBUG,
            "message sent to agents",
            extra={
                "agent_code": agent_code,
                "request_id": request_id,
                "context_type": kind,
                "rooms": len(rooms),
                "delivered_to_rooms": delivered,
            },
        )
        logger.debug("message text", extra={"request_id": request_id, "message_text": text})
        if delivered == 0:
            raise self._failure(outcomes, data)
        message = SPEAK_SUCCESS_MESSAGE if kind == "speak" else ADD_CONTEXT_SUCCESS_MESSAGE
        if isinstance(data, SpeakData):
            return _json_response(SpeakResponse(message=message, data=data))
        return _json_response(AddContextResponse(message=message, data=data))

    async def _deliver_one(
        self, target: AgentTarget, kind: ContextType, text: str, request_id: str, agent_code: str
    ) -> _Outcome:
        def failed(code: ErrorCode, message: str, retry_after: float | None = None) -> _Outcome:
            return _Outcome(
                RoomResult(room=target.room, delivered=False, error=code.value, message=message),
                error=code,
                retry_after=retry_after,
            )

        if target.refusal is not None:
            return failed(ErrorCode.AGENT_NOT_FOUND, target.refusal)
        payload = self._payload(kind, text, request_id, agent_code, target.room)
        if oversize(payload) is not None:
            return failed(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"With this room's name the message is over {MAX_PAYLOAD_BYTES} bytes.",
            )
        try:
            raw = await asyncio.wait_for(
                self._backend.deliver(target, payload, timeout=self._timeout), self._timeout
            )
        except asyncio.TimeoutError:
            return failed(
                ErrorCode.TIMEOUT, f"The agent did not answer within {self._timeout:g} s."
            )
        except BackendError as exc:
            return failed(exc.code, exc.message)
        except Exception:
            logger.exception("unexpected error delivering to an agent", extra={"room": target.room})
            return failed(ErrorCode.INTERNAL_ERROR, "The gateway failed to deliver the message.")
        try:
            ack = parse_ack(raw)
        except ValueError:  # pydantic's ValidationError is a ValueError
            return failed(ErrorCode.INTERNAL_ERROR, "The agent's answer could not be read.")
        if isinstance(ack, SuccessAck):
            return _Outcome(
                RoomResult(room=target.room, delivered=True, duplicate=bool(ack.duplicate))
            )
        return failed(ack.error, ack.message, ack.retry_after)

    def _failure(self, outcomes: list[_Outcome], data: SpeakData | AddContextData) -> _Refusal:
        errors = [o.error for o in outcomes if o.error is not None]
        # a code newer than this table still gets an answer: the first room's
        code = next((c for c in FAILURE_PRECEDENCE if c in errors), errors[0])
        first = next(o for o in outcomes if o.error is code)
        message = first.result.message or ""
        headers: dict[str, str] = {}
        if code is ErrorCode.TIMEOUT:
            message = f"No agent answered within {self._timeout:g} seconds."
        elif code is ErrorCode.RATE_LIMITED:
            waits = [o.retry_after for o in outcomes if o.retry_after is not None]
            headers["Retry-After"] = str(max(1, math.ceil(max(waits, default=1.0))))
        elif code is ErrorCode.UNAUTHORIZED:
            # the agent does not trust the gateway: a deployment problem, not the caller's
            # secret, so it must not read as a 401
            return _Refusal(
                502,
                ErrorCode.INTERNAL_ERROR.value,
                "The agent refused the gateway's message: its ContextPlugin must trust the "
                "gateway's identity (allowed_identities) or its signing secret.",
                data=data,
            )
        return _Refusal(
            STATUS_FOR.get(code, 502), code.value, message, headers=headers, data=data
        )

    async def close(self, app: web.Application) -> None:
        await self._backend.aclose()


def create_app(
    backend: AgentBackend,
    secrets: ApiSecrets,
    *,
    signing_secret: str | None = None,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
    rate_limit: RateLimit | None = DEFAULT_GATEWAY_RATE_LIMIT,
    auth_failure_limit: RateLimit | None = DEFAULT_AUTH_FAILURE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
) -> web.Application:
    """Build the gateway's aiohttp application.

    Args:
        backend: How LiveKit is reached (``LiveKitBackend`` in production). It is closed with
            the application.
        secrets: The accepted api-secrets.
        signing_secret: If set, every message to the agents is signed with it
            (``ContextPlugin(secret=...)`` on the agent side). Default: not signed; the agents
            must then trust the gateway's participant identity.
        delivery_timeout: Seconds the agents have to answer. Default 5.
        rate_limit: Per api-secret; ``None`` turns it off. Default 10/s, bursts of 50.
        auth_failure_limit: Failed authentications per client address (IPv6: per /64); once
            used up, the address gets 429 without its secret being checked. Valid secrets are
            not charged. ``None`` turns it off. Default 5/s, bursts of 20.
        max_body_bytes: Largest request body. Default 64 KiB.
        body_timeout: Seconds to receive the body once the headers are in; a late body is
            answered 408 ``REQUEST_TIMEOUT`` and the connection closed. Default 30.

    Returns:
        The application; serve it with :func:`~.server.start_gateway_server` (which also limits
        the time to send headers and the number of connections), ``aiohttp.web.run_app`` or a
        test server.
    """
    if not 0 < delivery_timeout < math.inf:
        raise ValueError("delivery_timeout must be a positive number of seconds")
    if not 0 < body_timeout < math.inf:
        raise ValueError("body_timeout must be a positive number of seconds")
    gateway = _Gateway(
        backend,
        secrets,
        signing_secret=signing_secret,
        delivery_timeout=delivery_timeout,
        rate_limit=rate_limit,
        auth_failure_limit=auth_failure_limit,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
    )
    # client_max_size: aiohttp's own guard on request.read(); checked again with a JSON answer
    app = web.Application(middlewares=[gateway.middleware], client_max_size=max_body_bytes)
    app.router.add_post("/v1/agent/{agent_code}/speak", gateway.speak)
    app.router.add_post("/v1/agent/{agent_code}/add-context", gateway.add_context)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/openapi.json", gateway.openapi)
    app.on_cleanup.append(gateway.close)
    return app


def run_gateway(
    config: GatewayConfig,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    identity: str | None = None,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S,
    rate_limit: RateLimit | None = DEFAULT_GATEWAY_RATE_LIMIT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve the gateway until SIGINT or SIGTERM (what ``imaginex-context gateway`` runs).

    Args:
        config: LiveKit settings and api-secrets (``GatewayConfig.from_env()``).
        host: Interface to listen on. Default 127.0.0.1.
        port: Port. Default 8089.
        identity: The gateway's participant identity. Default ``imaginex-gateway``.
        delivery_timeout: See :func:`create_app`.
        rate_limit: See :func:`create_app`.
        max_body_bytes: See :func:`create_app`.
        header_timeout: See :func:`~.server.start_gateway_server`. Default 10.
        body_timeout: See :func:`create_app`. Default 30.
        max_connections: See :func:`~.server.start_gateway_server`. Default 1024.
    """
    from .backend import DEFAULT_GATEWAY_IDENTITY, LiveKitBackend

    async def make_app() -> web.Application:
        # built inside the loop: the backend's HTTP session binds to it
        backend = LiveKitBackend(
            config.livekit, identity=identity if identity else DEFAULT_GATEWAY_IDENTITY
        )
        logger.info(
            "gateway starting",
            extra={
                "livekit_url": config.livekit.url,
                "identity": backend.identity,
                "principals": [p.name for p in config.secrets.principals],
                "signed": config.signing_secret is not None,
            },
        )
        return create_app(
            backend,
            config.secrets,
            signing_secret=config.signing_secret,
            delivery_timeout=delivery_timeout,
            rate_limit=rate_limit,
            max_body_bytes=max_body_bytes,
            body_timeout=body_timeout,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = await start_gateway_server(
            await make_app(),
            host=host,
            port=port,
            header_timeout=header_timeout,
            max_connections=max_connections,
        )
        logger.info("gateway listening", extra={"host": host, "port": server.port})
        try:
            await stop.wait()
        finally:
            await server.aclose()

    asyncio.run(serve())
