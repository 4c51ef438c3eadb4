"""Shared pieces of the live suite: an agent in a real room on the real server, and waits."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit import api, rtc

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextClient, ContextPlugin
from imaginex_context_plugin.sender import Via
from tests.fakes import RecordingAudioOutput, RecordingTTS, ScriptedLLM, start_session

AGENT_CODE = "A12345678"
AGENT_IDENTITY = "it-agent"
BACKEND = "it-backend"
SIGNING_SECRET = "integration-signing-secret-for-the-client"
WAIT_S = 15.0


def room_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def agent_token(lk: ServerInfo, room: str, identity: str = AGENT_IDENTITY) -> str:
    # can_update_own_metadata: the plugin publishes its agent code as a participant attribute
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


def participant_token(lk: ServerInfo, room: str, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .to_jwt()
    )



@dataclass
class LiveAgent:
    """A real AgentSession (offline fakes) with ContextPlugin, in a real room on the server."""

    lk: ServerInfo
    room_name: str
    room: rtc.Room
    session: Any
    plugin: ContextPlugin
    tts: RecordingTTS
    llm: ScriptedLLM
    identity: str = AGENT_IDENTITY

    async def client(self, via: Via = "rpc", **kwargs: Any) -> ContextClient:
        kwargs.setdefault("identity", BACKEND)
        kwargs.setdefault("agent_code", self.plugin.agent_code)
        kwargs.setdefault("agent_timeout", WAIT_S)
        kwargs.setdefault("timeout", WAIT_S)
        return await ContextClient.connect(
            self.lk.url, self.lk.api_key, self.lk.api_secret, self.room_name, via=via, **kwargs
        )

    def said(self) -> list[str]:
        return [
            m.text_content or "" for m in self.session.history.messages() if m.role == "assistant"
        ]

    async def code_listed(self) -> bool:
        """Whether RoomService shows this agent's code attribute."""
        async with api.LiveKitAPI(self.lk.url, self.lk.api_key, self.lk.api_secret) as lkapi:
            listing = await lkapi.room.list_participants(
                api.ListParticipantsRequest(room=self.room_name)
            )
        return any(
            p.identity == self.identity
            and p.attributes.get(AGENT_CODE_ATTRIBUTE) == self.plugin.agent_code
            for p in listing.participants
        )


@contextlib.asynccontextmanager
async def live_agent(
    lk: ServerInfo,
    *,
    room: str | None = None,
    identity: str = AGENT_IDENTITY,
    llm_replies: list[str] | None = None,
    token: str | None = None,
    **plugin_kwargs: Any,
) -> AsyncIterator[LiveAgent]:
    """Join ``room`` as an agent, plugin started before the room connects (as in an entrypoint),
    with ``token`` if given (else an agent token that may set its attributes)."""
    name = room or room_name("it")
    plugin_kwargs.setdefault("agent_code", AGENT_CODE)
    plugin_kwargs.setdefault("allowed_identities", [BACKEND])
    plugin_kwargs.setdefault("server_secret", lk.api_secret)
    tts = RecordingTTS()
    scripted = ScriptedLLM(llm_replies or [])
    session = await start_session(
        llm_model=scripted,
        tts_model=tts,
        audio_output=RecordingAudioOutput(speed=20),
    )
    lk_room = rtc.Room()
    plugin = ContextPlugin(**plugin_kwargs)
    await plugin.start(session, lk_room)
    await lk_room.connect(lk.url, token or agent_token(lk, name, identity))
    agent = LiveAgent(lk, name, lk_room, session, plugin, tts, scripted, identity)
    try:
        yield agent
    finally:
        await plugin.aclose()
        await session.aclose()
        await lk_room.disconnect()
        # already gone once everyone left, or with the server (a fault test stopped it)
        with contextlib.suppress(api.TwirpError, aiohttp.ClientError):
            async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
