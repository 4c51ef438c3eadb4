"""ContextClient against the real receiver: a real AgentSession with ContextPlugin in one room,
the client in another room of the same in-memory relay, both halves unmodified."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from livekit import api, rtc

from imaginex_context_plugin import (
    ACK_TOPIC,
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    AckTimeoutError,
    AckTransport,
    ContextClient,
    ContextError,
    ContextPlugin,
    ErrorAck,
    ErrorCode,
    PlayoutTimeoutError,
    RateLimit,
    SpeakRequest,
    SpeakResult,
    send_via_server_api,
    sender_token,
)
from imaginex_context_plugin._livekit.agents import choose_agent as _pick_agent
from imaginex_context_plugin.protocol import SENDER_ATTRIBUTE
from imaginex_context_plugin.sender import Via
from tests.conftest import (
    AGENT_CODE,
    AGENT_IDENTITY,
    BACKEND_IDENTITY,
    ROOM,
    SERVER_SECRET,
    Harness,
    HarnessFactory,
)
from tests.fakes import LinkedRoom, RelayNetwork, start_session
from tests.helpers import wait_until

VIAS = pytest.mark.parametrize("via", ["rpc", "data"])
API_KEY = "devkey"
API_SECRET = SERVER_SECRET



def packets_for(network: RelayNetwork, request_id: str) -> list[dict[str, Any]]:
    """The request bodies published on the context topic carrying ``request_id``."""
    found = []
    for packet in network.published:
        if packet.topic != CONTEXT_TOPIC:
            continue
        obj = json.loads(packet.payload)
        if "body" in obj:  # signed envelope
            obj = json.loads(obj["body"])
        if obj.get("id") == request_id:
            found.append(obj)
    return found


def silent_agent(harness: Harness, identity: str = "mute") -> LinkedRoom:
    """An agent participant that never answers (no plugin)."""
    return harness.network.create_room(
        ROOM, identity, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )


class DropFirstAck(AckTransport):
    """Loses the first ack it is asked to send, as a network might."""

    def __init__(self, room: rtc.Room) -> None:
        super().__init__(room)
        self.dropped: list[bytes] = []

    async def send(self, payload: bytes, destination_identity: str) -> None:
        if not self.dropped and json.loads(payload)["type"] == "ack":
            self.dropped.append(payload)
            return
        await super().send(payload, destination_identity)


class LoseFirstResponse(rtc.RpcInterceptor):
    """Runs the handler, then loses its first response (the caller sees a timeout)."""

    def __init__(self) -> None:
        self.lost = 0

    async def intercept_incoming(
        self,
        invocation: rtc.RpcInvocationData,
        next: Callable[[rtc.RpcInvocationData], Awaitable[str | None]],
    ) -> str | None:
        response = await next(invocation)
        if not self.lost:
            self.lost += 1
            raise rtc.RpcError(rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, "response lost")
        return response


async def lossy_harness(make_harness: HarnessFactory, via: Via, **plugin_kwargs: Any) -> Harness:
    """A harness whose first answer is lost on the way back, on the given path."""
    harness: Harness = await make_harness(start_plugin=False)
    plugin_kwargs.setdefault("agent_code", AGENT_CODE)
    plugin_kwargs.setdefault("allowed_identities", [BACKEND_IDENTITY])
    if via == "data":
        plugin_kwargs["ack_transport"] = DropFirstAck(harness.agent_room)
    else:
        harness.agent_room.local_participant.add_rpc_interceptor(LoseFirstResponse())
    # replaces the harness's plugin, so the fixture closes this one
    harness.plugin = ContextPlugin(**plugin_kwargs)
    await harness.plugin.start(harness.session, harness.agent_room)
    return harness


# ---------------------------------------------------------------------------------------------
# the two ways in


@VIAS
async def test_speak_returns_the_success_ack_and_the_agent_says_it(
    harness: Harness, via: Via
) -> None:
    async with ContextClient(harness.backend.room, via=via) as client:
        ack = await client.speak("Your order has shipped.")
        await client.wait_for_playout(ack.id or "")

    assert ack.success is True
    assert ack.message == "Speech triggered successfully"
    assert ack.id is not None
    assert len(ack.id) == 32
    assert int(ack.id, 16) >= 0
    assert ack.data.context_type == "speak"
    assert ack.data.agent_code == AGENT_CODE
    assert ack.data.room_id == ROOM
    assert ack.data.speech_id
    assert ack.duplicate is None
    assert harness.tts.texts == ["Your order has shipped."]


@VIAS
async def test_add_context_reaches_the_agent_and_a_key_replaces(harness: Harness, via: Via) -> None:
    async with ContextClient(harness.backend.room, via=via) as client:
        first = await client.add_context("Customer is a gold member.", key="customer")
        second = await client.add_context(
            "Customer is a platinum member.", key="customer", role="developer"
        )

    assert first.data.context_type == "add_context"
    assert second.data.key == "customer"
    assert harness.context_messages() == ["Customer is a platinum member."]
    assert harness.tts.texts == []


@VIAS
async def test_send_takes_models_and_mappings_and_keeps_a_given_id(
    harness: Harness, via: Via
) -> None:
    async with ContextClient(harness.backend.room, via=via) as client:
        spoken = await client.send(SpeakRequest(type="speak", message="Hi there."))
        added = await client.send({"type": "add_context", "context": "VIP.", "id": "crm-7"})
        removed = await client.remove_context("nope")
        state = await client.get_state()

    assert spoken.data.context_type == "speak"
    assert spoken.id
    assert added.id == "crm-7"
    assert removed.data.removed is False
    assert [entry.request_id for entry in state.context_entries] == ["crm-7"]


async def test_concurrent_requests_each_get_their_own_ack(harness: Harness) -> None:
    async with ContextClient(harness.backend.room, via="data") as client:
        acks = await asyncio.gather(
            *(client.add_context(f"fact {i}", key=f"k{i}", id=f"req-{i}") for i in range(8))
        )
    assert [ack.id for ack in acks] == [f"req-{i}" for i in range(8)]
    assert [ack.data.key for ack in acks] == [f"k{i}" for i in range(8)]


# ---------------------------------------------------------------------------------------------
# refusals and failures


@VIAS
async def test_an_error_ack_raises_context_error_with_its_code(harness: Harness, via: Via) -> None:
    stranger = harness.network.create_room(ROOM, "stranger")
    received = harness.plugin.stats.received
    async with ContextClient(stranger, via=via) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Let me in.", id="s-1")

    err = caught.value
    assert err.code is ErrorCode.UNAUTHORIZED
    assert err.message == "This sender is not allowed to send messages to this agent."
    assert err.request_id == "s-1"
    assert isinstance(err.ack, ErrorAck)
    assert err.ack.error is ErrorCode.UNAUTHORIZED
    assert not err.retryable
    assert not isinstance(err, TimeoutError)
    assert harness.plugin.stats.received == received + 1  # refused once, not retried
    assert harness.tts.texts == []


async def test_a_request_naming_another_agent_code_is_refused(harness: Harness) -> None:
    async with ContextClient(
        harness.backend.room, agent_identity=AGENT_IDENTITY, agent_code="B00000000"
    ) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Hello?")
    assert caught.value.code is ErrorCode.AGENT_NOT_FOUND
    assert caught.value.ack is not None  # the agent itself answered


async def test_no_ack_raises_ack_timeout_error_after_retrying_with_the_same_id(
    harness: Harness,
) -> None:
    silent_agent(harness)
    async with ContextClient(
        harness.backend.room,
        agent_identity="mute",
        via="data",
        timeout=0.05,
        retries=2,
        backoff=0,
    ) as client:
        with pytest.raises(AckTimeoutError) as caught:
            await client.speak("Anyone there?", id="t-1")

    err = caught.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, ContextError)
    assert err.code is ErrorCode.TIMEOUT
    assert err.attempts == 3
    assert err.request_id == "t-1"
    assert "mute" in err.message
    sent = packets_for(harness.network, "t-1")
    assert len(sent) == 3
    assert all(body == sent[0] for body in sent)


async def test_rpc_to_a_participant_without_the_plugin_says_so(harness: Harness) -> None:
    silent_agent(harness)
    async with ContextClient(
        harness.backend.room, agent_identity="mute", via="rpc", retries=1, backoff=0
    ) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Anyone there?")
    assert caught.value.code is ErrorCode.NOT_READY
    assert "ContextPlugin" in caught.value.message
    assert caught.value.ack is None


@VIAS
async def test_a_retry_after_a_lost_answer_is_applied_once(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness = await lossy_harness(make_harness, via)
    async with ContextClient(
        harness.backend.room, via=via, timeout=0.3, retries=2, backoff=0
    ) as client:
        result = await client.speak("Said only once.", id="once-1", wait_for_playout=True)

    assert result.ack.id == "once-1"
    assert result.ack.duplicate is True  # the second attempt found the first applied
    assert harness.plugin.stats.duplicates == 1
    assert harness.tts.texts.count("Said only once.") == 1
    assert result.finished.speech_id == result.ack.data.speech_id
    if via == "data":
        assert len(packets_for(harness.network, "once-1")) == 2


@VIAS
async def test_rate_limited_is_retried_after_retry_after(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness: Harness = await make_harness(rate_limit=RateLimit(per_second=50, burst=1))
    async with ContextClient(harness.backend.room, via=via, retries=3, backoff=0) as client:
        first = await client.add_context("one", key="a")
        second = await client.add_context("two", key="b")

    assert not first.duplicate
    assert not second.duplicate
    assert harness.plugin.stats.errors.get("RATE_LIMITED", 0) >= 1
    assert harness.context_messages() == ["one", "two"]


async def test_rate_limited_without_retries_carries_retry_after(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(rate_limit=RateLimit(per_second=0.5, burst=1))
    async with ContextClient(harness.backend.room, retries=0) as client:
        await client.add_context("one")
        with pytest.raises(ContextError) as caught:
            await client.add_context("two")
    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retryable
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0


class RelabelAck(rtc.RpcInterceptor):
    """Lets the real plugin answer, then puts another id on its response."""

    def __init__(self, new_id: str | None) -> None:
        self.new_id = new_id
        self.answered = 0

    async def intercept_incoming(
        self,
        invocation: rtc.RpcInvocationData,
        next: Callable[[rtc.RpcInvocationData], Awaitable[str | None]],
    ) -> str | None:
        response = await next(invocation)
        assert response is not None
        self.answered += 1
        ack = json.loads(response)
        ack["id"] = self.new_id
        return json.dumps(ack)


@pytest.mark.parametrize("new_id", ["someone-else", "", None])
async def test_an_rpc_success_ack_for_another_id_is_refused(
    harness: Harness, new_id: str | None
) -> None:
    relabel = RelabelAck(new_id)
    harness.agent_room.local_participant.add_rpc_interceptor(relabel)
    async with ContextClient(harness.backend.room, via="rpc", retries=2, backoff=0) as client:
        with pytest.raises(ContextError) as caught:
            await client.add_context("fact", id="mine-1")

    err = caught.value
    assert err.code is ErrorCode.INTERNAL_ERROR
    assert "ack of another request" in err.message
    assert err.request_id == "mine-1"
    assert err.ack is None
    assert not err.retryable
    assert relabel.answered == 1  # not retried: the agent's answers cannot be trusted


async def test_an_rpc_error_ack_for_another_id_is_refused(harness: Harness) -> None:
    harness.agent_room.local_participant.add_rpc_interceptor(RelabelAck("someone-else"))
    stranger = harness.network.create_room(ROOM, "stranger")
    async with ContextClient(stranger, via="rpc") as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Let me in.", id="s-2")
    assert caught.value.code is ErrorCode.INTERNAL_ERROR
    assert caught.value.ack is None


async def test_an_rpc_error_ack_without_an_id_is_this_requests_refusal(harness: Harness) -> None:
    # an agent that could not read the request answers without an id: still the answer
    harness.agent_room.local_participant.add_rpc_interceptor(RelabelAck(None))
    stranger = harness.network.create_room(ROOM, "stranger")
    async with ContextClient(stranger, via="rpc") as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Let me in.", id="s-3")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.ack is not None


class RelabelDataAck(AckTransport):
    """Sends every ack with another id, on the data path."""

    async def send(self, payload: bytes, destination_identity: str) -> None:
        message = json.loads(payload)
        if message["type"] == "ack":
            message["id"] = "someone-else"
            payload = json.dumps(message).encode()
        await super().send(payload, destination_identity)


async def test_a_data_ack_is_matched_by_id_and_a_foreign_one_is_ignored(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    harness.plugin = ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=[BACKEND_IDENTITY],
        ack_transport=RelabelDataAck(harness.agent_room),
    )
    await harness.plugin.start(harness.session, harness.agent_room)
    async with ContextClient(harness.backend.room, via="data", timeout=0.1, retries=0) as client:
        with pytest.raises(AckTimeoutError):
            await client.add_context("fact", id="mine-2")
    assert harness.plugin.stats.applied == 1  # applied, but its ack never matched


async def test_invalid_or_oversized_requests_fail_before_sending(harness: Harness) -> None:
    published = len(harness.network.published)
    async with ContextClient(harness.backend.room, via="data") as client:
        with pytest.raises(ContextError) as blank:
            await client.speak("   ")
        with pytest.raises(ContextError) as unknown:
            await client.send({"type": "dance", "message": "hi"})
        with pytest.raises(ContextError) as contradictory:
            await client.speak("hi", interrupt=True, mode="queue")
        with pytest.raises(ContextError) as huge:
            await client.speak("x" * 16_000)

    assert blank.value.code is ErrorCode.VALIDATION_ERROR
    assert blank.value.message == "Field 'message' must not be empty."
    assert unknown.value.code is ErrorCode.VALIDATION_ERROR
    assert unknown.value.message.startswith("Invalid type. Must be one of: speak, add_context")
    assert contradictory.value.code is ErrorCode.VALIDATION_ERROR
    assert huge.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert all(e.ack is None and not e.retryable for e in (blank.value, huge.value))
    assert len(harness.network.published) == published
    assert harness.plugin.stats.received == 0


# ---------------------------------------------------------------------------------------------
# playout


@VIAS
async def test_wait_for_playout_returns_the_end_of_the_speech(harness: Harness, via: Via) -> None:
    async with ContextClient(harness.backend.room, via=via) as client:
        result = await client.speak("Thank you for waiting.", wait_for_playout=True)

    assert isinstance(result, SpeakResult)
    assert result.finished.id == result.ack.id
    assert result.finished.speech_id == result.ack.data.speech_id
    assert not result.interrupted
    assert result.finished.played_s is not None
    assert result.finished.played_s > 0
    assert harness.tts.texts == ["Thank you for waiting."]


async def test_wait_for_playout_reports_a_speech_cut_by_an_interrupting_one(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(speed=1.0)
    async with ContextClient(harness.backend.room) as client:
        long_speech = asyncio.create_task(
            client.speak("A long story. " * 80, id="long", wait_for_playout=True)
        )
        await wait_until(lambda: harness.session.agent_state == "speaking")
        urgent = await client.speak("Sorry to interrupt!", interrupt=True, wait_for_playout=True)
        cut = await long_speech

    assert cut.interrupted
    assert not urgent.interrupted


async def test_playout_timeout_keeps_the_ack(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(speed=1.0)
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(PlayoutTimeoutError) as caught:
            await client.speak("A long story. " * 80, wait_for_playout=True, playout_timeout=0.05)
        # the speech goes on; its end is still delivered to anyone who waits for it
        assert caught.value.accepted is not None
        request_id = caught.value.accepted.id
        assert request_id is not None
        await harness.session.interrupt()
        finished = await client.wait_for_playout(request_id)

    assert isinstance(caught.value, TimeoutError)
    assert caught.value.code is ErrorCode.TIMEOUT
    assert finished.interrupted


async def test_a_speech_finished_before_anyone_waits_is_kept(harness: Harness) -> None:
    async with ContextClient(harness.backend.room, via="rpc") as client:
        ack = await client.speak("Short.")
        assert ack.id is not None
        await wait_until(lambda: finished_sent(harness.network, ack.id or ""))
        await asyncio.sleep(0)  # delivered on the next loop iteration
        # already there: no waiting at all
        finished = await client.wait_for_playout(ack.id, timeout=0.001)
    assert finished.speech_id == ack.data.speech_id


def finished_sent(network: RelayNetwork, request_id: str) -> bool:
    return any(
        p.topic == ACK_TOPIC
        and json.loads(p.payload).get("type") == "speech_finished"
        and json.loads(p.payload).get("id") == request_id
        for p in network.published
    )


# ---------------------------------------------------------------------------------------------
# finding the agent


async def test_the_agent_is_found_by_kind_among_other_participants(harness: Harness) -> None:
    harness.network.create_room(ROOM, "user-1")
    async with ContextClient(harness.backend.room) as client:
        assert await client.find_agent() == AGENT_IDENTITY
        ack = await client.add_context("hello")
    assert ack.data.agent_code == AGENT_CODE


async def test_the_agent_is_found_by_its_agent_code_attribute(harness: Harness) -> None:
    second_session = await start_session(text_only=True)
    second_room = harness.network.create_room(
        ROOM, "agent-b", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )
    second = ContextPlugin(agent_code="B22222222", allowed_identities=[BACKEND_IDENTITY])
    await second.start(second_session, second_room)
    try:
        async with ContextClient(harness.backend.room, agent_code="B22222222") as by_code:
            ack = await by_code.add_context("for agent B")
        async with ContextClient(harness.backend.room, agent_timeout=0) as by_kind:
            await wait_until(lambda: len(attribute_holders(harness.backend.room)) == 2)
            with pytest.raises(ContextError) as ambiguous:
                await by_kind.find_agent()
    finally:
        await second.aclose()
        await second_session.aclose()

    assert ack.data.agent_code == "B22222222"
    assert second.context_store.describe()[0].request_id == ack.id
    assert harness.context_messages() == []
    assert ambiguous.value.code is ErrorCode.AGENT_NOT_FOUND
    assert "More than one agent" in ambiguous.value.message
    assert "agent, agent-b" in ambiguous.value.message


def attribute_holders(room: rtc.Room) -> list[str]:
    return [
        p.identity
        for p in room.remote_participants.values()
        if AGENT_CODE_ATTRIBUTE in p.attributes
    ]


async def test_the_client_waits_for_the_agent_to_join(harness: Harness) -> None:
    late_session = await start_session(text_only=True)
    late_room = harness.network.create_room(
        ROOM, "agent-late", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, connected=False
    )
    late = ContextPlugin(agent_code="L33333333", allowed_identities=[BACKEND_IDENTITY])
    try:
        async with ContextClient(harness.backend.room, agent_code="L33333333") as client:
            sending = asyncio.create_task(client.add_context("you are late"))
            await asyncio.sleep(0.05)
            assert not sending.done()
            await late.start(late_session, late_room)  # before the room connects, as in a job
            await late_room.connect()
            ack = await sending
    finally:
        await late.aclose()
        await late_session.aclose()
    assert ack.data.agent_code == "L33333333"


async def test_no_agent_in_time_raises_agent_not_found(harness: Harness) -> None:
    published = len(harness.network.published)
    async with ContextClient(
        harness.backend.room, agent_code="N00000000", agent_timeout=0.05
    ) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Hello?")
    assert caught.value.code is ErrorCode.AGENT_NOT_FOUND
    assert "N00000000" in caught.value.message
    assert caught.value.ack is None
    assert len(harness.network.published) == published


async def test_an_agent_leaving_fails_the_wait_at_once(harness: Harness) -> None:
    mute = silent_agent(harness)
    async with ContextClient(
        harness.backend.room, agent_identity="mute", via="data", timeout=30, retries=0
    ) as client:
        sending = asyncio.create_task(client.speak("Still there?"))
        await wait_until(lambda: bool(packets_for_topic(harness.network)))
        await mute.disconnect()
        with pytest.raises(ContextError) as caught:
            await asyncio.wait_for(sending, 5)
    assert caught.value.code is ErrorCode.AGENT_NOT_FOUND
    assert not isinstance(caught.value, TimeoutError)
    assert "left the room" in caught.value.message


def packets_for_topic(network: RelayNetwork) -> list[Any]:
    return [p for p in network.published if p.topic == CONTEXT_TOPIC]


# ---------------------------------------------------------------------------------------------
# lifecycle


async def test_aclose_is_idempotent_unhooks_and_leaves_a_wrapped_room_alone(
    harness: Harness,
) -> None:
    room = harness.backend.room
    before = {event: len(handlers) for event, handlers in room._events.items()}
    client = ContextClient(room)
    await client.add_context("x")
    await client.aclose()
    await client.aclose()
    after = {event: len(handlers) for event, handlers in room._events.items() if handlers}

    assert client.closed
    assert after == {event: n for event, n in before.items() if n}
    assert room.isconnected()
    with pytest.raises(RuntimeError, match="closed"):
        await client.speak("too late")


async def test_closing_fails_requests_in_flight(harness: Harness) -> None:
    silent_agent(harness)
    client = ContextClient(harness.backend.room, agent_identity="mute", via="data", timeout=30)
    sending = asyncio.create_task(client.speak("Hello?"))
    waiting = asyncio.create_task(client.wait_for_playout("some-id", timeout=30))
    await wait_until(lambda: bool(packets_for_topic(harness.network)))
    await client.aclose()
    for task in (sending, waiting):
        with pytest.raises(ContextError) as caught:
            await asyncio.wait_for(task, 5)
        assert caught.value.code is ErrorCode.LIVEKIT_UNAVAILABLE


async def test_a_room_disconnect_fails_requests_in_flight(harness: Harness) -> None:
    silent_agent(harness)
    async with ContextClient(
        harness.backend.room, agent_identity="mute", via="data", timeout=30
    ) as client:
        sending = asyncio.create_task(client.speak("Hello?"))
        await wait_until(lambda: bool(packets_for_topic(harness.network)))
        await harness.backend.room.disconnect()
        with pytest.raises(ContextError) as caught:
            await asyncio.wait_for(sending, 5)
    assert caught.value.code is ErrorCode.LIVEKIT_UNAVAILABLE


async def test_connect_joins_with_its_own_room_and_leaves_on_close(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(allowed_identities=["crm-sync"])
    joined: list[LinkedRoom] = []

    def factory() -> rtc.Room:
        room = harness.network.create_room(ROOM, "crm-sync", connected=False)
        joined.append(room)
        return room

    async with await ContextClient.connect(
        "ws://unused.invalid",
        API_KEY,
        API_SECRET,
        ROOM,
        identity="crm-sync",
        agent_code=AGENT_CODE,
        room_factory=factory,
    ) as client:
        ack = await client.speak("Connected myself.")
        assert joined[0].isconnected()
    assert ack.data.agent_code == AGENT_CODE
    assert not joined[0].isconnected()


async def test_connect_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="LIVEKIT_URL"):
        await ContextClient.connect(room="r")
    with pytest.raises(ValueError, match="LIVEKIT_API_KEY"):
        await ContextClient.connect("ws://x", room="r")
    with pytest.raises(ValueError, match="room"):
        await ContextClient.connect("ws://x", API_KEY, API_SECRET)
    for via in ("rpc", "data"):
        with pytest.raises(ValueError, match="hidden"):
            await ContextClient.connect("ws://x", API_KEY, API_SECRET, "r", via=via, hidden=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connect_to_nothing_raises_livekit_unavailable() -> None:
    with pytest.raises(ContextError) as caught:
        await ContextClient.connect(
            f"ws://127.0.0.1:{closed_port()}", API_KEY, API_SECRET, "r", connect_timeout=10
        )
    assert caught.value.code is ErrorCode.LIVEKIT_UNAVAILABLE
    assert caught.value.message.startswith("Could not connect to LiveKit at ws://127.0.0.1:")


def test_sender_token_allows_data_only_as_a_dependent_visible_sender() -> None:
    token = sender_token(API_KEY, API_SECRET, room="shop", identity="crm", name="CRM")
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
    assert claims.identity == "crm"
    assert claims.name == "CRM"
    # kind agent: LiveKit never lets it keep a room open or trigger a dispatch, and RoomIO
    # never links it as the user; the attribute keeps other senders from taking it for the agent
    assert claims.kind == "agent"
    assert claims.attributes == {SENDER_ATTRIBUTE: "1"}
    video = claims.video
    assert video is not None
    assert (video.room_join, video.room) == (True, "shop")
    assert (video.can_publish, video.can_publish_data, video.hidden) == (False, True, False)


def test_agent_discovery_skips_other_senders() -> None:
    agent = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    people = [
        ("gateway", agent, {SENDER_ATTRIBUTE: "1"}),
        ("cli", agent, {SENDER_ATTRIBUTE: "1"}),
        ("voice-agent", agent, {}),
    ]
    assert _pick_agent(people, agent_code=None, room="shop") == "voice-agent"
    assert _pick_agent(people[:2], agent_code=None, room="shop") is None


def test_agent_discovery_never_takes_the_agents_avatar_for_the_agent() -> None:
    # an avatar (bitHuman's, LiveKit's plugins') joins as kind AGENT, publishing on behalf of
    # its agent: with an agent that publishes no code (or not yet), both would match
    agent = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    people = [
        ("voice-agent", agent, {}),
        ("bithuman-avatar-agent", agent, {"lk.publish_on_behalf": "voice-agent"}),
    ]
    assert _pick_agent(people, agent_code=None, room="shop") == "voice-agent"
    assert _pick_agent(people[1:], agent_code=None, room="shop") is None


# ---------------------------------------------------------------------------------------------
# the server API path (a loopback stand-in for LiveKit's Twirp API, relaying into the network)


@pytest.fixture
async def twirp(harness: Harness) -> AsyncIterator[tuple[str, list[api.SendDataRequest]]]:
    """A RoomService on 127.0.0.1 that lists the relay's participants and relays SendData."""
    sent: list[api.SendDataRequest] = []
    verifier = api.TokenVerifier(API_KEY, API_SECRET)

    def authorised(request: web.Request, room: str) -> bool:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        video = verifier.verify(token).video
        return video is not None and bool(video.room_admin) and video.room == room

    def not_found(room: str) -> web.Response:
        body = {"code": "not_found", "msg": f"room {room} not found"}
        return web.json_response(body, status=404)

    async def list_participants(request: web.Request) -> web.Response:
        ask = api.ListParticipantsRequest.FromString(await request.read())
        if not authorised(request, ask.room):
            return web.json_response({"code": "unauthenticated", "msg": "no"}, status=401)
        rooms = harness.network.rooms(ask.room)
        if not rooms:
            return not_found(ask.room)
        # the relay keeps rtc's protobuf; the server API has its own
        infos = [
            api.ParticipantInfo(
                identity=r.participant_info.identity,
                kind=r.participant_info.kind,  # the same numbers for AGENT and STANDARD
                attributes=dict(r.participant_info.attributes),
            )
            for r in rooms
        ]
        listing = api.ListParticipantsResponse(participants=infos)
        return web.Response(body=listing.SerializeToString(), content_type="application/protobuf")

    async def send_data(request: web.Request) -> web.Response:
        ask = api.SendDataRequest.FromString(await request.read())
        if not authorised(request, ask.room):
            return web.json_response({"code": "unauthenticated", "msg": "no"}, status=401)
        if not harness.network.rooms(ask.room):
            return not_found(ask.room)
        sent.append(ask)
        await harness.network.send_server_data(
            ask.room,
            ask.data,
            topic=ask.topic,
            destination_identities=list(ask.destination_identities),
        )
        body = api.SendDataResponse().SerializeToString()
        return web.Response(body=body, content_type="application/protobuf")

    app = web.Application()
    app.router.add_post("/twirp/livekit.RoomService/ListParticipants", list_participants)
    app.router.add_post("/twirp/livekit.RoomService/SendData", send_data)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", sent
    await runner.cleanup()


