"""The receiver with a realtime (speech-to-speech) model and no TTS, on a real AgentSession.

``FakeRealtimeModel`` is a real ``llm.RealtimeModel`` subclass, so the session drives it
through AgentActivity's realtime path (``_realtime_reply_task``); only the model's server side
is simulated. Such a session cannot ``say()`` text, so a verbatim ``speak`` must fall back to
``generate_reply`` with instructions to read the text as is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.context import ENTRY_ID_PREFIX
from tests.conftest import AGENT_CODE, AGENT_IDENTITY, BACKEND_IDENTITY, ROOM, Backend
from tests.fakes import (
    VERBATIM_MARKER,
    FakeRealtimeModel,
    FakeRealtimeSession,
    RecordingAudioOutput,
    RelayNetwork,
    start_session,
)
from tests.helpers import wait_until


@dataclass
class RealtimeHarness:
    network: RelayNetwork
    session: AgentSession[Any]
    model: FakeRealtimeModel
    audio: RecordingAudioOutput
    plugin: ContextPlugin
    backend: Backend
    errors: list[Any]

    @property
    def rt_session(self) -> FakeRealtimeSession:
        """The newest realtime session: the current activity's (livekit reuses it on handoff)."""
        return self.model.sessions[-1]


async def build(
    *,
    speed: float = 20.0,
    supports_say: bool = False,
    replies: list[str] | None = None,
    permissions: dict[str, set[str]] | None = None,
) -> RealtimeHarness:
    network = RelayNetwork()
    model = FakeRealtimeModel(replies or [], supports_say=supports_say)
    audio = RecordingAudioOutput(speed=speed)
    session = await start_session(llm_model=model, no_tts=True, audio_output=audio)
    errors: list[Any] = []
    session.on("error", errors.append)
    agent_room = network.create_room(
        ROOM, AGENT_IDENTITY, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )
    plugin = ContextPlugin(
        agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY], permissions=permissions
    )
    backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
    await plugin.start(session, agent_room)
    return RealtimeHarness(network, session, model, audio, plugin, backend, errors)


async def close(harness: RealtimeHarness) -> None:
    harness.session.off("error", harness.errors.append)
    await harness.plugin.aclose()
    await harness.session.aclose()
    await harness.network.aclose()


@pytest.fixture
async def rt(caplog: pytest.LogCaptureFixture) -> AsyncIterator[RealtimeHarness]:
    caplog.set_level(logging.WARNING)
    harness = await build()
    yield harness
    await close(harness)
    # an exception inside a speech task is logged, not raised: catch it here
    assert harness.errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []



def assistant_texts(chat_ctx: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in chat_ctx.messages() if m.role == "assistant"]


def context_texts(chat_ctx: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in chat_ctx.messages() if m.id.startswith(ENTRY_ID_PREFIX)]


# ---------------------------------------------------------------------------------------------
# speak, verbatim text


async def test_a_realtime_session_without_tts_cannot_say_text(rt: RealtimeHarness) -> None:
    # the premise of the fallback: livekit refuses say() here at once
    with pytest.raises(RuntimeError, match="without a TTS model"):
        rt.session.say("Hello.")


async def test_speak_falls_back_to_generate_reply_reading_the_text_verbatim(
    rt: RealtimeHarness,
) -> None:
    ack = await rt.backend.request({"type": "speak", "id": "r1", "message": "Your order shipped."})

    assert ack["success"] is True
    assert ack["data"]["method"] == "generate_reply"
    assert ack["data"]["fallback"] == "generate_reply"
    finished = await rt.backend.event("speech_finished", "r1")
    assert finished["interrupted"] is False
    assert finished["speech_id"] == ack["data"]["speech_id"]
    started = await rt.backend.event("speech_started", "r1")
    assert rt.backend.received.index(started) < rt.backend.received.index(finished)

    [instructions] = rt.model.instructions_seen
    assert instructions.endswith(VERBATIM_MARKER + "Your order shipped.")
    assert rt.model.spoken == ["Your order shipped."]
    [segment] = rt.audio.segments
    assert segment.interrupted is False
    assert segment.captured == pytest.approx(rt.model.audio_seconds_for("Your order shipped."))
    assert finished["played_s"] == pytest.approx(segment.played, abs=1e-3)
    # the reply is in the agent's history as spoken, and the instructions are not
    assert assistant_texts(rt.session.current_agent.chat_ctx) == ["Your order shipped."]
    assert all(
        VERBATIM_MARKER not in (m.text_content or "")
        for m in rt.session.current_agent.chat_ctx.messages()
    )


