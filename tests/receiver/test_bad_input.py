"""Bad input always gets one clear error ack, never crashes the agent, loses a message or speaks.

A table of known-bad packets, then hypothesis over random payloads: every packet on the topic
gets exactly one ack, and the plugin keeps working afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import rtc

from imaginex_context_plugin import (
    ACK_TOPIC,
    CONTEXT_TOPIC,
    MAX_PAYLOAD_BYTES,
    AckTransport,
    ContextPlugin,
    sign_request,
)
from imaginex_context_plugin.protocol import SESSION_EVENT_TYPES
from imaginex_context_plugin.security import compute_signature
from tests.conftest import BACKEND_IDENTITY, Backend, Harness, HarnessFactory
from tests.fakes import RecordingAudioOutput, RelayNetwork, start_session
from tests.helpers import wait_until

TYPES = (
    "speak, add_context, remove_context, get_state, end_call, interrupt, cancel, update_io, "
    "update_instructions, reset_instructions, user_message, get_history, subscribe, unsubscribe"
)

BAD_INPUTS: list[tuple[str, bytes, str, str, str | None]] = [
    # (case, packet, code, message, echoed id)
    ("not utf-8", b"\xff\xfe{}", "VALIDATION_ERROR", "Message is not valid UTF-8.", None),
    ("not json", b"{nope", "VALIDATION_ERROR", "Message is not valid JSON.", None),
    ("empty", b"", "VALIDATION_ERROR", "Message is not valid JSON.", None),
    ("a list", b"[1, 2]", "VALIDATION_ERROR", "Message must be a JSON object.", None),
    ("a string", b'"speak"', "VALIDATION_ERROR", "Message must be a JSON object.", None),
    ("no type", b'{"id": "a", "message": "hi"}', "VALIDATION_ERROR",
     f"Missing field 'type'. Must be one of: {TYPES}", "a"),
    ("unknown type", b'{"id": "b", "type": "shout", "message": "hi"}', "VALIDATION_ERROR",
     f"Invalid type. Must be one of: {TYPES}", "b"),
    ("type not a string", b'{"id": "c", "type": 3}', "VALIDATION_ERROR",
     f"Invalid type. Must be one of: {TYPES}", "c"),
    ("speak without text", b'{"id": "d", "type": "speak"}', "VALIDATION_ERROR",
     "Missing field 'message' (or 'context'): the text to speak.", "d"),
    ("speak with blank text", b'{"id": "e", "type": "speak", "message": "  \\n "}',
     "VALIDATION_ERROR", "Field 'message' must not be empty.", "e"),
    ("add_context without text", b'{"id": "f", "type": "add_context"}', "VALIDATION_ERROR",
     "Missing field 'context' (or 'message'): the context to add.", "f"),
    ("text not a string", b'{"id": "g", "type": "speak", "message": 42}', "VALIDATION_ERROR",
     "Field 'message' must be a string.", "g"),
    ("bool as string", b'{"id": "h", "type": "speak", "message": "x", "interrupt": "true"}',
     "VALIDATION_ERROR", "Field 'interrupt' must be a boolean.", "h"),
    ("bad role", b'{"id": "i", "type": "add_context", "context": "x", "role": "boss"}',
     "VALIDATION_ERROR", "Field 'role' must be one of: system, developer, user, assistant.", "i"),
    ("bad mode", b'{"id": "j", "type": "speak", "message": "x", "mode": "now"}',
     "VALIDATION_ERROR", "Field 'mode' must be one of: queue, interrupt, if_idle.", "j"),
    ("both texts differ", b'{"id": "k", "type": "speak", "message": "a", "context": "b"}',
     "VALIDATION_ERROR", "Give the text in 'message' or in 'context', not both.", "k"),
    ("id not a string", b'{"id": 7, "type": "speak", "message": "x"}', "VALIDATION_ERROR",
     "Field 'id' must be a string.", None),
    ("id too long", json.dumps({"id": "x" * 129, "type": "speak", "message": "x"}).encode(),
     "VALIDATION_ERROR", "Field 'id' must be at most 128 characters.", None),
    ("negative ttl", b'{"id": "l", "type": "add_context", "context": "x", "ttl_s": -1}',
     "VALIDATION_ERROR", "Field 'ttl_s' is out of range.", "l"),
    ("remove without key", b'{"id": "m", "type": "remove_context"}', "VALIDATION_ERROR",
     "Missing field 'key'.", "m"),
    ("too large", json.dumps({"id": "n", "type": "speak", "message": "x" * MAX_PAYLOAD_BYTES})
     .encode(), "PAYLOAD_TOO_LARGE", "", None),
    ("signed with an unknown key",
     b'{"type": "signed", "body": "{}", "timestamp": 1, "signature": "00"}',
     "UNAUTHORIZED", "The signature does not match the message.", None),
    ("wrong room", b'{"id": "o", "type": "speak", "message": "x", "room_id": "elsewhere"}',
     "NO_ACTIVE_ROOMS", "No active sessions found for agent in room 'elsewhere'", "o"),
    ("wrong agent", b'{"id": "p", "type": "speak", "message": "x", "agent_code": "Z1"}',
     "AGENT_NOT_FOUND", "Agent with code 'Z1' not found", "p"),
    # a huge value is quoted shortened, so that the answer fits a packet too
    ("very long agent code",
     json.dumps({"id": "p2", "type": "speak", "message": "x", "agent_code": "Z" * 15_000}).encode(),
     "AGENT_NOT_FOUND", f"Agent with code '{'Z' * 128}…' not found", "p2"),
    # valid JSON, but not text: a lone UTF-16 surrogate cannot be spoken or echoed; an id that
    # is not text is answered with id null
    ("lone surrogate id", b'{"id": "\\ud800", "type": "speak", "message": "x"}',
     "VALIDATION_ERROR", "Field 'id' is not valid text: it contains a lone UTF-16 surrogate.",
     None),
    ("lone surrogate inside the id", b'{"id": "a\\udfffb", "type": "get_state"}',
     "VALIDATION_ERROR", "Field 'id' is not valid text: it contains a lone UTF-16 surrogate.",
     None),
    ("lone surrogate in message", b'{"id": "q", "type": "speak", "message": "hi \\ud83d!"}',
     "VALIDATION_ERROR",
     "Field 'message' is not valid text: it contains a lone UTF-16 surrogate.", "q"),
    ("lone surrogate in instructions",
     b'{"id": "q2", "type": "speak", "instructions": "\\udc00 greet"}', "VALIDATION_ERROR",
     "Field 'instructions' is not valid text: it contains a lone UTF-16 surrogate.", "q2"),
    ("lone surrogate in context", b'{"id": "q3", "type": "add_context", "context": "\\ud800"}',
     "VALIDATION_ERROR",
     "Field 'context' is not valid text: it contains a lone UTF-16 surrogate.", "q3"),
    ("lone surrogate in key",
     b'{"id": "q4", "type": "add_context", "context": "x", "key": "k\\ud800"}',
     "VALIDATION_ERROR", "Field 'key' is not valid text: it contains a lone UTF-16 surrogate.",
     "q4"),
    ("lone surrogate in room_id",
     b'{"id": "q5", "type": "speak", "message": "x", "room_id": "\\ud800"}',
     "VALIDATION_ERROR",
     "Field 'room_id' is not valid text: it contains a lone UTF-16 surrogate.", "q5"),
    ("lone surrogate in agent_code",
     b'{"id": "q6", "type": "remove_context", "key": "k", "agent_code": "\\udbff"}',
     "VALIDATION_ERROR",
     "Field 'agent_code' is not valid text: it contains a lone UTF-16 surrogate.", "q6"),
    ("signed sender not a string",
     b'{"type": "signed", "body": "{}", "timestamp": 1, "signature": "00", "sender": 7}',
     "VALIDATION_ERROR", "Field 'sender' must be a string.", None),
    ("empty signed sender",
     b'{"type": "signed", "body": "{}", "timestamp": 1, "signature": "00", "sender": ""}',
     "VALIDATION_ERROR", "Field 'sender' must not be empty.", None),
    ("signed sender too long",
     json.dumps({"type": "signed", "body": "{}", "timestamp": 1, "signature": "00",
                 "sender": "s" * 129}).encode(),
     "VALIDATION_ERROR", "Field 'sender' must be at most 128 characters.", None),
    ("invisible signed sender",
     json.dumps({"type": "signed", "body": "{}", "timestamp": 1, "signature": "00",
                 "sender": "\u200b"}).encode(),
     "VALIDATION_ERROR",
     "Field 'sender' must contain visible text, not only invisible or control characters.",
     None),
    ("control character in a signed sender",
     json.dumps({"type": "signed", "body": "{}", "timestamp": 1, "signature": "00",
                 "sender": "gate\nway"}).encode(),
     "VALIDATION_ERROR", "Field 'sender' must not contain control characters.", None),
    ("lone surrogate in a signed sender",
     b'{"type": "signed", "body": "{}", "timestamp": 1, "signature": "00", "sender": "\\ud800"}',
     "VALIDATION_ERROR",
     "Field 'sender' is not valid text: it contains a lone UTF-16 surrogate.", None),
    ("signed for another sender",
     json.dumps({"type": "signed", "body": "{}", "timestamp": 1, "signature": "00",
                 "sender": "imaginex-gateway"}).encode(),
     "UNAUTHORIZED", "The signature does not match the message.", None),
    ("lone surrogate in a signed body",
     b'{"type": "signed", "body": "\\ud800", "timestamp": 1, "signature": "00"}',
     "VALIDATION_ERROR", "Field 'body' is not valid text: it contains a lone UTF-16 surrogate.",
     None),
    # text with nothing to say or know: zero-width, control, private-use characters
    ("zero-width message",
     json.dumps({"id": "v1", "type": "speak", "message": "\u200b\u200d\u2060\ufeff"}).encode(),
     "VALIDATION_ERROR",
     "Field 'message' must contain visible text, not only invisible or control characters.",
     "v1"),
    ("control characters message",
     json.dumps({"id": "v2", "type": "speak", "message": "\u0000\u0007 \u001b"}).encode(),
     "VALIDATION_ERROR",
     "Field 'message' must contain visible text, not only invisible or control characters.",
     "v2"),
    ("private use and bidi marks",
     json.dumps({"id": "v3", "type": "speak", "context": "\ue000\u200e\u3000\u2029"}).encode(),
     "VALIDATION_ERROR",
     "Field 'context' must contain visible text, not only invisible or control characters.",
     "v3"),
    ("invisible instructions",
     json.dumps({"id": "v4", "type": "speak", "instructions": "\u200b \u00ad"}).encode(),
     "VALIDATION_ERROR",
     "Field 'instructions' must contain visible text, not only invisible or control characters.",
     "v4"),
    ("invisible context",
     json.dumps({"id": "v5", "type": "add_context", "context": "\u2063\n\u180e"}).encode(),
     "VALIDATION_ERROR",
     "Field 'context' must contain visible text, not only invisible or control characters.",
     "v5"),
    # "" cannot be a deduplication key: a second message with it would be dropped
    ("empty id", b'{"id": "", "type": "speak", "message": "x"}', "VALIDATION_ERROR",
     "Field 'id' must be 1 to 128 characters.", ""),
    # v1.1: every new field
    ("end_call_after as string",
     b'{"id": "w1", "type": "speak", "message": "x", "end_call_after": "yes"}',
     "VALIDATION_ERROR", "Field 'end_call_after' must be a boolean.", "w1"),
    ("add_to_history as number",
     b'{"id": "w2", "type": "speak", "message": "x", "add_to_history": 0}',
     "VALIDATION_ERROR", "Field 'add_to_history' must be a boolean.", "w2"),
    ("after_speech as string", b'{"id": "w3", "type": "end_call", "after_speech": "false"}',
     "VALIDATION_ERROR", "Field 'after_speech' must be a boolean.", "w3"),
    ("reason not a string", b'{"id": "w4", "type": "end_call", "reason": 5}',
     "VALIDATION_ERROR", "Field 'reason' must be a string.", "w4"),
    ("reason too long", json.dumps({"id": "w5", "type": "end_call", "reason": "r" * 257}).encode(),
     "VALIDATION_ERROR", "Field 'reason' must be at most 256 characters.", "w5"),
    ("lone surrogate in reason", b'{"id": "w6", "type": "end_call", "reason": "\\ud800"}',
     "VALIDATION_ERROR",
     "Field 'reason' is not valid text: it contains a lone UTF-16 surrogate.", "w6"),
    ("force as string", b'{"id": "w7", "type": "interrupt", "force": "true"}',
     "VALIDATION_ERROR", "Field 'force' must be a boolean.", "w7"),
    ("cancel without target", b'{"id": "w8", "type": "cancel"}', "VALIDATION_ERROR",
     "Missing field 'target_id'.", "w8"),
    ("cancel with empty target", b'{"id": "w9", "type": "cancel", "target_id": ""}',
     "VALIDATION_ERROR", "Field 'target_id' must not be empty.", "w9"),
    ("target not a string", b'{"id": "w10", "type": "cancel", "target_id": 3}',
     "VALIDATION_ERROR", "Field 'target_id' must be a string.", "w10"),
    ("target too long", json.dumps({"id": "w11", "type": "cancel", "target_id": "t" * 129})
     .encode(), "VALIDATION_ERROR", "Field 'target_id' must be at most 128 characters.", "w11"),
    ("update_io with no switch", b'{"id": "w12", "type": "update_io"}', "VALIDATION_ERROR",
     "Give at least one of 'agent_audio', 'user_audio' or 'transcription'.", "w12"),
    ("agent_audio as string", b'{"id": "w13", "type": "update_io", "agent_audio": "off"}',
     "VALIDATION_ERROR", "Field 'agent_audio' must be a boolean.", "w13"),
    ("user_audio as number", b'{"id": "w14", "type": "update_io", "user_audio": 0}',
     "VALIDATION_ERROR", "Field 'user_audio' must be a boolean.", "w14"),
    ("transcription as string", b'{"id": "w15", "type": "update_io", "transcription": "no"}',
     "VALIDATION_ERROR", "Field 'transcription' must be a boolean.", "w15"),
    ("update_instructions without text", b'{"id": "w16", "type": "update_instructions"}',
     "VALIDATION_ERROR", "Missing field 'instructions'.", "w16"),
    ("invisible new instructions",
     json.dumps({"id": "w17", "type": "update_instructions", "instructions": "\u200b"}).encode(),
     "VALIDATION_ERROR",
     "Field 'instructions' must contain visible text, not only invisible or control characters.",
     "w17"),
    ("bad instructions mode",
     b'{"id": "w18", "type": "update_instructions", "instructions": "x", "mode": "merge"}',
     "VALIDATION_ERROR", "Field 'mode' must be one of: append, replace.", "w18"),
    ("user_message without text", b'{"id": "w19", "type": "user_message"}',
     "VALIDATION_ERROR", "Missing field 'text'.", "w19"),
    ("user_message blank", b'{"id": "w20", "type": "user_message", "text": " "}',
     "VALIDATION_ERROR", "Field 'text' must not be empty.", "w20"),
    ("user_message text not a string", b'{"id": "w21", "type": "user_message", "text": ["x"]}',
     "VALIDATION_ERROR", "Field 'text' must be a string.", "w21"),
    ("lone surrogate in user text",
     b'{"id": "w22", "type": "user_message", "text": "hi \\udc00"}', "VALIDATION_ERROR",
     "Field 'text' is not valid text: it contains a lone UTF-16 surrogate.", "w22"),
    ("respond as string", b'{"id": "w23", "type": "user_message", "text": "x", "respond": "1"}',
     "VALIDATION_ERROR", "Field 'respond' must be a boolean.", "w23"),
    ("user_message interrupt as number",
     b'{"id": "w24", "type": "user_message", "text": "x", "interrupt": 1}',
     "VALIDATION_ERROR", "Field 'interrupt' must be a boolean.", "w24"),
    ("history limit zero", b'{"id": "w25", "type": "get_history", "limit": 0}',
     "VALIDATION_ERROR", "Field 'limit' is out of range.", "w25"),
    ("history limit too high", b'{"id": "w26", "type": "get_history", "limit": 201}',
     "VALIDATION_ERROR", "Field 'limit' is out of range.", "w26"),
    ("history limit as string", b'{"id": "w27", "type": "get_history", "limit": "5"}',
     "VALIDATION_ERROR", "Field 'limit' must be an integer.", "w27"),
    ("history limit a fraction", b'{"id": "w28", "type": "get_history", "limit": 2.5}',
     "VALIDATION_ERROR", "Field 'limit' must be an integer.", "w28"),
    # v1.1 subscribe
    ("subscribe without events", b'{"id": "e1", "type": "subscribe"}', "VALIDATION_ERROR",
     "Missing field 'events'.", "e1"),
    ("events as a string", b'{"id": "e2", "type": "subscribe", "events": "agent_state"}',
     "VALIDATION_ERROR", "Field 'events' must be a list of event names.", "e2"),
    ("events as an object", b'{"id": "e3", "type": "subscribe", "events": {"a": 1}}',
     "VALIDATION_ERROR", "Field 'events' must be a list of event names.", "e3"),
    ("no events", b'{"id": "e4", "type": "subscribe", "events": []}', "VALIDATION_ERROR",
     "Field 'events' must name at least one event.", "e4"),
    ("unknown event", b'{"id": "e5", "type": "subscribe", "events": ["agent_state", "audio"]}',
     "VALIDATION_ERROR",
     "Field 'events.1' must be one of: user_transcript, agent_transcript, agent_state, "
     "user_state, conversation_item, tool_call, call_ended, speech, context.", "e5"),
    ("event not a string", b'{"id": "e6", "type": "subscribe", "events": [1]}',
     "VALIDATION_ERROR",
     "Field 'events.0' must be one of: user_transcript, agent_transcript, agent_state, "
     "user_state, conversation_item, tool_call, call_ended, speech, context.", "e6"),
    ("too many events", json.dumps({"id": "e7", "type": "subscribe", "events": ["tool_call"] * 19})
     .encode(), "VALIDATION_ERROR", "Field 'events' is invalid.", "e7"),
    ("interim as string",
     b'{"id": "e8", "type": "subscribe", "events": ["user_transcript"], "interim": "yes"}',
     "VALIDATION_ERROR", "Field 'interim' must be a boolean.", "e8"),
    ("tool_arguments as number",
     b'{"id": "e9", "type": "subscribe", "events": ["tool_call"], "tool_arguments": 1}',
     "VALIDATION_ERROR", "Field 'tool_arguments' must be a boolean.", "e9"),
    # valid JSON nested too deeply to decode (about 10 KB, within a packet)
    ("deeply nested", b"[" * 5_000 + b"]" * 5_000, "VALIDATION_ERROR",
     "Message is not valid JSON.", None),
    ("deeply nested field", b'{"id": "n1", "type": "speak", "message": ' + b"[" * 5_000
     + b"]" * 5_000 + b"}", "VALIDATION_ERROR", "Message is not valid JSON.", None),
    ("deeply nested signed body",
     json.dumps({"type": "signed", "body": "[" * 5_000 + "]" * 5_000, "timestamp": 1,
                 "signature": "00"}).encode(),
     "VALIDATION_ERROR", "Message is not valid JSON.", None),
]


@pytest.mark.parametrize("via", ["data", "rpc"])
@pytest.mark.parametrize(
    ("packet", "code", "message", "request_id"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_one_clear_error_ack_and_changes_nothing(
    harness: Harness, packet: bytes, code: str, message: str, request_id: str | None, via: str
) -> None:
    if via == "data":
        await harness.backend.send(packet)
        [ack] = await harness.backend.settle(1)
    else:
        if len(packet) > MAX_PAYLOAD_BYTES or not _is_utf8(packet):
            pytest.skip("an RPC payload is UTF-8 text of at most 15 KiB: the SDK refuses this")
        ack = await harness.backend.rpc(packet.decode("utf-8"))
        assert harness.backend.acks() == []  # the answer is the RPC response, and only that

    assert ack["success"] is False
    assert ack["error"] == code
    assert ack["id"] == request_id
    if message:
        assert ack["message"] == message
    else:
        assert ack["message"].endswith("(15 KiB).")
    assert harness.tts.texts == []
    assert harness.context_messages() == []

    # the agent is unharmed: the next good message is applied
    ok = await harness.backend.request({"type": "add_context", "id": "next", "context": "fine"})
    assert ok["success"] is True


def _validly_signed(packet: bytes) -> bool:
    try:
        obj = json.loads(packet)
    except ValueError:
        return False
    if not (
        isinstance(obj, dict)
        and obj.get("type") == "signed"
        and isinstance(obj.get("body"), str)
        and isinstance(obj.get("timestamp"), int)
    ):
        return False
    sender = obj.get("sender")
    if sender is not None and not isinstance(sender, str):
        return False
    try:
        expected = compute_signature(obj["body"], obj["timestamp"], _SECRET, sender=sender)
    except UnicodeEncodeError:  # a body that is not text cannot have been signed
        return False
    return bool(obj.get("signature") == expected)


def _is_utf8(packet: bytes) -> bool:
    try:
        packet.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class CollectingTransport(AckTransport):
    """Keeps every answer instead of publishing it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, payload: bytes, destination_identity: str) -> None:
        self.sent.append((destination_identity, json.loads(payload)))


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
# strings that are valid JSON but hard to handle: lone surrogates, invisible-only text, ""
_awkward = st.text(
    st.sampled_from(["\ud800", "\udfff", "\u200b", "\x00", "\ue000", " ", "a", "é", "\U0001f600"]),
    max_size=6,
)
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(
        [
            "speak", "add_context", "remove_context", "get_state", "subscribe", "unsubscribe",
            "x", "end_call", "interrupt", "cancel", "update_io", "update_instructions",
            "reset_instructions", "user_message", "get_history",
        ]
    )
    | _json_scalars,
    "id": st.text(string.ascii_letters, max_size=140) | _awkward | _json_scalars,
    "message": st.text(max_size=40) | _awkward | _json_values,
    "context": st.text(max_size=40) | _awkward | _json_values,
    "instructions": st.text(max_size=20) | _awkward | _json_scalars,
    "key": st.text(max_size=10) | _awkward | _json_scalars,
    "role": st.sampled_from(["system", "developer", "user", "assistant", "boss"]) | _json_scalars,
    "mode": st.sampled_from(["queue", "interrupt", "if_idle", "append", "replace", "x"])
    | _json_scalars,
    "interrupt": _json_scalars,
    "allow_interruptions": _json_scalars,
    "scope": st.sampled_from(["persistent", "next_turn"]) | _json_scalars,
    "ttl_s": st.floats(allow_nan=False) | _json_scalars,
    "room_id": st.sampled_from(["room-1", "other"]) | _json_scalars,
    "agent_code": st.sampled_from(["A12345678", "other"]) | _json_scalars,
    "trigger_reply": _json_scalars,
    # v1.1 call control
    "end_call_after": _json_scalars,
    "add_to_history": _json_scalars,
    "after_speech": _json_scalars,
    "reason": st.text(max_size=20) | _awkward | _json_scalars,
    "force": _json_scalars,
    "target_id": st.text(string.ascii_letters, max_size=140) | _awkward | _json_scalars,
    "agent_audio": _json_scalars,
    "user_audio": _json_scalars,
    "transcription": _json_scalars,
    "text": st.text(max_size=40) | _awkward | _json_values,
    "respond": _json_scalars,
    "limit": st.integers(-5, 300) | _json_scalars,
    "signature": st.text(max_size=10),
    # v1.1 subscribe
    "events": st.lists(
        st.sampled_from(["user_transcript", "agent_state", "call_ended", "x"]), max_size=3
    )
    | _json_values,
    "interim": _json_scalars,
    "tool_arguments": _json_scalars,
}
_requestish = st.fixed_dictionaries(
    {}, optional=_field_values
).map(lambda d: json.dumps(d).encode())
_SECRET = "property-secret"
# signed envelopes: validly signed random bodies, and random signatures (any characters)
_senders = st.text(max_size=8) | _awkward | _json_scalars
_signed = st.one_of(
    _requestish.map(lambda body: sign_request(body, _SECRET).encode()),
    st.tuples(_requestish, st.text(min_size=1, max_size=12)).map(
        lambda bs: sign_request(bs[0], _SECRET, sender=bs[1]).encode()
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("signed"),
            "body": _requestish.map(bytes.decode) | _awkward,
            "timestamp": st.integers() | _json_scalars,
            "signature": st.text(max_size=64) | _awkward,
        },
        optional={"sender": _senders},
    ).map(lambda d: json.dumps(d).encode()),
)
_payloads = st.one_of(
    st.binary(max_size=64),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _requestish,
    _signed,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payloads=st.lists(_payloads, min_size=1, max_size=12))
