"""Turning what a caller passes into the exact text sent: an id, validation, size, signature."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .. import protocol
from ..errors import ErrorCode, ProtocolError
from ..expiring import ExpiringCache
from ..protocol import MAX_PAYLOAD_BYTES, Request, oversize
from ..request_errors import ContextError
from ..security import SIGNATURE_WINDOW_S, sign_request
from .options import EVENT_MEMORY_MAX


def new_request_id() -> str:
    """A random request id: 32 hex digits."""
    return uuid.uuid4().hex


def prepare_request(
    request: Request | BaseModel | Mapping[str, Any], *, agent_code: str | None = None
) -> dict[str, Any]:
    """Turn a request model or mapping into the JSON object to send, with an id, validated.

    A request without an id gets a random one (32 hex digits). ``agent_code``, when given and
    the request names none, is added so that the receiver refuses the request if it serves
    another code. Unknown fields of a mapping are kept (newer receivers may understand them).

    Raises:
        ContextError: ``VALIDATION_ERROR`` if the request is not a valid protocol v1 request.
        TypeError: If ``request`` is neither a model nor a mapping.
    """
    if isinstance(request, BaseModel):
        obj = request.model_dump(mode="json", exclude_none=True)
    elif isinstance(request, Mapping):
        obj = dict(request)
    else:
        raise TypeError("request must be a protocol request model or a mapping")
    if obj.get("id") is None:
        obj["id"] = new_request_id()
    if agent_code is not None and obj.get("agent_code") is None:
        obj["agent_code"] = agent_code
    try:
        protocol.validate_request(obj)
    except ProtocolError as exc:
        raise ContextError(
            exc.code, exc.message, request_id=protocol.request_id_of(obj), retryable=False
        ) from None
    return obj


def encode(obj: Mapping[str, Any]) -> str:
    """The request's JSON text, compact."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def check_size(payload: str, request_id: str) -> None:
    """Refuse a payload that does not fit one packet.

    Raises:
        ContextError: ``PAYLOAD_TOO_LARGE``.
    """
    size = oversize(payload)
    if size is not None:
        raise ContextError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"The message is {size} bytes once encoded; the limit is {MAX_PAYLOAD_BYTES} bytes.",
            request_id=request_id,
            retryable=False,
        )


def check_request_size(obj: Mapping[str, Any], *, secret: str | bytes | None = None) -> None:
    """Refuse a prepared request that will not fit in one packet, signed when ``secret`` is set.

    Lets a caller find out before joining the room what the client would refuse at send time.

    Raises:
        ContextError: ``PAYLOAD_TOO_LARGE``.
    """
    body = encode(obj)
    payload = sign_request(body, secret) if secret else body
    check_size(payload, str(obj.get("id")))


class Signer:
    """Signs each attempt anew, never twice with the same envelope."""

    def __init__(self, secret: str | bytes) -> None:
        self._secret = secret
        # sha256(body) -> last signing timestamp: a retry in the same second must not produce
        # the very same envelope, which the receiver would refuse as a replay
        self._signed_at: ExpiringCache[int] = ExpiringCache(
            ttl_s=2 * SIGNATURE_WINDOW_S, max_entries=EVENT_MEMORY_MAX
        )

    def sign(self, body: str) -> str:
        """The signed envelope of ``body``, with a timestamp later than any before for it."""
        digest = hashlib.sha256(body.encode("utf-8")).digest()
        now = int(time.time())
        last = self._signed_at.get(digest)
        timestamp = now if last is None or now > last else last + 1
        self._signed_at.put(digest, timestamp)
        return sign_request(body, self._secret, timestamp=timestamp)
