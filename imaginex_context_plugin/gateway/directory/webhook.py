"""``POST /livekit/webhook``: LiveKit's webhooks, verified, written into the agent directory.

LiveKit signs each webhook with one of its API keys: the ``Authorization`` header is a JWT
whose ``sha256`` claim is the body's hash (``livekit-api``'s ``WebhookReceiver`` checks both).
Configure the server with ``webhook: {api_key: <the gateway's LIVEKIT_API_KEY>, urls:
[https://gateway.example/livekit/webhook]}``.

What livekit-server (v1.13.5, ``pkg/telemetry/events.go``) sends that matters here:
``participant_joined`` once a participant is active (its attributes as they are then: those of
its token, usually not yet those it sets right after joining), ``participant_left`` (or
``participant_connection_aborted`` when it never became active), ``room_finished``. No event
fires when a participant's attributes change later; :class:`~.sync.DirectorySync` covers
that with a re-check of the room. Webhooks are queued per room (in order) and dropped after
30 s undelivered; reconciliation heals what was dropped.

Answers: 200 ``{"success": true}`` once applied; 401 for a missing, forged or mismatched
signature, or a signed body that is not a webhook event; 413 for a body over the limit; 503
when the directory's store failed (LiveKit retries). Never the exception's text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from aiohttp import web
from livekit import api
from livekit.protocol.webhook import WebhookEvent

from ...errors import ErrorCode, StateUnavailable
from ...log import logger
from ..refusals import (
    REQUEST_TIMEOUT,
    Refusal,
    note_refusal,
    state_unavailable,
    too_large,
    unreadable_body,
)
from .sync import DirectorySync

WEBHOOK_PATH: Final = "/livekit/webhook"
DEFAULT_MAX_WEBHOOK_BYTES: Final = 64 * 1024
"""Largest webhook body read (LiveKit's participant and room events are a few KiB)."""
DEFAULT_WEBHOOK_BODY_TIMEOUT_S: Final = 10.0
"""Seconds for a webhook's body to arrive once its headers are in."""

_LABEL_REPEATED: Final = 3  # FieldDescriptor.LABEL_REPEATED
_UNSIGNED: Final = "The webhook is not signed with this gateway's LiveKit API key."


class LiveKitWebhook:
    """The webhook route's handler.

    Args:
        sync: What the events are applied to.
        api_key: The LiveKit API key the server signs webhooks with.
        api_secret: Its secret.
        max_body_bytes: See :data:`DEFAULT_MAX_WEBHOOK_BYTES`.
        body_timeout: See :data:`DEFAULT_WEBHOOK_BODY_TIMEOUT_S`.
    """

    def __init__(
        self,
        sync: DirectorySync,
        *,
        api_key: str,
        api_secret: str,
        max_body_bytes: int = DEFAULT_MAX_WEBHOOK_BYTES,
        body_timeout: float = DEFAULT_WEBHOOK_BODY_TIMEOUT_S,
    ) -> None:
        self._sync = sync
        self._receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, _UNSIGNED)
        body = await self._read(request)
        event = self._verify(body, auth)
        self._sync.start()
        try:
            await self._sync.on_event(event)
        except StateUnavailable:
            logger.warning("webhook not applied: directory unavailable", exc_info=True)
            raise state_unavailable("The agent directory is unavailable; retry.") from None
        return web.json_response({"success": True})

    async def _read(self, request: web.Request) -> str:
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise too_large(self._max_body_bytes)
        try:
            raw = await asyncio.wait_for(self._read_at_most(request), self._body_timeout)
        except asyncio.TimeoutError:
            raise Refusal(
                408, REQUEST_TIMEOUT, "The webhook body did not arrive in time.", close=True
            ) from None
        except web.RequestPayloadError as exc:
            # not the body LiveKit signed (it sends no Content-Encoding): unverifiable
            raise Refusal(
                401, ErrorCode.UNAUTHORIZED.value, unreadable_body(request, exc)
            ) from None
        if len(raw) > self._max_body_bytes:
            raise too_large(self._max_body_bytes)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, _UNSIGNED) from None

    async def _read_at_most(self, request: web.Request) -> bytes:
        """The body, or one byte more than the limit (enough to refuse it)."""
        raw = bytearray()
        while len(raw) <= self._max_body_bytes:
            chunk = await request.content.read(self._max_body_bytes + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
        return bytes(raw)

    async def on_startup(self, app: web.Application) -> None:
        """Start reconciling when the application starts (an ``on_startup`` hook)."""
        self._sync.start()

    def _verify(self, body: str, auth: str) -> WebhookEvent:
        # LiveKit sends the bare JWT; a "Bearer " prefix is accepted too
        token = auth.removeprefix("Bearer ").strip()
        try:
            event = self._receiver.receive(body, token)
        except Exception as exc:  # livekit-api raises bare Exception, jwt and protobuf errors
            logger.debug("webhook refused", extra={"error": type(exc).__name__})
            note_refusal(f"not verified ({type(exc).__name__})")
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, _UNSIGNED) from None
        # parsed once already, so within protobuf's depth limit
        if not _well_formed(json.loads(body), WebhookEvent.DESCRIPTOR):
            logger.info("webhook refused", extra={"error": "MalformedEvent"})
            raise Refusal(401, ErrorCode.UNAUTHORIZED.value, _UNSIGNED)
        return event


def _well_formed(value: object, message: Any) -> bool:
    """Whether ``value`` gives every message-typed field as an object (or null), and no enum
    as ``true`` or ``false``.

    protobuf's JSON parser, told to ignore unknown fields as livekit-api tells it, reads a
    string or a list where a message belongs as an empty message (each character or item an
    unknown field name): ``{"room": "abc"}`` would pass for an event with no room. It reads a
    boolean where an enum belongs as the number 0 or 1 (Python's ``bool`` is an ``int``).
    Other scalars and maps it checks itself. ``message`` is a protobuf ``Descriptor`` (pure
    Python or upb).
    """
    if not isinstance(value, dict):
        return False
    for field in message.fields:
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            continue
        if nested is None and field.enum_type is None:
            continue
        given = value.get(field.json_name, value.get(field.name))
        if given is None:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf before 6.31 says it with the label
            repeated = getattr(field, "label", None) == _LABEL_REPEATED
        items = given if repeated and isinstance(given, list) else [given]
        if nested is None:  # an enum
            if any(isinstance(item, bool) for item in items):
                return False
        elif not all(_well_formed(item, nested) for item in items):
            return False
    return True

