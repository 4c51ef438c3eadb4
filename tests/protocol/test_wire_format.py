"""The wire format, pinned: a refactor must not silently change what other languages parse."""

from __future__ import annotations

import json

import pytest

import imaginex_context_plugin
from imaginex_context_plugin import protocol
from imaginex_context_plugin.errors import ErrorCode, ProtocolError
from imaginex_context_plugin.protocol import (
    AckData,
    AddContextRequest,
    AgentStateInfo,
    CancelRequest,
    ContextEntryInfo,
    EndCallRequest,
    ErrorAck,
    GetHistoryRequest,
    GetStateRequest,
    HistoryItem,
    InterruptRequest,
    IOState,
    LlmCall,
    RemoveContextRequest,
    ResetInstructionsRequest,
    SpeakRequest,
    SpeechFinishedEvent,
    SpeechStartedEvent,
    SuccessAck,
    UpdateInstructionsRequest,
    UpdateIORequest,
    UserMessageRequest,
    parse_request,
)
from tests.protocol_fixtures import wire

TS = "2026-01-15T10:30:00.000Z"
ALL_TYPES = (
    "speak, add_context, remove_context, get_state, end_call, interrupt, cancel, update_io, "
    "update_instructions, reset_instructions, user_message, get_history, subscribe, unsubscribe"
)


def test_names_on_the_wire() -> None:
    assert protocol.CONTEXT_TOPIC == "imaginex.context"
    assert protocol.ACK_TOPIC == "imaginex.context.ack"
    assert protocol.RPC_METHOD == "imaginex.context"
    assert protocol.AGENT_CODE_ATTRIBUTE == "imaginex.agent_code"
    assert protocol.MAX_PAYLOAD_BYTES == 15 * 1024
    assert [c.value for c in ErrorCode] == [
        "VALIDATION_ERROR", "UNAUTHORIZED", "AGENT_NOT_FOUND", "NO_ACTIVE_ROOMS",
        "PAYLOAD_TOO_LARGE", "RATE_LIMITED", "NOT_READY", "BUSY", "INTERNAL_ERROR",
        "LIVEKIT_UNAVAILABLE", "TIMEOUT", "ID_REUSED", "NOT_FOUND", "SPEECH_FAILED",
    ]


def test_speak_request_defaults() -> None:
    request = parse_request(b'{"type": "speak", "id": "r1", "message": "Hello"}')
    assert isinstance(request, SpeakRequest)
    assert request.model_dump(mode="json") == {
        "type": "speak",
        "id": "r1",
        "room_id": None,
        "agent_code": None,
        "message": "Hello",
        "context": None,
        "instructions": None,
        "allow_interruptions": True,
        "interrupt": False,
        "mode": None,
        "end_call_after": False,
        "add_to_history": True,
        "protocol": None,
        "start_within_s": None,
        "audio": None,
    }
    assert request.effective_mode == "queue"
    assert request.speaks_v1_3 is False
    assert parse_request(b'{"type":"speak","message":"x","interrupt":true}').effective_mode == (  # type: ignore[union-attr]
        "interrupt"
    )


def test_add_context_request_defaults() -> None:
    request = parse_request(b'{"type": "add_context", "context": "VIP"}')
    assert isinstance(request, AddContextRequest)
    assert request.model_dump(mode="json") == {
        "type": "add_context",
        "id": None,
        "room_id": None,
        "agent_code": None,
        "message": None,
        "context": "VIP",
        "role": "system",
        "key": None,
        "trigger_reply": False,
        "scope": "persistent",
        "ttl_s": None,
        "protocol": None,
    }
    assert request.text == "VIP"


def test_remove_and_get_state_requests() -> None:
    remove = parse_request(b'{"type": "remove_context", "key": "order"}')
    assert isinstance(remove, RemoveContextRequest)
    assert remove.model_dump(mode="json") == {
        "type": "remove_context", "id": None, "room_id": None, "agent_code": None,
        "protocol": None, "key": "order",
    }
    state = parse_request(b'{"type": "get_state", "id": "s"}')
    assert isinstance(state, GetStateRequest)
    assert state.model_dump(mode="json") == {
        "type": "get_state", "id": "s", "room_id": None, "agent_code": None, "protocol": None,
    }


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    request = parse_request(b'{"type": "speak", "message": "x", "future_field": 1}')
    assert isinstance(request, SpeakRequest)


