"""``ServerRpcBackend`` (``--delivery server-rpc``) against a scripted LiveKit: a real aiohttp
server on 127.0.0.1 that answers ``/twirp/livekit.RoomService/PerformRpc`` as LiveKit v1.13.5
does (each answer copied from the real server, see tests/integration/test_server_rpc_live.py),
so that what the backend sends, signs, sends again and makes of each answer is checked without
a LiveKit server. The real server is in tests/integration/test_server_rpc_delivery_live.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from livekit.protocol.room import PerformRpcRequest, PerformRpcResponse

from imaginex_context_plugin import protocol
from imaginex_context_plugin.errors import BackendError, ErrorCode
from imaginex_context_plugin.gateway import LiveKitSettings
from imaginex_context_plugin.gateway.delivery import AgentTarget, LiveKitBackend, ServerRpcBackend
from imaginex_context_plugin.security import SignatureVerifier, sign_request

API_KEY = "scripted-key"
API_SECRET = "scripted-livekit-api-secret-long-enough-for-hs256"
SIGNING = "the-gateways-signing-secret"
TARGET = AgentTarget(room="room-1", identity="agent-1")
ACK = json.dumps({"type": "ack", "id": "r1", "success": True, "message": "ok"})

Answer = tuple[int, bytes]


def twirp(status: int, code: str, message: str) -> Answer:
    return status, json.dumps({"code": code, "msg": f"twirp error unknown: {message}"}).encode()


def answered(payload: str) -> Answer:
    return 200, PerformRpcResponse(payload=payload).SerializeToString()


NOT_SENT = twirp(500, "internal", "data channel is not available")
NOBODY = twirp(503, "unavailable", "no response from servers")


@dataclass
class ScriptedLiveKit:
    """Answers each PerformRpc with the next scripted answer (the last one repeats)."""

    answers: list[Answer | Callable[[], Answer]]
    calls: list[PerformRpcRequest] = field(default_factory=list)
    tokens: list[dict[str, object]] = field(default_factory=list)
    stall: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        call = PerformRpcRequest.FromString(await request.read())
        self.calls.append(call)
        token = request.headers["Authorization"].removeprefix("Bearer ")
        self.tokens.append(jwt.decode(token, API_SECRET, algorithms=["HS256"]))
        if self.stall is not None:
            await self.stall.wait()
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        status, body = answer() if callable(answer) else answer
        return web.Response(status=status, body=body)


@pytest.fixture
async def livekit() -> AsyncIterator[tuple[ScriptedLiveKit, LiveKitSettings]]:
    scripted = ScriptedLiveKit([answered(ACK)])
    app = web.Application()
    app.router.add_post("/twirp/livekit.RoomService/PerformRpc", scripted.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield scripted, LiveKitSettings(f"ws://127.0.0.1:{server.port}", API_KEY, API_SECRET)
    finally:
        await server.close()


@pytest.fixture
async def backend(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings],
) -> AsyncIterator[ServerRpcBackend]:
    settings = livekit[1]
    delivering = ServerRpcBackend(LiveKitBackend(settings), settings)
    try:
        yield delivering
    finally:
        await delivering.aclose()


def request(request_id: str = "r1") -> str:
    return json.dumps({"type": "speak", "id": request_id, "message": "Hello."})


async def test_a_delivery_is_one_perform_rpc_and_its_answer_is_the_ack(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    scripted, _ = livekit
    signed = sign_request(request(), SIGNING, sender="imaginex-gateway")
    assert await backend.deliver(TARGET, signed, timeout=5) == ACK
    (call,) = scripted.calls
    assert (call.room, call.destination_identity, call.method) == (
        "room-1", "agent-1", protocol.RPC_METHOD
    )
    assert call.payload == signed  # signed by the gateway: sent as it is
    assert 4000 < call.response_timeout_ms <= 5000  # what is left of the deadline
    # a token for that room only, with the admin grant LiveKit checks
    video = scripted.tokens[0]["video"]
    assert isinstance(video, dict)
    assert (video["roomAdmin"], video["room"]) == (True, "room-1")
    assert backend.pooled_rooms == []  # no room joined


async def test_an_unsigned_message_is_signed_with_the_livekit_api_secret(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    """The agent sees a caller LiveKit made up: only a signature can vouch for the message.
    Agents check the LiveKit API secret by default (ContextPlugin(trust_server=True))."""
    scripted, _ = livekit
    await backend.deliver(TARGET, request(), timeout=5)
    envelope = protocol.read_packet(scripted.calls[0].payload.encode())
    assert isinstance(envelope, protocol.SignedEnvelope)
    assert envelope.body == request()
    assert envelope.sender == "imaginex-gateway"
    verifier = SignatureVerifier(API_SECRET)
    assert (
        verifier.verify(
            envelope.body, envelope.timestamp, envelope.signature, sender=envelope.sender
        )
        is None
    )


async def test_a_call_livekit_could_not_send_goes_again_until_the_agent_answers(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    scripted, _ = livekit
    scripted.answers = [NOT_SENT, NOT_SENT, answered(ACK)]
    assert await backend.deliver(TARGET, request(), timeout=5) == ACK
    assert len(scripted.calls) == 3
    assert backend.sent_again == 2
    # the very same message each time: same id, same signature
    assert len({call.payload for call in scripted.calls}) == 1


async def test_one_that_cannot_be_sent_by_the_deadline_says_so(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    scripted, _ = livekit
    scripted.answers = [NOT_SENT]
    with pytest.raises(BackendError) as failed:
        await backend.deliver(TARGET, request(), timeout=0.5)
    assert (failed.value.code, failed.value.retryable) == (ErrorCode.LIVEKIT_UNAVAILABLE, True)
    assert 2 <= len(scripted.calls) <= 6


@pytest.mark.parametrize(
    ("answer", "code", "retryable"),
    [
        (NOBODY, ErrorCode.AGENT_NOT_FOUND, True),
        (twirp(404, "not_found", "participant does not exist"), ErrorCode.AGENT_NOT_FOUND, True),
        (twirp(400, "invalid_argument", "RpcError 1400: Method not supported at destination"),
         ErrorCode.NOT_READY, True),
        (twirp(400, "invalid_argument", "RpcError 1402: Request payload too large"),
         ErrorCode.PAYLOAD_TOO_LARGE, False),
        (twirp(500, "internal", "RpcError 1500: Application error in method handler"),
         ErrorCode.INTERNAL_ERROR, False),
        (twirp(408, "deadline_exceeded", "request timed out"), ErrorCode.TIMEOUT, True),
        (twirp(401, "unauthenticated", "invalid token"), ErrorCode.LIVEKIT_UNAVAILABLE, False),
    ],
)
async def test_every_other_answer_is_the_rooms_result_at_once(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings],
    backend: ServerRpcBackend,
    answer: Answer,
    code: ErrorCode,
    retryable: bool,
) -> None:
    scripted, _ = livekit
    scripted.answers = [answer]
    with pytest.raises(BackendError) as failed:
        await backend.deliver(TARGET, request(), timeout=5)
    assert (failed.value.code, failed.value.retryable) == (code, retryable)
    assert len(scripted.calls) == 1  # the agent may have it, or it is final: not sent again


async def test_no_answer_by_the_deadline_is_a_timeout(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    scripted, _ = livekit
    scripted.stall = asyncio.Event()
    try:
        with pytest.raises(BackendError) as failed:
            await backend.deliver(TARGET, request(), timeout=0.3)
    finally:
        scripted.stall.set()
    assert (failed.value.code, failed.value.retryable) == (ErrorCode.TIMEOUT, True)


async def test_a_message_too_large_once_signed_is_refused_unsent(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    scripted, _ = livekit
    text = "x" * (protocol.MAX_PAYLOAD_BYTES - 200)
    unsigned = json.dumps({"type": "speak", "id": "big", "message": text})
    assert len(unsigned) <= protocol.MAX_PAYLOAD_BYTES
    with pytest.raises(BackendError) as failed:
        await backend.deliver(TARGET, unsigned, timeout=5)
    assert failed.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert scripted.calls == []


async def test_tokens_are_signed_once_per_room_and_a_closed_backend_refuses(
    livekit: tuple[ScriptedLiveKit, LiveKitSettings], backend: ServerRpcBackend
) -> None:
    for room in ("room-1", "room-2", "room-1", "room-2"):
        await backend.deliver(AgentTarget(room, "agent-1"), request(), timeout=5)
    scripted, _ = livekit
    assert [t["video"]["room"] for t in scripted.tokens] == [  # type: ignore[index]
        "room-1", "room-2", "room-1", "room-2"
    ]
    assert len({json.dumps(t, sort_keys=True) for t in scripted.tokens}) == 2
    await backend.aclose()
    await backend.aclose()  # idempotent
    with pytest.raises(BackendError) as closed:
        await backend.deliver(TARGET, request(), timeout=5)
    assert closed.value.code is ErrorCode.LIVEKIT_UNAVAILABLE
