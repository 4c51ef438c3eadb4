"""The rooms and their agents: each room created on its node to outlive the run, one agent per
room (a real ``rtc.Room`` + ``ContextPlugin`` + a text-only ``AgentSession``) in worker
processes of at most ``AGENTS_PER_PROCESS`` (``bench_fanout.py --agents``), each joining
through the node that hosts its room and answering the floors' bare echo beside the plugin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit import api, rtc

from devtools.livekit_cluster import ClusterNode, LiveKitCluster
from devtools.livekit_server import ROOT
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextPlugin
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, start_session

from .settings import (
    AGENT_IDENTITY,
    AGENTS_PER_PROCESS,
    BENCH_FILE,
    ECHO_METHOD,
    GATEWAY_IDENTITY,
    JOIN_ATTEMPTS,
    JOINS_AT_ONCE,
    READY_TIMEOUT_S,
    ROOM_EMPTY_TIMEOUT_S,
    SETTLE_TIMEOUT_S,
    SPOKEN_PREFIX,
)


def agent_token(url_key: str, secret: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    return (
        api.AccessToken(url_key, secret)
        .with_identity(AGENT_IDENTITY)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


async def agents_worker() -> None:
    """``--agents``: read one JSON spec line, join every room, print ``ready``, then on a
    ``report`` line print how many speeches each room's agent said, and leave on stdin's end."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    joined: list[tuple[str, rtc.Room, ContextPlugin, Any]] = []
    limit = asyncio.Semaphore(JOINS_AT_ONCE)
    floor_speeches: list[Any] = []

    def rpc_echo(session: Any) -> Any:
        async def handler(data: rtc.RpcInvocationData) -> str:
            # the PerformRpc floor: no validation, no signing, no queue; say() when asked
            message = json.loads(data.payload)
            if message["say"]:
                floor_speeches.append(session.say(message["text"]))
            return "ok"

        return handler

    async def join(room_name: str, url: str) -> None:
        async with limit:
            session = await start_session(
                llm_model=ScriptedLLM(), tts_model=RecordingTTS(), text_only=True
            )
            room = rtc.Room()
            plugin = ContextPlugin(
                agent_code=spec["code"],
                allowed_identities=[GATEWAY_IDENTITY],
                rate_limit=None,
                server_secret=spec["api_secret"],
            )
            await plugin.start(session, room)
            token = agent_token(spec["api_key"], spec["api_secret"], room_name)
            for attempt in range(JOIN_ATTEMPTS):
                try:
                    await room.connect(url, token)
                    break
                except rtc.ConnectError:
                    # the agents' start-up is not what is measured: a handshake lost on a
                    # loaded machine is tried again
                    if attempt == JOIN_ATTEMPTS - 1:
                        raise
            room.local_participant.register_rpc_method(ECHO_METHOD, rpc_echo(session))
            joined.append((room_name, room, plugin, session))

    await asyncio.gather(*(join(name, url) for name, url in spec["rooms"]))
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "report":
            said = {
                name: sum(
                    1
                    for m in session.history.messages()
                    if m.role == "assistant" and (m.text_content or "").startswith(SPOKEN_PREFIX)
                )
                for name, _, _, session in joined
            }
            print(json.dumps(said), flush=True)
        elif line.strip() == "settle":
            # the floors' speeches are over before the gateway's phases start
            await asyncio.gather(*floor_speeches, return_exceptions=True)
            floor_speeches.clear()
            print("settled", flush=True)
    for _, room, plugin, session in joined:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()


@dataclass
class AgentWorkers:
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    async def report(self) -> dict[str, int]:
        said: dict[str, int] = {}
        for process in self.processes:
            assert process.stdin is not None
            assert process.stdout is not None
            if process.returncode is not None:
                continue  # its rooms count as having said nothing
            process.stdin.write(b"report\n")
            await process.stdin.drain()
            said.update(json.loads(await process.stdout.readline()))
        return said

    async def settle(self) -> None:
        """Wait until every agent's floor echoes and floor speeches are done."""
        for process in self.processes:
            assert process.stdin is not None
            if process.returncode is None:
                process.stdin.write(b"settle\n")
                await process.stdin.drain()
        for process in self.processes:
            assert process.stdout is not None
            if process.returncode is None:
                await asyncio.wait_for(process.stdout.readline(), SETTLE_TIMEOUT_S)

    async def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def agents(
    cluster: LiveKitCluster,
    placed: Sequence[tuple[str, ClusterNode]],
    code: str,
) -> AsyncIterator[AgentWorkers]:
    """The agents of ``placed``."""
    workers = AgentWorkers()
    try:
        for start in range(0, len(placed), AGENTS_PER_PROCESS):
            chunk = placed[start : start + AGENTS_PER_PROCESS]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                BENCH_FILE,
                "--agents",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            workers.processes.append(process)
            assert process.stdin is not None
            spec = {
                "code": code,
                "api_key": cluster.api_key,
                "api_secret": cluster.api_secret,
                "rooms": [(name, node.info.url) for name, node in chunk],
            }
            process.stdin.write(json.dumps(spec).encode() + b"\n")
            await process.stdin.drain()
        for process in workers.processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"an agent worker failed to start: {line!r}")
        yield workers
    finally:
        await workers.stop()


async def unlisted(
    cluster: LiveKitCluster, rooms: Sequence[str], code: str, *, wait: float = 0.0
) -> set[str]:
    """The rooms where RoomService does not show the agent with its code (where the gateway
    looks), waiting up to ``wait`` seconds for them to appear."""
    node = cluster.nodes[0]
    async with api.LiveKitAPI(node.info.url, cluster.api_key, cluster.api_secret) as lkapi:
        pending = set(rooms)
        deadline = time.monotonic() + wait
        while pending:
            for name in list(pending):
                with contextlib.suppress(api.TwirpError):
                    listing = await lkapi.room.list_participants(
                        api.ListParticipantsRequest(room=name)
                    )
                    if any(
                        p.attributes.get(AGENT_CODE_ATTRIBUTE) == code for p in listing.participants
                    ):
                        pending.discard(name)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    return pending


async def create_rooms(cluster: LiveKitCluster, placed: Sequence[tuple[str, ClusterNode]]) -> None:
    """Create each room on its node (through node A) to outlive the run: LiveKit counts agent
    participants as dependent, so a room with only its agent in it is "empty" and is closed
    ``empty_timeout`` after its creation (``cluster.create_room``'s 60 s closed every room of a
    size whose agents, plus the phases, took longer than that). They are deleted at the end."""
    async with api.LiveKitAPI(
        cluster.nodes[0].info.url, cluster.api_key, cluster.api_secret
    ) as lkapi:
        for name, node in placed:
            await lkapi.room.create_room(
                api.CreateRoomRequest(
                    name=name,
                    node_id=node.node_id,
                    empty_timeout=ROOM_EMPTY_TIMEOUT_S,
                    departure_timeout=ROOM_EMPTY_TIMEOUT_S,
                )
            )
