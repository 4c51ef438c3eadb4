"""ContextClient's call-control calls (protocol v1.1) against the real receiver: a real
AgentSession with ContextPlugin in one room, the client in another room of the same in-memory
relay, both halves unmodified."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imaginex_context_plugin import (
    CONTEXT_TOPIC,
    ContextClient,
    ContextError,
    ErrorCode,
    HistoryResult,
    SpeechFailedError,
)
from imaginex_context_plugin.sender import Via
from tests.conftest import BACKEND_IDENTITY, Harness, HarnessFactory
from tests.helpers import wait_until

VIAS = pytest.mark.parametrize("via", ["rpc", "data"])
EVERYTHING = {BACKEND_IDENTITY: {"*"}}
"""The permissions that let the test's sender send the sensitive types too."""


async def trusted(make_harness: HarnessFactory, **kwargs: Any) -> Harness:
    """A harness whose plugin lets the client send every type."""
    kwargs.setdefault("permissions", EVERYTHING)
    harness: Harness = await make_harness(**kwargs)
    return harness


def said(harness: Harness) -> list[str]:
    messages = harness.session.history.messages()
    return [m.text_content or "" for m in messages if m.role == "assistant"]


# ---------------------------------------------------------------------------------------------
# each call, applied


@VIAS
async def test_update_io_returns_the_resulting_switches(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room, via=via) as client:
        muted = await client.update_io(user_audio=False)
        unmuted = await client.update_io(user_audio=True, transcription=False)
        state = await client.get_state()

    assert muted.data.context_type == "update_io"
    assert muted.data.io is not None
    assert muted.data.io.user_audio is False
    assert unmuted.data.io is not None
    assert (unmuted.data.io.user_audio, unmuted.data.io.transcription) == (True, False)
    assert state.io == unmuted.data.io


