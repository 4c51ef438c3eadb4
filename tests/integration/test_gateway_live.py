"""The gateway against a real ``livekit-server --dev``: RoomService lookup, hidden participant,
RPC to a real ContextPlugin in a real room.

Skipped (by ``conftest.py``) unless LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are
set, e.g.::

    livekit-server --dev &
    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
        .venv/bin/python -m pytest -q tests/integration -m integration
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api, rtc
from livekit.protocol.room import DeleteRoomRequest

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from tests.livekit_fakes import RecordingAudioOutput, RecordingTTS, ScriptedLLM, start_session

SECRET = "integration-gateway-secret"
WAIT_S = 15.0


def settings() -> LiveKitSettings:
    return LiveKitSettings(
        url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
    )


def agent_token(room: str, identity: str) -> str:
    # can_update_own_metadata: the plugin publishes its agent code as a participant attribute
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    lk = settings()
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


@dataclass
class LiveAgent:
    room_name: str
    room: rtc.Room
    session: Any
    plugin: ContextPlugin

    def said(self) -> list[str]:
        return [
            m.text_content or "" for m in self.session.history.messages() if m.role == "assistant"
        ]


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def agent() -> AsyncIterator[LiveAgent]:
    code = f"IT{uuid.uuid4().hex[:8].upper()}"
    room_name = f"gateway-it-{uuid.uuid4().hex[:8]}"
    session = await start_session(
        llm_model=ScriptedLLM(), tts_model=RecordingTTS(), audio_output=RecordingAudioOutput()
    )
    room = rtc.Room()
    plugin = ContextPlugin(agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY])
    await plugin.start(session, room)
    await room.connect(os.environ["LIVEKIT_URL"], agent_token(room_name, "it-agent"))
    try:
        yield LiveAgent(room_name, room, session, plugin)
    finally:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()
        lk = settings()
        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as client:
            with contextlib.suppress(api.TwirpError):  # already gone once everyone left
                await client.room.delete_room(DeleteRoomRequest(room=room_name))


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Any]]:
    backend = LiveKitBackend(settings())
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(backend, ApiSecrets(secret=SECRET)))
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

    await until(listed, "the agent's code attribute to reach RoomService")

    headers = {"api-secret": SECRET, "Idempotency-Key": "it-speak-1"}
    body = {"message": "Hello from the gateway.", "room_id": agent.room_name}
    for attempt in range(2):
        response = await client.post(f"/v1/agent/{code}/speak", json=body, headers=headers)
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["data"]["delivered_to_rooms"] == 1
        assert payload["data"]["rooms"][0]["duplicate"] is (attempt == 1)

    async def spoken() -> bool:
        return agent.said() == ["Hello from the gateway."]

    await until(spoken, "the agent to say it")

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
