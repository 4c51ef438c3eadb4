"""The gateway's test world: real agents in rooms on a relay network, and a gateway in front.

The gateway runs its real ``LiveKitBackend`` (room pool, hidden participant, RPC, ack reading)
with two seams swapped: rooms are ``LinkedRoom``s on an in-memory ``RelayNetwork`` and the room
listing reads that network instead of ``RoomService`` (``RelayDirectory``). Each agent is a real
``AgentSession`` with ``ContextPlugin`` in its own room (``Fleet.agent``). The ``fleet`` and
``make_gateway`` fixtures are registered for the whole suite by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import rtc

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, RPC_METHOD, ContextPlugin
from imaginex_context_plugin.context import ENTRY_ID_PREFIX
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    ParticipantSummary,
    create_app,
)
from tests.fakes import (
    LinkedRoom,
    RecordingAudioOutput,
    RecordingTTS,
    RelayNetwork,
    ScriptedLLM,
    start_session,
)
from tests.helpers import wait_until

CODE = "A12345678"
SECRET = "gateway-test-secret-6f1c2b"
HEADERS = {"api-secret": SECRET}
SETTINGS = LiveKitSettings(
    url="ws://127.0.0.1:1",
    api_key="devkey",
    api_secret="devsecret-0123456789abcdef0123456789abcdef",
)
ROOM_1 = "customer_session_1"
ROOM_2 = "order_confirmation_room"
GATEWAY = DEFAULT_GATEWAY_IDENTITY
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")



# ---------------------------------------------------------------------------------------------
# the fleet: real agents in rooms on a relay network, and the gateway's view of it


class RelayDirectory:
    """Lists the relay network's rooms and participants, as ``RoomService`` would."""

    def __init__(self, network: RelayNetwork) -> None:
        self.network = network
        self.names: list[str] = []
        self.closed = False

    async def list_rooms(self) -> list[str]:
        return [name for name in self.names if self.network.rooms(name)]

    async def list_participants(self, room: str) -> list[ParticipantSummary]:
        return [
            ParticipantSummary(r.participant_info.identity, dict(r.participant_info.attributes))
            for r in self.network.rooms(room)
        ]

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class LiveAgent:
    room: LinkedRoom
    plugin: ContextPlugin
    tts: RecordingTTS
    audio: RecordingAudioOutput
    session: Any

    def said(self) -> list[str]:
        """What the agent said, in order (played speech lands in the session history)."""
        return [
            m.text_content or "" for m in self.session.history.messages() if m.role == "assistant"
        ]

    def context(self) -> list[str]:
        return [
            m.text_content or ""
            for m in self.session.current_agent.chat_ctx.messages()
            if m.id.startswith(ENTRY_ID_PREFIX)
        ]

    async def idle(self) -> None:
        """Wait until nothing is being said or queued."""
        await wait_until(
            lambda: (
                self.session.current_speech is None
                and self.session.agent_state != "speaking"
                and not self.audio.playing
            )
        )


@dataclass
class Fleet:
    network: RelayNetwork = field(default_factory=RelayNetwork)
    agents: list[LiveAgent] = field(default_factory=list)
    releases: list[asyncio.Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = RelayDirectory(self.network)

    def register_room(self, name: str) -> None:
        """Make ``name`` one of the rooms the directory lists (once it has someone in it)."""
        if name not in self.directory.names:
            self.directory.names.append(name)

    async def agent(
        self, room: str, *, code: str = CODE, identity: str = "agent", **plugin_kwargs: Any
    ) -> LiveAgent:
        self.register_room(room)
        tts = RecordingTTS()
        audio = RecordingAudioOutput(speed=20.0)
        session = await start_session(llm_model=ScriptedLLM(), tts_model=tts, audio_output=audio)
        agent_room = self.network.create_room(
            room, identity, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        )
        plugin_kwargs.setdefault("allowed_identities", [GATEWAY])
        plugin = ContextPlugin(agent_code=code, **plugin_kwargs)
        await plugin.start(session, agent_room)
        live = LiveAgent(agent_room, plugin, tts, audio, session)
        self.agents.append(live)
        # the plugin publishes its code once connected: that is how the gateway finds it
        await wait_until(
            lambda: agent_room.participant_info.attributes.get(AGENT_CODE_ATTRIBUTE) == code
        )
        return live

    def stuck_agent(self, room: str, *, code: str = CODE) -> None:
        """A participant that claims the code but never answers its RPC."""
        self.register_room(room)
        release = asyncio.Event()
        self.releases.append(release)
        stuck = self.network.create_room(
            room, "stuck-agent", attributes={AGENT_CODE_ATTRIBUTE: code}
        )

        async def never_answers(_: rtc.RpcInvocationData) -> str:
            await release.wait()
            return "{}"

        stuck.local_participant.register_rpc_method(RPC_METHOD, never_answers)

    def human(self, room: str, identity: str = "user") -> None:
        self.register_room(room)
        self.network.create_room(room, identity)

    def backend(
        self, *, directory: Any = None, room_factory: Any = None, **options: Any
    ) -> LiveKitBackend:
        return LiveKitBackend(
            SETTINGS,
            directory=directory if directory is not None else self.directory,
            room_factory=room_factory
            if room_factory is not None
            else (lambda name: self.network.create_room(name, GATEWAY, connected=False)),
            **options,
        )

    def gateway_rooms(self, room: str) -> list[LinkedRoom]:
        return [r for r in self.network.rooms(room) if r.participant_info.identity == GATEWAY]

    async def aclose(self) -> None:
        for release in self.releases:
            release.set()
        for live in self.agents:
            await live.plugin.aclose()
            await live.session.aclose()
        await self.network.aclose()


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    built = Fleet()
    yield built
    await built.aclose()


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_gateway(fleet: Fleet) -> AsyncIterator[GatewayFactory]:
    """Serve a gateway on a test server; keyword arguments go to ``create_app``."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def build(
        *, backend: Any = None, secrets: ApiSecrets | None = None, **options: Any
    ) -> TestClient[web.Request, web.Application]:
        app = create_app(
            backend if backend is not None else fleet.backend(),
            secrets if secrets is not None else ApiSecrets(secret=SECRET),
            **options,
        )
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


Client = TestClient[web.Request, web.Application]


async def post(
    client: Client, path: str, body: Any, *, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    """POST ``body`` (JSON, or raw bytes/str) and return status, JSON body and headers."""
    sent_headers = dict(HEADERS if headers is None else headers)
    if isinstance(body, (bytes, str)):
        sent_headers.setdefault("Content-Type", "application/json")
        response = await client.post(path, data=body, headers=sent_headers)
    else:
        response = await client.post(path, json=body, headers=sent_headers)
    payload = await response.json()
    return response.status, payload, response.headers
