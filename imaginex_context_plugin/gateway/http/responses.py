"""The answer to a delivered message: the platform's success shape with a per-room list, or,
when no room took it, the one error that tells the caller best what to do next.
"""

from __future__ import annotations

import math
from typing import Any, Final

from aiohttp import web

from ...errors import ErrorCode
from ...protocol import ADD_CONTEXT_SUCCESS_MESSAGE, SPEAK_SUCCESS_MESSAGE, utc_timestamp
from ..models import (
    AddContextData,
    AddContextResponse,
    AnswerData,
    ControlData,
    ControlResponse,
    RoomResult,
    SpeakData,
    SpeakResponse,
)
from ..refusals import STATUS_FOR, Refusal, json_response
from .fanout import RoomOutcome
from .messages import Outgoing

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
    ErrorCode.SPEECH_FAILED,  # a sender's own wait, never an agent's answer: last
)


def answer(
    outgoing: Outgoing,
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
    # every endpoint reports the same fields; add-context and the call-control endpoints also
    # say which type it was, and the call-control endpoints what each agent answered
    fields: dict[str, Any] = {
        "agent_code": agent_code,
        "delivered_to_rooms": delivered,
        "timestamp": utc_timestamp(),
        "request_id": request_id,
    }
    data: AnswerData
    if outgoing.endpoint == "speak":
        data = SpeakData(rooms=[o.result for o in outcomes], **fields)
    elif outgoing.endpoint == "add-context":
        data = AddContextData(
            context_type=outgoing.kind, rooms=[o.result for o in outcomes], **fields
        )
    else:
        rooms = [_with_result(o) for o in outcomes]
        data = ControlData(context_type=outgoing.kind, rooms=rooms, **fields)
    if delivered == 0:
        raise failure(outcomes, data, delivery_timeout=delivery_timeout)
    if isinstance(data, SpeakData):
        return json_response(SpeakResponse(message=SPEAK_SUCCESS_MESSAGE, data=data))
    if isinstance(data, AddContextData):
        spoken = data.context_type == "speak"
        message = SPEAK_SUCCESS_MESSAGE if spoken else ADD_CONTEXT_SUCCESS_MESSAGE
        return json_response(AddContextResponse(message=message, data=data))
    # the agents' own sentence for this type (they all say the same)
    message = next(o.ack.message for o in outcomes if o.ack is not None)
    return json_response(ControlResponse(message=message, data=data))


# the ack data every answer carries; what is left is what this type reports
_COMMON_ACK_FIELDS: Final = frozenset(
    {"agent_code", "context_type", "delivered_to_rooms", "room_id", "timestamp"}
)


def _with_result(outcome: RoomOutcome) -> RoomResult:
    """The room's result with what its agent reported (I/O state, history, speech id)."""
    if outcome.ack is None:
        return outcome.result
    reported = outcome.ack.data.model_dump(mode="json", exclude=set(_COMMON_ACK_FIELDS))
    return outcome.result.model_copy(update={"result": reported})


def failure(
    outcomes: list[RoomOutcome],
    data: AnswerData,
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
        # the agent does not trust the gateway (or does not grant it this type): a deployment
        # problem, not the caller's secret, so it must not read as a 401; the room entries
        # carry the agent's own sentence
        return Refusal(
            502,
            ErrorCode.INTERNAL_ERROR.value,
            "The agent refused the gateway's message: its ContextPlugin must trust the "
            "gateway's identity (allowed_identities) or its signing secret, and grant it this "
            "message type (permissions).",
            data=data,
        )
    return Refusal(STATUS_FOR.get(code, 502), code.value, message, headers=headers, data=data)
