"""The REST gateway end to end: HTTP in, real ContextPlugins on real AgentSessions out.

The gateway runs its real ``LiveKitBackend`` (room pool, hidden participant, RPC, ack reading)
with two seams swapped: rooms are ``LinkedRoom``s on an in-memory ``RelayNetwork`` and the room
listing reads that network instead of ``RoomService``. Each agent is a real ``AgentSession`` with
``ContextPlugin`` in its own room, so fan-out, ``delivered_to_rooms``, dedup and every agent-side
error come from the receiver itself. Requests and bodies are the platform documentation's.
Its world (``Fleet``, the ``fleet`` and ``make_gateway`` fixtures): ``tests/gateway_fixtures.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc._proto import participant_pb2

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, RateLimit
from imaginex_context_plugin.gateway import (
    ApiSecrets,
    LiveKitBackend,
    ParticipantSummary,
)
from tests.fakes import LinkedRoom, RelayNetwork
from tests.gateway_fixtures import (
    CODE,
    GATEWAY,
    HEADERS,
    ROOM_1,
    ROOM_2,
    SECRET,
    SETTINGS,
    TIMESTAMP,
    Fleet,
    GatewayFactory,
    RelayDirectory,
    post,
)
from tests.helpers import wait_until

# ---------------------------------------------------------------------------------------------
# speak


async def test_speak_doc_example_is_spoken_in_the_targeted_room_only(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    one = await fleet.agent(ROOM_1)
    two = await fleet.agent(ROOM_2)
    client = await make_gateway()

    message = "Great news! We have a 20% discount available today!"
    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": message, "room_id": ROOM_1}
    )

    assert status == 200
    assert body["success"] is True
    assert body["message"] == "Speech triggered successfully"
    data = body["data"]
    assert set(data) == {"agent_code", "delivered_to_rooms", "timestamp", "request_id", "rooms"}
    assert data["agent_code"] == CODE
    assert data["delivered_to_rooms"] == 1
    assert TIMESTAMP.match(data["timestamp"])
    assert data["rooms"] == [
        {"room": ROOM_1, "delivered": True, "error": None, "message": None, "duplicate": False}
    ]
    await wait_until(lambda: one.said() == [message])
    await one.idle()
    assert two.said() == []
    assert two.plugin.stats.received == 0


async def test_speak_without_room_id_reaches_every_room_where_the_agent_is_live(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agents = [await fleet.agent(ROOM_1), await fleet.agent(ROOM_2)]
    other = await fleet.agent("sales_room", code="SALES_AGENT")
    fleet.human("empty_room")
    client = await make_gateway()

    message = "We will have scheduled maintenance tonight from 2-4 AM EST."
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": message})

    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 2
    assert sorted(r["room"] for r in body["data"]["rooms"]) == [ROOM_1, ROOM_2]
    for live in agents:
        await wait_until(lambda live=live: live.said() == [message])  # type: ignore[misc]
    assert other.plugin.stats.received == 0


async def test_a_null_room_id_means_every_room(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    # the platform's safe_agent_speak() sends room_id None when no room is given
    await fleet.agent(ROOM_1)
    await fleet.agent(ROOM_2)
    client = await make_gateway()
    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "System check message", "room_id": None}
    )
    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 2


async def test_the_gateway_joins_each_room_once_and_leaves_on_shutdown(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    backend = fleet.backend()
    client = await make_gateway(backend=backend)
    for n in range(3):
        status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": f"Update {n}"})
        assert status == 200
    assert backend.pooled_rooms == [ROOM_1]
    assert len(fleet.gateway_rooms(ROOM_1)) == 1

    await client.close()  # the application's cleanup closes the backend
    assert fleet.gateway_rooms(ROOM_1) == []
    assert fleet.directory.closed


# ---------------------------------------------------------------------------------------------
# add-context and the unified endpoint


async def test_add_context_doc_example_reaches_the_agents_context_without_speech(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    vip = await fleet.agent("vip_customer_session")
    client = await make_gateway()

    context = "Customer has VIP status and prefers technical explanations"
    status, body, _ = await post(
        client,
        f"/v1/agent/{CODE}/add-context",
        {"context": context, "type": "add_context", "room_id": "vip_customer_session"},
    )

    assert status == 200
    assert body["success"] is True
    assert body["message"] == "Context added successfully"
    data = body["data"]
    assert data["agent_code"] == CODE
    assert data["context_type"] == "add_context"
    assert data["delivered_to_rooms"] == 1
    assert TIMESTAMP.match(data["timestamp"])
    assert vip.context() == [context]
    assert vip.said() == []


async def test_add_context_type_defaults_to_add_context(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agents = [await fleet.agent(ROOM_1), await fleet.agent(ROOM_2)]
    client = await make_gateway()
    context = "User is interested in enterprise features and has a team of 50+ people"
    status, body, _ = await post(client, f"/v1/agent/{CODE}/add-context", {"context": context})
    assert status == 200
    assert body["data"]["context_type"] == "add_context"
    assert body["data"]["delivered_to_rooms"] == 2
    assert [live.context() for live in agents] == [[context], [context]]


async def test_unified_endpoint_with_type_speak_speaks_the_context(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    support = await fleet.agent("support_session_1")
    client = await make_gateway()

    text = "Thank you for your patience. Your issue has been resolved!"
    status, body, _ = await post(
        client,
        f"/v1/agent/{CODE}/add-context",
        {"context": text, "type": "speak", "room_id": "support_session_1"},
    )

    assert status == 200
    assert body["message"] == "Speech triggered successfully"
    assert body["data"]["context_type"] == "speak"
    await wait_until(lambda: support.said() == [text])
    assert support.context() == []


async def test_unified_endpoint_background_context_request(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    support = await fleet.agent("support_session_1")
    client = await make_gateway()
    text = "Customer reported billing issue #12345 on January 10th"
    status, body, _ = await post(
        client,
        f"/v1/agent/{CODE}/add-context",
        {"context": text, "type": "add_context", "room_id": "support_session_1"},
    )
    assert status == 200
    assert body["message"] == "Context added successfully"
    assert support.context() == [text]


# ---------------------------------------------------------------------------------------------
# idempotency


async def test_a_retried_call_with_the_same_idempotency_key_is_spoken_once(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agents = [await fleet.agent(ROOM_1), await fleet.agent(ROOM_2)]
    client = await make_gateway()
    message = "Your order has been confirmed and will arrive tomorrow!"
    headers = {**HEADERS, "Idempotency-Key": "order-42-confirmation"}

    first = await post(client, f"/v1/agent/{CODE}/speak", {"message": message}, headers=headers)
    retry = await post(client, f"/v1/agent/{CODE}/speak", {"message": message}, headers=headers)

    # the retry gets the first answer again, byte for byte, and nothing goes to the agents
    assert first[0] == retry[0] == 200
    assert retry[1] == first[1]
    assert first[1]["data"]["delivered_to_rooms"] == 2
    assert first[1]["data"]["request_id"] == "order-42-confirmation"
    assert [r["duplicate"] for r in first[1]["data"]["rooms"]] == [False, False]
    assert "Idempotent-Replayed" not in first[2]
    assert retry[2]["Idempotent-Replayed"] == "true"
    for live in agents:
        await wait_until(lambda live=live: live.said() == [message])  # type: ignore[misc]
        await live.idle()
        assert live.said() == [message]
        assert live.plugin.stats.received == 1
        assert live.plugin.stats.duplicates == 0


async def test_without_an_idempotency_key_each_call_is_a_new_message(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    bodies = [
        (await post(client, f"/v1/agent/{CODE}/speak", {"message": "Ping"}))[1] for _ in range(2)
    ]
    ids = [b["data"]["request_id"] for b in bodies]
    assert ids[0] != ids[1]
    await wait_until(lambda: live.said() == ["Ping", "Ping"])


async def test_an_idempotent_add_context_is_added_once(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    headers = {**HEADERS, "Idempotency-Key": "crm-sync-7"}
    for _ in range(2):
        status, _, _ = await post(
            client, f"/v1/agent/{CODE}/add-context", {"context": "Tier: gold"}, headers=headers
        )
        assert status == 200
    assert live.context() == ["Tier: gold"]


# ---------------------------------------------------------------------------------------------
# errors before anything is sent: exact bodies from the platform documentation


async def test_missing_or_wrong_api_secret_is_unauthorized(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    expected = {"success": False, "error": "UNAUTHORIZED", "message": "Invalid api-secret"}
    for headers in ({}, {"api-secret": "wrong"}, {"api-secret": ""}, {"Api-Secret": SECRET[:-1]}):
        for path in (f"/v1/agent/{CODE}/speak", f"/v1/agent/{CODE}/add-context"):
            status, body, _ = await post(client, path, {"message": "x"}, headers=headers)
            assert (status, body) == (401, expected)
    assert live.plugin.stats.received == 0


async def test_the_secret_header_name_is_case_insensitive(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    status, _, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "hi"}, headers={"API-SECRET": SECRET}
    )
    assert status == 200


async def test_auth_comes_before_validation_size_and_routing_of_the_agent(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(max_body_bytes=1024)
    for endpoint in ("speak", "add-context"):
        for body in (b"{not json", b"x" * 4096, {"context": "c", "type": "shout"}, {}):
            status, payload, _ = await post(
                client, f"/v1/agent/UNKNOWN/{endpoint}", body, headers={"api-secret": "nope"}
            )
            assert (status, payload["error"]) == (401, "UNAUTHORIZED")


INVALID_BODIES = [
    pytest.param(
        "add-context",
        {"context": "Hello", "type": "shout"},
        "Invalid type. Must be one of: speak, add_context",
        id="invalid-type",
    ),
    pytest.param(
        "add-context",
        {"context": "Hello", "type": "remove_context"},
        "Invalid type. Must be one of: speak, add_context",
        id="protocol-only-type",
    ),
    pytest.param(
        "add-context",
        {"context": "Hello", "type": 3},
        "Invalid type. Must be one of: speak, add_context",
        id="type-not-a-string",
    ),
    pytest.param("speak", b"{not json", "Request body is not valid JSON.", id="bad-json"),
    pytest.param("speak", b"", "Request body is empty; send a JSON object.", id="empty-body"),
    pytest.param("speak", b"[1, 2]", "Request body must be a JSON object.", id="json-array"),
    pytest.param("speak", b"\xff\xfe", "Request body is not valid JSON.", id="not-utf8"),
    pytest.param(
        "speak", b"[" * 5_000 + b"]" * 5_000, "Request body is not valid JSON.", id="deep"
    ),
    pytest.param(
        "speak",
        b'{"message": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        "Request body is not valid JSON.",
        id="deep-field",
    ),
    pytest.param("speak", {"room_id": ROOM_1}, "Missing field 'message'.", id="missing-message"),
    pytest.param(
        "speak", {"context": "wrong endpoint"}, "Missing field 'message'.", id="speak-context"
    ),
    pytest.param("speak", {"message": 5}, "Field 'message' must be a string.", id="number"),
    pytest.param("speak", {"message": "   "}, "Field 'message' must not be empty.", id="blank"),
    pytest.param(
        "speak",
        {"message": "\u200b\u2060\u200d"},
        "Field 'message' must contain visible text, not only invisible or control characters.",
        id="zero-width-only",
    ),
    pytest.param(
        "add-context",
        {"context": "\x07\x1b"},
        "Field 'context' must contain visible text, not only invisible or control characters.",
        id="control-only",
    ),
    pytest.param(
        "speak",
        {"message": "hi \ud800"},
        "Field 'message' is not valid text: it contains a lone UTF-16 surrogate.",
        id="lone-surrogate",
    ),
    pytest.param(
        "speak",
        {"message": "hi", "room_id": "\udfff"},
        "Field 'room_id' is not valid text: it contains a lone UTF-16 surrogate.",
        id="surrogate-room",
    ),
    pytest.param(
        "speak", {"message": "hi", "room_id": ""}, "Field 'room_id' must not be empty.", id="room"
    ),
    pytest.param(
        "speak", {"message": "hi", "room_id": 7}, "Field 'room_id' must be a string.", id="room-int"
    ),
    pytest.param(
        "add-context", {"type": "add_context"}, "Missing field 'context'.", id="missing-context"
    ),
    pytest.param(
        "add-context", {"context": ""}, "Field 'context' must not be empty.", id="empty-context"
    ),
]


@pytest.mark.parametrize(("endpoint", "body", "message"), INVALID_BODIES)
async def test_invalid_bodies_are_validation_errors(
    fleet: Fleet, make_gateway: GatewayFactory, endpoint: str, body: Any, message: str
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    status, payload, _ = await post(client, f"/v1/agent/{CODE}/{endpoint}", body)
    assert status == 400
    assert payload == {"success": False, "error": "VALIDATION_ERROR", "message": message}
    assert live.plugin.stats.received == 0


async def test_unknown_fields_are_ignored(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    status, _, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Hi", "agent_code": "OTHER", "id": "x"}
    )
    assert status == 200
    await wait_until(lambda: live.said() == ["Hi"])


@pytest.mark.parametrize("key", ["", "   ", "k" * 129])
async def test_an_unusable_idempotency_key_is_a_validation_error(
    fleet: Fleet, make_gateway: GatewayFactory, key: str
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    status, body, _ = await post(
        client,
        f"/v1/agent/{CODE}/speak",
        {"message": "Hi"},
        headers={**HEADERS, "Idempotency-Key": key},
    )
    assert status == 400
    assert body["message"] == "Header Idempotency-Key must be 1 to 128 characters."


# ---------------------------------------------------------------------------------------------
# which agent, which rooms


async def test_a_code_the_tenants_secret_does_not_list_is_agent_not_found(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    sales = await fleet.agent("sales_room", code="SALES_AGENT")
    secrets = ApiSecrets(per_agent={CODE: "tenant-a-secret", "SALES_AGENT": "tenant-b-secret"})
    client = await make_gateway(secrets=secrets)

    status, body, _ = await post(
        client,
        "/v1/agent/SALES_AGENT/speak",
        {"message": "Flash Sale Alert!"},
        headers={"api-secret": "tenant-a-secret"},
    )
    assert (status, body) == (
        404,
        {
            "success": False,
            "error": "AGENT_NOT_FOUND",
            "message": "Agent with code 'SALES_AGENT' not found",
        },
    )
    assert sales.plugin.stats.received == 0

    status, body, _ = await post(
        client,
        f"/v1/agent/{CODE}/speak",
        {"message": "Hello"},
        headers={"api-secret": "tenant-a-secret"},
    )
    assert status == 200


async def test_a_code_no_live_agent_serves_is_no_active_rooms(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    expected = {
        "success": False,
        "error": "NO_ACTIVE_ROOMS",
        "message": "No active sessions found for agent",
    }
    status, body, _ = await post(client, "/v1/agent/SUPPORT_AGENT/speak", {"message": "Hi"})
    assert (status, body) == (404, expected)


@pytest.mark.parametrize("room_id", ["no_such_room", "sales_room", "humans_only"])
async def test_a_room_without_this_agent_is_no_active_rooms(
    fleet: Fleet, make_gateway: GatewayFactory, room_id: str
) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent("sales_room", code="SALES_AGENT")
    fleet.human("humans_only")
    client = await make_gateway()
    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Hi", "room_id": room_id}
    )
    assert status == 404
    assert body["error"] == "NO_ACTIVE_ROOMS"
    assert "data" not in body


async def test_an_agent_that_left_after_the_listing_reads_as_agent_not_found(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # the one RPC failure table (_livekit/rpc.py): RECIPIENT_NOT_FOUND is AGENT_NOT_FOUND for
    # the client and the gateway alike (it was NO_ACTIVE_ROOMS here)
    fleet.human(ROOM_1)

    class StaleDirectory(RelayDirectory):
        async def list_participants(self, room: str) -> list[ParticipantSummary]:
            return [ParticipantSummary("gone-agent", {AGENT_CODE_ATTRIBUTE: CODE})]

    directory = StaleDirectory(fleet.network)
    directory.names = [ROOM_1]
    client = await make_gateway(backend=fleet.backend(directory=directory))
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 404
    assert body["error"] == "AGENT_NOT_FOUND"
    assert body["data"]["rooms"][0]["error"] == "AGENT_NOT_FOUND"
    assert "gone-agent" in body["data"]["rooms"][0]["message"]


# ---------------------------------------------------------------------------------------------
# limits


async def test_a_body_over_the_limit_is_payload_too_large(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway(max_body_bytes=2048)
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "x" * 4096})
    assert status == 413
    assert body == {
        "success": False,
        "error": "PAYLOAD_TOO_LARGE",
        "message": "Request body is over the 2048 byte limit.",
    }
    assert live.plugin.stats.received == 0


async def test_a_chunked_body_over_the_limit_is_payload_too_large(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"message": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}'

    response = await client.post(f"/v1/agent/{CODE}/speak", data=chunks(), headers=HEADERS)
    assert response.status == 413
    assert (await response.json())["error"] == "PAYLOAD_TOO_LARGE"


async def test_a_message_too_large_for_livekit_is_refused_before_any_delivery(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "é" * 9000})
    assert status == 413
    assert body["error"] == "PAYLOAD_TOO_LARGE"
    assert "15 KiB" in body["message"]
    assert live.plugin.stats.received == 0


async def test_rate_limit_is_per_api_secret_with_retry_after(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent("sales_room", code="SALES_AGENT")
    secrets = ApiSecrets(per_agent={CODE: "tenant-a-secret", "SALES_AGENT": "tenant-b-secret"})
    client = await make_gateway(secrets=secrets, rate_limit=RateLimit(per_second=0.01, burst=2))
    a = {"api-secret": "tenant-a-secret"}

    for _ in range(2):
        status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"}, headers=a)
        assert status == 200
    status, body, headers = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Hi"}, headers=a
    )
    assert status == 429
    assert body["error"] == "RATE_LIMITED"
    assert int(headers["Retry-After"]) >= 1

    status, _, _ = await post(
        client,
        "/v1/agent/SALES_AGENT/speak",
        {"message": "Hi"},
        headers={"api-secret": "tenant-b-secret"},
    )
    assert status == 200


async def test_wrong_secrets_do_not_use_up_a_tenants_rate_limit(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway(rate_limit=RateLimit(per_second=0.01, burst=1))
    for _ in range(3):
        status, _, _ = await post(
            client, f"/v1/agent/{CODE}/speak", {"message": "Hi"}, headers={"api-secret": "bad"}
        )
        assert status == 401
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 200


# ---------------------------------------------------------------------------------------------
# failures after sending: the agent's answer decides the status


async def test_an_agent_that_never_answers_is_a_504(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    fleet.stuck_agent(ROOM_1)
    client = await make_gateway(delivery_timeout=0.2)
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hello?"})
    assert status == 504
    assert body["success"] is False
    assert body["error"] == "TIMEOUT"
    assert body["message"] == "No agent answered within 0.2 seconds."
    assert body["data"]["delivered_to_rooms"] == 0
    assert body["data"]["rooms"][0]["error"] == "TIMEOUT"


async def test_one_slow_room_does_not_fail_the_others(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    fleet.stuck_agent(ROOM_2)
    # long enough for the live agent to answer even on a loaded machine
    client = await make_gateway(delivery_timeout=1.0)
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hello"})
    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 1
    rooms = {r["room"]: r for r in body["data"]["rooms"]}
    assert rooms[ROOM_1]["delivered"] is True
    assert rooms[ROOM_2] == {
        "room": ROOM_2,
        "delivered": False,
        "error": "TIMEOUT",
        "message": "The agent did not answer within 1 s.",
        "duplicate": False,
    }
    await wait_until(lambda: live.said() == ["Hello"])


async def test_an_agent_rate_limiting_the_gateway_is_a_429_with_retry_after(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, rate_limit=RateLimit(per_second=0.01, burst=1))
    client = await make_gateway()
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "One"})
    assert status == 200
    status, body, headers = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Two"})
    assert status == 429
    assert body["error"] == "RATE_LIMITED"
    assert body["data"]["rooms"][0]["error"] == "RATE_LIMITED"
    assert int(headers["Retry-After"]) >= 1


async def test_an_agent_that_does_not_trust_the_gateway_is_a_502_not_a_401(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, allowed_identities=[])
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 502
    assert body["error"] == "INTERNAL_ERROR"
    assert "allowed_identities" in body["message"]
    assert body["data"]["rooms"][0]["error"] == "UNAUTHORIZED"


async def test_signed_messages_reach_an_agent_that_requires_signatures(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(
        ROOM_1, allowed_identities=[], secret="shared-signing-secret", require_signature=True
    )
    client = await make_gateway(signing_secret="shared-signing-secret")
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Signed hello"})
    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 1
    await wait_until(lambda: live.said() == ["Signed hello"])

    await client.close()  # one gateway identity per room at a time, as on a real server
    wrong = await make_gateway(signing_secret="another-secret")
    status, body, _ = await post(wrong, f"/v1/agent/{CODE}/speak", {"message": "Forged"})
    assert status == 502
    assert body["data"]["rooms"][0]["error"] == "UNAUTHORIZED"


async def test_a_signed_retry_with_the_same_idempotency_key_is_answered_once(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(
        ROOM_1, allowed_identities=[], secret="shared-signing-secret", require_signature=True
    )
    client = await make_gateway(signing_secret="shared-signing-secret")
    headers = {**HEADERS, "Idempotency-Key": "signed-retry-1"}
    first = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Once."}, headers=headers)
    retry = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Once."}, headers=headers)

    assert first[0] == 200
    assert retry[0] == 200
    # answered from the gateway's record: nothing is signed or sent again
    assert retry[1] == first[1]
    assert retry[2]["Idempotent-Replayed"] == "true"
    await wait_until(lambda: live.said() == ["Once."])
    await live.idle()
    assert live.said() == ["Once."]
    assert live.plugin.stats.received == 1


async def test_an_agent_whose_session_ended_is_not_ready(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1, ready_timeout=0.1)
    await live.session.aclose()
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Anyone?"})
    assert status == 503
    assert body["error"] == "NOT_READY"


async def test_mixed_failures_answer_with_the_most_actionable_code(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, rate_limit=RateLimit(per_second=0.01, burst=1))
    fleet.stuck_agent(ROOM_2)
    client = await make_gateway(delivery_timeout=1.0)
    await post(client, f"/v1/agent/{CODE}/speak", {"message": "One", "room_id": ROOM_1})
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Two"})
    # RATE_LIMITED (retry later) outranks TIMEOUT
    assert status == 429
    errors = {r["room"]: r["error"] for r in body["data"]["rooms"]}
    assert errors == {ROOM_1: "RATE_LIMITED", ROOM_2: "TIMEOUT"}


class RefusingRoom(LinkedRoom):
    """A room whose server refuses the connection."""

    async def connect(
        self, url: str = "", token: str = "", options: rtc.RoomOptions | None = None
    ) -> None:
        raise rtc.ConnectError("connection refused")


async def test_livekit_unreachable_for_listing_is_a_503(make_gateway: GatewayFactory) -> None:
    # the real RoomService client, pointed at a closed loopback port
    client = await make_gateway(backend=LiveKitBackend(SETTINGS))
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert (status, body) == (
        503,
        {
            "success": False,
            "error": "LIVEKIT_UNAVAILABLE",
            "message": "LiveKit could not be reached.",
        },
    )


async def test_a_room_the_gateway_cannot_join_is_a_503_and_is_retried_next_time(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM_1)
    refuse = [True]

    def factory(name: str) -> rtc.Room:
        if refuse[0]:
            return RefusingRoom(
                fleet.network, name, participant_pb2.ParticipantInfo(identity=GATEWAY)
            )
        return fleet.network.create_room(name, GATEWAY, connected=False)

    backend = fleet.backend(room_factory=factory)
    client = await make_gateway(backend=backend)
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 503
    assert body["error"] == "LIVEKIT_UNAVAILABLE"
    assert body["data"]["rooms"][0]["message"] == "Could not join the agent's room on LiveKit."
    assert backend.pooled_rooms == []

    refuse[0] = False
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi again"})
    assert status == 200
    await wait_until(lambda: live.said() == ["Hi again"])


async def test_an_unused_room_connection_is_closed_after_the_idle_timeout(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent(ROOM_2)
    backend = fleet.backend(idle_timeout=0.05)
    client = await make_gateway(backend=backend)
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 200
    assert sorted(backend.pooled_rooms) == [ROOM_1, ROOM_2]

    # no further request is needed for the connections to go
    await wait_until(lambda: not fleet.gateway_rooms(ROOM_1) and not fleet.gateway_rooms(ROOM_2))
    assert backend.pooled_rooms == []
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Back"})
    assert status == 200
    assert len(fleet.gateway_rooms(ROOM_1)) == 1


class CountingDirectory(RelayDirectory):
    def __init__(self, network: RelayNetwork) -> None:
        super().__init__(network)
        self.scans = 0
        self.listings = 0

    async def list_rooms(self) -> list[str]:
        self.scans += 1
        return await super().list_rooms()

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        self.listings += 1
        return await super().list_participants(room)


async def test_a_burst_of_requests_shares_one_scan_of_the_rooms(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent(ROOM_2)
    directory = CountingDirectory(fleet.network)
    directory.names = list(fleet.directory.names)
    client = await make_gateway(backend=fleet.backend(directory=directory, listing_ttl=60.0))
    results = await asyncio.gather(
        *(post(client, f"/v1/agent/{CODE}/add-context", {"context": f"fact {n}"}) for n in range(5))
    )
    assert [status for status, _, _ in results] == [200] * 5
    assert (directory.scans, directory.listings) == (1, 2)

    # a room_id lookup asks about that room only, and is never served from the scan
    status, _, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Hi", "room_id": ROOM_1}
    )
    assert status == 200
    assert (directory.scans, directory.listings) == (1, 3)


async def test_without_a_listing_ttl_every_request_scans(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    directory = CountingDirectory(fleet.network)
    directory.names = list(fleet.directory.names)
    client = await make_gateway(backend=fleet.backend(directory=directory, listing_ttl=0))
    for _ in range(2):
        status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
        assert status == 200
    assert directory.scans == 2


async def test_a_closed_backend_answers_503(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    await fleet.agent(ROOM_1)
    backend = fleet.backend()
    client = await make_gateway(backend=backend)
    await backend.aclose()
    await backend.aclose()  # idempotent
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 503
    assert body["error"] == "LIVEKIT_UNAVAILABLE"


async def test_two_agents_with_one_code_in_a_room_are_refused_by_name(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # the one agent-choice rule (_livekit/agents.py), as in the client: neither is picked at
    # random (the wrong voice) nor are both sent to (said twice); the room is refused by name
    first = await fleet.agent(ROOM_1, identity="agent-a")
    second = await fleet.agent(ROOM_1, identity="agent-b")
    alone = await fleet.agent(ROOM_2)
    client = await make_gateway()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Once"})
    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 1
    rooms = {room["room"]: room for room in body["data"]["rooms"]}
    assert rooms[ROOM_1]["error"] == "AGENT_NOT_FOUND"
    assert "agent-a, agent-b" in rooms[ROOM_1]["message"]
    await wait_until(lambda: alone.said() == ["Once"])
    assert first.plugin.stats.received == 0
    assert second.plugin.stats.received == 0

    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "Again", "room_id": ROOM_1}
    )
    assert status == 404
    assert body["error"] == "AGENT_NOT_FOUND"


# ---------------------------------------------------------------------------------------------
# routes, health, description, logs


async def test_unknown_routes_and_wrong_methods_answer_json(make_gateway: GatewayFactory) -> None:
    client = await make_gateway()
    response = await client.get("/v1/agent/A1/unknown", headers=HEADERS)
    assert response.status == 404
    assert await response.json() == {
        "success": False,
        "error": "NOT_FOUND",
        "message": "No such endpoint; see /openapi.json.",
    }
    response = await client.get(f"/v1/agent/{CODE}/speak", headers=HEADERS)
    assert response.status == 405
    assert "POST" in response.headers["Allow"]
    body = await response.json()
    assert body["success"] is False
    assert body["error"] == "METHOD_NOT_ALLOWED"
    response = await client.delete(f"/v1/agent/{CODE}/add-context")
    assert response.status == 405
    assert (await response.json())["error"] == "METHOD_NOT_ALLOWED"


async def test_healthz(make_gateway: GatewayFactory) -> None:
    client = await make_gateway()
    response = await client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["version"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


async def test_openapi_describes_both_endpoints_from_the_models(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway()
    response = await client.get("/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    speak = doc["paths"]["/v1/agent/{agent_code}/speak"]["post"]
    add = doc["paths"]["/v1/agent/{agent_code}/add-context"]["post"]
    for operation in (speak, add):
        assert {"200", "400", "401", "404", "413", "429", "503", "504"} <= set(
            operation["responses"]
        )
        assert operation["security"] == [{"apiSecret": []}]
        # what replicas add: the replay header, the in-progress 409, the shared-state 503
        assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
        assert "REQUEST_IN_PROGRESS" in operation["responses"]["409"]["description"]
        assert "STATE_UNAVAILABLE" in operation["responses"]["503"]["description"]
        for status in ("409", "429", "503"):
            assert "Retry-After" in operation["responses"][status]["headers"]
    assert doc["components"]["securitySchemes"]["apiSecret"]["name"] == "api-secret"
    schemas = doc["components"]["schemas"]
    assert schemas["SpeakBody"]["required"] == ["message"]
    assert schemas["AddContextBody"]["properties"]["type"]["enum"] == ["speak", "add_context"]
    assert schemas["AddContextBody"]["properties"]["type"]["default"] == "add_context"
    assert "rooms" in schemas["SpeakData"]["properties"]
    for ref in _refs(doc):
        name = ref.removeprefix("#/components/schemas/")
        assert name in schemas, ref


async def test_each_request_is_logged_once_without_secret_or_text(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    secret_text = "the customer's private note 7731"
    with caplog.at_level(logging.INFO, logger="imaginex_context_plugin"):
        await post(client, f"/v1/agent/{CODE}/speak", {"message": secret_text})
        await post(client, f"/v1/agent/{CODE}/speak", {"message": secret_text}, headers={})

    access = [r for r in caplog.records if getattr(r, "path", None) is not None]
    assert [(r.status, r.method, r.agent_code) for r in access] == [  # type: ignore[attr-defined]
        (200, "POST", CODE),
        (401, "POST", CODE),
    ]
    assert access[1].error == "UNAUTHORIZED"  # type: ignore[attr-defined]
    for record in caplog.records:
        if record.levelno < logging.INFO:
            continue
        dumped = record.getMessage() + json.dumps(record.__dict__, default=str)
        assert SECRET not in dumped
        assert secret_text not in dumped
