"""ContextClient -> LiveKit server -> ContextPlugin -> ack, on a real ``livekit-server``.

The agent is a real ``rtc.Room`` joined as an agent participant, with a real ``AgentSession`` on
the offline fakes and ``ContextPlugin`` started before the room connects (as in an entrypoint);
senders join the same room with ``ContextClient.connect()`` or as plain ``rtc.Room``s. Nothing of
LiveKit is faked here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin import (
    ACK_TOPIC,
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    RPC_METHOD,
    ContextError,
    ErrorCode,
    send_via_server_api,
)
from imaginex_context_plugin.sender import Via
from tests.helpers import wait_until
from tests.integration.live import (
    AGENT_CODE,
    AGENT_IDENTITY,
    BACKEND,
    SIGNING_SECRET,
    WAIT_S,
    LiveAgent,
    agent_token,
    live_agent,
    participant_token,
)

VIAS = pytest.mark.parametrize("via", ["rpc", "data"])


@pytest.fixture
async def agent(livekit: ServerInfo) -> AsyncIterator[LiveAgent]:
    async with live_agent(livekit, secret=SIGNING_SECRET) as joined:
        yield joined


@VIAS
async def test_speak_and_context_round_trip_through_the_server(agent: LiveAgent, via: Via) -> None:
    agent.llm.replies.append("Yes, you are a premium member.")
    async with await agent.client(via) as client:
        added = await client.add_context("Customer is a premium member.", key="customer")
        state = await client.get_state()
        result = await client.speak("Welcome back!", wait_for_playout=True, playout_timeout=WAIT_S)
        # the agent's next reply is generated with the context in its chat context
        replied = await client.add_context("Answer now.", key="nudge", trigger_reply=True)
        removed = await client.remove_context("customer")

    assert added.data.agent_code == AGENT_CODE
    assert added.data.room_id == agent.room_name
    assert [entry.key for entry in state.context_entries] == ["customer"]
    assert result.ack.data.speech_id
    assert result.finished.speech_id == result.ack.data.speech_id
    assert not result.interrupted
    assert agent.tts.texts[0] == "Welcome back!"
    assert replied.data.speech_id is not None
    await wait_until(lambda: len(agent.llm.calls) == 1, "the LLM to be asked for the reply")
    seen = [m.text_content for m in agent.llm.calls[0].messages()]
    assert "Customer is a premium member." in seen
    assert removed.data.removed is True
    assert [entry.key for entry in agent.plugin.context_store.describe()] == ["nudge"]


async def test_ack_and_playout_events_come_through_the_server_in_order(
    agent: LiveAgent,
) -> None:
    lk = agent.lk
    backend = rtc.Room()
    received: list[dict[str, object]] = []

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == ACK_TOPIC:
            received.append(json.loads(packet.data))

    backend.on("data_received", on_data)
    await backend.connect(lk.url, participant_token(lk, agent.room_name, BACKEND))
    try:
        # the agent must have been told about us, or our packet arrives without a participant
        await wait_until(lambda: BACKEND in agent.room.remote_participants, "the agent to see us")
        request = {"type": "speak", "id": "p1", "message": "One, two, three."}
        await backend.local_participant.publish_data(
            json.dumps(request), topic=CONTEXT_TOPIC, destination_identities=[AGENT_IDENTITY]
        )
        await wait_until(lambda: len(received) == 3, "the ack and both playout events")
    finally:
        await backend.disconnect()
    assert [(m["type"], m["id"]) for m in received] == [
        ("ack", "p1"),
        ("speech_started", "p1"),
        ("speech_finished", "p1"),
    ]
    speech_id = received[0]["data"]["speech_id"]  # type: ignore[index]
    assert received[1]["speech_id"] == received[2]["speech_id"] == speech_id
    assert received[2]["interrupted"] is False


@VIAS
async def test_an_error_ack_comes_back_through_the_server(agent: LiveAgent, via: Via) -> None:
    async with await agent.client(via, identity="it-stranger") as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Let me in.")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.ack is not None
    assert agent.tts.texts == []


async def test_a_validation_error_echoes_the_id_through_the_server(agent: LiveAgent) -> None:
    async with await agent.client("rpc") as client:
        with pytest.raises(ContextError) as caught:
            await client.send({"type": "speak", "id": "bad-1", "message": "x", "mode": "loud"})
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert caught.value.request_id == "bad-1"


async def test_a_signed_request_from_an_unlisted_identity_is_applied(agent: LiveAgent) -> None:
    async with await agent.client("rpc", identity="it-signed", secret=SIGNING_SECRET) as client:
        ack = await client.add_context("Signed context.", key="signed")
    assert ack.success
    assert [entry.key for entry in agent.plugin.context_store.describe()] == ["signed"]


async def test_a_retry_with_the_same_id_is_applied_once(agent: LiveAgent) -> None:
    async with await agent.client("rpc") as client:
        first = await client.speak("Only once.", id="once-1")
        again = await client.speak("Only once.", id="once-1")
    assert first.duplicate is not True
    assert again.duplicate is True
    await wait_until(lambda: agent.tts.texts == ["Only once."], "the speech")
    await asyncio.sleep(0.3)
    assert agent.tts.texts == ["Only once."]


# --------------------------------------------------------------------------- the server API


async def test_the_server_api_path_reaches_the_agent_unacknowledged(agent: LiveAgent) -> None:
    lk = agent.lk
    await wait_until(agent.code_listed, "the agent's code to reach RoomService")
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        result = await send_via_server_api(
            {"type": "speak", "message": "Flash sale: 50% off!"},
            room=agent.room_name,
            agent_code=AGENT_CODE,
            lkapi=lkapi,
        )
    assert result.acknowledged is False
    assert result.destination_identity == AGENT_IDENTITY
    await wait_until(lambda: agent.tts.texts == ["Flash sale: 50% off!"], "the speech")


async def test_the_server_api_path_is_ignored_without_trust_server(livekit: ServerInfo) -> None:
    async with live_agent(livekit, trust_server=False) as agent:
        await wait_until(agent.code_listed, "the agent's code to reach RoomService")
        async with api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lkapi:
            await send_via_server_api(
                {"type": "speak", "message": "Nobody should hear this."},
                room=agent.room_name,
                agent_identity=AGENT_IDENTITY,
                lkapi=lkapi,
            )
        await wait_until(
            lambda: agent.plugin.stats.errors.get("UNAUTHORIZED", 0) == 1, "the refusal"
        )
        assert agent.tts.texts == []


# --------------------------------------------------------------------------- what the wire carries


async def test_the_agent_code_attribute_as_others_see_it(agent: LiveAgent) -> None:
    lk = agent.lk
    await wait_until(agent.code_listed, "the agent's code to reach RoomService")
    other = rtc.Room()
    await other.connect(lk.url, participant_token(lk, agent.room_name, "it-viewer"))
    try:

        def seen() -> bool:
            participant = other.remote_participants.get(AGENT_IDENTITY)
            return (
                participant is not None
                and participant.attributes.get(AGENT_CODE_ATTRIBUTE) == AGENT_CODE
            )

        await wait_until(seen, "another participant to see the agent's code")
    finally:
        await other.disconnect()


async def test_an_agent_code_the_server_refused_is_published_once_it_may(
    livekit: ServerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """``set_attributes`` returns quietly when the server refuses the change, and a gateway
    finds an agent only by this attribute: the plugin sets it again until the server echoes
    it. Here the first tries are refused (no ``can_update_own_metadata``), then RoomService
    grants the permission mid-call and the code appears without a reconnect."""
    lk = livekit
    room_name = f"it-refused-code-{id(caplog) % 100_000}"
    grants = api.VideoGrants(room_join=True, room=room_name)  # may not set attributes yet
    token = (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(AGENT_IDENTITY)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )
    async with live_agent(lk, room=room_name, token=token) as agent:
        await wait_until(
            lambda: any(
                r.getMessage() == "agent code attribute not confirmed by the server"
                for r in caplog.records
            ),
            "the server to refuse the first try",
        )
        assert not await agent.code_listed()
        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
            await lkapi.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room_name,
                    identity=AGENT_IDENTITY,
                    permission=api.ParticipantPermission(
                        can_subscribe=True,
                        can_publish=True,
                        can_publish_data=True,
                        can_update_metadata=True,
                    ),
                )
            )
        await wait_until(agent.code_listed, "the code to be set again and reach RoomService")
        assert agent.room.local_participant.attributes[AGENT_CODE_ATTRIBUTE] == AGENT_CODE


async def test_what_a_hidden_sender_looks_like_to_the_agent(livekit: ServerInfo) -> None:
    """LiveKit strips a hidden participant's identity: its RPC reaches the agent with an empty
    caller and the answer never comes back; its data packets arrive without a participant."""
    room_name = f"it-hidden-{id(livekit) % 10_000}"
    agent_room, hidden_room = rtc.Room(), rtc.Room()
    callers: list[str] = []
    packets: list[rtc.DataPacket] = []

    def on_rpc(data: rtc.RpcInvocationData) -> str:
        callers.append(data.caller_identity)
        return "answered"

    agent_room.on("data_received", packets.append)
    grants = api.VideoGrants(room_join=True, room=room_name, hidden=True)
    hidden_token = (
        api.AccessToken(livekit.api_key, livekit.api_secret)
        .with_identity("it-hidden")
        .with_grants(grants)
        .to_jwt()
    )
    await agent_room.connect(livekit.url, agent_token(livekit, room_name))
    agent_room.local_participant.register_rpc_method(RPC_METHOD, on_rpc)
    await hidden_room.connect(livekit.url, hidden_token)
    try:
        await hidden_room.local_participant.publish_data(
            b"{}", topic="it.hidden", destination_identities=[AGENT_IDENTITY]
        )
        with pytest.raises(rtc.RpcError):
            await hidden_room.local_participant.perform_rpc(
                destination_identity=AGENT_IDENTITY,
                method=RPC_METHOD,
                payload="{}",
                response_timeout=3.0,
            )
        await wait_until(lambda: bool(packets), "the hidden sender's packet")
        assert [p.participant for p in packets] == [None]
        assert callers == [""]
        assert "it-hidden" not in agent_room.remote_participants
    finally:
        await hidden_room.disconnect()
        await agent_room.disconnect()


async def test_a_plugin_started_before_connect_registers_rpc_and_the_attribute(
    livekit: ServerInfo,
) -> None:
    async with live_agent(livekit) as agent:
        await wait_until(agent.code_listed, "the attribute on the server")
        caller = rtc.Room()
        await caller.connect(livekit.url, participant_token(livekit, agent.room_name, BACKEND))
        try:
            answer = await caller.local_participant.perform_rpc(
                destination_identity=AGENT_IDENTITY,
                method=RPC_METHOD,
                payload=json.dumps({"type": "get_state", "id": "s1"}),
            )
        finally:
            await caller.disconnect()
        assert json.loads(answer)["success"] is True
