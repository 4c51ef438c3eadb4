"""subscribe / unsubscribe: live session events on the real AgentSession, bounded per subscriber.

Transcripts come from a scripted STT (``tests/fakes/stt.py``) through the session's own audio
recognition; agent speech, states and history from ``speak`` on the fakes; tool calls from the
session's own ``function_tools_executed`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import llm
from livekit.agents.voice.events import FunctionToolsExecutedEvent

from imaginex_context_plugin import protocol
from imaginex_context_plugin.receiver import AckTransport
from imaginex_context_plugin.receiver import subscriber_feed as subscriber_feed_module
from imaginex_context_plugin.receiver import subscribers as subscribers_module
from imaginex_context_plugin.receiver.outbox import DRAIN_TIMEOUT_S
from tests.conftest import BACKEND_IDENTITY, Harness, HarnessFactory
from tests.fakes import start_session
from tests.fakes.stt import ScriptedSTT, SilentAudioInput
from tests.helpers import wait_until

ALL_EVENTS = list(protocol.SESSION_EVENT_TYPES)
GRANTED = {BACKEND_IDENTITY: {"*"}, "watcher": {"subscribe"}, "stalled": {"subscribe"}}
TRUSTED: dict[str, Any] = {"permissions": GRANTED, "allowed_identities": list(GRANTED)}


def events_of(harness: Harness, kind: str) -> list[dict[str, Any]]:
    return [m for m in harness.backend.received if m["type"] == kind]


async def subscribe(harness: Harness, rid: str = "sub", **fields: Any) -> dict[str, Any]:
    fields.setdefault("events", ALL_EVENTS)
    return await harness.backend.request({"type": "subscribe", "id": rid, **fields})


async def test_subscribe_needs_a_grant_and_unsubscribe_does_not(harness: Harness) -> None:
    ack = await subscribe(harness)
    assert ack["success"] is False
    assert ack["error"] == "UNAUTHORIZED"
    assert "'subscribe' permission" in ack["message"]
    ack = await harness.backend.request({"type": "unsubscribe", "id": "u"})
    assert ack["success"] is True
    assert ack["data"]["removed"] is False
    assert ack["data"]["context_type"] == "unsubscribe"


async def test_permissions_are_the_whole_truth(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(permissions={"*": {"subscribe"}})
    assert (await subscribe(harness))["success"] is True
    # v1 types are not in the grant: refused, and the message names the missing one
    ack = await harness.backend.request({"type": "speak", "id": "s", "message": "Hello"})
    assert ack["error"] == "UNAUTHORIZED"
    assert "'speak' permission" in ack["message"]


async def test_agent_speech_states_and_history_reach_the_subscriber(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**TRUSTED)
    ack = await subscribe(harness)
    assert ack["success"] is True
    assert ack["data"]["context_type"] == "subscribe"
    assert ack["data"]["events"] == ALL_EVENTS
    await harness.backend.request({"type": "speak", "id": "s1", "message": "Your order shipped."})
    await harness.backend.event("speech_finished", "s1")

    transcript = await harness.backend.wait_for(lambda m: m["type"] == "agent_transcript")
    assert transcript["text"] == "Your order shipped."
    assert transcript["interrupted"] is False
    speech_id = (await harness.backend.ack_for("s1"))["data"]["speech_id"]
    assert transcript["speech_id"] == speech_id
    await harness.backend.wait_for(
        lambda m: m["type"] == "agent_state" and m["new_state"] == "listening"
    )
    states = [(m["old_state"], m["new_state"]) for m in events_of(harness, "agent_state")]
    assert ("listening", "speaking") in states or ("idle", "speaking") in states
    item = await harness.backend.wait_for(lambda m: m["type"] == "conversation_item")
    assert item["item_type"] == "message"
    assert item["role"] == "assistant"
    assert item["text"] == "Your order shipped."
    for event in harness.backend.received:
        if event["type"] != "ack":
            assert "dropped" not in event
            assert event["timestamp"].endswith("Z")


async def test_an_interrupted_speech_is_reported_as_said_up_to_the_cut(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**TRUSTED, speed=1.0)
    await subscribe(harness, events=["agent_transcript"])
    await harness.backend.request(
        {"type": "speak", "id": "long", "message": "one two three four five six seven eight"}
    )
    await harness.backend.event("speech_started", "long")
    await asyncio.sleep(0.2)
    harness.session.interrupt()
    transcript = await harness.backend.wait_for(lambda m: m["type"] == "agent_transcript")
    assert transcript["interrupted"] is True
    assert not events_of(harness, "agent_state")  # not asked for


async def test_user_transcripts_from_the_stt_arrive_in_order(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(
        **TRUSTED, text_only=True, start_plugin=False
    )
    stt_model = ScriptedSTT()
    await _listen(harness, stt_model)
    watcher = harness.backend_as("watcher")
    assert (await subscribe(harness, events=["user_transcript"]))["success"] is True
    ack = await watcher.request(
        {"type": "subscribe", "id": "w", "events": ["user_transcript"], "interim": True}
    )
    assert ack["success"] is True

    stt_model.hear("hel", final=False)
    stt_model.hear("hello there")
    stt_model.hear("second thing")

    def texts(received: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        return [(m["text"], m["final"]) for m in received if m["type"] == "user_transcript"]

    await wait_until(lambda: len(texts(harness.backend.received)) == 2, "final transcripts")
    await wait_until(lambda: len(texts(watcher.received)) == 3, "interim and finals")
    assert texts(harness.backend.received) == [("hello there", True), ("second thing", True)]
    assert texts(watcher.received) == [
        ("hel", False), ("hello there", True), ("second thing", True)
    ]
    first = next(m for m in watcher.received if m["type"] == "user_transcript")
    assert first["language"] == "en"


async def _listen(harness: Harness, stt_model: ScriptedSTT) -> None:
    """Start the harness's plugin on a session with a microphone and an STT, as a worker's."""
    await harness.session.aclose()
    harness.session = await start_session(llm_model=harness.llm, stt=stt_model, text_only=True)
    harness.session.input.audio = SilentAudioInput()
    await harness.plugin.start(harness.session, harness.agent_room)
    await wait_until(lambda: stt_model.streams > 0, "the session to listen")


async def test_tool_calls_carry_arguments_only_when_asked(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(**TRUSTED)
    watcher = harness.backend_as("watcher")
    await subscribe(harness, events=["tool_call"], tool_arguments=True)
    await watcher.request({"type": "subscribe", "id": "w", "events": ["tool_call"]})
    call = llm.FunctionCall(call_id="c1", name="lookup_order", arguments='{"order": 42}')
    output = llm.FunctionCallOutput(call_id="c1", name="lookup_order", output="ok", is_error=False)
    harness.session.emit(
        "function_tools_executed",
        FunctionToolsExecutedEvent(function_calls=[call], function_call_outputs=[output]),
    )
    full = await harness.backend.wait_for(lambda m: m["type"] == "tool_call")
    bare = await watcher.wait_for(lambda m: m["type"] == "tool_call")
    assert full["name"] == bare["name"] == "lookup_order"
    assert full["status"] == bare["status"] == "completed"
    assert full["arguments"] == '{"order": 42}'
    assert "arguments" not in bare


async def test_call_ended_is_every_subscribers_last_event(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(**TRUSTED)
    watcher = harness.backend_as("watcher")
    await subscribe(harness, events=["agent_state"])
    await watcher.request({"type": "subscribe", "id": "w", "events": ["user_state"]})
    await harness.session.aclose()
    for backend in (harness.backend, watcher):
        ended = await backend.wait_for(lambda m: m["type"] == "call_ended")
        assert ended["reason"] == "user_initiated"
    await asyncio.sleep(0.05)
    assert harness.backend.received[-1]["type"] == "call_ended"
    assert watcher.received[-1]["type"] == "call_ended"
    # nobody may subscribe to a call that has ended
    ack = await watcher.request({"type": "subscribe", "id": "w2", "events": ["user_state"]})
    assert ack["error"] == "NOT_READY"


async def test_aclose_ends_the_call_for_subscribers(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(**TRUSTED)
    await subscribe(harness, events=["agent_state"])
    await harness.plugin.aclose()
    ended = await harness.backend.wait_for(lambda m: m["type"] == "call_ended")
    assert ended["reason"] == "shutdown"


async def test_unsubscribe_and_leaving_end_the_subscription(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(**TRUSTED)
    watcher = harness.backend_as("watcher")
    await subscribe(harness, events=["agent_state"])
    await watcher.request({"type": "subscribe", "id": "w", "events": ["agent_state"]})
    plugin = harness.plugin
    assert sorted(plugin.subscribers) == [BACKEND_IDENTITY, "watcher"]

    ack = await harness.backend.request({"type": "unsubscribe", "id": "u"})
    assert ack["data"]["removed"] is True
    await watcher.room.disconnect()
    await wait_until(lambda: plugin.subscribers == [], "both subscriptions to end")
    await harness.backend.request({"type": "speak", "id": "s", "message": "Anyone there?"})
    await harness.backend.event("speech_finished", "s")
    assert not events_of(harness, "agent_state")


class _StallingTransport(AckTransport):
    """Sends at once, except session events to ``stalled``: those wait for ``release``.

    Give :meth:`bind` to the harness (``make_harness(ack_transport_for=...)``): it wraps the
    room's real transport. (Its acks go through the plugin's one publisher, like everybody's;
    what is bounded per subscriber is its stream of events.)"""

    def __init__(self, stalled: str) -> None:
        self._stalled = stalled
        self.release = asyncio.Event()

    def bind(self, room: rtc.Room) -> AckTransport:
        """This transport, sending through ``room``'s real one."""
        self._inner = AckTransport(room)
        return self

    async def send(self, payload: bytes, destination_identity: str) -> None:
        if destination_identity == self._stalled and not payload.startswith(b'{"type":"ack"'):
            await self.release.wait()
        await self._inner.send(payload, destination_identity)


