"""Shared pieces of the live suite: an agent in a real room on the real server, and waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api, rtc

from devtools.agent_worker import WorkerError, WorkerProcess, agent_worker
from devtools.livekit_server import ServerInfo
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextClient, ContextPlugin
from imaginex_context_plugin.gateway.delivery import AgentBackend
from imaginex_context_plugin.sender import Via
from tests.fakes import RecordingAudioOutput, RecordingTTS, ScriptedLLM, start_session
from tests.helpers import wait_until

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


async def room_identities(lk: ServerInfo, room: str) -> set[str]:
    """Who is in ``room``, as ``RoomService`` lists it."""
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity for p in listing.participants}


async def agents_found(backend: AgentBackend, code: str, rooms: int) -> None:
    """Wait until ``backend`` finds the agent ``code`` live in ``rooms`` rooms."""

    async def listed() -> bool:
        return len(await backend.find_agents(code, room_id=None)) == rooms

    await wait_until(listed, "the agents' code attribute to reach RoomService", timeout=WAIT_S)


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """A gateway events stream's ``event:`` / ``data:`` pairs, until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: ") :])))
    return events


async def speak_repeat_and_add_context(
    first: TestClient[Any, Any],
    second: TestClient[Any, Any],
    code: str,
    agents: Sequence[LiveAgent],
    message: str,
    *,
    api_secret: str,
) -> None:
    """What a gateway delivering without joining rooms must do: ``message`` spoken in every
    agent's room through ``first``; the same Idempotency-Key through ``second`` (which has no
    record of it) answered by every agent from its dedup memory, by the signed sender, as a
    duplicate and nothing spoken again; then an add-context reaching every room."""
    headers = {"api-secret": api_secret, "Idempotency-Key": f"it-{uuid.uuid4().hex}"}
    response = await first.post(
        f"/v1/agent/{code}/speak", json={"message": message}, headers=headers
    )
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["data"]["delivered_to_rooms"] == len(agents)
    assert sorted(r["room"] for r in payload["data"]["rooms"]) == sorted(
        a.room_name for a in agents
    )
    assert all(r["duplicate"] is False for r in payload["data"]["rooms"])
    for agent in agents:
        await wait_until(lambda a=agent: a.said() == [message], "spoken")

    response = await second.post(
        f"/v1/agent/{code}/speak", json={"message": message}, headers=headers
    )
    again = await response.json()
    assert response.status == 200, again
    assert again["data"]["delivered_to_rooms"] == len(agents)
    assert all(r["duplicate"] is True for r in again["data"]["rooms"])

    response = await first.post(
        f"/v1/agent/{code}/add-context",
        json={"context": "The customer is on the gold plan."},
        headers={"api-secret": api_secret},
    )
    added = await response.json()
    assert response.status == 200, added
    assert added["data"]["delivered_to_rooms"] == len(agents)
    for agent in agents:
        assert agent.said() == [message]
        assert len(agent.plugin.context_store) == 1


async def stream_a_call_to_its_end(
    client: TestClient[Any, Any],
    code: str,
    agent: LiveAgent,
    *,
    api_secret: str,
    pooled_rooms: Callable[[], list[str]],
) -> list[tuple[str, dict[str, Any]]]:
    """Open the gateway's events stream of ``agent``'s room, check it is the only room the
    gateway holds (``pooled_rooms``), speak and end the call: the stream ends with
    ``call_ended`` and saw the agent speaking. Returns its events."""
    headers = {"api-secret": api_secret}
    response = await client.get(
        f"/v1/agent/{code}/events",
        params={"room_id": agent.room_name, "events": "agent_state"},
        headers=headers,
    )
    assert response.status == 200, await response.text()
    reader = asyncio.ensure_future(read_events(response))
    # the stream holds its room; delivering joins nothing more
    assert pooled_rooms() == [agent.room_name]
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
    return events


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, *, port: int | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """``app`` served on 127.0.0.1 (at ``port``, else a free one) for as long as the block runs."""
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1", port=port)
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def assert_no_room_joined(
    lk: ServerInfo, agents: Sequence[LiveAgent], pooled: Sequence[Callable[[], list[str]]]
) -> None:
    """No room connection: nothing in any gateway's pool (``pooled``), and no gateway
    participant in any agent's room."""
    assert all(rooms() == [] for rooms in pooled)
    for agent in agents:
        assert await room_identities(lk, agent.room_name) == {agent.identity}


def module_worker(
    lk: ServerInfo, tmp_path_factory: pytest.TempPathFactory, worker_file: str, name: str
) -> Iterator[WorkerProcess]:
    """``worker_file`` as a real agent worker, for a module-scoped fixture to ``yield from``;
    a worker that does not register fails the test (its log in the message)."""
    log_path = tmp_path_factory.mktemp(name) / "worker.log"
    try:
        with agent_worker(lk, worker_file, log_path) as worker:
            yield worker
    except WorkerError as exc:
        pytest.fail(str(exc), pytrace=False)