def test_speak_success_ack() -> None:
    ack = SuccessAck(
        id="r1",
        message="Speech triggered successfully",
        data=AckData(
            agent_code="A12345678", context_type="speak", room_id="room_123", timestamp=TS,
            speech_id="speech_abc", method="say",
        ),
    )
    # the literal lives in fixtures/protocol.json, which the TypeScript tests parse too
    assert ack.model_dump(mode="json") == wire("speak success ack")


def test_speak_fallback_ack() -> None:
    data = AckData(
        agent_code="A1", context_type="speak", room_id="r", timestamp=TS, speech_id="s",
        method="generate_reply", fallback="generate_reply",
    )
    assert data.model_dump(mode="json") == {
        "agent_code": "A1", "context_type": "speak", "delivered_to_rooms": 1, "room_id": "r",
        "timestamp": TS, "speech_id": "s", "method": "generate_reply",
        "fallback": "generate_reply",
    }


def test_add_context_success_ack_has_no_speech_id() -> None:
    ack = SuccessAck(
        id=None,
        message="Context added successfully",
        data=AckData(
            agent_code="A12345678", context_type="add_context", room_id="room_456", timestamp=TS,
            key="customer", evicted=0,
        ),
        duplicate=True,
    )
    assert ack.model_dump(mode="json") == wire("add_context success ack, a duplicate")
    assert "speech_id" not in wire("add_context success ack, a duplicate")["data"]


def test_remove_context_ack() -> None:
    data = AckData(
        agent_code=None, context_type="remove_context", room_id="r", timestamp=TS, key="k",
        removed=False,
    )
    assert data.model_dump(mode="json") == {
        "agent_code": None, "context_type": "remove_context", "delivered_to_rooms": 1,
        "room_id": "r", "timestamp": TS, "key": "k", "removed": False,
    }


def test_get_state_ack() -> None:
    state = AgentStateInfo(
        agent_state="listening",
        user_state="speaking",
        current_agent="support",
        context_entries=[
            ContextEntryInfo(
                entry_id="imaginex_ctx_key_order", key="order", role="system", chars=12,
                scope="next_turn", expires_in_s=4.5, request_id="c1",
            )
        ],
        context_chars=12,
        pending_speeches=["speech_1"],
    )
    data = AckData(
        agent_code="A1", context_type="get_state", room_id="r", timestamp=TS, state=state
    )
    assert data.model_dump(mode="json") == {
        "agent_code": "A1",
        "context_type": "get_state",
        "delivered_to_rooms": 1,
        "room_id": "r",
        "timestamp": TS,
        "state": {
            "agent_state": "listening",
            "user_state": "speaking",
            "current_agent": "support",
            "context_entries": [
                {
                    "entry_id": "imaginex_ctx_key_order",
                    "key": "order",
                    "role": "system",
                    "chars": 12,
                    "scope": "next_turn",
                    "expires_in_s": 4.5,
                    "request_id": "c1",
                }
            ],
            "context_chars": 12,
            "pending_speeches": ["speech_1"],
        },
    }


def test_a_used_context_entry_names_the_model_request() -> None:
    entry = ContextEntryInfo(
        entry_id="imaginex_ctx_1", key=None, role="system", chars=9, scope="persistent",
        expires_in_s=None, request_id="c1", used=LlmCall(index=3, speech_id="speech_9"),
    )
    assert entry.model_dump(mode="json") == {
        "entry_id": "imaginex_ctx_1",
        "key": None,
        "role": "system",
        "chars": 9,
        "scope": "persistent",
        "expires_in_s": None,
        "request_id": "c1",
        "used": {"index": 3, "speech_id": "speech_9"},
    }
    realtime = entry.model_copy(update={"used": LlmCall(index=1, realtime=True)})
    assert realtime.model_dump(mode="json")["used"] == {"index": 1, "realtime": True}


