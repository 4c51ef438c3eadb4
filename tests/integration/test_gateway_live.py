"""The gateway against a real ``livekit-server``: RoomService lookup, the pooled sender
connection, RPC to a real ContextPlugin in a real room."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from tests.helpers import wait_until
from tests.integration.live import LiveAgent, live_agent

SECRET = "integration-gateway-secret"


def settings(lk: ServerInfo) -> LiveKitSettings:
    return LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)


@pytest.fixture
async def agent(livekit: ServerInfo) -> AsyncIterator[LiveAgent]:
    code = f"IT{uuid.uuid4().hex[:8].upper()}"
    async with live_agent(
        livekit, agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY]
    ) as joined:
        yield joined


@pytest.fixture
async def gateway(
    livekit: ServerInfo,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Any]]:
    backend = LiveKitBackend(settings(livekit))
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(backend, ApiSecrets(secret=SECRET)), host="127.0.0.1")
    )
    await client.start_server()
    try:
        yield client, backend
    finally:
        await client.close()


async def test_speak_through_the_gateway_reaches_a_live_agent(
    agent: LiveAgent, gateway: tuple[TestClient[web.Request, web.Application], Any]
) -> None:
    client, backend = gateway
    code = agent.plugin.agent_code
    assert code is not None

    async def listed() -> bool:
        return bool(await backend.find_agents(code, room_id=None))

    await wait_until(listed, "the agent's code attribute to reach RoomService")

    headers = {"api-secret": SECRET, "Idempotency-Key": "it-speak-1"}
    body = {"message": "Hello from the gateway.", "room_id": agent.room_name}
    payloads = []
    for attempt in range(2):
        response = await client.post(f"/v1/agent/{code}/speak", json=body, headers=headers)
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["data"]["delivered_to_rooms"] == 1
        # the retry is the first answer given again; nothing is sent twice
        assert response.headers.get("Idempotent-Replayed") == ("true" if attempt else None)
        payloads.append(payload)
    assert payloads[1] == payloads[0]
    assert payloads[0]["data"]["rooms"][0]["duplicate"] is False

    await wait_until(lambda: agent.said() == ["Hello from the gateway."], "the agent to say it")

    response = await client.post(
        f"/v1/agent/{code}/add-context",
        json={"context": "The customer is on the gold plan."},
        headers={"api-secret": SECRET},
    )
    assert response.status == 200
    assert (await response.json())["data"]["delivered_to_rooms"] == 1


async def test_a_room_without_the_agent_is_no_active_rooms(
    agent: LiveAgent, gateway: tuple[TestClient[web.Request, web.Application], Any]
) -> None:
    client, _ = gateway
    response = await client.post(
        f"/v1/agent/{agent.plugin.agent_code}/speak",
        json={"message": "Hi", "room_id": f"absent-{uuid.uuid4().hex[:8]}"},
        headers={"api-secret": SECRET},
    )
    assert response.status == 404
    assert (await response.json())["error"] == "NO_ACTIVE_ROOMS"
