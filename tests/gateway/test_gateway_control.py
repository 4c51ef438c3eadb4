"""The gateway's call-control endpoints (protocol v1.1): ``POST /v1/agent/{agent_code}/<name>``
for end-call, interrupt, cancel, update-io, update-instructions, reset-instructions,
user-message and get-history, and speak's ``end_call_after`` / ``add_to_history``.

What each body becomes on the wire is checked against a recording agent (a participant that
answers the RPC with an ack built from the protocol models); what the agents do with it, against
real ContextPlugins on real AgentSessions (``tests/gateway_fixtures.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from livekit import rtc

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, RPC_METHOD
from imaginex_context_plugin.errors import ErrorCode
from imaginex_context_plugin.gateway import build_openapi
from imaginex_context_plugin.protocol import (
    USER_MESSAGE_SUCCESS_MESSAGE,
    AckData,
    HistoryItem,
    IOState,
    SuccessAck,
    encode_message,
    error_ack,
    parse_request,
    utc_timestamp,
)
from tests.gateway_fixtures import (
    CODE,
    GATEWAY,
    ROOM_1,
    ROOM_2,
    SECRET,
    Fleet,
    GatewayFactory,
    post,
)
from tests.helpers import wait_until

ENDPOINTS = (
    "remove-context",
    "get-state",
    "end-call",
    "interrupt",
    "cancel",
    "update-io",
    "update-instructions",
    "reset-instructions",
    "user-message",
    "get-history",
)
Answer = Callable[[dict[str, Any]], bytes]


def success(obj: dict[str, Any], **data: Any) -> bytes:
    """The ack a v1.1 agent gives ``obj``, with ``data`` added."""
    fields: dict[str, Any] = {
        "agent_code": CODE,
        "context_type": obj["type"],
        "room_id": obj["room_id"],
        "timestamp": utc_timestamp(),
    }
    ack = SuccessAck(id=obj["id"], message=f"{obj['type']} done", data=AckData(**fields, **data))
    return encode_message(ack)


def recording_agent(
    fleet: Fleet, room: str, answer: Answer = success
) -> list[dict[str, Any]]:
    """A participant publishing the code that records each request and answers ``answer``."""
    fleet.register_room(room)
    agent = fleet.network.create_room(
        room,
        "recording-agent",
        kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        attributes={AGENT_CODE_ATTRIBUTE: CODE},
    )
    received: list[dict[str, Any]] = []

    async def handler(invocation: rtc.RpcInvocationData) -> str:
        parse_request(invocation.payload)  # a valid protocol request, or the test fails
        obj = json.loads(invocation.payload)
        received.append(obj)
        return answer(obj).decode("utf-8")

    agent.local_participant.register_rpc_method(RPC_METHOD, handler)
    return received


def without_envelope(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("id", "agent_code", "room_id")}


# ---------------------------------------------------------------------------------------------
# each body on the wire


@pytest.mark.parametrize(
    ("endpoint", "body", "sent"),
    [
        ("end-call", {}, {"type": "end_call"}),
        (
            "end-call",
            {"after_speech": False, "reason": "Order complete"},
            {"type": "end_call", "after_speech": False, "reason": "Order complete"},
        ),
        ("interrupt", {"force": True}, {"type": "interrupt", "force": True}),
        ("cancel", {"target_id": "promo-1"}, {"type": "cancel", "target_id": "promo-1"}),
        (
            "update-io",
            {"user_audio": False, "transcription": True},
            {"type": "update_io", "user_audio": False, "transcription": True},
        ),
        (
            "update-instructions",
            {"instructions": "Answer in French.", "mode": "replace"},
            {"type": "update_instructions", "instructions": "Answer in French.", "mode": "replace"},
        ),
        ("reset-instructions", {}, {"type": "reset_instructions"}),
        (
            "user-message",
            {"text": "Change my address.", "respond": False, "interrupt": True},
            {"type": "user_message", "text": "Change my address.", "respond": False,
             "interrupt": True},
        ),
        ("get-history", {"limit": 7}, {"type": "get_history", "limit": 7}),
        ("remove-context", {"key": "order"}, {"type": "remove_context", "key": "order"}),
        ("get-state", {}, {"type": "get_state"}),
        (
            "speak",
            {"message": "Hold on.", "mode": "if_idle"},
            {"type": "speak", "message": "Hold on.", "mode": "if_idle"},
        ),
        (
            "add-context",
            {"context": "Order 42 shipped.", "key": "order"},
            {"type": "add_context", "context": "Order 42 shipped.", "key": "order"},
        ),
        (
            "add-context",
            {"context": "Order 42 shipped.", "key": "order", "type": "speak"},
            {"type": "speak", "context": "Order 42 shipped."},
        ),
        (
            "speak",
            {"message": "Goodbye!", "end_call_after": True, "add_to_history": False},
            {"type": "speak", "message": "Goodbye!", "end_call_after": True,
             "add_to_history": False},
        ),
    ],
)
async def test_each_body_becomes_its_protocol_request(
    fleet: Fleet,
    make_gateway: GatewayFactory,
    endpoint: str,
    body: dict[str, Any],
    sent: dict[str, Any],
) -> None:
    received = recording_agent(fleet, ROOM_1)
    client = await make_gateway()

    headers = {"api-secret": SECRET, "Idempotency-Key": "k-1"}
    status, answer, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", body, headers=headers)

    assert status == 200, answer
    assert len(received) == 1
    assert received[0]["id"] == "k-1"
    assert received[0]["agent_code"] == CODE
    assert received[0]["room_id"] == ROOM_1
    assert without_envelope(received[0]) == sent


async def test_the_answer_has_the_platform_shape_and_each_rooms_result(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    def answer(obj: dict[str, Any]) -> bytes:
        io = IOState(agent_audio=True, user_audio=False, transcription=True)
        return success(obj, io=io)

    recording_agent(fleet, ROOM_1, answer)
    recording_agent(fleet, ROOM_2, answer)
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/update-io", {"user_audio": False})

    assert status == 200
    assert body["success"] is True
    assert body["message"] == "update_io done"  # the agents' own sentence
    data = body["data"]
    assert set(data) == {
        "agent_code", "context_type", "delivered_to_rooms", "timestamp", "request_id", "rooms"
    }
    assert data["context_type"] == "update_io"
    assert data["delivered_to_rooms"] == 2
    io = {"agent_audio": True, "user_audio": False, "transcription": True}
    assert sorted(data["rooms"], key=lambda r: r["room"]) == [
        {"room": room, "delivered": True, "error": None, "message": None, "duplicate": False,
         "result": {"io": io}}
        for room in sorted((ROOM_1, ROOM_2))
    ]


async def test_get_history_returns_each_rooms_items(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    item = HistoryItem(
        id="item_1", role="user", text="Hi", interrupted=False, created_at=utc_timestamp()
    )
    recording_agent(fleet, ROOM_1, lambda obj: success(obj, history=[item], truncated=True))
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/get-history", {"room_id": ROOM_1})

    assert status == 200
    [room] = body["data"]["rooms"]
    assert room["result"] == {"history": [item.model_dump(mode="json")], "truncated": True}


async def test_the_seed_endpoints_answer_as_before_without_result(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    recording_agent(fleet, ROOM_1, lambda obj: success(obj, speech_id="speech_1"))
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})

    assert status == 200
    assert body["data"]["rooms"] == [
        {"room": ROOM_1, "delivered": True, "error": None, "message": None, "duplicate": False}
    ]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.NOT_FOUND, 404),
        (ErrorCode.BUSY, 409),
        (ErrorCode.NOT_READY, 503),
        (ErrorCode.UNAUTHORIZED, 502),
    ],
)
async def test_an_agents_refusal_maps_to_its_status(
    fleet: Fleet, make_gateway: GatewayFactory, code: ErrorCode, status: int
) -> None:
    def refuse(obj: dict[str, Any]) -> bytes:
        return encode_message(error_ack(code, "Refused for the test.", obj["id"]))

    recording_agent(fleet, ROOM_1, refuse)
    client = await make_gateway()

    got, body, _ = await post(client, f"/v1/agent/{CODE}/cancel", {"target_id": "gone"})

    assert got == status
    assert body["success"] is False
    expected = ErrorCode.INTERNAL_ERROR if code is ErrorCode.UNAUTHORIZED else code
    assert body["error"] == expected.value
    assert body["data"]["context_type"] == "cancel"
    assert body["data"]["rooms"][0]["error"] == code.value


# ---------------------------------------------------------------------------------------------
# refused before anything is sent


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        ("end-call", {"after_speech": "yes"}, "Field 'after_speech'"),
        ("end-call", {"reason": "r" * 257}, "Field 'reason'"),
        ("interrupt", {"force": 1}, "Field 'force'"),
        ("cancel", {}, "Missing field 'target_id'"),
        ("cancel", {"target_id": " "}, "Field 'target_id' must not be empty"),
        ("cancel", {"target_id": "t" * 129}, "Field 'target_id'"),
        ("update-io", {}, "Give at least one of 'agent_audio', 'user_audio' or 'transcription'"),
        ("update-io", {"agent_audio": "off"}, "Field 'agent_audio'"),
        ("update-instructions", {}, "Missing field 'instructions'"),
        ("update-instructions", {"instructions": "\u200b"}, "Field 'instructions'"),
        ("update-instructions", {"instructions": "x", "mode": "prepend"}, "Field 'mode'"),
        ("user-message", {"text": ""}, "Field 'text' must not be empty"),
        ("user-message", {"message": "hi"}, "Missing field 'text'"),
        ("get-history", {"limit": 0}, "Field 'limit'"),
        ("get-history", {"limit": 201}, "Field 'limit'"),
        ("get-history", {"limit": "5"}, "Field 'limit'"),
        ("speak", {"message": "hi", "end_call_after": "true"}, "Field 'end_call_after'"),
        ("speak", {"message": "hi", "mode": "now"}, "Field 'mode'"),
        ("add-context", {"context": "x", "key": ""}, "Field 'key' must not be empty"),
        ("add-context", {"context": "x", "key": "k" * 129}, "Field 'key'"),
        ("remove-context", {}, "Missing field 'key'"),
        ("remove-context", {"key": 5}, "Field 'key'"),
        ("interrupt", {"room_id": ""}, "Field 'room_id' must not be empty"),
    ],
)
async def test_invalid_bodies_are_400_and_nothing_is_sent(
    fleet: Fleet, make_gateway: GatewayFactory, endpoint: str, body: Any, message: str
) -> None:
    received = recording_agent(fleet, ROOM_1)
    client = await make_gateway()

    status, answer, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", body)

    assert status == 400, answer
    assert answer["error"] == "VALIDATION_ERROR"
    assert message in answer["message"]
    assert received == []


@pytest.mark.parametrize(
    "endpoint", ["end-call", "interrupt", "reset-instructions", "get-history", "get-state"]
)
async def test_an_empty_body_is_an_empty_object_where_every_field_is_optional(
    fleet: Fleet, make_gateway: GatewayFactory, endpoint: str
) -> None:
    received = recording_agent(fleet, ROOM_1)
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", b"")

    assert status == 200, body
    assert len(received) == 1


@pytest.mark.parametrize("endpoint", ["cancel", "update-instructions", "user-message"])
async def test_an_empty_body_is_refused_where_a_field_is_required(
    make_gateway: GatewayFactory, endpoint: str
) -> None:
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", b"")
    assert status == 400
    assert body["message"] == "Request body is empty; send a JSON object."


async def test_too_long_instructions_are_413_naming_the_field(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway()
    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/update-instructions", {"instructions": "x" * 16_000}
    )
    assert status == 413
    assert body["error"] == "PAYLOAD_TOO_LARGE"
    assert body["message"].startswith("Field 'instructions' is too long")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_every_endpoint_needs_the_api_secret_first(
    make_gateway: GatewayFactory, endpoint: str
) -> None:
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", b"not json", headers={})
    assert status == 401
    assert body == {"success": False, "error": "UNAUTHORIZED", "message": "Invalid api-secret"}


async def test_no_live_agent_is_404_no_active_rooms(make_gateway: GatewayFactory) -> None:
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/interrupt", {})
    assert status == 404
    assert body["error"] == "NO_ACTIVE_ROOMS"


async def test_an_idempotency_key_is_bound_to_its_endpoint_and_body(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    received = recording_agent(fleet, ROOM_1)
    client = await make_gateway()
    headers = {"api-secret": SECRET, "Idempotency-Key": "once"}

    first, _, _ = await post(client, f"/v1/agent/{CODE}/interrupt", {}, headers=headers)
    again, _, _ = await post(
        client, f"/v1/agent/{CODE}/interrupt", {"force": False}, headers=headers
    )
    other_body, body, _ = await post(
        client, f"/v1/agent/{CODE}/interrupt", {"force": True}, headers=headers
    )
    other_endpoint, _, _ = await post(
        client, f"/v1/agent/{CODE}/reset-instructions", {}, headers=headers
    )

    assert (first, again) == (200, 200)  # the same request, defaults spelled out or not
    assert (other_body, other_endpoint) == (422, 422)
    assert body["error"] == "ID_REUSED"
    assert len(received) == 1  # the repeat was answered from the first answer


# ---------------------------------------------------------------------------------------------
# OpenAPI


def test_openapi_describes_every_call_control_endpoint() -> None:
    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    for endpoint in ENDPOINTS:
        operation = doc["paths"][f"/v1/agent/{{agent_code}}/{endpoint}"]["post"]
        assert operation["security"] == [{"apiSecret": []}]
        assert [p["name"] for p in operation["parameters"]] == ["agent_code", "Idempotency-Key"]
        body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body_schema = schemas[body_ref.rsplit("/", 1)[1]]
        assert "room_id" in body_schema["properties"]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith("/ControlResponse")
        assert {"400", "401", "404", "409", "413", "422", "429", "502", "503", "504"} <= set(
            operation["responses"]
        )
        example = next(iter(operation["requestBody"]["content"]["application/json"]["examples"]
                            .values()))["value"]
        assert set(example) <= set(body_schema["properties"])
    assert "NOT_FOUND" in doc["paths"]["/v1/agent/{agent_code}/cancel"]["post"]["responses"][
        "404"
    ]["description"]
    speak = schemas["SpeakBody"]["properties"]
    assert speak["end_call_after"]["default"] is False
    assert speak["add_to_history"]["default"] is True


# ---------------------------------------------------------------------------------------------
# against real agents (ContextPlugin on a real AgentSession)

EVERYTHING = {GATEWAY: {"*"}}


async def test_user_message_and_get_history_through_real_agents(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client = await make_gateway()

    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/user-message", {"text": "Where is my parcel?"}
    )
    assert status == 200, body
    assert body["message"] == USER_MESSAGE_SUCCESS_MESSAGE
    assert body["data"]["rooms"][0]["result"]["speech_id"]
    await agent.idle()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/get-history", {"limit": 5})
    assert status == 200, body
    history = body["data"]["rooms"][0]["result"]["history"]
    assert [(item["role"], item["text"]) for item in history][:1] == [
        ("user", "Where is my parcel?")
    ]


async def test_update_io_through_a_real_agent_reports_the_switches(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/update-io", {"agent_audio": False})

    assert status == 200, body
    assert body["data"]["rooms"][0]["result"]["io"]["agent_audio"] is False


async def test_add_context_with_a_key_get_state_and_remove_context_through_a_real_agent(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1)
    client = await make_gateway()

    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/add-context", {"context": "Order 42 shipped.", "key": "order"}
    )
    assert status == 200, body
    assert agent.context() == ["Order 42 shipped."]
    status, body, _ = await post(client, f"/v1/agent/{CODE}/get-state", {})
    assert status == 200, body
    state = body["data"]["rooms"][0]["result"]["state"]
    [entry] = state["context_entries"]
    assert (entry["key"], entry["chars"], entry["scope"]) == ("order", 17, "persistent")
    assert state["io"] == {"agent_audio": True, "user_audio": True, "transcription": True}

    status, body, _ = await post(client, f"/v1/agent/{CODE}/remove-context", {"key": "order"})
    assert status == 200, body
    assert body["data"]["rooms"][0]["result"]["removed"] is True
    assert agent.context() == []


async def test_a_speak_if_idle_while_the_agent_speaks_is_409_busy(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1)
    client = await make_gateway()

    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "A long announcement. " * 20}
    )
    assert status == 200, body
    await wait_until(lambda: agent.session.agent_state == "speaking")
    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Only if idle.", "mode": "if_idle"}
    )
    assert status == 409, body
    assert body["error"] == "BUSY"


async def test_cancel_of_an_unknown_speech_is_404_not_found(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/cancel", {"target_id": "gone"})

    assert status == 404
    assert body["error"] == "NOT_FOUND"
    assert body["data"]["rooms"][0]["error"] == "NOT_FOUND"


async def test_a_type_the_agent_does_not_grant_is_502_naming_the_permission(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)  # trusts the gateway, grants only the defaults
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/end-call", {})

    assert status == 502
    assert body["error"] == "INTERNAL_ERROR"
    assert "(permissions)" in body["message"]
    [room] = body["data"]["rooms"]
    assert room["error"] == "UNAUTHORIZED"
    assert "end_call" in room["message"]


async def test_end_call_through_the_gateway_ends_the_agents_session(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client = await make_gateway()

    status, body, _ = await post(client, f"/v1/agent/{CODE}/end-call", {"reason": "Done"})
    assert status == 200, body
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hello?"})

    assert status == 503
    assert body["error"] == "NOT_READY"