async def test_a_stalled_subscriber_loses_its_oldest_events_and_delays_nobody(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_feed_module, "SUBSCRIBER_QUEUE_SIZE", 4)
    transport = _StallingTransport("stalled")
    harness: Harness = await make_harness(**TRUSTED, ack_transport_for=transport.bind)
    stalled = harness.backend_as("stalled")
    await stalled.send({"type": "subscribe", "id": "st", "events": ["agent_state"]})
    await subscribe(harness, events=["agent_state"])

    for state in ("speaking", "listening") * 10:  # the stalled subscriber keeps the newest 4
        harness.session._update_agent_state(state)
        await asyncio.sleep(0.005)  # at a pace the other subscriber keeps up with
    # acks and the other subscriber's events are not held up behind the stalled one
    started = time.monotonic()
    ack = await harness.backend.request({"type": "get_state", "id": "g"})
    assert ack["success"] is True
    assert time.monotonic() - started < 1.0
    await wait_until(lambda: len(events_of(harness, "agent_state")) == 20, "all 20 events")
    assert all("dropped" not in m for m in events_of(harness, "agent_state"))

    transport.release.set()
    await wait_until(
        lambda: len([m for m in stalled.received if m["type"] == "agent_state"]) >= 5,
        "the stalled subscriber to catch up",
    )
    events = [m for m in stalled.received if m["type"] == "agent_state"]
    # the first was on its way when it stalled; then 15 of the 19 queued were lost
    assert [m.get("dropped") for m in events] == [None, 15, None, None, None]
    assert harness.plugin.stats.events_dropped == 15


