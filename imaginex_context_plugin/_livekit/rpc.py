"""One RPC call to an agent, and the one table of what its failures mean.

:func:`call_agent` is how the client and the gateway send a request over RPC; every
``rtc.RpcError`` it meets becomes a :class:`~..errors.ContextError` through
:data:`RPC_FAILURES`, so the same failure reads the same wherever it happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from livekit import rtc

from ..errors import ContextError, ErrorCode
from ..protocol import RPC_METHOD


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


def rpc_failure(
    exc: rtc.RpcError, *, agent: str, request_id: str | None = None
) -> ContextError:
    """The error a failed RPC to ``agent`` means (see :data:`RPC_FAILURES`)."""
    try:
        name = rtc.RpcError.ErrorCode(exc.code).name
    except ValueError:
        name = str(exc.code)
    failure = RPC_FAILURES.get(exc.code, HANDLER_FAILED)
    return ContextError(
        failure.code,
        failure.sentence.format(agent=agent, name=name),
        request_id=request_id,
        retryable=failure.retryable,
    )


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
