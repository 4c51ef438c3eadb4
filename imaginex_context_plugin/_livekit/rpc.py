"""One RPC call to an agent, and the one table of what its failures mean.

:func:`call_agent` is how the client and the gateway send a request over RPC from a room
connection; every ``rtc.RpcError`` it meets becomes a :class:`~..errors.ContextError` through
:data:`RPC_FAILURES`, so the same failure reads the same wherever it happened. An RPC made
through the server API (``RoomService.PerformRpc``, :mod:`.server_rpc`) fails as an HTTP
answer instead: :func:`server_rpc_failure` reads the RPC error code LiveKit puts in its
message, or translates LiveKit's own refusal into the code that means the same
(:data:`SERVER_RPC_AS_RPC`), and goes through the same table.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Final

from livekit import api, rtc

from ..errors import ErrorCode
from ..protocol import RPC_METHOD
from ..request_errors import ContextError


@dataclass(frozen=True)
class RpcFailure:
    """What one LiveKit RPC failure means to a sender."""

    code: ErrorCode
    retryable: bool
    sentence: str
    """One sentence; ``{agent}`` is the agent's identity, ``{name}`` the RPC error's name."""


_Rpc = rtc.RpcError.ErrorCode

# Decided by what the caller must do next (docs/sender/python.md, "Reaching the agent over RPC"):
# - retry: the call timed out (the outcome is unknown; the same id is applied once), the agent is
#   registering its method, or LiveKit could not send it (our connection is down; the SDK
#   reconnects). A request keeps its id, so a retry never speaks twice.
# - fix the target: the agent is not in the room (it left, or never joined). AGENT_NOT_FOUND, as
#   when no agent is found at all; retryable, because the next attempt looks for the agent again
#   and a restarting agent comes back under the same code. Not NO_ACTIVE_ROOMS, for the
#   client and the gateway alike: the agent is what is missing, not a room.
# - give up: the request is too large, the server or SDK has no RPC (UNSUPPORTED_SERVER/VERSION:
#   LiveKit cannot serve this call, so LIVEKIT_UNAVAILABLE, but final: an upgrade is needed, not
#   a retry), or the agent's handler failed (INTERNAL_ERROR, whatever else LiveKit reports).
RPC_FAILURES: Final[dict[int, RpcFailure]] = {
    _Rpc.RESPONSE_TIMEOUT: RpcFailure(
        ErrorCode.TIMEOUT, True, "Agent '{agent}' did not answer in time."
    ),
    _Rpc.CONNECTION_TIMEOUT: RpcFailure(
        ErrorCode.TIMEOUT, True, "Agent '{agent}' did not acknowledge the message in time."
    ),
    _Rpc.UNSUPPORTED_METHOD: RpcFailure(
        # also what an agent answers in the moment between joining and registering the method
        ErrorCode.NOT_READY,
        True,
        f"Agent '{{agent}}' does not answer the '{RPC_METHOD}' RPC method; "
        "is ContextPlugin running there?",
    ),
    _Rpc.SEND_FAILED: RpcFailure(
        ErrorCode.LIVEKIT_UNAVAILABLE,
        True,
        "LiveKit could not send the message to agent '{agent}' ({name}).",
    ),
    _Rpc.RECIPIENT_NOT_FOUND: RpcFailure(
        ErrorCode.AGENT_NOT_FOUND,
        True,
        "Agent '{agent}' is not in the room: it left before the message reached it.",
    ),
    _Rpc.RECIPIENT_DISCONNECTED: RpcFailure(
        ErrorCode.AGENT_NOT_FOUND, True, "Agent '{agent}' left the room before it answered."
    ),
    _Rpc.REQUEST_PAYLOAD_TOO_LARGE: RpcFailure(
        ErrorCode.PAYLOAD_TOO_LARGE, False, "The message is too large for an RPC request."
    ),
    _Rpc.UNSUPPORTED_SERVER: RpcFailure(
        ErrorCode.LIVEKIT_UNAVAILABLE,
        False,
        "RPC is not available with this LiveKit server or SDK ({name}).",
    ),
    _Rpc.UNSUPPORTED_VERSION: RpcFailure(
        ErrorCode.LIVEKIT_UNAVAILABLE,
        False,
        "RPC is not available with this LiveKit server or SDK ({name}).",
    ),
}
HANDLER_FAILED: Final = RpcFailure(
    ErrorCode.INTERNAL_ERROR, False, "Agent '{agent}' failed to handle the message ({name})."
)
"""Every other RPC error: the agent's handler raised, or answered too much."""
CREDENTIALS_REFUSED: Final = RpcFailure(
    ErrorCode.LIVEKIT_UNAVAILABLE,
    False,
    "LiveKit refused the API key for agent '{agent}''s room ({name}); check the key pair.",
)
"""A server-API RPC that LiveKit refused to make (401, 403): no retry will do better."""
LIVEKIT_REFUSED: Final = RpcFailure(
    ErrorCode.LIVEKIT_UNAVAILABLE, False, "LiveKit refused the RPC to agent '{agent}' ({name})."
)
"""Any other refusal of a server-API RPC (retryable after a 5xx)."""

