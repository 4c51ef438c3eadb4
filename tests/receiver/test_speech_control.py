"""Speech control and context options (protocol v1 additions): modes, instructions, events,
trigger_reply, scope, ttl, remove_context and get_state, on a real AgentSession."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit.agents import Agent

from tests.conftest import Harness, HarnessFactory
from tests.helpers import wait_until

LONG = "This is a long announcement that keeps the agent talking for a while. " * 3


# ---------------------------------------------------------------------------------------------
# speak modes


async def test_queue_mode_waits_behind_current_speech(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.event("speech_started", "a")
    await harness.backend.request({"type": "speak", "id": "b", "message": "Second."})
    first = await harness.backend.event("speech_finished", "a")
    await harness.backend.event("speech_finished", "b")

    assert first["interrupted"] is False
    kinds = [(m["type"], m["id"]) for m in harness.backend.received if m["type"] != "ack"]
    # the second speech starts only after the first one finished
    assert kinds.index(("speech_finished", "a")) < kinds.index(("speech_started", "b"))


async def test_interrupt_mode_cuts_interruptible_speech_first(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.event("speech_started", "a")
    await harness.backend.request(
        {"type": "speak", "id": "b", "message": "Urgent!", "mode": "interrupt"}
    )
    cut = await harness.backend.event("speech_finished", "a")
    urgent = await harness.backend.event("speech_finished", "b")

    assert cut["interrupted"] is True
    assert cut["played_s"] < harness.tts.duration_for(LONG)
    assert urgent["interrupted"] is False


async def test_interrupt_true_is_the_same_as_interrupt_mode(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.event("speech_started", "a")
    await harness.backend.request(
        {"type": "speak", "id": "b", "message": "Urgent!", "interrupt": True}
    )
    assert (await harness.backend.event("speech_finished", "a"))["interrupted"] is True


async def test_interrupt_never_cuts_uninterruptible_speech(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "speak", "id": "legal", "message": LONG, "allow_interruptions": False}
    )
    await harness.backend.event("speech_started", "legal")
    ack = await harness.backend.request(
        {"type": "speak", "id": "b", "message": "Urgent!", "mode": "interrupt"}
    )
    assert ack["success"] is True
    legal = await harness.backend.event("speech_finished", "legal")
    await harness.backend.event("speech_finished", "b")
    assert legal["interrupted"] is False
    assert harness.tts.texts[-1] == "Urgent!"


async def test_if_idle_refuses_while_the_agent_speaks(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.event("speech_started", "a")
    busy = await harness.backend.request(
        {"type": "speak", "id": "b", "message": "Only if quiet.", "mode": "if_idle"}
    )
    assert busy["success"] is False
    assert busy["error"] == "BUSY"
    await harness.backend.event("speech_finished", "a")
    assert "Only if quiet." not in harness.tts.texts

    # a refused message is not remembered: the same id is accepted once the agent is idle
    await harness.backend.send(
        {"type": "speak", "id": "b", "message": "Only if quiet.", "mode": "if_idle"}
    )
    ok = await harness.backend.ack_for("b", nth=2)
    assert ok["success"] is True


async def test_if_idle_refuses_while_the_user_speaks(harness: Harness) -> None:
    harness.session._update_user_state("speaking")
    busy = await harness.backend.request(
        {"type": "speak", "id": "b", "message": "x", "mode": "if_idle"}
    )
    assert busy["error"] == "BUSY"
    harness.session._update_user_state("listening")


# ---------------------------------------------------------------------------------------------
# instructions and events


async def test_instructions_have_the_llm_phrase_it(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(replies=["Hi John, your parcel is on its way!"])
    ack = await harness.backend.request(
        {"type": "speak", "id": "i1", "instructions": "Tell John his parcel shipped."}
    )
    assert ack["data"]["method"] == "generate_reply"
    assert "fallback" not in ack["data"]
    await harness.backend.event("speech_finished", "i1")
    assert "Tell John his parcel shipped." in harness.llm.instructions
    assert harness.tts.texts == ["Hi John, your parcel is on its way!"]


async def test_speech_started_waits_for_playout_not_for_queueing(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.request({"type": "speak", "id": "b", "message": "Queued."})
    await harness.backend.event("speech_started", "a")
    await asyncio.sleep(0.05)
    assert not any(
        m["type"] == "speech_started" and m["id"] == "b" for m in harness.backend.received
    )
    await harness.backend.event("speech_started", "b")


async def test_speech_events_go_only_to_the_sender(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(allowed_identities=["backend", "crm"])
    crm = harness.backend_as("crm")
    await harness.backend.request({"type": "speak", "id": "mine", "message": "Hello."})
    await harness.backend.event("speech_finished", "mine")
    await asyncio.sleep(0.05)
    assert crm.received == []


# ---------------------------------------------------------------------------------------------
# add_context options


async def test_trigger_reply_lets_the_agent_respond(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(replies=["I see you are a VIP!"])
    ack = await harness.backend.request(
        {"type": "add_context", "id": "t1", "context": "User is VIP.", "trigger_reply": True}
    )
    assert ack["success"] is True
    assert ack["data"]["method"] == "generate_reply"
    finished = await harness.backend.event("speech_finished", "t1")
    assert finished["speech_id"] == ack["data"]["speech_id"]
    seen = [m.text_content for m in harness.llm.calls[-1].messages()]
    assert "User is VIP." in seen
    assert harness.tts.texts == ["I see you are a VIP!"]


async def test_next_turn_context_is_gone_after_the_next_reply(harness: Harness) -> None:
    await harness.backend.request(
        {
            "type": "add_context",
            "id": "n1",
            "context": "Mention the sale once.",
            "scope": "next_turn",
        }
    )
    await harness.backend.request({"type": "add_context", "id": "p1", "context": "Stays."})
    await harness.session.generate_reply(user_input="hi")
    assert "Mention the sale once." in [m.text_content for m in harness.llm.calls[-1].messages()]
    await wait_until(lambda: harness.context_messages() == ["Stays."])

    await harness.session.generate_reply(user_input="and?")
    seen = [m.text_content for m in harness.llm.calls[-1].messages()]
    assert "Mention the sale once." not in seen
    assert "Stays." in seen


async def test_ttl_context_expires_out_of_the_chat_context(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "x1", "context": "Flash sale for 0.2s.", "ttl_s": 0.2}
    )
    await harness.backend.request({"type": "add_context", "id": "x2", "context": "Forever."})
    assert harness.context_messages() == ["Flash sale for 0.2s.", "Forever."]
    await wait_until(lambda: harness.context_messages() == ["Forever."], timeout=3)
    assert len(harness.plugin.context_store) == 1


async def test_remove_context_by_key(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "key": "cart", "context": "Cart has 3 items."}
    )
    removed = await harness.backend.request({"type": "remove_context", "id": "r1", "key": "cart"})
    assert removed["message"] == "Context removed successfully"
    assert removed["data"]["removed"] is True
    assert harness.context_messages() == []

    again = await harness.backend.request({"type": "remove_context", "id": "r2", "key": "cart"})
    assert again["success"] is True
    assert again["data"]["removed"] is False


async def test_budget_evicts_oldest_unkeyed_first(make_harness: HarnessFactory) -> None:
    from imaginex_context_plugin import ContextBudget

    harness: Harness = await make_harness(context_budget=ContextBudget(max_entries=3))
    await harness.backend.request(
        {"type": "add_context", "id": "k", "key": "profile", "context": "profile"}
    )
    for i in range(4):
        await harness.backend.request({"type": "add_context", "id": f"u{i}", "context": f"u{i}"})
    assert harness.context_messages() == ["profile", "u2", "u3"]


async def test_context_too_large_for_the_budget_is_refused(make_harness: HarnessFactory) -> None:
    from imaginex_context_plugin import ContextBudget

    harness: Harness = await make_harness(context_budget=ContextBudget(max_chars=10))
    ack = await harness.backend.request({"type": "add_context", "id": "big", "context": "x" * 11})
    assert ack["error"] == "VALIDATION_ERROR"
    assert "budget" in ack["message"]
    assert harness.context_messages() == []


async def test_context_keeps_keys_across_several_handoffs(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "key": "tier", "context": "Gold."}
    )
    for n in range(4):
        harness.session.update_agent(Agent(instructions=f"agent {n}"))
        await wait_until(lambda n=n: harness.session.current_agent.instructions == f"agent {n}")
        expected = "Gold." if n == 0 else f"Gold {n - 1}."
        await wait_until(lambda expected=expected: harness.context_messages() == [expected])
        await harness.backend.request(
            {"type": "add_context", "id": f"k{n}", "key": "tier", "context": f"Gold {n}."}
        )
        assert harness.context_messages() == [f"Gold {n}."]


# ---------------------------------------------------------------------------------------------
# get_state


async def test_get_state_reports_agent_user_and_context(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "key": "order", "context": "Order #9.", "ttl_s": 60}
    )
    await harness.backend.request({"type": "speak", "id": "s1", "message": LONG})
    await harness.backend.event("speech_started", "s1")
    ack = await harness.backend.request({"type": "get_state", "id": "g1"})
    state: dict[str, Any] = ack["data"]["state"]

    assert ack["message"] == "State retrieved successfully"
    assert state["agent_state"] == "speaking"
    assert state["user_state"] == "listening"
    assert state["current_agent"] == harness.session.current_agent.id
    [entry] = state["context_entries"]
    assert entry["key"] == "order"
    assert entry["chars"] == len("Order #9.")
    assert entry["role"] == "system"
    assert 0 < entry["expires_in_s"] <= 60
    assert entry["request_id"] == "c1"
    assert state["context_chars"] == len("Order #9.")
    assert state["pending_speeches"] == [(await harness.backend.ack_for("s1"))["data"]["speech_id"]]


@pytest.mark.parametrize("message_type", ["speak", "add_context"])
async def test_text_only_sessions_work_too(make_harness: HarnessFactory, message_type: str) -> None:
    harness: Harness = await make_harness(text_only=True)
    ack = await harness.backend.request({"type": message_type, "id": "t", "message": "Text."})
    assert ack["success"] is True
    if message_type == "speak":
        finished = await harness.backend.event("speech_finished", "t")
        assert finished["interrupted"] is False
        assert harness.tts.texts == []


async def test_a_speech_that_fails_is_reported_as_failed(make_harness: HarnessFactory) -> None:
    from tests.fakes import UnreachableLLM

    harness: Harness = await make_harness(llm_model=UnreachableLLM())
    ack = await harness.backend.request(
        {"type": "speak", "id": "f", "instructions": "Greet the user."}
    )
    assert ack["success"] is True
    finished = await harness.backend.event("speech_finished", "f")
    assert finished["failed"] is True
    assert harness.tts.texts == []


async def test_a_repeated_get_state_id_gets_the_current_state(harness: Harness) -> None:
    first = await harness.backend.request({"type": "get_state", "id": "g"})
    await harness.backend.request({"type": "add_context", "id": "c", "context": "New."})
    await harness.backend.send({"type": "get_state", "id": "g"})
    second = await harness.backend.ack_for("g", nth=2)
    assert "duplicate" not in second
    assert first["data"]["state"]["context_chars"] == 0
    assert second["data"]["state"]["context_chars"] == len("New.")


@pytest.mark.parametrize(("recoverable", "failed"), [(False, True), (True, None)])
async def test_an_unrecoverable_tts_error_marks_the_speech_failed(
    harness: Harness, recoverable: bool, failed: bool | None
) -> None:
    import time

    from livekit.agents import tts as lk_tts
    from livekit.agents.voice.events import ErrorEvent

    await harness.backend.request({"type": "speak", "id": "t", "message": LONG})
    await harness.backend.event("speech_started", "t")
    # how the session reports a TTS provider failing mid-speech (a real one, driven to fail,
    # trips a CPython 3.11.7 recursion-counter bug in livekit's error path)
    error = lk_tts.TTSError(
        timestamp=time.time(), label="tts", error=RuntimeError("down"), recoverable=recoverable
    )
    harness.session.emit("error", ErrorEvent(error=error, source=harness.tts))
    finished = await harness.backend.event("speech_finished", "t")
    assert finished.get("failed") is failed
