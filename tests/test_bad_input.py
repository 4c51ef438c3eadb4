"""Bad input always gets one clear error ack, never crashes the agent, loses a message or speaks.

A table of known-bad packets, then hypothesis over random payloads: every packet on the topic
gets exactly one ack, and the plugin keeps working afterwards.
"""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaginex_context_plugin import MAX_PAYLOAD_BYTES, AckTransport, ContextPlugin
from tests.conftest import BACKEND_IDENTITY, Harness, HarnessFactory
from tests.livekit_fakes import start_session

TYPES = "speak, add_context, remove_context, get_state"

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
    ("signed without a secret",
     b'{"type": "signed", "body": "{}", "timestamp": 1, "signature": "00"}',
     "UNAUTHORIZED", "This agent does not accept signed messages: it has no secret configured.",
     None),
    ("wrong room", b'{"id": "o", "type": "speak", "message": "x", "room_id": "elsewhere"}',
     "NO_ACTIVE_ROOMS", "No active sessions found for agent in room 'elsewhere'", "o"),
    ("wrong agent", b'{"id": "p", "type": "speak", "message": "x", "agent_code": "Z1"}',
     "AGENT_NOT_FOUND", "Agent with code 'Z1' not found", "p"),
]


@pytest.mark.parametrize(
    ("packet", "code", "message", "request_id"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_one_clear_error_ack_and_changes_nothing(
    harness: Harness, packet: bytes, code: str, message: str, request_id: str | None
) -> None:
    await harness.backend.send(packet)
    [ack] = await harness.backend.settle(1)

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
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["speak", "add_context", "remove_context", "get_state", "x"])
    | _json_scalars,
    "id": st.text(string.ascii_letters, max_size=140) | _json_scalars,
    "message": st.text(max_size=40) | _json_values,
    "context": st.text(max_size=40) | _json_values,
    "instructions": st.text(max_size=20) | _json_scalars,
    "key": st.text(max_size=10) | _json_scalars,
    "role": st.sampled_from(["system", "developer", "user", "assistant", "boss"]) | _json_scalars,
    "mode": st.sampled_from(["queue", "interrupt", "if_idle", "x"]) | _json_scalars,
    "interrupt": _json_scalars,
    "allow_interruptions": _json_scalars,
    "scope": st.sampled_from(["persistent", "next_turn"]) | _json_scalars,
    "ttl_s": st.floats(allow_nan=False) | _json_scalars,
    "room_id": st.sampled_from(["room-1", "other"]) | _json_scalars,
    "agent_code": st.sampled_from(["A12345678", "other"]) | _json_scalars,
    "trigger_reply": _json_scalars,
    "signature": st.text(max_size=10),
}
_requestish = st.fixed_dictionaries(
    {}, optional=_field_values
).map(lambda d: json.dumps(d).encode())
_payloads = st.one_of(
    st.binary(max_size=64),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _requestish,
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
                    "PAYLOAD_TOO_LARGE", "BUSY",
                }
        # nothing from the untrusted sender was applied
        stranger_acks = [m for who, m in transport.sent if who == "stranger" and m["type"] == "ack"]
        assert not any(a["success"] for a in stranger_acks)
        assert plugin.stats.received == len(payloads)
        assert plugin.stats.errors.get("INTERNAL_ERROR", 0) == 0
    finally:
        await plugin.aclose()
        await session.aclose()
