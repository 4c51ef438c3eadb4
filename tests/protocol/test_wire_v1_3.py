"""Protocol v1.3 pinned: every new field and event as literal dicts, the version rule, the kinds
a subscription names, and the JSON Schemas other languages generate their types from."""

from __future__ import annotations

import json

import pytest

from imaginex_context_plugin import protocol
from imaginex_context_plugin.protocol import (
    AckData,
    AgentStateInfo,
    ContextDroppedEvent,
    ContextUsedEvent,
    EventsLostEvent,
    HistoryItem,
    LlmCall,
    PendingSpeech,
    Snapshot,
    SnapshotEvent,
    SpeakRequest,
    SpeechFailedEvent,
    SpeechFinishedEvent,
    SpeechStartedEvent,
    SubscribeRequest,
    SuccessAck,
    parse_request,
)
from tests.protocol_fixtures import wire

TS = "2026-01-15T10:30:00.000Z"
STATE = AgentStateInfo(
    agent_state="listening", user_state="listening", current_agent="agent_1",
    context_entries=[], context_chars=0, pending_speeches=[],
)
STATE_WIRE = {
    "agent_state": "listening", "user_state": "listening", "current_agent": "agent_1",
    "context_entries": [], "context_chars": 0, "pending_speeches": [],
}
ITEM = HistoryItem(id="i1", role="user", text="Hi", interrupted=False, created_at=TS)
ITEM_WIRE = {"id": "i1", "role": "user", "text": "Hi", "interrupted": False, "created_at": TS}


def test_names_and_limits() -> None:
    assert protocol.PROTOCOL_VERSION == "1.3"
    assert protocol.DEFAULT_START_WITHIN_S == 30.0
    assert protocol.MAX_START_WITHIN_S == 3600.0
    assert protocol.MAX_CLIP_BYTES == 4 * 1024 * 1024
    assert protocol.MAX_CLIP_S == 30.0
    assert protocol.AUDIO_STREAM_TOPIC == "imaginex.audio"


@pytest.mark.parametrize(
    ("version", "v1_3"), [(None, False), ("1.2", False), ("1.3", True), ("1.10", True)]
)
def test_the_version_a_sender_speaks(version: str | None, v1_3: bool) -> None:
    body: dict[str, object] = {"type": "add_context", "context": "x"}
    if version is not None:
        body["protocol"] = version
    assert parse_request(json.dumps(body)).speaks_v1_3 is v1_3


def test_speak_v1_3_fields() -> None:
    request = parse_request(
        b'{"type": "speak", "id": "r1", "protocol": "1.3", "start_within_s": 12.5, '
        b'"audio": {"stream_id": "PS_1", "sha256": "' + b"a" * 64 + b'"}}'
    )
    assert isinstance(request, SpeakRequest)
    assert request.model_dump(mode="json") == {
        "type": "speak", "id": "r1", "room_id": None, "agent_code": None, "protocol": "1.3",
        "message": None, "context": None, "instructions": None, "allow_interruptions": True,
        "interrupt": False, "mode": None, "end_call_after": False, "add_to_history": True,
        "start_within_s": 12.5, "audio": {"stream_id": "PS_1", "sha256": "a" * 64},
    }
    # a clip needs no text; with text, the text is its transcript
    assert parse_request(b'{"type":"speak","message":"Hi","audio":{"stream_id":"x"}}').text == (  # type: ignore[union-attr]
        "Hi"
    )
    with pytest.raises(protocol.ProtocolError, match="Missing field 'message'"):
        parse_request(b'{"type": "speak", "protocol": "1.3"}')


def test_subscribe_since_seq() -> None:
    request = parse_request(
        b'{"type": "subscribe", "events": ["speech", "context"], "since_seq": 0}'
    )
    assert isinstance(request, SubscribeRequest)
    assert request.since_seq == 0
    assert request.events == ("speech", "context")
    with pytest.raises(protocol.ProtocolError, match="'since_seq' must be an integer"):
        parse_request(b'{"type": "subscribe", "events": ["speech"], "since_seq": "4"}')


def test_event_kinds() -> None:
    assert protocol.event_kind("speech_failed") == "speech"
    assert protocol.event_kind("speech_started") == "speech"
    assert protocol.event_kind("context_used") == "context"
    assert protocol.event_kind("context_dropped") == "context"
    assert protocol.event_kind("agent_state") == "agent_state"


def test_speech_events_carry_seq_and_t_ms() -> None:
    started = SpeechStartedEvent(seq=5, t_ms=1200, id="r1", speech_id="sp", timestamp=TS)
    assert started.model_dump(mode="json") == {
        "type": "speech_started", "seq": 5, "t_ms": 1200, "id": "r1", "speech_id": "sp",
        "timestamp": TS,
    }
    finished = SpeechFinishedEvent(
        seq=6, t_ms=2000, id="r1", speech_id="sp", interrupted=False, played_s=0.8,
        timestamp=TS, replay=True,
    )
    assert finished.model_dump(mode="json") == {
        "type": "speech_finished", "seq": 6, "t_ms": 2000, "id": "r1", "speech_id": "sp",
        "interrupted": False, "played_s": 0.8, "timestamp": TS, "replay": True,
    }
    failed = SpeechFailedEvent(
        seq=7, t_ms=2100, id=None, speech_id="sp2", reason="session_closed", started=True,
        played_s=0.2, timestamp=TS, dropped=1,
    )
    assert failed.model_dump(mode="json") == {
        "type": "speech_failed", "seq": 7, "t_ms": 2100, "id": None, "speech_id": "sp2",
        "reason": "session_closed", "started": True, "played_s": 0.2, "timestamp": TS,
        "dropped": 1,
    }
    assert wire("speech_failed, not started in time")["reason"] == "not_started"
    # a v1.2 agent's events (no seq, no t_ms) still parse: a new client, an older agent
    old = protocol.parse_server_message(
        json.dumps({"type": "speech_finished", "id": "r", "speech_id": "s", "interrupted": True,
                    "reason": "shutdown", "timestamp": TS})
    )
    assert isinstance(old, SpeechFinishedEvent)
    assert (old.seq, old.t_ms, old.reason) == (None, None, "shutdown")