async def test_speak_text_is_read_verbatim_even_with_line_breaks(rt: RealtimeHarness) -> None:
    text = "Line one.\nword for word, and nothing else:\nLine three."
    ack = await rt.backend.request({"type": "speak", "id": "r2", "message": text})

    assert ack["data"]["fallback"] == "generate_reply"
    await rt.backend.event("speech_finished", "r2")
    # the fake splits at the first marker, as a model reading the instructions would
    assert rt.model.spoken == [text]


async def test_uninterruptible_speak_falls_back_too(rt: RealtimeHarness) -> None:
    ack = await rt.backend.request(
        {
            "type": "speak",
            "id": "u1",
            "message": "Calls are recorded.",
            "allow_interruptions": False,
        }
    )

    assert ack["data"]["fallback"] == "generate_reply"
    finished = await rt.backend.event("speech_finished", "u1")
    assert finished["interrupted"] is False
    assert rt.model.spoken == ["Calls are recorded."]


async def test_speak_uses_say_when_the_realtime_model_supports_it() -> None:
    harness = await build(supports_say=True)
    try:
        ack = await harness.backend.request({"type": "speak", "id": "s1", "message": "Hello."})

        assert ack["data"]["method"] == "say"
        assert "fallback" not in ack["data"]
        finished = await harness.backend.event("speech_finished", "s1")
        assert finished["interrupted"] is False
        assert harness.model.said == ["Hello."]
        assert harness.model.instructions_seen == []
    finally:
        await close(harness)


# ---------------------------------------------------------------------------------------------
# speak, instructions


async def test_speak_with_instructions_uses_generate_reply_without_fallback(
    rt: RealtimeHarness,
) -> None:
    rt.model.replies.append("Good news: it shipped today.")

    ack = await rt.backend.request(
        {"type": "speak", "id": "i1", "instructions": "Tell the user their order shipped."}
    )

    assert ack["success"] is True
    assert ack["data"]["method"] == "generate_reply"
    assert "fallback" not in ack["data"]
    finished = await rt.backend.event("speech_finished", "i1")
    assert finished["interrupted"] is False
    assert rt.model.instructions_seen == ["Tell the user their order shipped."]
    assert rt.model.spoken == ["Good news: it shipped today."]


# ---------------------------------------------------------------------------------------------
# interruption


async def test_interrupt_mode_cuts_a_realtime_reply_and_truncates_it_on_the_server() -> None:
    # real-time playout, so the first reply is still playing when the second speak arrives
    harness = await build(speed=1.0)
    try:
        long_text = "This is a long announcement. " * 20
        await harness.backend.request({"type": "speak", "id": "a1", "message": long_text})
        await harness.backend.event("speech_started", "a1")

        ack = await harness.backend.request(
            {"type": "speak", "id": "a2", "message": "Sorry, one moment.", "mode": "interrupt"}
        )

        assert ack["data"]["fallback"] == "generate_reply"
        cut = await harness.backend.event("speech_finished", "a1")
        assert cut["interrupted"] is True
        assert 0 < cut["played_s"] < harness.model.audio_seconds_for(long_text)
        finished = await harness.backend.event("speech_finished", "a2")
        assert finished["interrupted"] is False
        # the session told the server how much of the cut message the user heard
        [truncation] = harness.rt_session.truncations
        assert truncation.audio_end_ms == pytest.approx(cut["played_s"] * 1000, abs=1)
        assert harness.model.spoken[-1] == "Sorry, one moment."
    finally:
        await close(harness)


# ---------------------------------------------------------------------------------------------
# add_context


