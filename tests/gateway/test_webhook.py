"""``POST /livekit/webhook``: signed events reach the agent directory, anything else is 401."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol.models import ParticipantInfo, Room
from livekit.protocol.webhook import WebhookEvent

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin.gateway.directory import MemoryAgentDirectory
from imaginex_context_plugin.gateway.directory.webhook import (
    DEFAULT_MAX_WEBHOOK_BYTES,
    WEBHOOK_PATH,
)
from tests.gateway_fixtures import CODE, HEADERS, SETTINGS, Client, Fleet, GatewayFactory, post

ROOM = "webhook-room"


def joined_body(room: str = ROOM, identity: str = "agent") -> str:
    event = WebhookEvent(
        event="participant_joined",
        id="EV_1",
        room=Room(name=room, sid="RM_1"),
        participant=ParticipantInfo(
            identity=identity,
            sid="PA_1",
            kind=ParticipantInfo.AGENT,
            attributes={AGENT_CODE_ATTRIBUTE: CODE},
        ),
    )
    return MessageToJson(event)


def signature(body: str, *, key: str = SETTINGS.api_key, secret: str = SETTINGS.api_secret) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).to_jwt()


async def hook(client: Client, body: str | bytes, auth: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/webhook+json"}
    if auth is not None:
        headers["Authorization"] = auth
    response = await client.post(WEBHOOK_PATH, data=body, headers=headers)
    return response.status, await response.json()


async def gateway_with_directory(
    fleet: Fleet, make_gateway: GatewayFactory
) -> tuple[Client, MemoryAgentDirectory]:
    directory = MemoryAgentDirectory()
    backend = fleet.backend(agent_directory=directory)
    return await make_gateway(backend=backend), directory


async def test_a_signed_join_makes_the_agent_reachable_without_listing_rooms(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent(ROOM)
    fleet.directory.names.clear()  # RoomService lists nothing: only the webhook can tell
    client, directory = await gateway_with_directory(fleet, make_gateway)
    status, _, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 404

    body = joined_body(identity=live.room.participant_info.identity)
    assert await hook(client, body, signature(body)) == (200, {"success": True})
    assert await directory.rooms_of(CODE) == {ROOM: [live.room.participant_info.identity]}
    status, payload, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 200, payload
    assert payload["data"]["delivered_to_rooms"] == 1


async def test_unsigned_forged_and_mismatched_webhooks_are_401_and_change_nothing(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client, directory = await gateway_with_directory(fleet, make_gateway)
    body = joined_body()
    other = joined_body(identity="someone-else")
    refused = [
        await hook(client, body, None),
        await hook(client, body, ""),
        await hook(client, body, "not-a-jwt"),
        await hook(client, body, signature(body, secret="a-forged-secret-0123456789abcdefgh")),
        await hook(client, body, signature(body, key="another-key")),
        await hook(client, body, signature(other)),  # signed, but for another body
        await hook(client, b"\xff\xfe" + body.encode(), signature(body)),
        await hook(client, api.AccessToken(SETTINGS.api_key, SETTINGS.api_secret).to_jwt(), ""),
    ]
    for status, payload in refused:
        assert status == 401
        assert payload["error"] == "UNAUTHORIZED"
        assert payload["success"] is False
    # no sha256 claim at all
    plain = api.AccessToken(SETTINGS.api_key, SETTINGS.api_secret).to_jwt()
    assert (await hook(client, body, plain))[0] == 401
    assert await directory.rooms_of(CODE) == {}


async def test_a_signed_body_that_is_not_an_event_is_401_not_500(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client, _ = await gateway_with_directory(fleet, make_gateway)
    deep = '{"event": "room_finished", "room": ' + "[" * 5_000 + "]" * 5_000 + "}"
    for body in ("{not json", '{"event": 12, "room": []}', "[" * 5_000 + "]" * 5_000, deep):
        status, payload = await hook(client, body, signature(body))
        assert status == 401, payload


MISREAD_EVENTS: list[tuple[str, str]] = [
    # (case, a signed body protobuf's JSON parser would read as an event with empty parts)
    ("room as a string", '{"event": "room_finished", "room": "webhook-room"}'),
    ("participant as a string", '{"event": "participant_left", "participant": "agent"}'),
    ("room as a list", '{"event": "room_finished", "room": ["webhook-room"]}'),
    ("a nested message as a string",
     '{"event": "participant_joined", "room": {"name": "webhook-room"}, '
     '"participant": {"identity": "agent", "permission": "all"}}'),
    ("an item of a repeated message as a string",
     '{"event": "participant_joined", "room": {"name": "webhook-room"}, '
     '"participant": {"identity": "agent", "tracks": ["audio"]}}'),
    ("not an object at all", '["participant_joined"]'),
    # an enum as true/false: protobuf reads a bool as the number 0 or 1 (Python's bool is an
    # int), so {"kind": false} was taken, 200, as kind 0 (found by the fuzz, again)
    ("an enum as a boolean",
     '{"event": "participant_joined", "room": {"name": "webhook-room"}, '
     '"participant": {"identity": "agent", "kind": false}}'),
    ("a nested enum as a boolean",
     '{"event": "participant_joined", "room": {"name": "webhook-room"}, '
     '"participant": {"identity": "agent", "state": true}}'),
]


@pytest.mark.parametrize("body", [case[1] for case in MISREAD_EVENTS],
                         ids=[case[0] for case in MISREAD_EVENTS])
async def test_a_signed_event_protobuf_would_misread_is_401_and_changes_nothing(
    fleet: Fleet, make_gateway: GatewayFactory, body: str
) -> None:
    """Found by the schemathesis fuzz: told to ignore unknown fields, protobuf reads a string
    where a message belongs as an empty message (its characters unknown field names), so
    ``{"room": "abc"}`` was taken, 200, for an event without a room."""
    client, directory = await gateway_with_directory(fleet, make_gateway)
    status, payload = await hook(client, body, signature(body))
    assert (status, payload["error"]) == (401, "UNAUTHORIZED")
    assert await directory.rooms_of(CODE) == {}


async def test_a_signed_event_with_nulls_and_enum_numbers_is_taken(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """protobuf's JSON form: null is a field's default, an enum may be its number."""
    client, directory = await gateway_with_directory(fleet, make_gateway)
    body = (
        '{"event": "participant_joined", "id": null, "room": {"name": "webhook-room", '
        '"sid": null}, "participant": {"identity": "agent", "sid": "PA_1", "kind": 4, '
        f'"attributes": {{"{AGENT_CODE_ATTRIBUTE}": "{CODE}"}}, "tracks": null}}}}'
    )
    assert await hook(client, body, signature(body)) == (200, {"success": True})
    assert await directory.rooms_of(CODE) == {ROOM: ["agent"]}


async def test_a_webhook_over_the_size_limit_is_413(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client, _ = await gateway_with_directory(fleet, make_gateway)
    body = " " * (DEFAULT_MAX_WEBHOOK_BYTES + 1)
    status, payload = await hook(client, body, signature(body))
    assert status == 413
    assert payload["success"] is False


async def test_without_a_directory_there_is_no_webhook_route(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway()
    body = joined_body()
    response = await client.post(
        WEBHOOK_PATH, data=body, headers={"Authorization": signature(body), **HEADERS}
    )
    assert response.status == 404


def test_the_test_server_posts_webhooks_to_loopback_only() -> None:
    from devtools.livekit_server import API_KEY, loopback_config

    url = "http://127.0.0.1:9/livekit/webhook"
    config = loopback_config(7880, 50000, webhook_urls=[url])
    assert f'webhook:\n  api_key: {API_KEY}\n  urls: ["{url}"]\n' in config
    assert "webhook:" not in loopback_config(7880, 50000)
    refused = ("http://10.0.0.1:9/x", "http://localhost:9/x", "ftp://127.0.0.1/x", url + '"')
    for url in refused:
        with pytest.raises(ValueError, match="webhook URL"):
            loopback_config(7880, 50000, webhook_urls=[url])


async def test_replicas_share_the_directory_a_webhook_to_one_serves_the_other(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    from redis.asyncio import Redis

    from imaginex_context_plugin.gateway.directory import RedisAgentDirectory

    live = await fleet.agent(ROOM)
    fleet.directory.names.clear()  # RoomService lists nothing: only the webhook can tell
    backends = [
        fleet.backend(
            agent_directory=RedisAgentDirectory(Redis.from_url(redis_url), owns_client=True)
        )
        for _ in range(2)
    ]
    one, two = [await make_gateway(backend=backend) for backend in backends]
    body = joined_body(identity=live.room.participant_info.identity)
    assert (await hook(one, body, signature(body)))[0] == 200
    for backend in backends:  # both started reconciling with their application
        sync = backend.directory_sync
        assert sync is not None
        await sync.ready()
    calls = backends[1].room_service_calls.total
    status, payload, _ = await post(two, f"/v1/agent/{CODE}/speak", {"message": "Hi"})
    assert status == 200, payload
    assert payload["data"]["delivered_to_rooms"] == 1
    assert backends[1].room_service_calls.total == calls
    # one reconciliation between them: whichever claimed the interval first
    assert sum(backend.room_service_calls.list_rooms for backend in backends) == 1


async def test_a_refused_webhook_is_one_info_line_that_says_why(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = await gateway_with_directory(fleet, make_gateway)
    body = joined_body()
    with caplog.at_level(logging.DEBUG, logger="imaginex_context_plugin"):
        assert (await hook(client, body, "not-a-jwt"))[0] == 401
    info = [
        r
        for r in caplog.records
        if r.name.startswith("imaginex_context_plugin") and r.levelno >= logging.INFO
    ]
    assert len(info) == 1
    assert info[0].__dict__["path"] == WEBHOOK_PATH
    assert info[0].__dict__["reason"].startswith("not verified (")
