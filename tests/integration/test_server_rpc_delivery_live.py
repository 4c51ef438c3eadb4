"""The gateway's server-RPC delivery (``--delivery server-rpc``) against a real
``livekit-server``: one ``RoomService.PerformRpc`` per room to real ContextPlugins in real
rooms, the agent's ack coming back as the RPC's answer, no room joined by the gateway, nothing
for the agents to allow or post back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin.errors import BackendError, ErrorCode
from imaginex_context_plugin.gateway import ApiSecrets, LiveKitBackend, LiveKitSettings, create_app
from imaginex_context_plugin.gateway.delivery import AgentTarget, ServerRpcBackend
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from tests.helpers import wait_until
from tests.integration.live import AGENT_IDENTITY, LiveAgent, live_agent, room_name

API_SECRET = "integration-gateway-secret"
SIGNING = "integration-server-rpc-signing-secret"
WAIT_S = 15.0

Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def server_rpc_gateway(
    lk: ServerInfo, *, signing_secret: str | None = SIGNING
) -> AsyncIterator[tuple[Client, ServerRpcBackend]]:
    settings = LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)
    backend = ServerRpcBackend(LiveKitBackend(settings), settings)
    app = create_app(
        backend,
        ApiSecrets(secret=API_SECRET),
        signing_secret=signing_secret,
        delivery_timeout=10.0,
    )
    client: Client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, backend
    finally:
        await client.close()


async def _identities(lk: ServerInfo, room: str) -> set[str]:
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity for p in listing.participants}


async def _found(backend: ServerRpcBackend, code: str, rooms: int) -> None:
    async def listed() -> bool:
        return len(await backend.find_agents(code, room_id=None)) == rooms

    await wait_until(listed, "the agents' code attribute to reach RoomService", timeout=WAIT_S)


async def test_speak_and_add_context_reach_every_room_without_joining_one(
    livekit: ServerInfo,
) -> None:
    code = f"SR{uuid.uuid4().hex[:8].upper()}"
    async with contextlib.AsyncExitStack() as stack:
        one, two = [await stack.enter_async_context(server_rpc_gateway(livekit)) for _ in range(2)]
        (client, backend), (replica, replica_backend) = one, two
        agents: list[LiveAgent] = [
            await stack.enter_async_context(live_agent(livekit, agent_code=code, secret=SIGNING))
            for _ in range(2)
        ]
        await _found(backend, code, 2)

        headers = {"api-secret": API_SECRET, "Idempotency-Key": f"sr-{uuid.uuid4().hex}"}
        response = await client.post(
            f"/v1/agent/{code}/speak", json={"message": "Hello by PerformRpc."}, headers=headers
        )
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["data"]["delivered_to_rooms"] == 2
        assert sorted(r["room"] for r in payload["data"]["rooms"]) == sorted(
            a.room_name for a in agents
        )
        assert all(r["duplicate"] is False for r in payload["data"]["rooms"])
        for agent in agents:
            await wait_until(lambda a=agent: a.said() == ["Hello by PerformRpc."], "spoken")

        # the same Idempotency-Key through another gateway (no record of it there): the same
        # request id, answered from the agents' dedup memory by the signed sender, not spoken
        response = await replica.post(
            f"/v1/agent/{code}/speak", json={"message": "Hello by PerformRpc."}, headers=headers
        )
        again = await response.json()
        assert response.status == 200, again
        assert again["data"]["delivered_to_rooms"] == 2
        assert all(r["duplicate"] is True for r in again["data"]["rooms"])

        response = await client.post(
            f"/v1/agent/{code}/add-context",
            json={"context": "The customer is on the gold plan."},
            headers={"api-secret": API_SECRET},
        )
        added = await response.json()
        assert response.status == 200, added
        assert added["data"]["delivered_to_rooms"] == 2
        for agent in agents:
            assert agent.said() == ["Hello by PerformRpc."]
            assert len(agent.plugin.context_store) == 1

        # no room connection: nothing pooled, and no gateway participant in any room
        assert backend.pooled_rooms == []
        assert replica_backend.pooled_rooms == []
        for agent in agents:
            assert await _identities(livekit, agent.room_name) == {agent.identity}
        assert backend.sent_again == replica_backend.sent_again == 0


async def test_without_a_signing_secret_the_livekit_api_secret_vouches_for_the_gateway(
    livekit: ServerInfo,
) -> None:
    """Agents check the LiveKit API secret by default: a gateway with no signing secret of its
    own still reaches them; an agent that trusts no server-signed message refuses, plainly."""
    code = f"SS{uuid.uuid4().hex[:8].upper()}"
    async with (
        server_rpc_gateway(livekit, signing_secret=None) as (client, backend),
        live_agent(livekit, agent_code=code) as trusting,
        live_agent(livekit, agent_code=code, trust_server=False) as wary,
    ):
        await _found(backend, code, 2)
        response = await client.post(
            f"/v1/agent/{code}/speak",
            json={"message": "Signed by the API secret."},
            headers={"api-secret": API_SECRET},
        )
        payload = await response.json()
        results = {r["room"]: r for r in payload["data"]["rooms"]}
        assert results[trusting.room_name]["delivered"] is True, payload
        assert results[wary.room_name]["error"] == "UNAUTHORIZED", payload
        await wait_until(lambda: trusting.said() == ["Signed by the API secret."], "spoken")
        assert wary.said() == []


async def _read_events(response: ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """The stream's ``event:`` / ``data:`` pairs, until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: ") :])))
    return events