def test_truncated_get_state_says_so_and_counts_everything() -> None:
    state = AgentStateInfo(
        agent_state="speaking",
        user_state="listening",
        current_agent=None,
        context_entries=[],
        context_chars=64_000,
        pending_speeches=["speech_1"],
        context_entries_truncated=True,
        context_entries_total=64,
        pending_speeches_truncated=True,
        pending_speeches_total=300,
    )
    assert state.model_dump(mode="json") == {
        "agent_state": "speaking",
        "user_state": "listening",
        "current_agent": None,
        "context_entries": [],
        "context_chars": 64_000,
        "pending_speeches": ["speech_1"],
        "context_entries_truncated": True,
        "context_entries_total": 64,
        "pending_speeches_truncated": True,
        "pending_speeches_total": 300,
    }


def test_id_reused_ack() -> None:
    ack = ErrorAck(
        id="r1", error=ErrorCode.ID_REUSED, message=protocol.ID_REUSED_MESSAGE
    )
    assert ack.model_dump(mode="json") == wire("id reused error ack")


def test_error_ack_keeps_a_null_id_and_omits_retry_after_unless_set() -> None:
    ack = ErrorAck(
        id=None, error=ErrorCode.VALIDATION_ERROR,
        message=f"Invalid type. Must be one of: {ALL_TYPES}",
    )
    assert ack.model_dump(mode="json") == wire("validation error ack without an id")
    assert wire("validation error ack without an id")["id"] is None
    limited = ErrorAck(id="r9", error=ErrorCode.RATE_LIMITED, message="slow down", retry_after=0.5)
    assert limited.model_dump(mode="json") == wire("rate limited error ack")


def test_speech_events() -> None:
    started = SpeechStartedEvent(id="r1", speech_id="speech_1", timestamp=TS)
    assert started.model_dump(mode="json") == {
        "type": "speech_started", "id": "r1", "speech_id": "speech_1", "timestamp": TS,
    }
    finished = SpeechFinishedEvent(
        id="r1", speech_id="speech_1", interrupted=True, played_s=1.25, timestamp=TS
    )
    assert finished.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r1", "speech_id": "speech_1", "interrupted": True,
        "played_s": 1.25, "timestamp": TS,
    }
    unknown = SpeechFinishedEvent(id=None, speech_id="s", interrupted=False, timestamp=TS)
    assert "played_s" not in unknown.model_dump(mode="json")
    failed = SpeechFinishedEvent(
        id="r2", speech_id="s", interrupted=False, failed=True, timestamp=TS
    )
    assert failed.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r2", "speech_id": "s", "interrupted": False,
        "failed": True, "timestamp": TS,
    }
    shutdown = SpeechFinishedEvent(
        id="r3", speech_id="s", interrupted=True, reason="shutdown", timestamp=TS
    )
    assert shutdown.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r3", "speech_id": "s", "interrupted": True,
        "reason": "shutdown", "timestamp": TS,
    }
    avatar_left = SpeechFinishedEvent(
        id="r4", speech_id="s", interrupted=True, reason="avatar_left", timestamp=TS
    )
    assert avatar_left.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r4", "speech_id": "s", "interrupted": True,
        "reason": "avatar_left", "timestamp": TS,
    }


def test_server_messages_round_trip() -> None:
    for message in [
        ErrorAck(id="x", error=ErrorCode.BUSY, message="busy"),
        SpeechStartedEvent(id="r1", speech_id="s", timestamp=TS),
        SpeechFinishedEvent(id="r1", speech_id="s", interrupted=False, timestamp=TS),
    ]:
        assert protocol.parse_server_message(message.model_dump_json()) == message


def test_timestamps_look_like_the_platform() -> None:
    ts = protocol.utc_timestamp()
    assert len(ts) == len(TS)
    assert ts.endswith("Z")
    assert ts[10] == "T"


