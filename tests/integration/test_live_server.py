"""ContextClient -> LiveKit server -> ContextPlugin -> ack, against a real ``livekit-server``.

The agent side is a real ``rtc.Room`` joined as an agent participant, with a real
``AgentSession`` on the offline fakes and ``ContextPlugin`` on it; the sender joins the same
room with ``ContextClient.connect()``. Skipped without LIVEKIT_URL, LIVEKIT_API_KEY and
LIVEKIT_API_SECRET (see ``conftest.py`` and ``README.md`` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import api, rtc

from imaginex_context_plugin import (
    ContextClient,
    ContextError,
    ContextPlugin,
    ErrorCode,
    send_via_server_api,
)
from imaginex_context_plugin.client import Via
from tests.livekit_fakes import RecordingAudioOutput, RecordingTTS, ScriptedLLM, start_session

AGENT_CODE = "A12345678"
AGENT_IDENTITY = "it-agent"
BACKEND = "it-backend"
SIGNING_SECRET = "integration-signing-secret-for-the-client"
WAIT_S = 15.0
VIAS = pytest.mark.parametrize("via", ["rpc", "data"])


def env() -> tuple[str, str, str]:
    return (
        os.environ["LIVEKIT_URL"],
        os.environ["LIVEKIT_API_KEY"],
        os.environ["LIVEKIT_API_SECRET"],
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


@dataclass
class LiveAgent:
    room_name: str
    room: rtc.Room
    session: Any
    plugin: ContextPlugin
    tts: RecordingTTS

    async def client(self, via: Via, **kwargs: Any) -> ContextClient:
        url, key, secret = env()
        kwargs.setdefault("identity", BACKEND)
        return await ContextClient.connect(
            url,
            key,
            secret,
            self.room_name,
            agent_code=AGENT_CODE,
            via=via,
            agent_timeout=WAIT_S,
            timeout=WAIT_S,
            **kwargs,
        )


@pytest.fixture
async def live_agent() -> AsyncIterator[LiveAgent]:
    url, key, secret = env()
    room_name = f"imaginex-client-it-{uuid.uuid4().hex[:8]}"
    # can_update_own_metadata: the plugin publishes its agent code as a participant attribute
    grants = api.VideoGrants(room_join=True, room=room_name, can_update_own_metadata=True)
    token = (
        api.AccessToken(key, secret)
        .with_identity(AGENT_IDENTITY)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )
    tts = RecordingTTS()
    session = await start_session(
        llm_model=ScriptedLLM(), tts_model=tts, audio_output=RecordingAudioOutput(speed=20)
    )
    room = rtc.Room()
    plugin = ContextPlugin(
        agent_code=AGENT_CODE, allowed_identities=[BACKEND], secret=SIGNING_SECRET
    )
    await plugin.start(session, room)  # before the room connects, as in a job entrypoint
    await room.connect(url, token)
    try:
        yield LiveAgent(room_name, room, session, plugin, tts)
    finally:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()
        async with api.LiveKitAPI(url, key, secret) as lkapi:
            with contextlib.suppress(Exception):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))


@VIAS
async def test_speak_and_add_context_are_acknowledged_through_the_server(
    live_agent: LiveAgent, via: Via
) -> None:
    async with await live_agent.client(via) as client:
        added = await client.add_context("Customer is a premium member.", key="customer")
        result = await client.speak("Welcome back!", wait_for_playout=True, playout_timeout=WAIT_S)

    assert added.data.agent_code == AGENT_CODE
    assert added.data.room_id == live_agent.room_name
    assert [entry.key for entry in live_agent.plugin.context_store.describe()] == ["customer"]
    assert result.ack.data.speech_id
    assert result.finished.speech_id == result.ack.data.speech_id
    assert not result.interrupted
    assert live_agent.tts.texts == ["Welcome back!"]


@VIAS
async def test_an_error_ack_comes_back_through_the_server(live_agent: LiveAgent, via: Via) -> None:
    async with await live_agent.client(via, identity="it-stranger") as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Let me in.")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.ack is not None
    assert live_agent.tts.texts == []


async def test_a_signed_request_from_an_unlisted_identity_is_applied(
    live_agent: LiveAgent,
) -> None:
    async with await live_agent.client("rpc", identity="it-signed", secret=SIGNING_SECRET) as c:
        ack = await c.add_context("Signed context.", key="signed")
    assert ack.success
    assert [entry.key for entry in live_agent.plugin.context_store.describe()] == ["signed"]


async def test_the_server_api_path_reaches_the_agent_unacknowledged(
    live_agent: LiveAgent,
) -> None:
    url, key, secret = env()
    # the agent publishes its code once connected; the lookup below relies on it
    async with api.LiveKitAPI(url, key, secret) as lkapi:

        async def agent_code_published() -> bool:
            listing = await lkapi.room.list_participants(
                api.ListParticipantsRequest(room=live_agent.room_name)
            )
            return any(p.attributes.get("imaginex.agent_code") for p in listing.participants)

        deadline = time.monotonic() + WAIT_S
        while not await agent_code_published():
            assert time.monotonic() < deadline, "the agent never published its code"
            await asyncio.sleep(0.1)

        result = await send_via_server_api(
            {"type": "speak", "message": "Flash sale: 50% off!"},
            room=live_agent.room_name,
            agent_code=AGENT_CODE,
            lkapi=lkapi,
        )
    assert result.acknowledged is False
    assert result.destination_identity == AGENT_IDENTITY
    await wait_until(lambda: live_agent.tts.texts == ["Flash sale: 50% off!"])