async def test_the_events_stream_still_works_and_is_the_only_room_held(
    livekit: ServerInfo,
) -> None:
    code = f"SE{uuid.uuid4().hex[:8].upper()}"
    async with (
        server_rpc_gateway(livekit) as (client, backend),
        live_agent(
            livekit,
            agent_code=code,
            secret=SIGNING,
            # subscribe and end_call are sensitive: granted to the gateway's signed sender
            permissions={"imaginex-gateway": {"*"}},
        ) as agent,
    ):
        await _found(backend, code, 1)
        headers = {"api-secret": API_SECRET}
        response = await client.get(
            f"/v1/agent/{code}/events",
            params={"room_id": agent.room_name, "events": "agent_state"},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        reader = asyncio.ensure_future(_read_events(response))
        # the stream holds its room; delivering joins nothing more
        assert backend.pooled_rooms == [agent.room_name]
        spoken = await client.post(
            f"/v1/agent/{code}/speak",
            json={"message": "Your table is booked.", "room_id": agent.room_name},
            headers=headers,
        )
        assert spoken.status == 200, await spoken.text()
        await wait_until(lambda: agent.said() == ["Your table is booked."])
        ended = await client.post(
            f"/v1/agent/{code}/end-call",
            json={"reason": "Booked", "room_id": agent.room_name},
            headers=headers,
        )
        assert ended.status == 200, await ended.text()
        events = await asyncio.wait_for(reader, WAIT_S)
        response.release()

    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "call_ended"
    assert ("agent_state", "speaking") in [(k, e.get("new_state")) for k, e in events]


async def test_an_agent_that_left_is_agent_not_found_not_a_timeout(livekit: ServerInfo) -> None:
    code = f"SG{uuid.uuid4().hex[:8].upper()}"
    room = room_name("sr-gone")
    writer = MessageWriter(signing_secret=SIGNING)
    outgoing = Outgoing("speak", {"type": "speak", "message": "Anyone there?"})
    async with server_rpc_gateway(livekit) as (_, backend):
        async with live_agent(livekit, room=room, agent_code=code, secret=SIGNING):
            await _found(backend, code, 1)
        started = time.monotonic()
        try:
            await backend.deliver(
                AgentTarget(room, AGENT_IDENTITY),
                writer.write(outgoing, "gone-1", code, room),
                timeout=WAIT_S,
            )
        except BackendError as exc:
            failure = exc
        took = time.monotonic() - started
    assert (failure.code, failure.retryable) == (ErrorCode.AGENT_NOT_FOUND, True)
    assert took < WAIT_S / 2  # LiveKit looked for it for about 3 s: not the deadline