def test_request_json_schema_lists_every_type() -> None:
    schema = json.dumps(protocol.request_json_schema())
    for name in (
        "SpeakRequest", "AddContextRequest", "RemoveContextRequest", "GetStateRequest",
        "EndCallRequest", "InterruptRequest", "CancelRequest", "UpdateIORequest",
        "UpdateInstructionsRequest", "ResetInstructionsRequest", "UserMessageRequest",
        "GetHistoryRequest",
    ):
        assert name in schema
    for field in (
        "end_call_after", "add_to_history", "after_speech", "reason", "force", "target_id",
        "agent_audio", "user_audio", "transcription", "respond", "limit",
    ):
        assert f'"{field}"' in schema


def test_public_surface_is_exactly_all() -> None:
    exported = {
        name for name in vars(imaginex_context_plugin)
        if not name.startswith("_") and name not in {"annotations", "Plugin", "logger"}
        and not isinstance(getattr(imaginex_context_plugin, name), type(imaginex_context_plugin))
    }
    exported.discard("ImaginexContextPlugin")
    assert exported == set(imaginex_context_plugin.__all__) - {"__version__"}
    assert len(imaginex_context_plugin.__all__) == len(set(imaginex_context_plugin.__all__))


# ---------------------------------------------------------------------------------------------
# v1.1: live call control


def _dump(raw: bytes) -> dict[str, object]:
    return parse_request(raw).model_dump(mode="json")


BASE = {"id": None, "room_id": None, "agent_code": None, "protocol": None}


def test_v1_1_request_defaults() -> None:
    assert _dump(b'{"type": "end_call"}') == {
        "type": "end_call", **BASE, "after_speech": True, "reason": None,
    }
    assert _dump(b'{"type": "end_call", "after_speech": false, "reason": "done"}') == {
        "type": "end_call", **BASE, "after_speech": False, "reason": "done",
    }
    assert _dump(b'{"type": "interrupt"}') == {"type": "interrupt", **BASE, "force": False}
    assert _dump(b'{"type": "cancel", "target_id": "s1"}') == {
        "type": "cancel", **BASE, "target_id": "s1",
    }
    assert _dump(b'{"type": "update_io", "agent_audio": false}') == {
        "type": "update_io", **BASE, "agent_audio": False, "user_audio": None,
        "transcription": None,
    }
    assert _dump(b'{"type": "update_instructions", "instructions": "Be brief."}') == {
        "type": "update_instructions", **BASE, "instructions": "Be brief.", "mode": "append",
    }
    assert _dump(b'{"type": "reset_instructions", "id": "r"}') == {
        "type": "reset_instructions", **BASE, "id": "r",
    }
    assert _dump(b'{"type": "user_message", "text": "Hi"}') == {
        "type": "user_message", **BASE, "text": "Hi", "respond": True, "interrupt": False,
    }
    assert _dump(b'{"type": "get_history"}') == {"type": "get_history", **BASE, "limit": 50}
    assert isinstance(parse_request(b'{"type": "end_call"}'), EndCallRequest)
    for model in (
        InterruptRequest, CancelRequest, UpdateIORequest, UpdateInstructionsRequest,
        ResetInstructionsRequest, UserMessageRequest, GetHistoryRequest,
    ):
        assert model.model_fields["type"].annotation is not None


def test_speak_v1_1_fields() -> None:
    request = parse_request(
        b'{"type": "speak", "message": "Bye", "end_call_after": true, "add_to_history": false}'
    )
    assert isinstance(request, SpeakRequest)
    assert request.end_call_after is True
    assert request.add_to_history is False


def test_v1_1_acks() -> None:
    def data(**fields: object) -> dict[str, object]:
        return AckData(
            agent_code="A1", context_type="update_io", room_id="r", timestamp=TS, **fields
        ).model_dump(mode="json")

    head = {
        "agent_code": "A1", "context_type": "update_io", "delivered_to_rooms": 1, "room_id": "r",
        "timestamp": TS,
    }
    io = IOState(agent_audio=False, user_audio=True, transcription=True)
    assert data(io=io) == {
        **head, "io": {"agent_audio": False, "user_audio": True, "transcription": True},
    }
    assert data(interrupted=True) == {**head, "interrupted": True}
    assert data(target_id="s1", speech_id="speech_1", cancelled="queued") == {
        **head, "speech_id": "speech_1", "target_id": "s1", "cancelled": "queued",
    }
    assert data(instructions_mode="replace") == {**head, "instructions_mode": "replace"}
    item = HistoryItem(
        id="item_1", role="user", text="Hello", interrupted=False, created_at=TS
    )
    assert data(history=[item], truncated=True) == {
        **head,
        "history": [
            {
                "id": "item_1", "role": "user", "text": "Hello", "interrupted": False,
                "created_at": TS,
            }
        ],
        "truncated": True,
    }
    state = AgentStateInfo(
        agent_state="idle", user_state="listening", current_agent=None, context_entries=[],
        context_chars=0, pending_speeches=[], io=io,
    )
    assert state.model_dump(mode="json")["io"] == {
        "agent_audio": False, "user_audio": True, "transcription": True,
    }


