"""The answer to a delivered message: the platform's success shape with a per-room list, or,
when no room took it, the one error that tells the caller best what to do next.
"""

from __future__ import annotations

import math
from typing import Any, Final

from aiohttp import web

from ..protocol import (
    ADD_CONTEXT_SUCCESS_MESSAGE,
    SPEAK_SUCCESS_MESSAGE,
    ErrorCode,
    utc_timestamp,
)
from .fanout import RoomOutcome
from .messages import Endpoint
from .models import AddContextData, AddContextResponse, ContextType, SpeakData, SpeakResponse
from .refusals import STATUS_FOR, Refusal, json_response

# When every room failed, the first code here that some room reported is the answer: the
# caller's own mistakes first (retrying will not help), then "wait and retry", then "the agent
# is gone", then transient trouble, then the agent refusing or failing.
FAILURE_PRECEDENCE: Final[tuple[ErrorCode, ...]] = (
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.ID_REUSED,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.NOT_FOUND,
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


def answer(
    endpoint: Endpoint,
    kind: ContextType,
    agent_code: str,
    request_id: str,
    outcomes: list[RoomOutcome],
    *,
    delivery_timeout: float,
) -> web.Response:
    """The success answer when at least one room took the message.

    Raises:
        Refusal: No room took it: the failure with the per-room list as its ``data``.
    """
    delivered = sum(1 for o in outcomes if o.result.delivered)
    # both endpoints report the same fields; add-context also says which type it was
    fields: dict[str, Any] = {
        "agent_code": agent_code,
        "delivered_to_rooms": delivered,
        "timestamp": utc_timestamp(),
        "request_id": request_id,
        "rooms": [o.result for o in outcomes],
    }
    data: SpeakData | AddContextData = (
        SpeakData(**fields) if endpoint == "speak" else AddContextData(context_type=kind, **fields)
    )
    if delivered == 0:
        raise failure(outcomes, data, delivery_timeout=delivery_timeout)
    message = SPEAK_SUCCESS_MESSAGE if kind == "speak" else ADD_CONTEXT_SUCCESS_MESSAGE
    if isinstance(data, SpeakData):
        return json_response(SpeakResponse(message=message, data=data))
    return json_response(AddContextResponse(message=message, data=data))


def failure(
    outcomes: list[RoomOutcome],
    data: SpeakData | AddContextData,
    *,
    delivery_timeout: float,
) -> Refusal:
    """The error answer when every room failed (see :data:`FAILURE_PRECEDENCE`)."""
    errors = [o.error for o in outcomes if o.error is not None]
    # a code newer than this table still gets an answer: the first room's
    code = next((c for c in FAILURE_PRECEDENCE if c in errors), errors[0])
    first = next(o for o in outcomes if o.error is code)
    message = first.result.message or ""
    headers: dict[str, str] = {}
    if code is ErrorCode.TIMEOUT:
        message = f"No agent answered within {delivery_timeout:g} seconds."
    elif code is ErrorCode.RATE_LIMITED:
        waits = [o.retry_after for o in outcomes if o.retry_after is not None]
        headers["Retry-After"] = str(max(1, math.ceil(max(waits, default=1.0))))
    elif code is ErrorCode.UNAUTHORIZED:
        # the agent does not trust the gateway: a deployment problem, not the caller's
        # secret, so it must not read as a 401
        return Refusal(
            502,
            ErrorCode.INTERNAL_ERROR.value,
            "The agent refused the gateway's message: its ContextPlugin must trust the "
            "gateway's identity (allowed_identities) or its signing secret.",
            data=data,
        )
    return Refusal(STATUS_FOR.get(code, 502), code.value, message, headers=headers, data=data)