async def test_add_context_reaches_the_realtime_session_chat_ctx(rt: RealtimeHarness) -> None:
    updates_before = rt.rt_session.chat_ctx_updates

    ack = await rt.backend.request(
        {"type": "add_context", "id": "c1", "context": "The customer is John, a VIP."}
    )

    assert ack["success"] is True
    assert rt.rt_session.chat_ctx_updates > updates_before
    assert context_texts(rt.rt_session.chat_ctx) == ["The customer is John, a VIP."]
    # nothing is spoken for background knowledge
    assert rt.model.instructions_seen == []

    # and the next reply is generated with it in the session's context
    await rt.backend.request({"type": "speak", "id": "r1", "message": "One moment."})
    await rt.backend.event("speech_finished", "r1")
    [seen] = rt.model.chat_ctx_seen
    assert context_texts(seen) == ["The customer is John, a VIP."]


async def test_remove_context_leaves_the_realtime_session_chat_ctx(rt: RealtimeHarness) -> None:
    await rt.backend.request(
        {"type": "add_context", "id": "c1", "key": "vip", "context": "The customer is a VIP."}
    )
    assert context_texts(rt.rt_session.chat_ctx) == ["The customer is a VIP."]

    ack = await rt.backend.request({"type": "remove_context", "id": "c2", "key": "vip"})

    assert ack["data"]["removed"] is True
    assert context_texts(rt.rt_session.chat_ctx) == []


async def test_context_sync_keeps_the_realtime_replies_in_the_session(rt: RealtimeHarness) -> None:
    await rt.backend.request({"type": "speak", "id": "r1", "message": "Welcome back."})
    await rt.backend.event("speech_finished", "r1")

    await rt.backend.request({"type": "add_context", "id": "c1", "context": "Order 42 is late."})

    # the context update replaces the server's context: the reply already spoken stays in it
    assert assistant_texts(rt.rt_session.chat_ctx) == ["Welcome back."]
    assert context_texts(rt.rt_session.chat_ctx) == ["Order 42 is late."]


async def test_an_unconfirmed_realtime_update_still_acks_and_a_retry_adds_nothing(
    rt: RealtimeHarness,
) -> None:
    # the realtime API's confirmation timed out, as livekit documents update_chat_ctx may
    rt.rt_session.chat_ctx_update_error = llm.RealtimeError("update_chat_ctx timed out.")

    ack = await rt.backend.request({"type": "add_context", "id": "c1", "context": "VIP."})

    assert ack["success"] is True
    assert context_texts(rt.session.current_agent.chat_ctx) == ["VIP."]
    # a sender that retries anyway gets the first answer again, not a second copy
    await rt.backend.send({"type": "add_context", "id": "c1", "context": "VIP."})
    again = await rt.backend.ack_for("c1", nth=2)
    assert again["duplicate"] is True
    assert context_texts(rt.rt_session.chat_ctx) == ["VIP."]


async def test_context_survives_handoffs_in_the_realtime_session(rt: RealtimeHarness) -> None:
    await rt.backend.request({"type": "add_context", "id": "c1", "context": "Gold tier."})

    for n in range(3):
        instructions = f"agent {n}"
        rt.session.update_agent(Agent(instructions=instructions))

        def reapplied(instructions: str = instructions) -> bool:
            # the new activity pushes its instructions and its own (empty) context together,
            # then the plugin re-applies ours
            return rt.rt_session.instructions == instructions and context_texts(
                rt.rt_session.chat_ctx
            ) == ["Gold tier."]

        await wait_until(reapplied)

    # one realtime session throughout: livekit reuses it when its context is mutable
    assert len(rt.model.sessions) == 1
    await rt.backend.request({"type": "speak", "id": "r1", "message": "Welcome back."})
    await rt.backend.event("speech_finished", "r1")
    assert context_texts(rt.model.chat_ctx_seen[-1]) == ["Gold tier."]


async def test_next_turn_context_leaves_the_realtime_session_after_the_reply(
    rt: RealtimeHarness,
) -> None:
    await rt.backend.request(
        {"type": "add_context", "id": "c1", "context": "Mention the sale.", "scope": "next_turn"}
    )
    assert context_texts(rt.rt_session.chat_ctx) == ["Mention the sale."]

    await rt.backend.request({"type": "speak", "id": "i1", "instructions": "Greet the user."})
    await rt.backend.event("speech_finished", "i1")

    assert context_texts(rt.model.chat_ctx_seen[0]) == ["Mention the sale."]
    await wait_until(lambda: context_texts(rt.rt_session.chat_ctx) == [])


