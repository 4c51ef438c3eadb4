"""GET /v1/agent/{agent_code}/events: a room's live events as Server-Sent Events, through the
gateway's real backend (pooled room connection, subscribe / unsubscribe over RPC) to real agents.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit import rtc

from imaginex_context_plugin import ACK_TOPIC, AGENT_CODE_ATTRIBUTE, RPC_METHOD
from imaginex_context_plugin.gateway import ApiSecrets, create_app, start_gateway_server
from imaginex_context_plugin.gateway.http import events as events_module
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
SIGNING_SECRET = "events-signing-secret-0123456789abcdef"


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
    await wait_until(lambda: agent.plugin.subscribers == [GATEWAY])
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
    plugin = agent.plugin
    assert plugin.subscribers == [GATEWAY]
    first.close()
    await asyncio.sleep(0.2)
    assert plugin.subscribers == [GATEWAY]  # the second stream still needs it
    second.close()
    await wait_until(lambda: plugin.subscribers == [], "the gateway to unsubscribe")


async def test_a_client_that_goes_away_ends_its_stream_quietly(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzz (tests/gateway/test_gateway_fuzz.py): on the production server, which does
    not cancel a handler when its client leaves (aiohttp's TestServer does), the first write
    after a hang-up raised out of the route: a 500 and a traceback at ERROR."""
    monkeypatch.setattr(events_module, "HEARTBEAT_S", 0.05)
    agent = await fleet.agent(ROOM_1, permissions=WATCH)
    app = create_app(fleet.backend(), ApiSecrets(secret=SECRET))
    server = await start_gateway_server(app, host="127.0.0.1", port=0)
    plugin = agent.plugin

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
            await wait_until(lambda: plugin.subscribers == [], "the gateway to unsubscribe")
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
        "agent_code", "room_id", "events", "interim", "tool_arguments", "playout",
        "Last-Event-ID", "last_event_id",
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



CODE_B = "B00000000"


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next SSE message (heartbeats skipped)."""
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            return name, json.loads(line[len("data: "):])
    raise AssertionError("the stream ended")


async def test_two_agent_codes_in_one_room_each_keep_their_stream(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent_a = await fleet.agent(ROOM_1, identity="agent-a", permissions=WATCH)
    agent_b = await fleet.agent(ROOM_1, code=CODE_B, identity="agent-b", permissions=WATCH)
    backend = fleet.backend(idle_timeout=0.2)
    client: Client = await make_gateway(backend=backend)
    query = {"room_id": ROOM_1, "events": "agent_transcript"}
    stream_a = await client.get(PATH, params=query, headers=HEADERS)
    stream_b = await client.get(f"/v1/agent/{CODE_B}/events", params=query, headers=HEADERS)
    assert (stream_a.status, stream_b.status) == (200, 200)
    plugin_a, plugin_b = agent_a.plugin, agent_b.plugin
    await wait_until(lambda: plugin_a.subscribers == plugin_b.subscribers == [GATEWAY])

    # each stream hears its own agent, and only it
    for code, text, stream in (
        (CODE, "This is A.", stream_a),
        (CODE_B, "This is B.", stream_b),
        (CODE, "A again.", stream_a),
    ):
        answer = await client.post(
            f"/v1/agent/{code}/speak", json={"message": text, "room_id": ROOM_1},
            headers=HEADERS,
        )
        assert answer.status == 200
        name, event = await asyncio.wait_for(next_event(stream), 10)
        assert (name, event["text"]) == ("agent_transcript", text)

    # the last stream of A closing unsubscribes A, and only A
    stream_a.close()
    await wait_until(lambda: plugin_a.subscribers == [], "the gateway to unsubscribe from A")
    assert plugin_b.subscribers == [GATEWAY]
    assert backend.pooled_rooms == [ROOM_1]  # B's stream still holds the room
    stream_b.close()
    await wait_until(lambda: plugin_b.subscribers == [], "the gateway to unsubscribe from B")
    # and the room connection, no longer held, goes once idle
    await wait_until(lambda: backend.pooled_rooms == [], "the room connection to be let go")


DEEP = "[" * 5_000 + "]" * 5_000
"""10 KB of nesting (fits a packet): JSON that Python's json module cannot decode."""