@VIAS
async def test_user_message_is_a_user_turn_the_agent_answers(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness = await trusted(make_harness, replies=["Sure, what is the new address?"])
    async with ContextClient(harness.backend.room, via=via) as client:
        ack = await client.user_message("I'd like to change my delivery address.")
        finished = await client.wait_for_playout(ack.id or "")
        history = await client.get_history(limit=10)

    assert ack.data.context_type == "user_message"
    assert ack.data.speech_id == finished.speech_id
    assert isinstance(history, HistoryResult)
    assert [(item.role, item.text) for item in history.items][-2:] == [
        ("user", "I'd like to change my delivery address."),
        ("assistant", "Sure, what is the new address?"),
    ]
    assert history.truncated is False


async def test_user_message_without_respond_gets_no_reply(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        ack = await client.user_message("My order number is 4411.", respond=False)
        history = await client.get_history()

    assert ack.data.speech_id is None
    assert [(i.role, i.text) for i in history.items] == [("user", "My order number is 4411.")]
    assert said(harness) == []


async def test_get_history_honours_the_limit(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        for n in range(3):
            await client.user_message(f"note {n}", respond=False)
        history = await client.get_history(limit=2)

    assert [i.text for i in history.items] == ["note 1", "note 2"]


async def test_speak_without_history_stays_out_of_it(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        await client.speak("One moment please.", add_to_history=False, wait_for_playout=True)
        await client.speak("Your order has shipped.", wait_for_playout=True)

    assert harness.tts.texts == ["One moment please.", "Your order has shipped."]
    assert said(harness) == ["Your order has shipped."]


async def test_cancel_cuts_our_playing_speech_and_unknown_ids_are_not_found(
    make_harness: HarnessFactory,
) -> None:
    harness = await trusted(make_harness, speed=1.0)
    async with ContextClient(harness.backend.room) as client:
        await client.speak("A long announcement " * 20, id="long-1")
        await wait_until(lambda: harness.session.agent_state == "speaking")
        ack = await client.cancel("long-1")
        # v1.3: a cancelled speech did not play out: its one end is speech_failed
        with pytest.raises(SpeechFailedError) as failed:
            await client.wait_for_playout("long-1")
        with pytest.raises(ContextError) as unknown:
            await client.cancel("never-sent")

    assert ack.data.target_id == "long-1"
    assert ack.data.cancelled == "playing"
    assert failed.value.reason == "cancelled"
    assert failed.value.code is ErrorCode.SPEECH_FAILED
    assert failed.value.event.started is True
    assert unknown.value.code is ErrorCode.NOT_FOUND
    assert unknown.value.retryable is False


async def test_interrupt_stops_speech_and_force_stops_protected_speech(
    make_harness: HarnessFactory,
) -> None:
    harness = await trusted(make_harness, speed=1.0)
    async with ContextClient(harness.backend.room) as client:
        await client.speak("Please hold " * 20, id="protected", allow_interruptions=False)
        await wait_until(lambda: harness.session.agent_state == "speaking")
        with pytest.raises(ContextError) as busy:
            await client.interrupt()
        forced = await client.interrupt(force=True)
        finished = await client.wait_for_playout("protected")

    assert busy.value.code is ErrorCode.BUSY
    assert forced.data.interrupted is True
    assert finished.interrupted is True


async def test_update_and_reset_instructions(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    own = harness.session.current_agent.instructions
    async with ContextClient(harness.backend.room) as client:
        appended = await client.update_instructions("Answer in French.")
        after_append = harness.session.current_agent.instructions
        await client.update_instructions("Be brief.", mode="replace")
        after_replace = harness.session.current_agent.instructions
        await client.reset_instructions()

    assert appended.data.instructions_mode == "append"
    assert own in after_append
    assert "Answer in French." in after_append
    assert "Be brief." in after_replace
    assert "Answer in French." not in after_replace
    assert harness.session.current_agent.instructions == own


async def test_end_call_acks_then_ends_and_later_requests_are_not_ready(
    make_harness: HarnessFactory,
) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room, retries=0) as client:
        ack = await client.end_call(reason="Order complete")
        with pytest.raises(ContextError) as after:
            await client.speak("Are you still there?")

    assert ack.data.context_type == "end_call"
    assert after.value.code is ErrorCode.NOT_READY
    assert "ended" in after.value.message
    assert "Are you still there?" not in harness.tts.texts


async def test_speak_end_call_after_hangs_up_once_played(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room, retries=0) as client:
        result = await client.speak("Goodbye!", end_call_after=True, wait_for_playout=True)
        with pytest.raises(ContextError) as after:
            await client.get_history()

    assert result.interrupted is False
    assert harness.tts.texts == ["Goodbye!"]
    assert after.value.code is ErrorCode.NOT_READY


# ---------------------------------------------------------------------------------------------
# the same retry, dedup and permission semantics as every request


async def test_a_repeated_id_is_applied_once(make_harness: HarnessFactory) -> None:
    harness = await trusted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        first = await client.user_message("Hello there.", respond=False, id="u-1")
        again = await client.user_message("Hello there.", respond=False, id="u-1")
        history = await client.get_history()

    assert first.duplicate is None
    assert again.duplicate is True
    assert [i.text for i in history.items] == ["Hello there."]


async def test_sensitive_types_need_a_permission(harness: Harness) -> None:
    # the default harness grants nothing beyond the defaults
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ContextError) as refused:
            await client.end_call()
        interrupted = await client.interrupt()

    assert refused.value.code is ErrorCode.UNAUTHORIZED
    assert "end_call" in refused.value.message
    assert interrupted.data.interrupted is False


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.update_io(), "Give at least one of"),
        (lambda c: c.get_history(limit=0), "Field 'limit' is out of range"),
        (lambda c: c.get_history(limit=201), "Field 'limit' is out of range"),
        (lambda c: c.cancel(""), "Field 'target_id' must not be empty"),
        (lambda c: c.update_instructions(" "), "Field 'instructions' must not be empty"),
        (lambda c: c.update_instructions("x", mode="prepend"), "Field 'mode'"),
        (lambda c: c.user_message("\u200b"), "Field 'text' must contain visible text"),
        (lambda c: c.end_call(reason="r" * 257), "Field 'reason'"),
    ],
)
async def test_invalid_calls_fail_before_sending(
    harness: Harness, call: Any, message: str
) -> None:
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ContextError) as refused:
            await call(client)

    assert refused.value.code is ErrorCode.VALIDATION_ERROR
    assert message in refused.value.message
    assert not [p for p in harness.network.published if p.topic == CONTEXT_TOPIC]
    assert harness.plugin.stats.received == 0


async def test_a_v1_speak_carries_no_v11_fields(harness: Harness) -> None:
    async with ContextClient(harness.backend.room, via="data") as client:
        ack = await client.speak("Hello.", id="plain")

    sent = [json.loads(p.payload) for p in harness.network.published if p.topic == CONTEXT_TOPIC]
    assert ack.id == "plain"
    assert "end_call_after" not in sent[0]
    assert "add_to_history" not in sent[0]
