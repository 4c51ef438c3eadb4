"""Outcomes that always arrive (protocol v1.3), on the real AgentSession: every speak, and every
reply a message triggers, ends with exactly one terminal event, ``speech_finished`` or
``speech_failed{reason}`` (``not_started`` by ``start_within_s``, ``tts_error``, ``llm_error``,
``session_closed``, ``cancelled``); a v1.2 sender gets the ``speech_finished`` it knows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents import tts as lk_tts
from livekit.agents.voice.events import ErrorEvent

from imaginex_context_plugin.protocol import DEFAULT_START_WITHIN_S
from tests.conftest import BACKEND_IDENTITY, Harness, HarnessFactory
from tests.fakes import UnreachableLLM
from tests.helpers import wait_until

LONG = "This is a long announcement that keeps the agent talking for a while. " * 3
V13 = {"protocol": "1.3"}
TERMINAL = ("speech_finished", "speech_failed")


def terminals(harness: Harness, request_id: str) -> list[dict[str, Any]]:
    return [
        m for m in harness.backend.received if m["type"] in TERMINAL and m["id"] == request_id
    ]


async def outcome(harness: Harness, request_id: str) -> dict[str, Any]:
    """The one terminal event of ``request_id`` (and a moment more to catch a second one)."""
    await wait_until(lambda: terminals(harness, request_id), f"the end of {request_id}")
    await asyncio.sleep(0.05)
    [event] = terminals(harness, request_id)
    return event


async def speak(harness: Harness, rid: str, text: str = "Hello.", **fields: Any) -> dict[str, Any]:
    ack = await harness.backend.request(
        {"type": "speak", "id": rid, "message": text, **V13, **fields}
    )
    assert ack["success"] is True, ack
    return ack


async def test_a_speech_that_plays_ends_with_speech_finished(harness: Harness) -> None:
    await speak(harness, "s1")
    event = await outcome(harness, "s1")
    assert event["type"] == "speech_finished"
    assert event["interrupted"] is False
    assert event["played_s"] > 0
    assert not {"failed", "reason", "cancelled"} & set(event)
    started = await harness.backend.event("speech_started", "s1")
    assert started["seq"] < event["seq"]


async def test_not_started_in_time_is_cancelled_and_never_plays_late(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(speed=1.0)
    # a protected speech holds the floor for about a second
    await speak(harness, "long", LONG, allow_interruptions=False)
    await harness.backend.event("speech_started", "long")
    t0 = time.monotonic()
    await speak(harness, "late", "Your table is ready.", start_within_s=0.2)
    event = await outcome(harness, "late")
    assert event["type"] == "speech_failed"
    assert event["reason"] == "not_started"
    assert event["started"] is False
    assert time.monotonic() - t0 < 1.0  # told at the deadline, not after the long speech
    # the long one plays out; the cancelled one never does
    assert (await outcome(harness, "long"))["type"] == "speech_finished"
    await asyncio.sleep(0.2)
    assert "Your table is ready." not in harness.tts.texts
    assert not [m for m in harness.backend.received if m["type"] == "speech_started"
                and m["id"] == "late"]


async def test_a_v1_3_sender_gets_the_default_start_deadline_a_v1_2_sender_none(
    harness: Harness,
) -> None:
    assert DEFAULT_START_WITHIN_S == 30.0
    await speak(harness, "s1")
    tracks = harness.plugin._parts.speeches._tracks  # the deadline timer, read where it lives
    speech_id = (await harness.backend.ack_for("s1"))["data"]["speech_id"]
    track = tracks.get(speech_id)
    if track is not None:  # still going
        assert track.deadline is not None or track.started
    await outcome(harness, "s1")
    ack = await harness.backend.request({"type": "speak", "id": "old", "message": "Hi."})
    old = tracks.get(ack["data"]["speech_id"])
    assert old is None or old.deadline is None


async def test_an_unrecoverable_tts_error_is_a_tts_error(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(speed=1.0)
    await speak(harness, "t", LONG)
    await harness.backend.event("speech_started", "t")
    # how the session reports a TTS provider failing mid-speech (see test_speech_control)
    error = lk_tts.TTSError(
        timestamp=time.time(), label="tts", error=RuntimeError("down"), recoverable=False
    )
    harness.session.emit("error", ErrorEvent(error=error, source=harness.tts))
    await harness.backend.request({"type": "interrupt", "id": "i", "force": True})
    event = await outcome(harness, "t")
    assert (event["type"], event["reason"], event["started"]) == (
        "speech_failed", "tts_error", True
    )


async def test_a_failing_model_is_an_llm_error(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(llm_model=UnreachableLLM())
    ack = await harness.backend.request(
        {"type": "speak", "id": "f", "instructions": "Greet the user.", **V13}
    )
    assert ack["success"] is True
    event = await outcome(harness, "f")
    assert (event["type"], event["reason"], event["started"]) == (
        "speech_failed", "llm_error", False
    )


@pytest.mark.parametrize("who", ["session", "plugin"])
async def test_a_session_that_closes_first_ends_every_speech(
    make_harness: HarnessFactory, who: str
) -> None:
    harness: Harness = await make_harness(speed=1.0)
    await speak(harness, "playing", LONG)
    await speak(harness, "queued", "After that.")
    await harness.backend.event("speech_started", "playing")
    if who == "session":
        await harness.session.aclose()
    else:
        await harness.plugin.aclose()
    for rid, started in (("playing", True), ("queued", False)):
        event = await outcome(harness, rid)
        assert (event["type"], event["reason"], event["started"]) == (
            "speech_failed", "session_closed", started
        )


async def test_cancelled_by_cancel_end_call_or_an_emptied_queue(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(speed=1.0, permissions={BACKEND_IDENTITY: {"*"}})
    await speak(harness, "a", LONG)
    await speak(harness, "b", "Queued one.")
    await speak(harness, "c", "Queued two.")
    await harness.backend.event("speech_started", "a")
    # the sender's cancel of a queued speech
    assert (await harness.backend.request({"type": "cancel", "id": "x", "target_id": "b"}))[
        "success"
    ]
    event = await outcome(harness, "b")
    assert (event["type"], event["reason"], event["started"]) == (
        "speech_failed", "cancelled", False
    )
    # an interrupt cuts the playing one (it played: finished, interrupted) and empties the queue
    await harness.backend.request({"type": "interrupt", "id": "i"})
    playing = await outcome(harness, "a")
    assert (playing["type"], playing["interrupted"]) == ("speech_finished", True)
    queued = await outcome(harness, "c")
    assert (queued["type"], queued["reason"]) == ("speech_failed", "cancelled")
    # an end_call that cuts at once
    await speak(harness, "d", LONG)
    await harness.backend.event("speech_started", "d")
    ack = await harness.backend.request({"type": "end_call", "id": "e", "after_speech": False})
    assert ack["success"] is True
    ended = await outcome(harness, "d")
    assert (ended["type"], ended["reason"], ended["started"]) == (
        "speech_failed", "cancelled", True
    )


async def test_replies_a_message_triggers_end_once_too(harness: Harness) -> None:
    ack = await harness.backend.request(
        {"type": "add_context", "id": "ctx", "context": "A note.", "trigger_reply": True, **V13}
    )
    assert ack["data"]["speech_id"]
    assert (await outcome(harness, "ctx"))["type"] == "speech_finished"
    ack = await harness.backend.request(
        {"type": "user_message", "id": "um", "text": "Where is my order?", **V13}
    )
    assert ack["success"] is True
    assert (await outcome(harness, "um"))["type"] == "speech_finished"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cancel", {"interrupted": True, "cancelled": True}),
        ("not_started", {"interrupted": True, "cancelled": True}),
        ("closed", {"interrupted": True, "reason": "shutdown"}),
    ],
)
async def test_a_v1_2_sender_gets_the_speech_finished_it_knows(
    make_harness: HarnessFactory, case: str, expected: dict[str, Any]
) -> None:
    harness: Harness = await make_harness(speed=1.0)
    await harness.backend.request(
        {"type": "speak", "id": "long", "message": LONG, "allow_interruptions": False}
    )
    await harness.backend.event("speech_started", "long")
    fields: dict[str, Any] = {"start_within_s": 0.1} if case == "not_started" else {}
    await harness.backend.request({"type": "speak", "id": "old", "message": "Hi.", **fields})
    if case == "cancel":
        await harness.backend.request({"type": "cancel", "id": "x", "target_id": "old"})
    elif case == "closed":
        await harness.plugin.aclose()
    event = await outcome(harness, "old")
    assert event["type"] == "speech_finished"
    assert {k: event.get(k) for k in expected} == expected
    assert "seq" in event  # numbered like every event; older senders ignore it
    assert not [m for m in harness.backend.received if m["type"] == "speech_failed"]