async def test_every_random_packet_gets_exactly_one_answer(
    make_harness: HarnessFactory, payloads: list[bytes]
) -> None:
    transport = CollectingTransport()
    session = await start_session(text_only=True)
    plugin = ContextPlugin(
        agent_code="A12345678",
        allowed_identities=[BACKEND_IDENTITY],
        rate_limit=None,
        ready_timeout=0.5,
        ack_transport=transport,
        secret=_SECRET,
    )
    harness: Harness = await make_harness(start_plugin=False)
    await plugin.start(session, harness.agent_room)
    try:
        for i, payload in enumerate(payloads):
            plugin.ingest(payload, sender_identity=BACKEND_IDENTITY if i % 4 else "stranger")

        async def all_answered() -> None:
            while sum(1 for _, m in transport.sent if m["type"] == "ack") < len(payloads):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(all_answered(), 10)
        await asyncio.sleep(0.02)
        acks = [m for _, m in transport.sent if m["type"] == "ack"]
        assert len(acks) == len(payloads)
        for ack in acks:
            assert isinstance(ack["message"], str)
            assert ack["message"]
            if not ack["success"]:
                assert ack["error"] in {
                    "VALIDATION_ERROR", "UNAUTHORIZED", "AGENT_NOT_FOUND", "NO_ACTIVE_ROOMS",
                    "PAYLOAD_TOO_LARGE", "BUSY", "ID_REUSED", "NOT_FOUND",
                }
        # nothing from the untrusted sender was applied, unless it relayed a valid signature
        stranger_acks = [m for who, m in transport.sent if who == "stranger" and m["type"] == "ack"]
        if not any(_validly_signed(p) for i, p in enumerate(payloads) if i % 4 == 0):
            assert not any(a["success"] for a in stranger_acks)
        assert plugin.stats.received == len(payloads)
        assert plugin.stats.errors.get("INTERNAL_ERROR", 0) == 0
    finally:
        await plugin.aclose()
        await session.aclose()