def test_not_found_ack_and_v1_1_speech_finished() -> None:
    ack = ErrorAck(id="c1", error=ErrorCode.NOT_FOUND, message="No speech.")
    assert ack.model_dump(mode="json") == {
        "type": "ack", "id": "c1", "success": False, "error": "NOT_FOUND", "message": "No speech.",
    }
    cancelled = SpeechFinishedEvent(
        id="r1", speech_id="s", interrupted=True, cancelled=True, timestamp=TS
    )
    assert cancelled.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r1", "speech_id": "s", "interrupted": True,
        "cancelled": True, "timestamp": TS,
    }
    kept = SpeechFinishedEvent(
        id="r2", speech_id="s", interrupted=True, call_kept=True, timestamp=TS
    )
    assert kept.model_dump(mode="json") == {
        "type": "speech_finished", "id": "r2", "speech_id": "s", "interrupted": True,
        "call_kept": True, "timestamp": TS,
    }
    assert protocol.parse_server_message(kept.model_dump_json()) == kept


# ---------------------------------------------------------------------------------------------
# v1.1 subscribe / unsubscribe and the live events


def test_subscribe_requests() -> None:
    assert _dump(b'{"type": "subscribe", "events": ["user_transcript", "tool_call"]}') == {
        "type": "subscribe", **BASE, "events": ["user_transcript", "tool_call"],
        "interim": False, "tool_arguments": False, "since_seq": None,
    }
    assert _dump(
        b'{"type": "subscribe", "events": ["agent_state"], "interim": true, '
        b'"tool_arguments": true}'
    ) == {
        "type": "subscribe", **BASE, "events": ["agent_state"], "interim": True,
        "tool_arguments": True, "since_seq": None,
    }
    assert _dump(b'{"type": "unsubscribe", "id": "u"}') == {
        "type": "unsubscribe", **BASE, "id": "u",
    }
    assert protocol.SESSION_EVENT_TYPES == (
        "user_transcript", "agent_transcript", "agent_state", "user_state",
        "conversation_item", "tool_call", "call_ended", "speech", "context",
    )
    schema = json.dumps(protocol.request_json_schema())
    for name in ("SubscribeRequest", "UnsubscribeRequest", '"events"', '"interim"',
                 '"tool_arguments"', '"conversation_item"'):
        assert name in schema


def test_subscribe_ack() -> None:
    ack = SuccessAck(
        id="s1", message=protocol.SUBSCRIBE_SUCCESS_MESSAGE,
        data=AckData(
            agent_code="A1", context_type="subscribe", room_id="r", timestamp=TS,
            events=["agent_state", "call_ended"],
        ),
    )
    assert ack.model_dump(mode="json") == wire("subscribe ack")
    assert protocol.UNSUBSCRIBE_SUCCESS_MESSAGE == "Unsubscribed from session events"