async def test_server_api_send_is_applied_and_never_acknowledged(
    harness: Harness, twirp: tuple[str, list[api.SendDataRequest]]
) -> None:
    url, sent = twirp
    acks_sent = harness.plugin.stats.acks_sent
    result = await send_via_server_api(
        {"type": "speak", "message": "Flash sale: 50% off!"},
        room=ROOM,
        agent_code=AGENT_CODE,
        url=url,
        api_key=API_KEY,
        api_secret=API_SECRET,
    )

    assert result.acknowledged is False
    assert result.destination_identity == AGENT_IDENTITY
    assert len(result.request_id) == 32
    assert [list(s.destination_identities) for s in sent] == [[AGENT_IDENTITY]]
    assert sent[0].topic == CONTEXT_TOPIC
    assert sent[0].kind == api.DataPacket.Kind.RELIABLE
    await wait_until(lambda: harness.tts.texts == ["Flash sale: 50% off!"])
    await wait_until(lambda: not harness.session.current_speech)
    assert harness.plugin.stats.applied == 1
    assert harness.plugin.stats.acks_sent == acks_sent  # nobody to answer


async def test_server_api_reports_a_missing_room_and_a_missing_agent(
    harness: Harness, twirp: tuple[str, list[api.SendDataRequest]]
) -> None:
    url, sent = twirp
    lkapi = api.LiveKitAPI(url, API_KEY, API_SECRET)
    try:
        with pytest.raises(ContextError) as no_room:
            await send_via_server_api(
                {"type": "speak", "message": "hi"}, room="nowhere", lkapi=lkapi
            )
        with pytest.raises(ContextError) as no_agent:
            await send_via_server_api(
                {"type": "speak", "message": "hi"}, room=ROOM, agent_code="Z9", lkapi=lkapi
            )
    finally:
        await lkapi.aclose()
    assert no_room.value.code is ErrorCode.NO_ACTIVE_ROOMS
    assert no_agent.value.code is ErrorCode.AGENT_NOT_FOUND
    assert sent == []


# ---------------------------------------------------------------------------------------------
# examples/sender.py, run against the receiver


def load_example(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


async def test_the_example_sender_use_cases_work(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    sender = load_example("sender")
    async with ContextClient(harness.backend.room) as client:
        await sender.setup_customer_context(
            client, sender.Customer("Ann Lee", "Gold", "Lamp", "phone", "none")
        )
        await sender.confirm_order(client, sender.Order("A-7", "$12.00"))
        await sender.confirm_order(client, sender.Order("A-7", "$12.00"))  # a rerun
        await sender.announce_maintenance(client)

    printed = capsys.readouterr().out
    assert "customer context added" in printed
    assert "order confirmation scheduled (already said by an earlier attempt)" in printed
    assert "announcement played in full" in printed
    assert [m.splitlines()[0] for m in harness.context_messages()] == [
        "Customer: Ann Lee",
        "The customer just placed order #A-7 for $12.00.",
    ]
    confirmations = [t for t in harness.tts.texts if "order #A-7" in t]
    assert len(confirmations) == 1