# ---------------------------------------------------------------------------------------------
# the room's own entry: random packets through real rtc.Room objects on the relay


_SERVER_SECRET = "property-server-secret"
_routes = st.sampled_from(
    ["backend", "backend", "backend-rpc", "backend-rpc", "stranger", "stranger-rpc", "server"]
)
_topics = st.integers(0, 9).flatmap(
    lambda n: st.just(CONTEXT_TOPIC)
    if n < 7
    else st.sampled_from([ACK_TOPIC, "", "imaginex.context.x"]) | st.text(max_size=12)
)
# requests that are valid as generated, of every type, so that the fuzz gets past validation
# into the applier: a few ids (repeats, reuse, cancels that find their speech), short texts
_ids = st.sampled_from(["a", "b", "c"]) | st.text(string.ascii_letters, min_size=1, max_size=8)
_texts = st.sampled_from(["Hello there.", "Your order shipped."]) | st.text(
    string.ascii_letters + " .,!?é", min_size=1, max_size=30
).filter(str.strip)
_keys = st.sampled_from(["k1", "k2"])


def _request(kind: str, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.fixed_dictionaries(
        {"type": st.just(kind), "id": _ids, **required}, optional=optional
    )


_valid_requests = st.one_of(
    _request("speak", {"message": _texts}, {
        "mode": st.sampled_from(["queue", "interrupt", "if_idle"]),
        "allow_interruptions": st.booleans(), "add_to_history": st.booleans(),
        "instructions": _texts,
    }),
    _request("add_context", {"context": _texts}, {
        "key": _keys, "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "scope": st.sampled_from(["persistent", "next_turn"]),
        "ttl_s": st.floats(0.01, 100), "trigger_reply": st.booleans(),
    }),
    _request("remove_context", {"key": _keys}, {}),
    _request("get_state", {}, {}),
    _request("interrupt", {}, {"force": st.booleans()}),
    _request("cancel", {"target_id": _ids}, {}),
    _request("update_io", {"agent_audio": st.booleans()}, {
        "user_audio": st.booleans(), "transcription": st.booleans(),
    }),
    _request("update_instructions", {"instructions": _texts}, {
        "mode": st.sampled_from(["append", "replace"]),
    }),
    _request("reset_instructions", {}, {}),
    _request("user_message", {"text": _texts}, {
        "respond": st.booleans(), "interrupt": st.booleans(),
    }),
    _request("get_history", {}, {"limit": st.integers(1, 200)}),
    _request("subscribe", {"events": st.lists(
        st.sampled_from(SESSION_EVENT_TYPES), min_size=1, max_size=3)}, {}),
    _request("unsubscribe", {}, {}),
    _request("end_call", {}, {"after_speech": st.booleans(), "reason": _texts}),
)


def _mutated(request: dict[str, Any], field: str | None, value: Any) -> dict[str, Any]:
    """``request`` with one field changed to ``value`` (or, for ``None``, as it is)."""
    if field is None:
        return request
    if value is _DROP:
        return {k: v for k, v in request.items() if k != field}
    return {**request, field: value}


_DROP = object()
_near_valid = st.builds(
    _mutated,
    _valid_requests,
    # most requests as generated, the others with one field dropped or set to anything
    st.booleans().flatmap(lambda change: st.sampled_from(sorted(_field_values)) if change
                          else st.none()),
    st.just(_DROP) | _json_values,
).map(lambda d: json.dumps(d).encode())
_near_valid_signed = st.tuples(_near_valid, st.none() | st.sampled_from(["imaginex-gateway"])).map(
    lambda bs: sign_request(bs[0], _SECRET, sender=bs[1]).encode()
)
# a server-API packet has no participant: only a signature can vouch for it, and one the
# fuzz signed validly would be applied without an answer anyone could count
_deliveries = st.tuples(
    # (mapped, so that one_of weighs it as one branch, not as its four)
    _routes, _topics, st.one_of(_payloads.map(bytes), _near_valid, _near_valid_signed)
).filter(lambda d: not (d[0] == "server" and _validly_signed(d[2])))


class _ErrorRecords(logging.Handler):
    """Every record at ERROR or above, from any logger: an exception that escaped somewhere."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries=st.lists(_deliveries, min_size=1, max_size=10))
async def test_random_packets_through_the_room_get_one_answer_or_a_documented_silence(
    deliveries: list[tuple[str, str, bytes]],
) -> None:
    """Bytes, JSON, envelopes and topics from a trusted participant, an untrusted one, the
    server API (no participant) and over RPC, into a real ``AgentSession`` through real
    ``rtc.Room`` objects: a participant gets exactly one ack per packet on the context topic
    (RPC: one response), every other packet is silence (another topic; the server API, which
    cannot be answered), nothing escapes a room callback, and nothing is spoken that no
    success ack reported."""
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    errors = _ErrorRecords()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    logging.getLogger().addHandler(errors)
    network = RelayNetwork()
    session = await start_session(audio_output=RecordingAudioOutput(speed=50.0))
    spoken: list[str] = []
    session.on("speech_created", lambda ev: spoken.append(ev.speech_handle.id))
    agent_room = network.create_room(
        "fuzz-room", "agent", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )
    plugin = ContextPlugin(
        agent_code="A12345678",
        allowed_identities=[BACKEND_IDENTITY],
        server_secret=_SERVER_SECRET,
        secret=_SECRET,
        ready_timeout=0.5,
        permissions={BACKEND_IDENTITY: {"*"}, "imaginex-gateway": {"*"}},
    )
    senders = {
        name: Backend(network.create_room("fuzz-room", name))
        for name in (BACKEND_IDENTITY, "stranger")
    }
    await plugin.start(session, agent_room)
    rpc_answers: list[dict[str, Any]] = []
    expected = {name: 0 for name in senders}
    received = 0
    try:
        for route, topic, payload in deliveries:
            name = route.removesuffix("-rpc")
            if route.endswith("-rpc"):
                answer = await senders[name].rpc(payload.decode("utf-8", "replace"))
                rpc_answers.append(answer)
                received += 1
            elif route == "server":
                await network.send_server_data(
                    "fuzz-room", payload, topic=topic, destination_identities=["agent"]
                )
                received += topic == CONTEXT_TOPIC
            else:
                await senders[name].room.local_participant.publish_data(
                    payload, topic=topic, destination_identities=["agent"]
                )
                expected[name] += topic == CONTEXT_TOPIC
                received += topic == CONTEXT_TOPIC

        def answered() -> bool:
            return plugin.stats.received == received and all(
                len(senders[name].acks()) >= count for name, count in expected.items()
            )

        await wait_until(answered, "every packet on the topic to be answered")
        await wait_until(lambda: plugin.idle, "the queue to be applied and answered")
        await asyncio.sleep(0.05)  # time for an answer too many to show

        acks = [*rpc_answers]
        for name, count in expected.items():
            assert len(senders[name].acks()) == count, name
            acks += senders[name].acks()
        # nobody else was answered: the server API and other topics get silence
        answered_to = {
            d for p in network.published if p.sender == "agent" for d in p.destinations
        }
        assert answered_to <= set(senders)
        assert plugin.stats.received == received
        for ack in acks:
            assert ack["type"] == "ack"
            assert isinstance(ack["message"], str)
            assert ack["message"]
            if not ack["success"]:
                assert ack["error"] in {
                    "VALIDATION_ERROR", "UNAUTHORIZED", "AGENT_NOT_FOUND", "NO_ACTIVE_ROOMS",
                    "PAYLOAD_TOO_LARGE", "BUSY", "ID_REUSED", "NOT_FOUND", "RATE_LIMITED",
                    "NOT_READY",
                }
        # nothing is spoken that no success ack reported
        reported = {a["data"].get("speech_id") for a in acks if a["success"]}
        assert set(spoken) <= reported
        assert plugin.stats.errors.get("INTERNAL_ERROR", 0) == 0
    finally:
        await plugin.aclose()
        await session.aclose()
        await network.aclose()
        logging.getLogger().removeHandler(errors)
        loop.set_exception_handler(previous_handler)
    assert escaped == []
    assert [(r.name, r.getMessage()) for r in errors.records] == []


DEEP = "[" * 5_000 + "]" * 5_000


@pytest.mark.parametrize(
    "raw", [DEEP, '{"type": "ack", "id": "x", "data": ' + DEEP + "}", DEEP.encode()]
)
def test_json_from_others_nested_too_deeply_is_a_value_error_where_we_parse_it(
    raw: str | bytes,
) -> None:
    """What a sender (the client, the gateway) reads from a room: never a RecursionError."""
    from imaginex_context_plugin import protocol

    for parse in (protocol.load_untrusted_json, protocol.parse_ack, protocol.parse_server_message):
        with pytest.raises(ValueError, match="recursion limit exceeded"):
            parse(raw)