async def test_aclose_does_not_wait_for_a_stalled_subscriber(
    make_harness: HarnessFactory,
) -> None:
    transport = _StallingTransport(BACKEND_IDENTITY)
    harness: Harness = await make_harness(**TRUSTED, ack_transport_for=transport.bind)
    harness.plugin.ingest(
        json.dumps({"type": "subscribe", "id": "s", "events": ["agent_state"]}),
        sender_identity=BACKEND_IDENTITY,
    )
    await wait_until(lambda: harness.plugin.subscribers != [], "the subscription")
    harness.session._update_agent_state("speaking")
    started = time.monotonic()
    await harness.plugin.aclose()
    assert time.monotonic() - started < DRAIN_TIMEOUT_S + 1.0


async def test_one_subscription_per_sender_and_a_bounded_number(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribers_module, "MAX_SUBSCRIBERS", 1)
    harness: Harness = await make_harness(**TRUSTED)
    await subscribe(harness, "a", events=["agent_state"])
    ack = await subscribe(harness, "b", events=["user_state"], interim=True)
    assert ack["data"]["events"] == ["user_state", "call_ended"]  # replaced, not added
    watcher = harness.backend_as("watcher")
    ack = await watcher.request({"type": "subscribe", "id": "w", "events": ["agent_state"]})
    assert ack["error"] == "RATE_LIMITED"


def test_a_long_text_is_cut_to_fit_one_packet() -> None:
    event = protocol.UserTranscriptEvent(text="é" * 20_000, final=True, timestamp="t")
    payload = subscriber_feed_module._fit(event)
    assert len(payload) <= protocol.MAX_PAYLOAD_BYTES
    decoded = json.loads(payload)
    assert decoded["text_truncated"] is True
    assert decoded["text"] == "é" * len(decoded["text"])
    short = protocol.UserTranscriptEvent(text="hi", final=True, timestamp="t")
    assert subscriber_feed_module._fit(short) == protocol.encode_message(short)
