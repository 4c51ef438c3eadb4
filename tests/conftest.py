"""Fixtures: a real AgentSession with ContextPlugin in a room, and a backend that talks to it.

The agent and the backend are two real ``rtc.Room`` objects (``LinkedRoom``) on an in-memory
``RelayNetwork``: the backend's ``publish_data`` reaches the plugin as a real ``data_received``
event with a real ``rtc.DataPacket``, and the plugin's acks come back the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession

from imaginex_context_plugin import (
    ACK_TOPIC,
    CONTEXT_TOPIC,
    RPC_METHOD,
    AckTransport,
    ContextPlugin,
)
from imaginex_context_plugin.context import ENTRY_ID_PREFIX
from tests.fakes import (
    LinkedRoom,
    RecordingAudioOutput,
    RecordingTTS,
    RelayNetwork,
    ScriptedLLM,
    start_session,
)

# the gateway's world, shared by every gateway test module
from tests.gateway_fixtures import fleet, make_gateway  # noqa: F401

# a real Redis, for the gateway's shared state
from tests.redis_fixtures import redis_server, redis_url, store_url  # noqa: F401

ROOM = "room-1"
AGENT_CODE = "A12345678"
AGENT_IDENTITY = "agent"
BACKEND_IDENTITY = "backend"
ANSWER_TIMEOUT_S = 5.0
SERVER_SECRET = "a-livekit-api-secret-of-32-bytes!!"
"""The LiveKit API secret the harness's plugin checks server-API packets against."""


class Backend:
    """A participant that sends context messages and collects what comes back on ACK_TOPIC."""

    def __init__(self, room: LinkedRoom, *, agent_identity: str = AGENT_IDENTITY) -> None:
        self.room = room
        self.agent_identity = agent_identity
        self.received: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        room.on("data_received", self._on_data)

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != ACK_TOPIC:
            return
        self.received.append(json.loads(packet.data))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            payload: bytes | str = json.dumps(message)
        else:
            payload = message
        await self.room.local_participant.publish_data(
            payload, topic=CONTEXT_TOPIC, destination_identities=[self.agent_identity]
        )

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = ANSWER_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first received message (old or new) matching ``predicate``."""

        async def find() -> dict[str, Any]:
            async with self._arrived:
                while True:
                    for message in self.received:
                        if predicate(message):
                            return message
                    await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    async def ack_for(self, request_id: str | None, *, nth: int = 1) -> dict[str, Any]:
        def match(m: dict[str, Any]) -> bool:
            return m["type"] == "ack" and m["id"] == request_id

        await self.wait_for(lambda _: sum(1 for m in self.received if match(m)) >= nth)
        return [m for m in self.received if match(m)][nth - 1]

    async def event(self, kind: str, request_id: str | None) -> dict[str, Any]:
        return await self.wait_for(lambda m: m["type"] == kind and m["id"] == request_id)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send and wait for the ack that echoes its id."""
        await self.send(message)
        return await self.ack_for(message.get("id"))

    async def rpc(self, message: dict[str, Any] | str) -> dict[str, Any]:
        payload = message if isinstance(message, str) else json.dumps(message)
        response = await self.room.local_participant.perform_rpc(
            destination_identity=self.agent_identity, method=RPC_METHOD, payload=payload
        )
        result: dict[str, Any] = json.loads(response)
        return result

    def acks(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == "ack"]

    async def settle(self, expected_acks: int) -> list[dict[str, Any]]:
        """Wait until ``expected_acks`` acks arrived, then a little more to catch extras."""
        await self.wait_for(lambda _: len(self.acks()) >= expected_acks)
        await asyncio.sleep(0.05)
        return self.acks()


@dataclass
class Harness:
    network: RelayNetwork
    session: AgentSession[Any]
    llm: ScriptedLLM
    tts: RecordingTTS
    audio: RecordingAudioOutput | None
    agent_room: LinkedRoom
    plugin: ContextPlugin
    backend: Backend
    extra_backends: list[Backend] = field(default_factory=list)

    def backend_as(self, identity: str) -> Backend:
        backend = Backend(self.network.create_room(ROOM, identity))
        self.extra_backends.append(backend)
        return backend

    def context_messages(self) -> list[str]:
        """The plugin's messages in the current agent's chat context, in order."""
        return [
            m.text_content or ""
            for m in self.session.current_agent.chat_ctx.messages()
            if m.id.startswith(ENTRY_ID_PREFIX)
        ]


HarnessFactory = Callable[..., Any]


@pytest.fixture
async def make_harness() -> AsyncIterator[HarnessFactory]:
    """Build a Harness; keyword arguments go to ContextPlugin (``text_only`` and ``speed`` too).

    ``llm_model`` replaces the scripted model (answering ``replies``) the session runs.

    ``ack_transport_for`` makes the plugin's ``ack_transport`` from the agent's room (a
    transport that wraps the real one).
    """
    built: list[Harness] = []

    async def build(
        *,
        text_only: bool = False,
        speed: float = 20.0,
        replies: list[str] | None = None,
        llm_model: ScriptedLLM | None = None,
        agent: Agent | None = None,
        start_plugin: bool = True,
        ack_transport_for: Callable[[rtc.Room], AckTransport] | None = None,
        **plugin_kwargs: Any,
    ) -> Harness:
        network = RelayNetwork()
        scripted = llm_model or ScriptedLLM(replies or [])
        recording_tts = RecordingTTS()
        audio = None if text_only else RecordingAudioOutput(speed=speed)
        session = await start_session(
            agent,
            llm_model=scripted,
            tts_model=recording_tts,
            audio_output=audio,
            text_only=text_only,
        )
        agent_room = network.create_room(
            ROOM, AGENT_IDENTITY, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        )
        plugin_kwargs.setdefault("agent_code", AGENT_CODE)
        plugin_kwargs.setdefault("allowed_identities", [BACKEND_IDENTITY])
        plugin_kwargs.setdefault("server_secret", SERVER_SECRET)
        if ack_transport_for is not None:
            plugin_kwargs["ack_transport"] = ack_transport_for(agent_room)
        plugin = ContextPlugin(**plugin_kwargs)
        backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
        harness = Harness(
            network, session, scripted, recording_tts, audio, agent_room, plugin, backend
        )
        built.append(harness)
        if start_plugin:
            await plugin.start(session, agent_room)
        return harness

    yield build

    for harness in built:
        await harness.plugin.aclose()
        await harness.session.aclose()
        await harness.network.aclose()


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    result: Harness = await make_harness()
    return result


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Tests marked ``both_event_loops`` run on asyncio's loop and again on uvloop (the
    gateway's default when installed, ``gateway/event_loop.py``); the rest on asyncio's only
    (one factory leaves their names as they are)."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if item.get_closest_marker("both_event_loops") is not None:
        try:
            import uvloop
        except ImportError:  # the [dev] extra installs it (not on Windows)
            return factories
        factories["uvloop"] = uvloop.new_event_loop
    return factories