def test_session_events() -> None:
    cases: list[tuple[protocol._WireModel, dict[str, object]]] = [
        (
            protocol.UserTranscriptEvent(text="hello", final=False, language="en", timestamp=TS),
            {"type": "user_transcript", "timestamp": TS, "text": "hello", "final": False,
             "language": "en"},
        ),
        (
            protocol.AgentTranscriptEvent(
                speech_id="speech_1", text="Hi", interrupted=True, timestamp=TS, dropped=3
            ),
            {"type": "agent_transcript", "timestamp": TS, "dropped": 3, "speech_id": "speech_1",
             "text": "Hi", "interrupted": True},
        ),
        (
            protocol.AgentStateEvent(old_state="listening", new_state="speaking", timestamp=TS),
            {"type": "agent_state", "timestamp": TS, "old_state": "listening",
             "new_state": "speaking"},
        ),
        (
            protocol.UserStateEvent(old_state="listening", new_state="away", timestamp=TS),
            {"type": "user_state", "timestamp": TS, "old_state": "listening",
             "new_state": "away"},
        ),
        (
            protocol.ConversationItemEvent(
                item_id="item_1", item_type="message", role="user", text="Hi",
                interrupted=False, timestamp=TS,
            ),
            {"type": "conversation_item", "timestamp": TS, "item_id": "item_1",
             "item_type": "message", "role": "user", "text": "Hi", "interrupted": False},
        ),
        (
            protocol.ConversationItemEvent(
                item_id="item_2", item_type="agent_handoff", new_agent="Billing", timestamp=TS
            ),
            {"type": "conversation_item", "timestamp": TS, "item_id": "item_2",
             "item_type": "agent_handoff", "new_agent": "Billing"},
        ),
        (
            protocol.ToolCallEvent(
                call_id="c1", name="lookup", status="error", arguments="{}", timestamp=TS
            ),
            {"type": "tool_call", "timestamp": TS, "call_id": "c1", "name": "lookup",
             "status": "error", "arguments": "{}"},
        ),
        (
            protocol.CallEndedEvent(reason="user_initiated", timestamp=TS),
            {"type": "call_ended", "timestamp": TS, "reason": "user_initiated"},
        ),
    ]
    for event, expected in cases:
        assert event.model_dump(mode="json") == expected
        assert protocol.parse_server_message(protocol.encode_message(event)) == event


def test_signed_envelopes_with_and_without_a_sender() -> None:
    v1 = {"type": "signed", "body": "{}", "timestamp": 1_700_000_000, "signature": "ab"}
    parsed = protocol.read_packet(json.dumps(v1).encode())
    assert isinstance(parsed, protocol.SignedEnvelope)
    assert parsed.sender is None
    # a v1 envelope goes out exactly as before: no sender key at all
    assert parsed.model_dump(mode="json", exclude_none=True) == v1
    named = {**v1, "sender": "imaginex-gateway"}
    parsed = protocol.read_packet(json.dumps(named).encode())
    assert isinstance(parsed, protocol.SignedEnvelope)
    assert parsed.model_dump(mode="json") == {
        "type": "signed",
        "body": "{}",
        "timestamp": 1_700_000_000,
        "signature": "ab",
        "sender": "imaginex-gateway",
    }


@pytest.mark.parametrize("reply_to", ["http://127.0.0.1:8089/v1/internal/replies", None, ""])
def test_an_envelope_naming_reply_to_is_refused_with_the_reason(reply_to: str | None) -> None:
    # reply_to was withdrawn with the answers over HTTP: an old sender still naming it
    # is told so, whatever the value, rather than having its message applied unanswered
    old = {
        "type": "signed", "body": '{"type":"speak","id":"r1","message":"hi"}',
        "timestamp": 1_700_000_000, "signature": "ab", "reply_to": reply_to,
    }
    with pytest.raises(ProtocolError) as refused:
        protocol.read_packet(json.dumps(old).encode())
    assert refused.value.code is ErrorCode.VALIDATION_ERROR
    assert refused.value.message == protocol.WITHDRAWN_REPLY_TO + "."
    assert "reply_to" not in protocol.SignedEnvelope.model_fields


def test_packet_json_schema_describes_the_signed_envelope() -> None:
    schema = protocol.packet_json_schema()
    envelope = schema["$defs"]["SignedEnvelope"]
    assert envelope["required"] == ["type", "body", "timestamp", "signature"]
    assert envelope["additionalProperties"] is False
    assert envelope["properties"]["sender"]["anyOf"][0] == {
        "maxLength": 128, "minLength": 1, "type": "string"
    }
    assert "SpeakRequest" in json.dumps(schema)
