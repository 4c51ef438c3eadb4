"""What a failed ``RoomService.PerformRpc`` means: each answer LiveKit v1.13.5 gave on the real
server (``tests/integration/test_server_rpc_live.py`` pins them there) goes through the one RPC
failure table, so a server-API RPC fails exactly as the same failure from a room connection."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from livekit import api, rtc

from imaginex_context_plugin._livekit.rpc import (
    CREDENTIALS_REFUSED,
    RPC_FAILURES,
    rpc_failure,
    server_rpc_failure,
)
from imaginex_context_plugin.errors import ErrorCode

_Rpc = rtc.RpcError.ErrorCode


def twirp(code: str, message: str, status: int) -> api.TwirpError:
    return api.TwirpError(code, message, status=status)


# (what LiveKit answered, the RPC error it means); the messages are LiveKit's own
SAME_AS_ROOM_RPC = [
    (twirp("invalid_argument", "twirp error unknown: RpcError 1402: Request payload too large",
           400), _Rpc.REQUEST_PAYLOAD_TOO_LARGE),
    (twirp("invalid_argument",
           "twirp error unknown: RpcError 1400: Method not supported at destination", 400),
     _Rpc.UNSUPPORTED_METHOD),
    (twirp("internal", "twirp error unknown: RpcError 1500: Application error in method handler",
           500), _Rpc.APPLICATION_ERROR),
    (twirp("internal", "twirp error unknown: RpcError 1504: Response payload too large", 500),
     _Rpc.RESPONSE_PAYLOAD_TOO_LARGE),
    (twirp("canceled", "twirp error unknown: RpcError 1502: Response timeout", 408),
     _Rpc.RESPONSE_TIMEOUT),
    (twirp("canceled", "twirp error unknown: RpcError 1501: Connection timeout", 408),
     _Rpc.CONNECTION_TIMEOUT),
    # an agent's own RpcError code travels in the message too
    (twirp("internal", "twirp error unknown: RpcError 1234: custom: data!", 500), 1234),
    # LiveKit's own answers, without an RPC error code
    (twirp("unavailable", "twirp error unknown: no response from servers", 503),
     _Rpc.RECIPIENT_NOT_FOUND),
    (twirp("not_found", "twirp error unknown: participant does not exist", 404),
     _Rpc.RECIPIENT_DISCONNECTED),
    (twirp("not_found", "requested room does not exist", 404), _Rpc.RECIPIENT_DISCONNECTED),
    (twirp("deadline_exceeded", "twirp error unknown: request timed out", 408),
     _Rpc.RESPONSE_TIMEOUT),
    (twirp("internal", "twirp error unknown: data channel is not available", 500),
     _Rpc.SEND_FAILED),
    # the agent left mid-call and LiveKit's stream to its node closed (seen 1 in 25 on a busy
    # machine; "participant does not exist" is the usual answer)
    (twirp("internal", "twirp error unknown: stream closed", 500), _Rpc.RECIPIENT_DISCONNECTED),
    (twirp("bad_route", "no handler for path", 404), _Rpc.UNSUPPORTED_SERVER),
    (asyncio.TimeoutError(), _Rpc.RESPONSE_TIMEOUT),
    (aiohttp.ClientConnectionError("refused"), _Rpc.SEND_FAILED),
    (ConnectionResetError(), _Rpc.SEND_FAILED),
]


@pytest.mark.parametrize(("answer", "rpc_code"), SAME_AS_ROOM_RPC)
def test_each_answer_fails_as_the_same_rpc_error_from_a_room(
    answer: Exception, rpc_code: int
) -> None:
    error = server_rpc_failure(answer, agent="agent-1", request_id="r1")  # type: ignore[arg-type]
    same = rpc_failure(rtc.RpcError(rpc_code, "x"), agent="agent-1", request_id="r1")
    assert (error.code, error.retryable, error.message, error.request_id) == (
        same.code, same.retryable, same.message, "r1"
    )


def test_the_answers_that_matter_to_a_fan_out() -> None:
    def read(answer: Exception) -> tuple[ErrorCode, bool]:
        error = server_rpc_failure(answer, agent="a")  # type: ignore[arg-type]
        return error.code, error.retryable

    # the agent is not there (LiveKit waited about 3 s for it): look again, it may come back
    assert read(twirp("unavailable", "no response from servers", 503)) == (
        ErrorCode.AGENT_NOT_FOUND, True
    )
    # still connecting, nothing sent: send again
    assert read(twirp("internal", "data channel is not available", 500)) == (
        ErrorCode.LIVEKIT_UNAVAILABLE, True
    )
    # too large is final, whoever says so
    assert read(twirp("invalid_argument", "RpcError 1402: Request payload too large", 400)) == (
        ErrorCode.PAYLOAD_TOO_LARGE, False
    )
    assert RPC_FAILURES[_Rpc.RESPONSE_TIMEOUT].code is ErrorCode.TIMEOUT


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_final_and_say_so(status: int) -> None:
    error = server_rpc_failure(
        twirp("unauthenticated", "invalid token", status), agent="agent-1"
    )
    assert (error.code, error.retryable) == (CREDENTIALS_REFUSED.code, False)
    assert "API key" in error.message


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (twirp("invalid_argument", "destination identity is required", 400), False),
        (twirp("resource_exhausted", "too many requests", 429), False),
        (twirp("unknown", "HTTP 502", 502), True),
    ],
)
def test_any_other_refusal_is_livekit_unavailable(answer: Exception, retryable: bool) -> None:
    error = server_rpc_failure(answer, agent="agent-1")  # type: ignore[arg-type]
    assert (error.code, error.retryable) == (ErrorCode.LIVEKIT_UNAVAILABLE, retryable)
    assert error.message == f"LiveKit refused the RPC to agent 'agent-1' ({answer.code})."  # type: ignore[attr-defined]
