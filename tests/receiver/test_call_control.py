"""Live call control (protocol v1.1) on a real AgentSession: end_call, end_call_after, interrupt,
cancel, update_io, update/reset_instructions, user_message, add_to_history, get_history."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit.agents import Agent
from livekit.agents.testing import fake_job_context

from imaginex_context_plugin import ContextPlugin, sign_request
from imaginex_context_plugin.protocol import MAX_PAYLOAD_BYTES
from imaginex_context_plugin.receiver import call_end as call_end_module
from tests.conftest import BACKEND_IDENTITY, SERVER_SECRET, Harness, HarnessFactory
from tests.helpers import wait_until
from tests.receiver.test_subscribe import _StallingTransport

LONG = "This is a long announcement that keeps the agent talking for a while. " * 3
ALL = {"backend": {"*"}}


async def _closed(harness: Harness) -> asyncio.Future[None]:
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(_: object) -> None:
        if not closed.done():
            closed.set_result(None)

    harness.session.once("close", on_close)
    return closed


async def _one_playing_one_queued(
    harness: Harness, playing: dict[str, Any], queued: dict[str, Any]
) -> None:
    """Speak ``playing`` and ``queued`` behind it; back once ``playing`` has started."""
    await harness.backend.request({"type": "speak", **playing})
    await harness.backend.request({"type": "speak", **queued})
    await harness.backend.event("speech_started", playing["id"])


# ---------------------------------------------------------------------------------------------
# end_call


async def test_end_call_closes_the_session_after_the_ack(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    closed = await _closed(harness)
    ack = await harness.backend.request({"type": "end_call", "id": "e", "reason": "done"})
    assert ack["success"] is True
    assert ack["data"]["context_type"] == "end_call"
    await asyncio.wait_for(closed, 5)
    late = await harness.backend.request({"type": "speak", "id": "late", "message": "hi"})
    assert (late["error"], late["message"]) == ("NOT_READY", "The call has ended.")
    state = await harness.backend.request({"type": "get_state", "id": "s"})
    assert state["error"] == "NOT_READY"


async def test_end_call_after_speech_lets_what_plays_and_is_queued_finish(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    closed = await _closed(harness)
    await _one_playing_one_queued(
        harness, {"id": "a", "message": LONG}, {"id": "b", "message": "Goodbye."}
    )
    await harness.backend.request({"type": "end_call", "id": "e"})
    # queued behind the end: refused, never spoken
    refused = await harness.backend.request({"type": "speak", "id": "c", "message": "More."})
    assert refused["error"] == "NOT_READY"
    first = await harness.backend.event("speech_finished", "a")
    second = await harness.backend.event("speech_finished", "b")
    await asyncio.wait_for(closed, 10)
    assert first["interrupted"] is False
    assert second["interrupted"] is False
    assert "More." not in harness.tts.texts


async def test_end_call_now_cuts_forced_speech_and_drops_the_queue(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    closed = await _closed(harness)
    await _one_playing_one_queued(
        harness,
        {"id": "a", "message": LONG, "allow_interruptions": False},
        {"id": "b", "message": "Queued."},
    )
    ack = await harness.backend.request({"type": "end_call", "id": "e", "after_speech": False})
    assert ack["success"] is True
    cut = await harness.backend.event("speech_finished", "a")
    dropped = await harness.backend.event("speech_finished", "b")
    await asyncio.wait_for(closed, 5)
    assert cut["interrupted"] is True
    assert cut["cancelled"] is True
    assert dropped["cancelled"] is True
    assert "Queued." not in harness.tts.texts


async def test_the_ack_comes_before_the_shutdown(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    order: list[str] = []
    harness.session.on("close", lambda _: order.append("close"))
    await harness.backend.send({"type": "end_call", "id": "e", "after_speech": False})
    await harness.backend.ack_for("e")
    order.append("ack")
    await wait_until(lambda: "close" in order, "the session to close")
    assert order == ["ack", "close"]


async def test_end_call_listeners_hear_the_reason(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    reasons: list[str] = []
    harness.plugin.add_call_end_listener(reasons.append)
    await harness.backend.request({"type": "end_call", "id": "e", "reason": "resolved"})
    await wait_until(lambda: reasons == ["resolved"], "the listener")


async def test_a_call_end_listener_added_before_start_hears_the_reason(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(permissions=ALL, start_plugin=False)
    reasons: list[str] = []
    harness.plugin.add_call_end_listener(reasons.append)
    await harness.plugin.start(harness.session, harness.agent_room)
    await harness.backend.request({"type": "end_call", "id": "e"})
    await wait_until(lambda: reasons == ["end_call"], "the listener")


async def test_subscribers_get_call_ended_with_the_reason(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    sub = await harness.backend.request({"type": "subscribe", "id": "s", "events": ["agent_state"]})
    assert sub["success"] is True
    await harness.backend.request({"type": "end_call", "id": "e", "reason": "resolved"})
    ended = await harness.backend.wait_for(lambda m: m["type"] == "call_ended")
    assert ended["reason"] == "resolved"


async def test_speak_end_call_after_hangs_up_only_after_playout(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    closed = await _closed(harness)
    await _one_playing_one_queued(
        harness,
        {"id": "bye", "message": LONG, "end_call_after": True},
        {"id": "after", "message": "Too late."},
    )
    assert not closed.done()
    done = await harness.backend.event("speech_finished", "bye")
    assert done["interrupted"] is False
    assert "call_kept" not in done
    assert done["played_s"] >= harness.tts.duration_for(LONG) - 0.05
    dropped = await harness.backend.event("speech_finished", "after")
    assert dropped["cancelled"] is True
    await asyncio.wait_for(closed, 5)
    assert "Too late." not in harness.tts.texts


async def test_speak_end_call_after_cut_keeps_the_call(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    await harness.backend.request(
        {"type": "speak", "id": "bye", "message": LONG, "end_call_after": True}
    )
    await harness.backend.event("speech_started", "bye")
    harness.session.interrupt()  # the user barges in
    done = await harness.backend.event("speech_finished", "bye")
    assert done["interrupted"] is True
    assert done["call_kept"] is True
    ok = await harness.backend.request({"type": "speak", "id": "more", "message": "Still here."})
    assert ok["success"] is True
    await harness.backend.event("speech_finished", "more")


# ---------------------------------------------------------------------------------------------
# interrupt, cancel


async def test_interrupt_cuts_current_and_queued_speech(harness: Harness) -> None:
    await _one_playing_one_queued(
        harness, {"id": "a", "message": LONG}, {"id": "b", "message": "Queued."}
    )
    ack = await harness.backend.request({"type": "interrupt", "id": "i"})
    assert ack["data"]["interrupted"] is True
    cut = await harness.backend.event("speech_finished", "a")
    dropped = await harness.backend.event("speech_finished", "b")
    assert cut["interrupted"] is True
    assert cut["played_s"] < harness.tts.duration_for(LONG)
    assert dropped["interrupted"] is True
    idle = await harness.backend.request({"type": "interrupt", "id": "i2"})
    assert idle["data"]["interrupted"] is False


async def test_interrupt_without_force_is_busy_and_cuts_nothing(harness: Harness) -> None:
    await _one_playing_one_queued(
        harness,
        {"id": "legal", "message": LONG, "allow_interruptions": False},
        {"id": "next", "message": "Next."},
    )
    busy = await harness.backend.request({"type": "interrupt", "id": "i"})
    assert busy["error"] == "BUSY"
    legal = await harness.backend.event("speech_finished", "legal")
    nxt = await harness.backend.event("speech_finished", "next")
    assert legal["interrupted"] is False
    assert nxt["interrupted"] is False


async def test_interrupt_with_force_cuts_protected_speech(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "speak", "id": "legal", "message": LONG, "allow_interruptions": False}
    )
    await harness.backend.event("speech_started", "legal")
    ack = await harness.backend.request({"type": "interrupt", "id": "i", "force": True})
    assert ack["success"] is True
    assert (await harness.backend.event("speech_finished", "legal"))["interrupted"] is True


async def test_cancel_removes_queued_and_cuts_playing_speech(harness: Harness) -> None:
    await _one_playing_one_queued(
        harness,
        {"id": "a", "message": LONG, "allow_interruptions": False},
        {"id": "b", "message": "Queued."},
    )
    queued = await harness.backend.request({"type": "cancel", "id": "c1", "target_id": "b"})
    assert queued["data"]["cancelled"] == "queued"
    assert queued["data"]["target_id"] == "b"
    dropped = await harness.backend.event("speech_finished", "b")
    assert (dropped["interrupted"], dropped["cancelled"]) == (True, True)
    playing = await harness.backend.request({"type": "cancel", "id": "c2", "target_id": "a"})
    assert playing["data"]["cancelled"] == "playing"
    cut = await harness.backend.event("speech_finished", "a")
    assert (cut["interrupted"], cut["cancelled"]) == (True, True)
    assert "Queued." not in harness.tts.texts
    gone = await harness.backend.request({"type": "cancel", "id": "c3", "target_id": "a"})
    assert gone["error"] == "NOT_FOUND"
    unknown = await harness.backend.request({"type": "cancel", "id": "c4", "target_id": "zz"})
    assert unknown["error"] == "NOT_FOUND"


async def test_cancel_only_reaches_the_senders_own_speech(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(allowed_identities=["backend", "crm"])
    other = harness.backend_as("crm")
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    ack = await other.request({"type": "cancel", "id": "c", "target_id": "a"})
    assert ack["error"] == "NOT_FOUND"


# ---------------------------------------------------------------------------------------------
# update_io


async def test_mute_stops_audio_frames_and_unmute_resumes(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    audio = harness.audio
    assert audio is not None
    muted = await harness.backend.request({"type": "update_io", "id": "m", "agent_audio": False})
    assert muted["data"]["io"] == {"agent_audio": False, "user_audio": True, "transcription": True}
    state = await harness.backend.request({"type": "get_state", "id": "s1"})
    assert state["data"]["state"]["io"]["agent_audio"] is False
    before = audio.frames_captured
    await harness.backend.request({"type": "speak", "id": "quiet", "message": "Not heard."})
    await harness.backend.event("speech_finished", "quiet")
    assert audio.frames_captured == before
    unmuted = await harness.backend.request({"type": "update_io", "id": "u", "agent_audio": True})
    assert unmuted["data"]["io"]["agent_audio"] is True
    await harness.backend.request({"type": "speak", "id": "loud", "message": "Heard again."})
    await harness.backend.event("speech_finished", "loud")
    assert audio.frames_captured > before


async def test_update_io_switches_listening_and_transcription(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    ack = await harness.backend.request(
        {"type": "update_io", "id": "x", "user_audio": False, "transcription": False}
    )
    assert ack["data"]["io"] == {"agent_audio": True, "user_audio": False, "transcription": False}
    assert harness.session.input.audio_enabled is False
    assert harness.session.output.transcription_enabled is False


# ---------------------------------------------------------------------------------------------
# instructions


class _Other(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are the billing agent.")


async def test_instructions_append_replace_reset_and_survive_a_handoff(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(
        permissions=ALL, agent=Agent(instructions="You are the support agent.")
    )
    session = harness.session
    ack = await harness.backend.request(
        {"type": "update_instructions", "id": "u1", "instructions": "Be brief."}
    )
    assert ack["data"]["instructions_mode"] == "append"
    assert session.current_agent.instructions == "You are the support agent.\n\nBe brief."
    await harness.backend.request(
        {"type": "update_instructions", "id": "u2", "instructions": "Speak French."}
    )
    assert session.current_agent.instructions == (
        "You are the support agent.\n\nBe brief.\n\nSpeak French."
    )
    session.update_agent(_Other())
    await wait_until(
        lambda: session.current_agent.instructions
        == "You are the billing agent.\n\nBe brief.\n\nSpeak French.",
        "the new agent to be steered",
    )
    await harness.backend.request(
        {"type": "update_instructions", "id": "u3", "instructions": "Only say yes.",
         "mode": "replace"}
    )
    assert session.current_agent.instructions == "Only say yes."
    reset = await harness.backend.request({"type": "reset_instructions", "id": "r"})
    assert reset["success"] is True
    assert session.current_agent.instructions == "You are the billing agent."


OWN = "You are the support agent."
CHUNK = "Mind the customer's order history. " * 400  # 14,000 characters, one packet


def _steer(request_id: str, text: str, mode: str = "append") -> dict[str, Any]:
    return {"type": "update_instructions", "id": request_id, "instructions": text, "mode": mode}


async def test_appended_instructions_stay_bounded_and_a_refusal_changes_nothing(
    make_harness: HarnessFactory,
) -> None:
    # the reproduction: 70 appends of 14,000 characters once left ~980,000
    assert len(CHUNK) == 14_000
    harness: Harness = await make_harness(
        permissions=ALL, agent=Agent(instructions=OWN), rate_limit=None
    )
    agent = harness.session.current_agent
    answers = [await harness.backend.request(_steer(f"a{n}", CHUNK)) for n in range(70)]
    assert [a["success"] for a in answers[:2]] == [True, True]
    refused = answers[2:]
    assert {(a["success"], a["error"]) for a in refused} == {(False, "VALIDATION_ERROR")}
    assert refused[0]["message"] == (
        "With these, the instructions added to the agent would be 42,000 characters, over this "
        "agent's limit of 32,000 characters; nothing was changed. Replace them (mode "
        "'replace') or send reset_instructions first."
    )
    assert [a["id"] for a in refused] == [f"a{n}" for n in range(2, 70)]
    assert agent.instructions == "\n\n".join([OWN, CHUNK, CHUNK])
    assert harness.plugin.stats.errors["VALIDATION_ERROR"] == 68

    # up to the limit exactly, one character more is refused
    ok = await harness.backend.request(_steer("fill", "x" * 4_000))
    assert ok["success"] is True
    over = await harness.backend.request(_steer("over", "y"))
    assert over["error"] == "VALIDATION_ERROR"
    assert agent.instructions == "\n\n".join([OWN, CHUNK, CHUNK, "x" * 4_000])

    # a replace counts from scratch, and counts too; reset starts again
    replaced = await harness.backend.request(_steer("r", CHUNK, "replace"))
    assert replaced["success"] is True
    assert agent.instructions == CHUNK
    assert (await harness.backend.request(_steer("r+1", CHUNK)))["success"] is True
    assert (await harness.backend.request(_steer("r+2", CHUNK)))["error"] == "VALIDATION_ERROR"
    assert agent.instructions == "\n\n".join([CHUNK, CHUNK])
    assert (await harness.backend.request({"type": "reset_instructions", "id": "z"}))["success"]
    assert agent.instructions == OWN
    assert (await harness.backend.request(_steer("again", CHUNK)))["success"] is True


async def test_the_instructions_limit_is_an_option_and_a_replace_over_it_is_refused(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(
        permissions=ALL, agent=Agent(instructions=OWN), max_instructions_chars=100
    )
    agent = harness.session.current_agent
    assert (await harness.backend.request(_steer("a", "Be brief.")))["success"] is True
    steered = agent.instructions
    too_long = await harness.backend.request(_steer("r", "z" * 101, "replace"))
    assert (too_long["error"], too_long["message"]) == (
        "VALIDATION_ERROR",
        "The instructions are 101 characters, over this agent's limit of 100 characters; "
        "nothing was changed.",
    )
    assert agent.instructions == steered  # the append before it still holds
    # the refused replace did not clear the appended text either: 9 + 92 > 100
    assert (await harness.backend.request(_steer("b", "w" * 92)))["error"] == "VALIDATION_ERROR"
    assert (await harness.backend.request(_steer("c", "w" * 91)))["success"] is True


@pytest.mark.parametrize("limit", [0, -1])
def test_the_instructions_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="max_instructions_chars must be at least 1"):
        ContextPlugin(max_instructions_chars=limit, trust_server=False)


def test_the_default_instructions_limit_is_the_context_budget() -> None:
    from imaginex_context_plugin import ContextBudget
    from imaginex_context_plugin.receiver import DEFAULT_MAX_INSTRUCTIONS_CHARS

    assert DEFAULT_MAX_INSTRUCTIONS_CHARS == ContextBudget().max_chars == 32_000


# ---------------------------------------------------------------------------------------------
# user_message, add_to_history, get_history


async def test_user_message_is_in_the_history_and_gets_a_reply(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(replies=["Your order ships today."])
    ack = await harness.backend.request(
        {"type": "user_message", "id": "u", "text": "Where is my order?"}
    )
    assert ack["data"]["method"] == "generate_reply"
    done = await harness.backend.event("speech_finished", "u")
    assert done["speech_id"] == ack["data"]["speech_id"]
    texts = [(m.role, m.text_content) for m in harness.session.history.messages()]
    assert ("user", "Where is my order?") in texts
    assert ("assistant", "Your order ships today.") in texts


async def test_user_message_without_a_reply_reaches_the_next_turn(harness: Harness) -> None:
    ack = await harness.backend.request(
        {"type": "user_message", "id": "u", "text": "I filled in the form.", "respond": False}
    )
    assert "speech_id" not in ack["data"]
    assert harness.llm.calls == []
    history = [(m.role, m.text_content) for m in harness.session.history.messages()]
    assert ("user", "I filled in the form.") in history
    await harness.backend.request({"type": "speak", "id": "r", "instructions": "Answer."})
    await harness.backend.event("speech_finished", "r")
    seen = [m.text_content for m in harness.llm.calls[-1].messages()]
    assert "I filled in the form." in seen


async def test_user_message_with_interrupt_cuts_current_speech(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.event("speech_started", "a")
    await harness.backend.request(
        {"type": "user_message", "id": "u", "text": "Stop, please.", "interrupt": True}
    )
    assert (await harness.backend.event("speech_finished", "a"))["interrupted"] is True
    await harness.backend.event("speech_finished", "u")


async def test_add_to_history_false_keeps_speech_out_of_history(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "speak", "id": "f", "message": "One moment please.", "add_to_history": False}
    )
    await harness.backend.request({"type": "speak", "id": "k", "message": "Here it is."})
    await harness.backend.event("speech_finished", "k")
    said = [m.text_content for m in harness.session.history.messages()]
    assert "Here it is." in said
    assert "One moment please." not in said
    assert "One moment please." in harness.tts.texts


async def test_get_history_returns_the_newest_items(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL, replies=["First.", "Second."])
    for i in range(2):
        await harness.backend.request({"type": "user_message", "id": f"u{i}", "text": f"Q{i}"})
        await harness.backend.event("speech_finished", f"u{i}")
    ack = await harness.backend.request({"type": "get_history", "id": "h", "limit": 3})
    items = ack["data"]["history"]
    assert [(i["role"], i["text"]) for i in items] == [
        ("assistant", "First."), ("user", "Q1"), ("assistant", "Second."),
    ]
    assert "truncated" not in ack["data"]
    assert all(i["created_at"].endswith("Z") and i["interrupted"] is False for i in items)


async def test_get_history_fits_one_packet(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions=ALL)
    for i in range(8):
        harness.session.history.add_message(role="user", content=f"{i} " + "x" * 3000)
    ack: dict[str, Any] = await harness.backend.request(
        {"type": "get_history", "id": "h", "limit": 200}
    )
    assert ack["data"]["truncated"] is True
    items = ack["data"]["history"]
    assert 0 < len(items) < 8
    assert items[-1]["text"].startswith("7 ")  # the newest ones
    assert len(json.dumps(ack, ensure_ascii=False).encode()) <= MAX_PAYLOAD_BYTES


# ---------------------------------------------------------------------------------------------
# permissions


async def test_sensitive_types_need_a_grant(harness: Harness) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("end_call", {}), ("update_io", {"agent_audio": False}),
        ("update_instructions", {"instructions": "x"}), ("reset_instructions", {}),
        ("get_history", {}),
    ]
    for kind, extra in cases:
        ack = await harness.backend.request({"type": kind, "id": kind, **extra})
        assert ack["error"] == "UNAUTHORIZED"
        assert f"'{kind}'" in ack["message"]
    allowed: list[tuple[str, dict[str, Any]]] = [
        ("interrupt", {}), ("user_message", {"text": "hi"}),
    ]
    for kind, extra in allowed:
        ack = await harness.backend.request({"type": kind, "id": kind, **extra})
        assert ack["success"] is True
    missing = await harness.backend.request({"type": "cancel", "id": "c", "target_id": "x"})
    assert missing["error"] == "NOT_FOUND"  # allowed: only nothing to cancel
    assert harness.session.output.audio_enabled is True


async def test_permissions_given_are_the_whole_truth(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(
        permissions={"backend": {"speak"}, "*": {"get_state"}}
    )
    assert (await harness.backend.request({"type": "get_state", "id": "s"}))["success"] is True
    refused = await harness.backend.request({"type": "add_context", "id": "a", "context": "x"})
    assert refused["error"] == "UNAUTHORIZED"
    interrupt = await harness.backend.request({"type": "interrupt", "id": "i"})
    assert interrupt["error"] == "UNAUTHORIZED"


TYPE_LIST = (
    "speak, add_context, remove_context, get_state, end_call, interrupt, cancel, update_io, "
    "update_instructions, reset_instructions, user_message, get_history, subscribe, unsubscribe"
)
BAD_PERMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    # (case, permissions, the sentence's start); each would otherwise grant nothing, silently
    ("the CLI's hyphen spelling", {"backend": {"end-call"}},
     "permissions['backend'] names 'end-call', which is not a message type "
     "(did you mean 'end_call'?)"),
    ("a gateway path's spelling", {"*": {"speak", "update-instructions"}},
     "permissions['*'] names 'update-instructions', which is not a message type "
     "(did you mean 'update_instructions'?)"),
    ("upper case", {"<server>": {"End_Call"}},
     "permissions['<server>'] names 'End_Call', which is not a message type "
     "(did you mean 'end_call'?)"),
    ("a typo", {"backend": {"subscibe"}},
     "permissions['backend'] names 'subscibe', which is not a message type "
     "(did you mean 'subscribe'?)"),
    ("nothing like a type", {"backend": {"speak", "everything"}},
     "permissions['backend'] names 'everything', which is not a message type; use any of"),
    ("the wildcard as a list", {"backend": ["all"]},
     "permissions['backend'] names 'all', which is not a message type; use any of"),
    ("not a string", {"backend": {1}},
     "permissions['backend'] names 1, which is not a message type; use any of"),
]


@pytest.mark.parametrize(
    ("permissions", "message"),
    [case[1:] for case in BAD_PERMISSIONS],
    ids=[case[0] for case in BAD_PERMISSIONS],
)
def test_permissions_naming_an_unknown_type_are_refused_at_construction(
    permissions: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="which is not a message type") as raised:
        ContextPlugin(permissions=permissions, trust_server=False)
    assert str(raised.value).startswith(message)
    assert str(raised.value).endswith(f"use any of: {TYPE_LIST}, or '*' for all of them.")


def test_every_type_and_the_wildcard_may_be_granted() -> None:
    ContextPlugin(permissions={"backend": set(TYPE_LIST.split(", ")), "*": {"*"}},
                  trust_server=False)
    ContextPlugin(permissions={"backend": set()}, trust_server=False)  # grants nothing, knowingly


async def test_a_signed_message_counts_as_its_relay(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(
        secret="shared-secret", permissions={"backend": {"get_history"}}
    )
    relay = harness.backend_as("relay")
    signed = sign_request(json.dumps({"type": "get_history", "id": "h"}), "shared-secret")
    await relay.send(signed)
    refused = await relay.ack_for("h")
    assert refused["error"] == "UNAUTHORIZED"
    await harness.backend.send(sign_request(json.dumps({"type": "get_history", "id": "h2"}),
                                            "shared-secret"))
    assert (await harness.backend.ack_for("h2"))["success"] is True


async def test_server_api_packets_count_as_server(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions={"<server>": {"end_call"}})
    closed = await _closed(harness)
    harness.plugin.ingest(
        sign_request(json.dumps({"type": "end_call", "id": "e"}), SERVER_SECRET),
        sender_identity=None,
    )
    await asyncio.wait_for(closed, 5)


# ---------------------------------------------------------------------------------------------
# inside a job: the room is deleted only after the subscribers' last events went out


async def test_in_a_job_the_room_is_deleted_only_after_call_ended_went_out(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the linger is for the real wire; here only the order is checked
    monkeypatch.setattr(call_end_module, "LINGER_S", 0.0)
    transport = _StallingTransport(BACKEND_IDENTITY)
    harness = await make_harness(
        permissions={BACKEND_IDENTITY: {"*"}},
        start_plugin=False,
        ack_transport_for=transport.bind,
    )

    with fake_job_context(room=harness.agent_room) as job_ctx:

        def deletion_scheduled() -> bool:
            return "_delete_room" in [cb.__name__ for cb in job_ctx._shutdown_callbacks]

        try:
            await harness.plugin.start(harness.session, harness.agent_room)
            await harness.backend.request(
                {"type": "subscribe", "id": "s", "events": ["agent_state"]}
            )
            ack = await harness.backend.request({"type": "end_call", "id": "e", "reason": "Done"})
            assert ack["success"] is True
            await asyncio.sleep(0.3)  # the session has closed by now; call_ended is stalled
            assert not deletion_scheduled()
            assert not [m for m in harness.backend.received if m["type"] == "call_ended"]

            transport.release.set()
            ended = await harness.backend.wait_for(lambda m: m["type"] == "call_ended")
            await wait_until(deletion_scheduled, "the room's deletion to be scheduled")
        finally:
            # the real job runner removes this at shutdown; fake_job_context leaves it behind
            job_ctx._tempdir.cleanup()

    assert ended["reason"] == "Done"


async def test_in_a_job_a_stalled_subscriber_delays_the_room_deletion_boundedly(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_end_module, "LINGER_S", 0.0)
    monkeypatch.setattr(call_end_module, "FLUSH_TIMEOUT_S", 0.3)
    transport = _StallingTransport(BACKEND_IDENTITY)
    harness = await make_harness(
        permissions={BACKEND_IDENTITY: {"*"}},
        start_plugin=False,
        ack_transport_for=transport.bind,
    )

    with fake_job_context(room=harness.agent_room) as job_ctx:
        try:
            await harness.plugin.start(harness.session, harness.agent_room)
            await harness.backend.request(
                {"type": "subscribe", "id": "s", "events": ["agent_state"]}
            )
            await harness.backend.request({"type": "end_call", "id": "e"})
            await wait_until(
                lambda: "_delete_room" in [cb.__name__ for cb in job_ctx._shutdown_callbacks],
                "the room's deletion despite the stalled subscriber",
                timeout=3.0,
            )
        finally:
            transport.release.set()
            job_ctx._tempdir.cleanup()