def scripted_agent(
    fleet: Fleet, room: str, answer: Callable[[dict[str, Any]], str]
) -> rtc.Room:
    """A participant claiming the code whose RPC answer is ``answer(request)``."""
    fleet.register_room(room)
    participant = fleet.network.create_room(
        room, "scripted-agent", attributes={AGENT_CODE_ATTRIBUTE: CODE}
    )

    async def handler(invocation: rtc.RpcInvocationData) -> str:
        return answer(json.loads(json.loads(invocation.payload)["body"]))

    participant.local_participant.register_rpc_method(RPC_METHOD, handler)
    return participant


def _ack(request: dict[str, Any]) -> str:
    data = {
        "agent_code": CODE,
        "context_type": request["type"],
        "room_id": ROOM_1,
        "timestamp": "2026-01-01T00:00:00.000Z",
    }
    return json.dumps(
        {"type": "ack", "id": request["id"], "success": True, "message": "ok", "data": data}
    )


async def test_a_subscribe_answered_with_unreadable_json_is_a_502(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    scripted_agent(fleet, ROOM_1, lambda request: DEEP)
    client: Client = await make_gateway(signing_secret=SIGNING_SECRET)
    with caplog.at_level(logging.INFO):
        response = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    assert response.status == 502
    assert (await response.json())["error"] == "INTERNAL_ERROR"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_event_too_deeply_nested_to_read_is_dropped_and_the_stream_goes_on(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    agent = scripted_agent(fleet, ROOM_1, _ack)
    client: Client = await make_gateway(signing_secret=SIGNING_SECRET)
    response = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    assert response.status == 200
    state = {"type": "agent_state", "old_state": "listening", "new_state": "thinking"}
    with caplog.at_level(logging.INFO):
        for payload in (DEEP, '{"type": "agent_state", "x": ' + DEEP + "}", json.dumps(state)):
            await agent.local_participant.publish_data(
                payload, topic=ACK_TOPIC, destination_identities=[GATEWAY]
            )
        name, event = await asyncio.wait_for(next_event(response), 10)
    assert (name, event) == ("agent_state", state)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


class ScriptedAgent:
    """A participant claiming a code in a room, answering subscribe / unsubscribe as told.

    ``hold`` keeps every answer back until it is set; ``requests`` lists the request types
    received, in order.
    """

    def __init__(self, fleet: Fleet, room: str, *, code: str = CODE, hold: bool = False) -> None:
        fleet.register_room(room)
        self.room = fleet.network.create_room(
            room, f"scripted-{room}", attributes={AGENT_CODE_ATTRIBUTE: code}
        )
        self.requests: list[str] = []
        self.asked = asyncio.Event()
        self.go = asyncio.Event()
        if not hold:
            self.go.set()
        fleet.releases.append(self.go)  # set at teardown: nothing stays stuck
        self.room.local_participant.register_rpc_method(RPC_METHOD, self._answer)

    async def _answer(self, invocation: rtc.RpcInvocationData) -> str:
        request = json.loads(json.loads(invocation.payload)["body"])
        self.requests.append(request["type"])
        self.asked.set()
        await self.go.wait()
        return _ack(request)


async def test_a_stuck_agent_does_not_delay_another_rooms_stream(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1, permissions=WATCH, secret=SIGNING_SECRET)
    stuck = ScriptedAgent(fleet, "stuck-room", hold=True)
    client: Client = await make_gateway(delivery_timeout=10, signing_secret=SIGNING_SECRET)
    stuck_stream = asyncio.create_task(
        client.get(PATH, params={"room_id": "stuck-room"}, headers=HEADERS)
    )
    await asyncio.wait_for(stuck.asked.wait(), 10)  # its subscribe is under way, unanswered

    started = time.perf_counter()
    healthy = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    took = time.perf_counter() - started

    assert healthy.status == 200
    assert took < 1.0, f"a healthy stream took {took:.2f} s to open"
    assert not stuck_stream.done()  # still waiting for its agent: it held nobody up
    healthy.close()
    stuck.go.set()
    (await stuck_stream).close()


async def test_streams_opening_together_on_one_agent_share_one_subscribe(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = ScriptedAgent(fleet, ROOM_1, hold=True)
    client: Client = await make_gateway(signing_secret=SIGNING_SECRET)
    opening = [
        asyncio.create_task(client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS))
        for _ in range(3)
    ]
    await asyncio.wait_for(agent.asked.wait(), 10)
    agent.go.set()
    streams = await asyncio.gather(*opening)
    assert [s.status for s in streams] == [200, 200, 200]
    assert agent.requests == ["subscribe"]
    for stream in streams:
        stream.close()


async def test_a_stream_reopened_while_the_last_one_unsubscribes_subscribes_after_it(
    fleet: Fleet, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "HEARTBEAT_S", 0.05)  # a closed client is seen at once
    agent = ScriptedAgent(fleet, ROOM_1)
    client: Client = await make_gateway(signing_secret=SIGNING_SECRET)
    first = await client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS)
    assert first.status == 200
    agent.go.clear()  # answers held back from now on
    first.close()
    await wait_until(lambda: agent.requests == ["subscribe", "unsubscribe"])

    second = asyncio.create_task(client.get(PATH, params={"room_id": ROOM_1}, headers=HEADERS))
    await asyncio.sleep(0.2)
    # the new subscribe waits for the unsubscribe's answer: the agent never sees them swapped
    assert agent.requests == ["subscribe", "unsubscribe"]
    agent.go.set()
    response = await second
    assert response.status == 200
    assert agent.requests == ["subscribe", "unsubscribe", "subscribe"]
    response.close()


async def test_a_feed_whose_every_client_left_while_subscribing_unsubscribes_and_lets_go(
    fleet: Fleet,
) -> None:
    from imaginex_context_plugin.gateway.delivery import AgentTarget
    from imaginex_context_plugin.gateway.http.event_feeds import EventFeeds, Stream
    from imaginex_context_plugin.gateway.http.messages import MessageWriter

    agent = ScriptedAgent(fleet, ROOM_1, hold=True)
    backend = fleet.backend(idle_timeout=0.2)
    feeds = EventFeeds(
        backend, writer=MessageWriter(signing_secret=SIGNING_SECRET), timeout=5
    )
    target = AgentTarget(ROOM_1, agent.room.local_participant.identity)
    stream = Stream(frozenset({"agent_state"}), interim=False, tool_arguments=False)
    opening = asyncio.create_task(feeds.open(target, CODE, stream))
    await asyncio.wait_for(agent.asked.wait(), 10)
    opening.cancel()  # the client went while the agent had not answered yet
    with pytest.raises(asyncio.CancelledError):
        await opening
    agent.go.set()
    await wait_until(lambda: agent.requests == ["subscribe", "unsubscribe"])
    await wait_until(lambda: feeds.feeds == 0 and backend.pooled_rooms == [], "let go")
    await feeds.aclose()
    await backend.aclose()


async def test_playout_true_adds_the_speech_events_of_speeches_sent_through_the_gateway(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=WATCH)
    client: Client = await make_gateway()
    params = {"room_id": ROOM_1, "events": "agent_transcript"}
    with_playout = await client.get(PATH, params={**params, "playout": "true"}, headers=HEADERS)
    without = await client.get(PATH, params=params, headers=HEADERS)
    assert with_playout.status == without.status == 200
    await wait_until(lambda: agent.plugin.subscribers == [GATEWAY])
    speak = await client.post(
        f"/v1/agent/{CODE}/speak",
        json={"message": "Your order shipped.", "room_id": ROOM_1},
        headers={**HEADERS, "Idempotency-Key": "playout-1"},
    )
    assert speak.status == 200
    await agent.idle()
    await agent.session.aclose()

    got = [(n, d) for n, d in await read_events(with_playout, until="call_ended") if n]
    names = [n for n, _ in got]
    assert names[0] == "speech_started"
    assert set(names) == {"speech_started", "speech_finished", "agent_transcript", "call_ended"}
    assert names.index("speech_started") < names.index("speech_finished")
    started = dict(got)["speech_started"]
    finished = dict(got)["speech_finished"]
    assert started["id"] == finished["id"] == "playout-1"
    assert started["speech_id"] == finished["speech_id"]
    assert finished["interrupted"] is False
    plain = [n for n, _ in await read_events(without, until="call_ended") if n]
    assert plain == ["agent_transcript", "call_ended"]


async def test_playout_must_be_true_or_false(make_gateway: GatewayFactory) -> None:
    client: Client = await make_gateway()
    response = await client.get(
        PATH, params={"room_id": ROOM_1, "playout": "yes"}, headers=HEADERS
    )
    assert response.status == 400
    assert "'playout' must be true or false" in (await response.json())["message"]