# What LiveKit v1.13.5 answers a PerformRpc with when the RPC error code is not in the message
# (checked on the real server, docs/livekit.md). LiveKit's own internal RPC (psrpc) waits 1 s
# for a node to take the call and tries 3 times, each try 3, 5 then 7 s long: so a missing
# agent answers after about 3 s, and an agent slower than 3 s gets the request again.
SERVER_RPC_AS_RPC: Final[dict[str, int]] = {
    # no node holds the participant: not in the room (never joined, left, or no such room)
    api.TwirpErrorCode.UNAVAILABLE: _Rpc.RECIPIENT_NOT_FOUND,
    # its node had it, and it is gone now: it left while the call was being made
    api.TwirpErrorCode.NOT_FOUND: _Rpc.RECIPIENT_DISCONNECTED,
    # LiveKit's own tries ran out (15 s)
    api.TwirpErrorCode.DEADLINE_EXCEEDED: _Rpc.RESPONSE_TIMEOUT,
    api.TwirpErrorCode.CANCELED: _Rpc.RESPONSE_TIMEOUT,
    # "data channel is not available": the agent is still connecting; nothing was sent
    api.TwirpErrorCode.INTERNAL: _Rpc.SEND_FAILED,
    # a server without PerformRpc
    api.TwirpErrorCode.UNIMPLEMENTED: _Rpc.UNSUPPORTED_SERVER,
    api.TwirpErrorCode.BAD_ROUTE: _Rpc.UNSUPPORTED_SERVER,
}
_STREAM_CLOSED: Final = "stream closed"
"""LiveKit's internal RPC stream to the agent's node ended under the call (a 500 ``internal``):
the agent left mid-call, as ``NOT_FOUND`` says more often; not "nothing was sent"."""
_RPC_ERROR_IN_MESSAGE: Final = re.compile(r"\bRpcError (\d+)\b")
"""How LiveKit names the participant's RPC error in a PerformRpc answer, e.g. ``twirp error
unknown: RpcError 1402: Request payload too large`` (400)."""


def _failure(
    failure: RpcFailure, *, agent: str, name: str, request_id: str | None
) -> ContextError:
    return ContextError(
        failure.code,
        failure.sentence.format(agent=agent, name=name),
        request_id=request_id,
        retryable=failure.retryable,
    )


def _name(code: int) -> str:
    try:
        return rtc.RpcError.ErrorCode(code).name
    except ValueError:
        return str(code)


def rpc_failure(
    exc: rtc.RpcError, *, agent: str, request_id: str | None = None
) -> ContextError:
    """The error a failed RPC to ``agent`` means (see :data:`RPC_FAILURES`)."""
    failure = RPC_FAILURES.get(exc.code, HANDLER_FAILED)
    return _failure(failure, agent=agent, name=_name(exc.code), request_id=request_id)


def server_rpc_failure(
    exc: api.TwirpError | OSError | asyncio.TimeoutError,
    *,
    agent: str,
    request_id: str | None = None,
) -> ContextError:
    """The error a failed ``RoomService.PerformRpc`` to ``agent`` means: the RPC error code
    in LiveKit's answer, else its Twirp code as :data:`SERVER_RPC_AS_RPC` translates it,
    through :data:`RPC_FAILURES`. No answer in time is ``RESPONSE_TIMEOUT``; LiveKit out of
    reach is ``SEND_FAILED``."""
    code: int
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):  # one class from Python 3.11
        code = _Rpc.RESPONSE_TIMEOUT
    elif not isinstance(exc, api.TwirpError):
        code = _Rpc.SEND_FAILED
    elif exc.status in (401, 403):
        return _failure(CREDENTIALS_REFUSED, agent=agent, name=exc.code, request_id=request_id)
    else:
        named = _RPC_ERROR_IN_MESSAGE.search(exc.message)
        if named:
            translated: int | None = int(named[1])
        elif exc.code == api.TwirpErrorCode.INTERNAL and exc.message.endswith(_STREAM_CLOSED):
            translated = _Rpc.RECIPIENT_DISCONNECTED
        else:
            translated = SERVER_RPC_AS_RPC.get(exc.code)
        if translated is None:
            # any other refusal: LiveKit would not make the call; after a 5xx it may
            failure = replace(LIVEKIT_REFUSED, retryable=exc.status >= 500)
            return _failure(failure, agent=agent, name=exc.code, request_id=request_id)
        code = translated
    failure = RPC_FAILURES.get(code, HANDLER_FAILED)
    return _failure(failure, agent=agent, name=_name(code), request_id=request_id)


async def call_agent(
    participant: rtc.LocalParticipant,
    agent: str,
    payload: str,
    *,
    timeout: float,
    request_id: str | None = None,
) -> str:
    """Send one request JSON to ``agent`` over RPC and return its answer (the ack JSON).

    Args:
        participant: The sender's local participant.
        agent: The agent's identity.
        payload: The request JSON, possibly in a signed envelope.
        timeout: Seconds the agent has to answer.
        request_id: Put in the error, when known.

    Raises:
        ContextError: The call failed; ``code`` and ``retryable`` come from
            :data:`RPC_FAILURES` (``TIMEOUT`` when the agent did not answer in time).
    """
    try:
        return await participant.perform_rpc(
            destination_identity=agent,
            method=RPC_METHOD,
            payload=payload,
            response_timeout=timeout,
        )
    except rtc.RpcError as exc:
        raise rpc_failure(exc, agent=agent, request_id=request_id) from None