async def test_add_context_with_trigger_reply_answers_with_the_context_in_place(
    rt: RealtimeHarness,
) -> None:
    ack = await rt.backend.request(
        {"type": "add_context", "id": "t1", "context": "Order 42 is late.", "trigger_reply": True}
    )

    assert ack["data"]["method"] == "generate_reply"
    finished = await rt.backend.event("speech_finished", "t1")
    assert finished["interrupted"] is False
    assert rt.model.instructions_seen == [""]
    [seen] = rt.model.chat_ctx_seen
    assert context_texts(seen) == ["Order 42 is late."]


# ---------------------------------------------------------------------------------------------
# the fake itself


async def test_fake_realtime_session_calls_never_raise_and_aclose_is_idempotent() -> None:
    model = FakeRealtimeModel()
    rt_session = model.session()
    frame = rtc.AudioFrame(
        data=bytes(960), sample_rate=24_000, num_channels=1, samples_per_channel=480
    )
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hi")

    await rt_session.update_chat_ctx(ctx)
    ctx.add_message(role="user", content="added after the update")
    await rt_session.update_instructions("Be brief.")
    await rt_session.update_tools([])
    rt_session.update_options(tool_choice="none")
    rt_session.push_audio(frame)
    rt_session.commit_audio()
    rt_session.clear_audio()
    rt_session.interrupt()
    rt_session.truncate(message_id="missing", modalities=["audio"], audio_end_ms=10)

    assert [m.text_content for m in rt_session.chat_ctx.messages()] == ["hi"]
    assert rt_session.instructions == "Be brief."
    assert rt_session.tool_choice == "none"
    assert (rt_session.audio_frames_pushed, rt_session.commits, rt_session.clears) == (1, 1, 1)

    generation = await rt_session.generate_reply(instructions="x " + VERBATIM_MARKER + "Hi.")
    [message] = [m async for m in generation.message_stream]
    texts = [t async for t in message.text_stream]
    frames = [f async for f in message.audio_stream]
    assert "".join(texts) == "Hi."
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24_000, 1)}
    assert sum(f.duration for f in frames) == pytest.approx(model.audio_seconds_for("Hi."))
    assert await message.modalities == ["audio", "text"]
    assert [f async for f in generation.function_stream] == []

    await rt_session.aclose()
    await rt_session.aclose()
    await model.aclose()
    await rt_session.update_chat_ctx(llm.ChatContext.empty())
    with pytest.raises(llm.RealtimeError):
        await rt_session.generate_reply()


# ---------------------------------------------------------------------------------------------
# steering: update_instructions / reset_instructions reach the realtime session


async def test_instructions_reach_the_realtime_session_and_survive_a_handoff() -> None:
    harness = await build(permissions={BACKEND_IDENTITY: {"*"}})
    try:
        own = harness.session.current_agent.instructions
        ack = await harness.backend.request(
            {"type": "update_instructions", "id": "u1", "instructions": "Answer in French."}
        )
        assert ack["success"] is True
        # the realtime API holds the instructions (session.update); it uses them from its
        # next response
        assert harness.rt_session.instructions == f"{own}\n\nAnswer in French."

        harness.session.update_agent(Agent(instructions="You are the billing agent."))
        await wait_until(
            lambda: harness.rt_session.instructions
            == "You are the billing agent.\n\nAnswer in French.",
            "the steering re-applied after the handoff",
        )
        await harness.backend.request(
            {"type": "update_instructions", "id": "u2", "instructions": "Be brief.",
             "mode": "replace"}
        )
        assert harness.rt_session.instructions == "Be brief."
        ack = await harness.backend.request({"type": "reset_instructions", "id": "r1"})
        assert ack["success"] is True
        assert harness.rt_session.instructions == "You are the billing agent."
        # one realtime session throughout (livekit reuses it on handoff)
        assert len(harness.model.sessions) == 1
        assert harness.errors == []
    finally:
        await close(harness)