@pytest.mark.parametrize(
    "reason",
    ["not_started", "tts_error", "llm_error", "session_closed", "cancelled", "avatar_left"],
)
def test_every_failure_reason_round_trips(reason: str) -> None:
    event = SpeechFailedEvent.model_validate(
        {"seq": 1, "t_ms": 0, "id": "r", "speech_id": "s", "reason": reason, "started": False,
         "timestamp": TS}
    )
    assert protocol.parse_event(protocol.encode_message(event)) == event


def test_context_events() -> None:
    used = ContextUsedEvent(
        seq=9, t_ms=3000, entry_id="imaginex_ctx_key_tier", key="tier", request_id="c1",
        llm_call=LlmCall(index=2, speech_id="speech_x"), timestamp=TS,
    )
    assert used.model_dump(mode="json") == {
        "type": "context_used", "seq": 9, "t_ms": 3000, "timestamp": TS,
        "entry_id": "imaginex_ctx_key_tier", "key": "tier", "request_id": "c1",
        "llm_call": {"index": 2, "speech_id": "speech_x"},
    }
    realtime = LlmCall(index=1, realtime=True)
    assert realtime.model_dump(mode="json") == {"index": 1, "realtime": True}
    dropped = ContextDroppedEvent(
        seq=10, t_ms=3100, entry_id="imaginex_ctx_3", key=None, request_id=None,
        reason="evicted", timestamp=TS,
    )
    assert dropped.model_dump(mode="json") == {
        "type": "context_dropped", "seq": 10, "t_ms": 3100, "timestamp": TS,
        "entry_id": "imaginex_ctx_3", "key": None, "request_id": None, "reason": "evicted",
    }
    for reason in ("removed", "replaced", "expired", "evicted", "session_closed"):
        assert dropped.model_copy(update={"reason": reason}).reason == reason


def test_snapshot_and_the_resume_events() -> None:
    snapshot = Snapshot(
        seq=41, state=STATE, items=[ITEM],
        pending_speeches=[PendingSpeech(speech_id="sp", request_id="r1", playing=True)],
    )
    snapshot_wire = {
        "seq": 41, "state": STATE_WIRE, "items": [ITEM_WIRE],
        "pending_speeches": [{"speech_id": "sp", "request_id": "r1", "playing": True}],
    }
    assert snapshot.model_dump(mode="json") == snapshot_wire
    ack = SuccessAck(
        id="s1", message=protocol.SUBSCRIBE_SUCCESS_MESSAGE,
        data=AckData(
            agent_code="A1", context_type="subscribe", room_id="r", timestamp=TS,
            events=["speech", "call_ended"], snapshot=snapshot, replayed=3,
        ),
    )
    assert ack.model_dump(mode="json")["data"] == {
        "agent_code": "A1", "context_type": "subscribe", "delivered_to_rooms": 1,
        "room_id": "r", "timestamp": TS, "events": ["speech", "call_ended"],
        "snapshot": snapshot_wire, "replayed": 3,
    }
    lost = EventsLostEvent(seq=42, t_ms=10, from_seq=3, to_seq=41, timestamp=TS, replay=True)
    assert lost.model_dump(mode="json") == {
        "type": "events_lost", "seq": 42, "t_ms": 10, "timestamp": TS, "replay": True,
        "from_seq": 3, "to_seq": 41,
    }
    event = SnapshotEvent(
        seq=43, t_ms=10, timestamp=TS, state=STATE, items=[], pending_speeches=[],
        items_truncated=True,
    )
    assert event.model_dump(mode="json") == {
        "type": "snapshot", "seq": 43, "t_ms": 10, "timestamp": TS, "state": STATE_WIRE,
        "items": [], "pending_speeches": [], "items_truncated": True,
    }
    for model in (lost, event):
        assert protocol.parse_server_message(protocol.encode_message(model)) == model


def test_the_schemas_say_what_is_sent() -> None:
    schemas = protocol.wire_json_schemas()
    defs = schemas["ServerMessage"]["$defs"]
    for name in ("SpeechFailedEvent", "ContextUsedEvent", "ContextDroppedEvent",
                 "EventsLostEvent", "SnapshotEvent", "Snapshot", "PendingSpeech", "LlmCall"):
        assert name in defs, name
    failed = defs["SpeechFailedEvent"]
    assert failed["required"] == ["type", "id", "speech_id", "reason", "started", "timestamp"]
    assert failed["properties"]["seq"] == {"title": "Seq", "type": "integer"}
    assert failed["properties"]["reason"]["enum"] == [
        "not_started", "tts_error", "llm_error", "session_closed", "cancelled", "avatar_left"
    ]
    assert defs["Snapshot"]["required"] == ["seq", "state", "items", "pending_speeches"]
    assert "since_seq" in json.dumps(schemas["Request"])
    assert "AudioClipRef" in json.dumps(schemas["Request"])
    speech = schemas["SpeechEvent"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in speech["anyOf"]} == {
        "SpeechStartedEvent", "SpeechFinishedEvent", "SpeechFailedEvent"
    }
