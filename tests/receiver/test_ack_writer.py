"""The receiver writes success acks straight to bytes: they must be the models' bytes exactly."""

from __future__ import annotations

from typing import Any

import pytest

from imaginex_context_plugin.protocol import (
    ADD_CONTEXT_SUCCESS_MESSAGE,
    GET_STATE_SUCCESS_MESSAGE,
    REMOVE_CONTEXT_SUCCESS_MESSAGE,
    SPEAK_SUCCESS_MESSAGE,
    AddContextRequest,
    AgentStateInfo,
    ContextEntryInfo,
    GetStateRequest,
    RemoveContextRequest,
    SpeakRequest,
    SuccessAck,
    encode_message,
)
from imaginex_context_plugin.receiver.answers import AckWriter, as_duplicate
from imaginex_context_plugin.receiver.jobs import Success

# every character JSON must escape, and some it must not: quotes, backslash, controls, DEL,
# line/paragraph separators, non-BMP, right-to-left
AWKWARD = 'a"b\\c\n\r\t\b\f\x00\x1f\x7f\u2028\u2029 é 中 🎉 \u200b עברית </script>'


def model_bytes(writer: AckWriter, request: Any, message: str, **data: Any) -> bytes:
    return encode_message(writer.success_model(request, message, **data))


@pytest.mark.parametrize("agent_code", [None, "A12345678", AWKWARD])
@pytest.mark.parametrize("room", ["room-1", AWKWARD])
@pytest.mark.parametrize("request_id", [None, "r1", AWKWARD])
@pytest.mark.parametrize(
    ("base", "message", "data"),
    [
        (SpeakRequest(type="speak", message="hi"), SPEAK_SUCCESS_MESSAGE,
         {"speech_id": "speech_1", "method": "say"}),
        (SpeakRequest(type="speak", message="hi"), SPEAK_SUCCESS_MESSAGE,
         {"speech_id": AWKWARD, "method": "generate_reply", "fallback": "generate_reply"}),
        (AddContextRequest(type="add_context", context="x"), ADD_CONTEXT_SUCCESS_MESSAGE,
         {"key": None, "evicted": 0}),
        (AddContextRequest(type="add_context", context="x"), ADD_CONTEXT_SUCCESS_MESSAGE,
         {"key": AWKWARD, "evicted": 12}),
        (AddContextRequest(type="add_context", context="x"), ADD_CONTEXT_SUCCESS_MESSAGE,
         {"key": "k", "speech_id": "speech_2", "method": "generate_reply"}),
        (RemoveContextRequest(type="remove_context", key="k"), REMOVE_CONTEXT_SUCCESS_MESSAGE,
         {"key": "k", "removed": True}),
        (RemoveContextRequest(type="remove_context", key="k"), REMOVE_CONTEXT_SUCCESS_MESSAGE,
         {"key": "k", "removed": False}),
    ],
)
def test_written_acks_are_the_models_bytes(
    agent_code: str | None,
    room: str,
    request_id: str | None,
    base: Any,
    message: str,
    data: dict[str, Any],
) -> None:
    writer = AckWriter(agent_code, lambda: room)
    request = base.model_copy(update={"id": request_id})
    written = writer.success(request, message, **data)
    expected = model_bytes(writer, request, message, **data)
    # the timestamp is the only field that may differ (a millisecond may pass in between)
    stamp = expected.index(b'"timestamp":"') + len(b'"timestamp":"')
    assert written.payload[:stamp] == expected[:stamp]
    assert written.payload[stamp + 24 :] == expected[stamp + 24 :]
    SuccessAck.model_validate_json(written.payload)  # and it parses as the model it claims


def test_a_written_state_ack_is_the_models_bytes() -> None:
    writer = AckWriter("A1", lambda: "room")
    request = GetStateRequest(type="get_state", id=AWKWARD)
    entry = ContextEntryInfo(
        entry_id="e1", key=AWKWARD, role="system", chars=3, scope="next_turn",
        expires_in_s=1.5, request_id=None,
    )
    state = AgentStateInfo(
        agent_state="listening", user_state="speaking", current_agent=None,
        context_entries=[entry], context_chars=3, pending_speeches=["speech_1", AWKWARD],
    )
    written = writer.success(request, GET_STATE_SUCCESS_MESSAGE, state=state)
    expected = model_bytes(writer, request, GET_STATE_SUCCESS_MESSAGE, state=state)
    stamp = expected.index(b'"timestamp":"') + len(b'"timestamp":"')
    assert written.payload[:stamp] == expected[:stamp]
    assert written.payload[stamp + 24 :] == expected[stamp + 24 :]


def test_the_room_name_is_read_again_when_it_changes() -> None:
    names = iter(["", "room-2"])
    writer = AckWriter("A1", lambda: next(names))
    request = AddContextRequest(type="add_context", id="c", context="x")
    first = writer.success(request, ADD_CONTEXT_SUCCESS_MESSAGE, evicted=0)
    second = writer.success(request, ADD_CONTEXT_SUCCESS_MESSAGE, evicted=0)
    assert SuccessAck.model_validate_json(first.payload).data.room_id == ""
    assert SuccessAck.model_validate_json(second.payload).data.room_id == "room-2"


def test_a_duplicate_is_the_first_ack_marked_duplicate() -> None:
    writer = AckWriter("A1", lambda: "room")
    request = AddContextRequest(type="add_context", id="c", context="x", key="k")
    first = writer.success(request, ADD_CONTEXT_SUCCESS_MESSAGE, key="k", evicted=0)
    again = as_duplicate(first.payload)
    model = SuccessAck.model_validate_json(first.payload)
    assert again == Success(encode_message(model.model_copy(update={"duplicate": True})), True)
