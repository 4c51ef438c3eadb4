"""GET /v1/agent/{agent_code}/events: a room's live events as Server-Sent Events, through the
gateway's real backend (pooled room connection, subscribe / unsubscribe over RPC) to real agents.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from livekit import rtc

from imaginex_context_plugin.gateway import ApiSecrets, create_app, start_gateway_server
from imaginex_context_plugin.gateway import events as events_module
from tests.gateway_fixtures import (
    CODE,
    GATEWAY,
    HEADERS,
    ROOM_1,
    SECRET,
    Client,
    Fleet,
    GatewayFactory,
)
from tests.helpers import wait_until

PATH = f"/v1/agent/{CODE}/events"
WATCH = {GATEWAY: {"*"}}


async def read_events(response: aiohttp.ClientResponse, until: str) -> list[tuple[str, Any]]:
    """(event name, data) for every SSE message until ``until`` or the end; comments as
    ("", text)."""
    got: list[tuple[str, Any]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            got.append(("", line[1:].strip()))
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            got.append((name, json.loads(line[len("data: "):])))
            if name == until:
                break
    return got


async def test_a_stream_gets_the_rooms_events_until_the_call_ends(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=WATCH)
    client: Client = await make_gateway()
    response = await client.get(
        PATH, params={"room_id": ROOM_1, "events": "agent_transcript"}, headers=HEADERS
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    await wait_until(lambda: agent.plugin._subscribers.identities == [GATEWAY])
    status = (await client.post(
        f"/v1/agent/{CODE}/speak", json={"message": "Hello there.", "room_id": ROOM_1},
        headers=HEADERS,
    )).status
    assert status == 200
    await agent.idle()
    await agent.session.aclose()
    got = await read_events(response, until="call_ended")
    names = [n for n, _ in got if n]
    assert names == ["agent_transcript", "call_ended"]
    assert got[0][1]["text"] == "Hello there."
    assert got[-1][1]["reason"] == "user_initiated"
    assert (await response.content.read()).strip() == b""  # closed after call_ended


async def test_the_last_stream_to_go_unsubscribes(
    fleet: Fleet, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "HEARTBEAT_S", 0.05)
    agent = await fleet.agent(ROOM_1, permissions=WATCH)
    client: Client = await make_gateway()
    first = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    second = await client.get(
        PATH, params={"room_id": ROOM_1, "events": "agent_state"}, headers=HEADERS
    )
    assert first.status == second.status == 200
    line = await first.content.readline()
    assert line == b": heartbeat\n"
    subs = agent.plugin._subscribers
    assert subs.identities == [GATEWAY]
    first.close()
    await asyncio.sleep(0.2)
    assert subs.identities == [GATEWAY]  # the second stream still needs it
    second.close()
    await wait_until(lambda: subs.identities == [], "the gateway to unsubscribe")


async def test_a_client_that_goes_away_ends_its_stream_quietly(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzz (tests/test_gateway_fuzz.py): on the production server, which does
    not cancel a handler when its client leaves (aiohttp's TestServer does), the first write
    after a hang-up raised out of the route: a 500 and a traceback at ERROR."""
    monkeypatch.setattr(events_module, "HEARTBEAT_S", 0.05)
    agent = await fleet.agent(ROOM_1, permissions=WATCH)
    app = create_app(fleet.backend(), ApiSecrets(secret=SECRET))
    server = await start_gateway_server(app, host="127.0.0.1", port=0)
    subs = agent.plugin._subscribers

    def access() -> list[int]:
        return [getattr(r, "status", 0) for r in caplog.records if getattr(r, "path", "") == PATH]

    try:
        with caplog.at_level(logging.DEBUG, logger="imaginex_context_plugin"):
            async with aiohttp.ClientSession() as http:
                response = await http.get(
                    f"http://127.0.0.1:{server.port}{PATH}",
                    params={"room_id": ROOM_1},
                    headers=HEADERS,
                )
                assert response.status == 200
                assert await response.content.readline() == b": heartbeat\n"
                response.close()  # the client hangs up mid-stream
            await wait_until(lambda: subs.identities == [], "the gateway to unsubscribe")
            await wait_until(access, "the stream's access log line")
    finally:
        await server.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert access() == [200]


async def test_refusals(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    await fleet.agent(ROOM_1)  # no permissions: subscribe is not granted
    client: Client = await make_gateway()
    response = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    assert response.status == 401
    assert (await response.json())["error"] == "UNAUTHORIZED"
    response = await client.get(PATH, headers=HEADERS)
    assert response.status == 400
    response = await client.get(PATH, params={"room_id": ROOM_1, "events": "audio"},
                                headers=HEADERS)
    assert response.status == 400
    response = await client.get(PATH, params={"room_id": ROOM_1})
    assert response.status == 401
    response = await client.get(PATH, params={"room_id": "nowhere"}, headers=HEADERS)
    assert response.status == 404


async def test_an_event_spelled_with_a_hyphen_is_refused_with_the_spelling_meant(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, permissions={GATEWAY: {"subscribe"}})
    client: Client = await make_gateway()
    response = await client.get(
        PATH, params={"room_id": ROOM_1, "events": "agent_state,user-transcript"}, headers=HEADERS
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "VALIDATION_ERROR"
    assert body["message"].startswith(
        "Query parameter 'events' names 'user-transcript', which is not an event "
        "(did you mean 'user_transcript'?); use: user_transcript, agent_transcript,"
    )


async def test_the_stream_is_in_the_openapi_document(make_gateway: GatewayFactory) -> None:
    client: Client = await make_gateway()
    doc = await (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/v1/agent/{agent_code}/events"]["get"]
    assert operation["security"] == [{"apiSecret": []}]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} == {
        "agent_code", "room_id", "events", "interim", "tool_arguments"
    }


async def test_the_stream_ends_when_the_room_is_deleted(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # a deleted room disconnects everyone at once: no call_ended and no departure of the agent
    # reaches the gateway, only its own connection's end
    await fleet.agent(ROOM_1, permissions=WATCH)
    client: Client = await make_gateway()
    response = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    assert response.status == 200
    gateway_rooms = [
        room for room in fleet.network.rooms(ROOM_1) if room.local_participant.identity == GATEWAY
    ]
    assert len(gateway_rooms) == 1
    await gateway_rooms[0].disconnect(reason=rtc.DisconnectReason.ROOM_DELETED)
    rest = await asyncio.wait_for(response.content.read(), 5)
    assert b"call_ended" not in rest
    assert response.content.at_eof()
