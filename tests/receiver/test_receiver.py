"""The receiver over the data channel and RPC: protocol v1 behaviour on a real AgentSession."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent
from livekit.agents.testing import fake_job_context

from imaginex_context_plugin import (
    AGENT_CODE_ATTRIBUTE,
    CONTEXT_TOPIC,
    RPC_METHOD,
    ContextPlugin,
    RateLimit,
)
from imaginex_context_plugin.context import ENTRY_ID_PREFIX
from imaginex_context_plugin.security import sign_request
from tests.conftest import (
    AGENT_CODE,
    AGENT_IDENTITY,
    BACKEND_IDENTITY,
    ROOM,
    SERVER_SECRET,
    Backend,
    Harness,
    HarnessFactory,
)
from tests.helpers import wait_until

# ---------------------------------------------------------------------------------------------
# speak


async def test_speak_is_said_through_tts_and_acked_like_the_platform(harness: Harness) -> None:
    ack = await harness.backend.request(
        {"type": "speak", "id": "r1", "message": "Your order has shipped."}
    )

    assert ack["success"] is True
    assert ack["message"] == "Speech triggered successfully"
    data = ack["data"]
    assert data["agent_code"] == AGENT_CODE
    assert data["context_type"] == "speak"
    assert data["delivered_to_rooms"] == 1
    assert data["room_id"] == ROOM
    assert data["speech_id"].startswith("speech_")
    assert data["timestamp"].endswith("Z")
    assert data["method"] == "say"

    finished = await harness.backend.event("speech_finished", "r1")
    assert finished["speech_id"] == data["speech_id"]
    assert finished["interrupted"] is False
    assert harness.tts.texts == ["Your order has shipped."]
    said = [m.text_content for m in harness.session.history.messages() if m.role == "assistant"]
    assert said == ["Your order has shipped."]


async def test_speech_finished_comes_after_playout_not_at_scheduling(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "r1", "message": "A" * 40})
    assert harness.audio is not None
    # at ack time the audio is still playing: no finished event yet
    assert not any(m["type"] == "speech_finished" for m in harness.backend.received)

    finished = await harness.backend.event("speech_finished", "r1")
    started = await harness.backend.event("speech_started", "r1")
    order = [m["type"] for m in harness.backend.received]
    assert order.index("speech_started") < order.index("speech_finished")
    assert started["speech_id"] == finished["speech_id"]
    assert harness.audio.segments
    assert not harness.audio.segments[-1].interrupted
    assert finished["played_s"] == pytest.approx(harness.audio.segments[-1].played, abs=0.05)


async def test_speak_accepts_the_text_under_context_as_the_unified_endpoint_sends(
    harness: Harness,
) -> None:
    ack = await harness.backend.request(
        {"type": "speak", "id": "u1", "context": "Thank you for your patience."}
    )
    assert ack["success"] is True
    await harness.backend.event("speech_finished", "u1")
    assert harness.tts.texts == ["Thank you for your patience."]


async def test_messages_are_applied_in_arrival_order(harness: Harness) -> None:
    for i in range(5):
        await harness.backend.send({"type": "speak", "id": f"s{i}", "message": f"number {i}"})
    acks = await harness.backend.settle(5)
    assert [a["id"] for a in acks] == [f"s{i}" for i in range(5)]
    await harness.backend.event("speech_finished", "s4")
    assert harness.tts.texts == [f"number {i}" for i in range(5)]


async def test_uninterruptible_speak_is_passed_to_the_session(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "speak", "id": "legal", "message": "This call is recorded.",
         "allow_interruptions": False}
    )
    handle = harness.session.current_speech
    assert handle is not None
    assert handle.allow_interruptions is False
    with pytest.raises(RuntimeError):
        harness.session.interrupt()


# ---------------------------------------------------------------------------------------------
# add_context


async def test_add_context_is_known_to_the_next_llm_call_and_nothing_is_spoken(
    harness: Harness,
) -> None:
    ack = await harness.backend.request(
        {"type": "add_context", "id": "c1", "context": "The customer is John, a VIP."}
    )
    assert ack["success"] is True
    assert ack["message"] == "Context added successfully"
    assert ack["data"]["context_type"] == "add_context"
    assert "speech_id" not in ack["data"]
    assert harness.tts.texts == []
    assert harness.session.current_speech is None

    await harness.session.generate_reply(user_input="Who am I?")
    seen = harness.llm.calls[-1]
    system_texts = [m.text_content for m in seen.messages() if m.role == "system"]
    assert "The customer is John, a VIP." in system_texts


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant"])
async def test_add_context_role_is_kept(harness: Harness, role: str) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "context": "note", "role": role}
    )
    [message] = [
        m for m in harness.session.current_agent.chat_ctx.messages()
        if m.id.startswith(ENTRY_ID_PREFIX)
    ]
    assert message.role == role


async def test_same_key_replaces_instead_of_piling_up(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "key": "order", "context": "Order is packed."}
    )
    await harness.backend.request(
        {"type": "add_context", "id": "c2", "context": "Customer prefers email."}
    )
    await harness.backend.request(
        {"type": "add_context", "id": "c3", "key": "order", "context": "Order has shipped."}
    )
    # replaced in place: the keyed entry keeps its position before the unkeyed one
    assert harness.context_messages() == ["Order has shipped.", "Customer prefers email."]


async def test_context_survives_handoffs_without_duplicates(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "key": "tier", "context": "Gold tier."}
    )
    await harness.backend.request({"type": "add_context", "id": "c2", "context": "Likes cats."})
    for n in range(3):
        # every other agent is built from the previous chat context, which already holds ours
        chat_ctx = harness.session.current_agent.chat_ctx.copy() if n % 2 else None
        harness.session.update_agent(Agent(instructions=f"agent {n}", chat_ctx=chat_ctx))
        await wait_until(lambda: harness.context_messages() == ["Gold tier.", "Likes cats."])

    await harness.session.generate_reply(user_input="hello")
    seen = [m.text_content for m in harness.llm.calls[-1].messages()]
    assert seen.count("Gold tier.") == 1
    assert seen.count("Likes cats.") == 1


async def test_messages_during_a_handoff_are_applied_not_refused(harness: Harness) -> None:
    # make the old agent busy so the handoff drains for a while
    harness.session.say("a long goodbye " * 10)
    harness.session.update_agent(Agent(instructions="second agent"))
    speak = await harness.backend.request({"type": "speak", "id": "h1", "message": "Hello again."})
    added = await harness.backend.request(
        {"type": "add_context", "id": "h2", "context": "Arrived mid-handoff."}
    )
    assert speak["success"] is True, speak
    assert added["success"] is True, added
    await harness.backend.event("speech_finished", "h1")
    assert "Hello again." in harness.tts.texts
    await wait_until(lambda: harness.session.current_agent.instructions == "second agent")
    await wait_until(lambda: harness.context_messages() == ["Arrived mid-handoff."])


# ---------------------------------------------------------------------------------------------
# trust, targeting, duplicates, limits


async def test_untrusted_sender_is_refused_and_has_no_effect(harness: Harness) -> None:
    stranger = harness.backend_as("stranger")
    ack = await stranger.request({"type": "speak", "id": "x", "message": "I should not speak."})
    assert ack == {
        "type": "ack",
        "id": "x",
        "success": False,
        "error": "UNAUTHORIZED",
        "message": "This sender is not allowed to send messages to this agent.",
    }
    await asyncio.sleep(0.05)
    assert harness.tts.texts == []
    assert harness.session.current_speech is None


async def test_signed_server_api_packets_are_trusted_by_default_and_never_answered(
    harness: Harness,
) -> None:
    body = json.dumps({"type": "add_context", "id": "srv", "context": "From the server."})
    await harness.network.send_server_data(
        ROOM,
        sign_request(body, SERVER_SECRET),
        topic=CONTEXT_TOPIC,
        destination_identities=[AGENT_IDENTITY],
    )
    await wait_until(lambda: harness.context_messages() == ["From the server."])
    acks = [
        p for p in harness.network.published
        if p.sender == AGENT_IDENTITY and b'"srv"' in p.payload
    ]
    assert acks == []


async def test_an_unsigned_packet_without_a_participant_is_never_trusted(
    harness: Harness,
) -> None:
    # on a real server this is also what a hidden participant's packet, or a newcomer's first
    # packet (before the agent is told about it), looks like: it may come from anyone
    await harness.network.send_server_data(
        ROOM, json.dumps({"type": "speak", "message": "I am the server, honest."}),
        topic=CONTEXT_TOPIC,
    )
    await wait_until(lambda: harness.plugin.stats.errors == {"UNAUTHORIZED": 1})
    assert harness.tts.texts == []


async def test_server_api_packets_are_ignored_when_server_is_not_trusted(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(trust_server=False)
    await harness.network.send_server_data(
        ROOM,
        sign_request(json.dumps({"type": "speak", "message": "nope"}), SERVER_SECRET),
        topic=CONTEXT_TOPIC,
    )
    await asyncio.sleep(0.1)
    assert harness.tts.texts == []
    assert harness.plugin.stats.errors == {"UNAUTHORIZED": 1}


async def test_an_old_gateway_naming_a_reply_url_is_refused_and_nothing_is_spoken(
    make_harness: HarnessFactory,
) -> None:
    # reply_to was withdrawn: an old gateway's server-API packet, validly signed, with
    # the field as it sent it, is refused whole (not applied without its answer)
    harness: Harness = await make_harness()
    speak = json.dumps({"type": "speak", "message": "hi"})
    envelope = json.loads(sign_request(speak, SERVER_SECRET))
    envelope["reply_to"] = "http://127.0.0.1:8089/v1/internal/replies"
    await harness.network.send_server_data(ROOM, json.dumps(envelope), topic=CONTEXT_TOPIC)
    await wait_until(lambda: harness.plugin.stats.errors == {"VALIDATION_ERROR": 1})
    assert harness.tts.texts == []


async def test_other_topics_are_ignored(harness: Harness) -> None:
    await harness.backend.room.local_participant.publish_data(
        json.dumps({"type": "speak", "message": "wrong topic"}), topic="lk.chat"
    )
    await harness.backend.room.local_participant.publish_data(b"garbage", topic="")
    await asyncio.sleep(0.1)
    assert harness.backend.received == []
    assert harness.plugin.stats.received == 0


async def test_the_same_id_is_applied_once_and_the_first_ack_is_repeated(
    harness: Harness,
) -> None:
    message = {"type": "speak", "id": "once", "message": "Only once."}
    first = await harness.backend.request(message)
    await harness.backend.send(message)
    second = await harness.backend.ack_for("once", nth=2)

    assert second == {**first, "duplicate": True}
    await harness.backend.event("speech_finished", "once")
    await asyncio.sleep(0.05)
    assert harness.tts.texts == ["Only once."]


async def test_the_same_id_from_another_sender_is_a_different_message(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(allowed_identities=[BACKEND_IDENTITY, "crm"])
    crm = harness.backend_as("crm")
    await harness.backend.request({"type": "add_context", "id": "same", "context": "one"})
    ack = await crm.request({"type": "add_context", "id": "same", "context": "two"})
    assert "duplicate" not in ack
    assert harness.context_messages() == ["one", "two"]


async def test_a_failed_message_can_be_retried_with_the_same_id(harness: Harness) -> None:
    refused = await harness.backend.request(
        {"type": "speak", "id": "retry", "message": "hi", "room_id": "other-room"}
    )
    assert refused["error"] == "NO_ACTIVE_ROOMS"
    await harness.backend.send({"type": "speak", "id": "retry", "message": "hi"})
    ok = await harness.backend.ack_for("retry", nth=2)
    assert ok["success"] is True
    assert "duplicate" not in ok


async def test_rate_limit_refuses_with_retry_after(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(rate_limit=RateLimit(per_second=1, burst=3))
    for i in range(5):
        await harness.backend.send({"type": "add_context", "id": f"c{i}", "context": f"n{i}"})
    acks = await harness.backend.settle(5)
    assert [a["success"] for a in acks] == [True, True, True, False, False]
    assert {a["error"] for a in acks[3:]} == {"RATE_LIMITED"}
    assert all(0 < a["retry_after"] <= 1.0 for a in acks[3:])
    assert harness.context_messages() == ["n0", "n1", "n2"]


async def test_rate_limit_none_turns_it_off(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(rate_limit=None)
    for i in range(200):
        await harness.backend.send({"type": "add_context", "id": f"c{i}", "context": f"n{i}"})
    acks = await harness.backend.settle(200)
    assert all(a["success"] for a in acks)


async def test_a_full_queue_refuses_instead_of_growing(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(rate_limit=None, max_queue=3, start_plugin=False)
    harness.session.update_agent(Agent(instructions="busy handing off"))
    await harness.plugin.start(harness.session, harness.agent_room)
    for i in range(6):
        harness.plugin.ingest(
            json.dumps({"type": "speak", "id": f"q{i}", "message": f"n{i}"}),
            sender_identity=BACKEND_IDENTITY,
        )
    acks = await harness.backend.settle(6)
    refused = [a for a in acks if not a["success"]]
    assert len(refused) >= 3
    assert {a["error"] for a in refused} == {"RATE_LIMITED"}
    assert len(acks) == 6


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("room_id", "another-room", "NO_ACTIVE_ROOMS"),
        ("agent_code", "B99999999", "AGENT_NOT_FOUND"),
    ],
)
async def test_targeting_another_room_or_agent_is_refused(
    harness: Harness, field: str, value: str, code: str
) -> None:
    ack = await harness.backend.request(
        {"type": "speak", "id": "t", "message": "hi", field: value}
    )
    assert ack["error"] == code
    assert harness.tts.texts == []


async def test_targeting_this_room_and_agent_is_accepted(harness: Harness) -> None:
    ack = await harness.backend.request(
        {"type": "add_context", "id": "t", "context": "x", "room_id": ROOM,
         "agent_code": AGENT_CODE}
    )
    assert ack["success"] is True


async def test_agent_code_defaults_to_the_environment(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINEX_AGENT_CODE", "ENV-CODE")
    harness: Harness = await make_harness(agent_code=None)
    ack = await harness.backend.request({"type": "add_context", "id": "e", "context": "x"})
    assert ack["data"]["agent_code"] == "ENV-CODE"


async def test_not_ready_when_the_session_has_ended(harness: Harness) -> None:
    await harness.session.aclose()
    ack = await harness.backend.request({"type": "speak", "id": "late", "message": "hello?"})
    assert ack["error"] == "NOT_READY"
    assert harness.tts.texts == []


async def test_not_ready_when_the_session_never_starts(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(ready_timeout=0.2, start_plugin=False)
    await harness.session.aclose()
    from livekit.agents import AgentSession

    never_started: AgentSession[Any] = AgentSession()
    plugin = ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY],
                           ready_timeout=0.2)
    await plugin.start(never_started, harness.agent_room)
    try:
        ack = await harness.backend.request({"type": "speak", "id": "n", "message": "hi"})
        assert ack["error"] == "NOT_READY"
    finally:
        await plugin.aclose()


async def test_messages_before_session_start_are_applied_once_it_runs(
    make_harness: HarnessFactory,
) -> None:
    from livekit.agents import AgentSession

    from tests.fakes import RecordingTTS, ScriptedLLM

    harness: Harness = await make_harness(start_plugin=False)
    recording_tts = RecordingTTS()
    session: AgentSession[Any] = AgentSession(
        llm=ScriptedLLM(), tts=recording_tts, vad=None,
        turn_handling={"turn_detection": None},
    )
    session.output.audio = None
    plugin = ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY])
    await plugin.start(session, harness.agent_room)
    try:
        await harness.backend.send({"type": "add_context", "id": "early", "context": "Early."})
        await asyncio.sleep(0.1)
        await session.start(Agent(instructions="late start"))
        ack = await harness.backend.ack_for("early")
        assert ack["success"] is True
        texts = [m.text_content for m in session.current_agent.chat_ctx.messages()]
        assert "Early." in texts
    finally:
        await plugin.aclose()
        await session.aclose()


# ---------------------------------------------------------------------------------------------
# RPC


async def test_rpc_answers_with_the_ack_and_sends_speech_events_as_data(harness: Harness) -> None:
    ack = await harness.backend.rpc({"type": "speak", "id": "rpc1", "message": "Over RPC."})
    assert ack["success"] is True
    assert ack["id"] == "rpc1"
    finished = await harness.backend.event("speech_finished", "rpc1")
    assert finished["speech_id"] == ack["data"]["speech_id"]
    # the RPC response is the only ack: none is published as data
    assert harness.backend.acks() == []


async def test_rpc_errors_are_acks_too(harness: Harness) -> None:
    ack = await harness.backend.rpc("{not json")
    assert ack["error"] == "VALIDATION_ERROR"
    stranger = harness.backend_as("stranger")
    refused = await stranger.rpc({"type": "speak", "id": "s", "message": "no"})
    assert refused["error"] == "UNAUTHORIZED"
    assert refused["id"] == "s"


async def test_rpc_is_registered_once_the_room_connects(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    late_room = harness.network.create_room(
        "room-2", "late-agent", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, connected=False
    )
    plugin = ContextPlugin(agent_code="LATE", allowed_identities=[BACKEND_IDENTITY])
    await plugin.start(harness.session, late_room)
    try:
        await late_room.connect("ws://relay", "token")
        backend = Backend(harness.network.create_room("room-2", BACKEND_IDENTITY),
                          agent_identity="late-agent")
        await wait_until(lambda: RPC_METHOD in late_room.local_participant._rpc_handlers)
        await wait_until(
            lambda: late_room.local_participant.attributes.get(AGENT_CODE_ATTRIBUTE) == "LATE"
        )
        ack = await backend.rpc({"type": "add_context", "id": "l", "context": "late"})
        assert ack["success"] is True
    finally:
        await plugin.aclose()


# ---------------------------------------------------------------------------------------------
# lifecycle


async def test_aclose_unhooks_everything_and_is_idempotent(harness: Harness) -> None:
    room = harness.agent_room
    await wait_until(lambda: RPC_METHOD in room.local_participant._rpc_handlers)
    listeners_before = len(room._events.get("data_received", set()))
    events = harness.session._events

    def ours(handlers: object) -> int:
        return sum(
            1
            for h in handlers  # type: ignore[attr-defined]
            if getattr(h, "__module__", "").startswith("imaginex_context_plugin")
        )

    session_before = {e: (len(hs), ours(hs)) for e, hs in events.items()}
    # one listener of ours per session event, holding every part that hears it (context,
    # speech, gate, avatar, call end, events)
    heard = {e for e, (_, mine) in session_before.items() if mine}
    assert all(mine == 1 for _, mine in session_before.values())
    assert heard >= {"conversation_item_added", "agent_state_changed", "close", "speech_created"}
    assert sum(len(next(h for h in events[e] if ours([h]))) for e in heard) >= 14
    await harness.plugin.aclose()
    await harness.plugin.aclose()

    assert len(room._events.get("data_received", set())) == listeners_before - 1
    assert not ours(room._events.get("participant_disconnected", set()))
    assert RPC_METHOD not in room.local_participant._rpc_handlers
    for event, (total, mine) in session_before.items():  # each of ours is gone, nobody else's
        assert ours(events.get(event, set())) == 0
        assert len(events.get(event, set())) == total - mine
    await harness.backend.send({"type": "speak", "id": "after", "message": "too late"})
    await asyncio.sleep(0.1)
    assert harness.backend.received == []
    assert harness.tts.texts == []
    with pytest.raises(RuntimeError, match="closed"):
        await harness.plugin.start(harness.session, room)


async def test_start_twice_is_refused(harness: Harness) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await harness.plugin.start(harness.session, harness.agent_room)


async def test_async_with_closes(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    async with harness.plugin as plugin:
        await plugin.start(harness.session, harness.agent_room)
    assert harness.plugin.closed
    # every task it started was awaited: none of its (named) tasks is left
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("imaginex_context.")]


async def test_inside_a_job_aclose_is_a_shutdown_callback(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    with fake_job_context(room=harness.agent_room) as job_ctx:
        before = len(job_ctx._shutdown_callbacks)
        await harness.plugin.start(harness.session, harness.agent_room)
        assert len(job_ctx._shutdown_callbacks) == before + 1
        await job_ctx._shutdown_callbacks[-1]("test")
        # the real job runner removes this at shutdown; fake_job_context leaves it behind
        job_ctx._tempdir.cleanup()
    assert harness.plugin.closed


async def test_messages_queued_at_close_are_still_answered(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(start_plugin=False, rate_limit=None)
    harness.session.update_agent(Agent(instructions="slow handoff"))
    await harness.plugin.start(harness.session, harness.agent_room)
    for i in range(3):
        harness.plugin.ingest(json.dumps({"type": "speak", "id": f"z{i}", "message": "x"}),
                              sender_identity=BACKEND_IDENTITY)
    await harness.plugin.aclose()
    acks = await harness.backend.settle(3)
    assert sorted(a["id"] for a in acks) == ["z0", "z1", "z2"]



async def test_a_repeat_inside_one_burst_is_applied_once(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(rate_limit=None)
    message = json.dumps({"type": "add_context", "id": "burst", "context": "Once."})
    for _ in range(3):  # one loop iteration: the consumer sees all three as one burst
        harness.plugin.ingest(message, sender_identity=BACKEND_IDENTITY)
    acks = await harness.backend.settle(3)
    assert [a.get("duplicate", False) for a in acks] == [False, True, True]
    assert harness.context_messages() == ["Once."]


async def test_context_refused_as_not_ready_is_not_kept(make_harness: HarnessFactory) -> None:
    from livekit.agents import AgentSession

    harness: Harness = await make_harness(start_plugin=False)
    never_started: AgentSession[Any] = AgentSession()
    plugin = ContextPlugin(
        agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY], ready_timeout=0.1
    )
    await plugin.start(never_started, harness.agent_room)
    try:
        ack = await harness.backend.request({"type": "add_context", "id": "c", "context": "x"})
        assert ack["error"] == "NOT_READY"
        assert len(plugin.context_store) == 0
    finally:
        await plugin.aclose()


@pytest.mark.parametrize("steps", range(6))
async def test_aclose_as_the_room_disconnects_never_hangs(
    make_harness: HarnessFactory, steps: int
) -> None:
    # a job's shutdown disconnects the room and closes the plugin at the same moment; on
    # Python 3.11 asyncio.wait_for could swallow that cancellation and leave a task polling
    # for a connection forever (seen with a real worker: the job was killed after 10 s)
    harness: Harness = await make_harness()
    assert (await harness.backend.rpc({"type": "get_state", "id": "up"}))["success"]
    harness.agent_room.emit("disconnected", rtc.DisconnectReason.CLIENT_INITIATED)
    for _ in range(steps):
        await asyncio.sleep(0)
    await asyncio.wait_for(harness.plugin.aclose(), 3.0)


async def test_a_hidden_sender_is_anonymous_as_on_a_real_server(harness: Harness) -> None:
    # what livekit-server 1.13 does with a hidden participant (tests/integration proves it):
    # its data packets arrive without a participant, its RPCs with an empty caller and no way
    # back; so unsigned, it is refused and never answered, whatever its identity
    hidden = harness.network.create_room(ROOM, BACKEND_IDENTITY + "-hidden", hidden=True)
    assert hidden.local_participant.identity not in harness.agent_room.remote_participants
    await hidden.local_participant.publish_data(
        json.dumps({"type": "speak", "id": "h1", "message": "Hidden data."}),
        topic=CONTEXT_TOPIC,
        destination_identities=[AGENT_IDENTITY],
    )
    with pytest.raises(rtc.RpcError):
        await hidden.local_participant.perform_rpc(
            destination_identity=AGENT_IDENTITY,
            method=RPC_METHOD,
            payload=json.dumps({"type": "speak", "id": "h2", "message": "Hidden RPC."}),
        )
    await wait_until(lambda: harness.plugin.stats.errors.get("UNAUTHORIZED", 0) == 2)
    assert harness.tts.texts == []
