"""A real two-node LiveKit cluster (``livekit_cluster``: two ``livekit-server`` processes on one
Redis) and two gateway replicas (``imaginex-context gateway`` processes sharing another real
Redis, one talking to each node): rooms on both nodes, a sender on one node reaching an agent
hosted on the other, fan-out from either replica to every room on both nodes, one
Idempotency-Key sent to both replicas at once, a replica killed mid-fan-out, a node restarted.

Rooms are pinned to a node with ``CreateRoomRequest.node_id`` (see ``cluster.py``) and where
they live is read back from LiveKit's own ``room_node_map`` in Redis, so "on both nodes" is
checked, not hoped for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit import api, rtc

from devtools.gateway_process import gateway_env, start_gateway, until_serving
from devtools.livekit_cluster import ClusterNode, LiveKitCluster
from devtools.livekit_server import free_tcp_port
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, RPC_METHOD
from imaginex_context_plugin.protocol import SuccessAck
from tests.helpers import wait_until
from tests.integration.live import LiveAgent, agent_token, live_agent, room_name


async def test_rooms_live_on_both_nodes_and_a_sender_on_one_reaches_an_agent_on_the_other(
    livekit_cluster: LiveKitCluster,
) -> None:
    node_a, node_b = livekit_cluster.nodes
    assert node_a.node_id != node_b.node_id
    on_a, on_b = room_name("cl-a"), room_name("cl-b")
    await livekit_cluster.create_room(on_a, on=node_a, via=node_a)
    # asked of node A, hosted by node B: the placement is the cluster's, not the asked node's
    await livekit_cluster.create_room(on_b, on=node_b, via=node_a)

    placed = await livekit_cluster.room_nodes()
    assert placed[on_a] == node_a.node_id
    assert placed[on_b] == node_b.node_id

    code = f"CL{uuid.uuid4().hex[:8].upper()}"
    async with live_agent(node_b.info, room=on_b, agent_code=code) as agent:
        # node A's RoomService lists the room node B hosts, with the agent in it
        async with api.LiveKitAPI(
            node_a.info.url, livekit_cluster.api_key, livekit_cluster.api_secret
        ) as lkapi:
            rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[on_a, on_b]))
            assert {r.name for r in rooms.rooms} == {on_a, on_b}

            async def listed_on_a() -> bool:
                listing = await lkapi.room.list_participants(
                    api.ListParticipantsRequest(room=on_b)
                )
                return any(p.identity == agent.identity for p in listing.participants)

            await wait_until(listed_on_a, "node A to list the agent that joined node B")

        # the sender's signal goes to node A, which relays it (over Redis) to node B
        agent.lk = node_a.info
        async with await agent.client() as client:
            ack = await client.speak("Hello across the cluster.")
            assert isinstance(ack, SuccessAck)
        await wait_until(
            lambda: agent.said() == ["Hello across the cluster."], "the agent on node B to speak"
        )
        assert (await livekit_cluster.room_nodes())[on_b] == node_b.node_id


# --------------------------------------------------------------------------- two gateway replicas

SIGNING_SECRET = "cluster-replicas-signing-secret-0123456789abcdef"
API_SECRET = "cluster-gateway-api-secret"
REPLICA_TIMEOUT_S = 2.0
"""The replicas' delivery timeout; an Idempotency-Key's lease is this plus 5 s."""


@dataclass
class Replica:
    """One ``imaginex-context gateway`` process, one of the replicas sharing a Redis."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no answer, its Idempotency-Key leases left in Redis."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    async def serving(self) -> None:
        await until_serving(self.base_url, lambda: self.process.poll() is not None, self.log)


def start_replica(name: str, node: ClusterNode, redis_url: str, workdir: Path) -> Replica:
    port = free_tcp_port()
    env = gateway_env(
        node.info, IMAGINEX_API_SECRET=API_SECRET, IMAGINEX_SIGNING_SECRET=SIGNING_SECRET
    )
    log_path = workdir / f"gateway-{name}.log"
    process = start_gateway(
        port,
        log_path,
        env,
        *("--identity", f"cluster-gateway-{name}", "--redis-url", redis_url),
        *("--rate-limit", "0", "--timeout", str(REPLICA_TIMEOUT_S)),
    )
    return Replica(name, process, f"http://127.0.0.1:{port}", log_path)


@pytest.fixture
async def replicas(
    livekit_cluster: LiveKitCluster, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replica A talks to node A, replica B to node B; both share one Redis."""
    node_a, node_b = livekit_cluster.nodes
    started = [
        start_replica("a", node_a, redis_url, tmp_path),
        start_replica("b", node_b, redis_url, tmp_path),
    ]
    try:
        for replica in started:
            await replica.serving()
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()


@dataclass
class Fleet:
    """Agents serving one code in rooms on both nodes."""

    code: str
    agents: dict[str, LiveAgent]
    node_of: dict[str, str]

    def said(self) -> dict[str, list[str]]:
        return {room: agent.said() for room, agent in self.agents.items()}


@contextlib.asynccontextmanager
async def fleet_on(
    cluster: LiveKitCluster,
    placement: list[ClusterNode],
    code: str | None = None,
    *,
    names: list[str] | None = None,
) -> AsyncIterator[Fleet]:
    """One agent per room, each room created on the node ``placement`` gives it (``names``:
    these room names rather than new ones)."""
    code = code or f"CL{uuid.uuid4().hex[:8].upper()}"
    names = names or [room_name("cl") for _ in placement]
    async with contextlib.AsyncExitStack() as stack:
        agents: dict[str, LiveAgent] = {}
        node_of: dict[str, str] = {}
        for node, name in zip(placement, names, strict=True):
            await cluster.create_room(name, on=node, via=cluster.nodes[0])
            agents[name] = await stack.enter_async_context(
                live_agent(
                    node.info, room=name, agent_code=code, allowed_identities=[],
                    secret=SIGNING_SECRET,
                )
            )
            node_of[name] = node.node_id
        for agent in agents.values():
            await wait_until(agent.code_listed, "every agent's code in RoomService")
        yield Fleet(code, agents, node_of)


async def speak_via(
    replica: Replica, code: str, message: str, *, key: str | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    headers = {"api-secret": API_SECRET}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with aiohttp.ClientSession() as http, http.post(
        f"{replica.base_url}/v1/agent/{code}/speak", json={"message": message}, headers=headers
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_fan_out_from_either_replica_reaches_every_room_on_both_nodes(
    livekit_cluster: LiveKitCluster, replicas: tuple[Replica, Replica]
) -> None:
    node_a, node_b = livekit_cluster.nodes
    async with fleet_on(livekit_cluster, [node_a, node_b, node_a, node_b]) as fleet:
        placed = await livekit_cluster.room_nodes()
        assert {placed[room] for room in fleet.agents} == {node_a.node_id, node_b.node_id}
        for replica, message in zip(replicas, ("From replica A.", "From replica B."), strict=True):
            status, body, _ = await speak_via(replica, fleet.code, message)
            assert status == 200, body
            assert body["data"]["delivered_to_rooms"] == 4
            assert sorted(r["room"] for r in body["data"]["rooms"]) == sorted(fleet.agents)
        for agent in fleet.agents.values():
            await wait_until(
                lambda agent=agent: agent.said() == ["From replica A.", "From replica B."],  # type: ignore[misc]
                "every agent on both nodes to say both messages",
            )


async def test_one_key_sent_to_both_replicas_at_once_is_spoken_once_per_room(
    livekit_cluster: LiveKitCluster, replicas: tuple[Replica, Replica]
) -> None:
    node_a, node_b = livekit_cluster.nodes
    async with fleet_on(livekit_cluster, [node_a, node_b, node_a, node_b]) as fleet:
        key = f"both-{uuid.uuid4().hex}"
        (status_a, body_a, headers_a), (status_b, body_b, headers_b) = await asyncio.gather(
            *(speak_via(r, fleet.code, "Said once.", key=key) for r in replicas)
        )
        assert status_a == status_b == 200, (body_a, body_b)
        assert body_a == body_b
        assert body_a["data"]["delivered_to_rooms"] == 4
        replayed = [h.get("Idempotent-Replayed") for h in (headers_a, headers_b)]
        assert sorted(replayed, key=str) == sorted([None, "true"], key=str)
        for agent in fleet.agents.values():
            await wait_until(lambda agent=agent: agent.said() == ["Said once."])  # type: ignore[misc]
        await asyncio.sleep(0.5)  # a second delivery would have been spoken by now
        assert all(said == ["Said once."] for said in fleet.said().values())


@contextlib.asynccontextmanager
async def stuck_agent(cluster: LiveKitCluster, node: ClusterNode, code: str) -> AsyncIterator[str]:
    """A participant on ``node`` that claims ``code`` and never answers: a fan-out including
    its room lasts the whole delivery timeout."""
    name = room_name("cl-stuck")
    await cluster.create_room(name, on=node, via=cluster.nodes[0])
    release = asyncio.Event()
    room = rtc.Room()

    async def never_answers(_: rtc.RpcInvocationData) -> str:
        await release.wait()
        return "{}"

    await room.connect(node.info.url, agent_token(node.info, name, "cl-stuck-agent"))
    room.local_participant.register_rpc_method(RPC_METHOD, never_answers)
    await room.local_participant.set_attributes({AGENT_CODE_ATTRIBUTE: code})
    try:
        yield name
    finally:
        release.set()
        await room.disconnect()


async def test_a_replica_killed_mid_fan_out_and_the_retry_on_the_other_speaks_once(
    livekit_cluster: LiveKitCluster, replicas: tuple[Replica, Replica]
) -> None:
    node_a, node_b = livekit_cluster.nodes
    replica_a, replica_b = replicas
    async with fleet_on(livekit_cluster, [node_a, node_b, node_a, node_b]) as fleet:
        async with stuck_agent(livekit_cluster, node_b, fleet.code) as stuck:
            key = f"killed-{uuid.uuid4().hex}"
            first = asyncio.create_task(speak_via(replica_a, fleet.code, "Only once.", key=key))
            # every live agent has it; replica A still waits for the stuck room
            for agent in fleet.agents.values():
                await wait_until(lambda agent=agent: agent.said() == ["Only once."])  # type: ignore[misc]
            assert not first.done()
            replica_a.kill()
            with pytest.raises(aiohttp.ClientError):
                await first

            # the key's lease outlives replica A by at most its timeout + 5 s; meanwhile a
            # retry is told to come back (409), then replica B takes the key over
            deadline = time.monotonic() + 3 * (REPLICA_TIMEOUT_S + 5)
            while True:
                status, body, headers = await speak_via(
                    replica_b, fleet.code, "Only once.", key=key
                )
                if status != 409 or time.monotonic() > deadline:
                    break
                assert body["error"] == "REQUEST_IN_PROGRESS"
                await asyncio.sleep(float(headers.get("Retry-After", "1")))
            assert status == 200, body
            rooms = {r["room"]: r for r in body["data"]["rooms"]}
            assert body["data"]["delivered_to_rooms"] == 4
            assert rooms[stuck]["error"] == "TIMEOUT"
            for name in fleet.agents:
                # each agent already applied this id from the replicas' one sender
                assert rooms[name]["delivered"] is True
                assert rooms[name]["duplicate"] is True
        await asyncio.sleep(0.5)
        assert all(said == ["Only once."] for said in fleet.said().values())


async def test_a_livekit_node_restarted_the_gateway_recovers(
    livekit_cluster: LiveKitCluster, replicas: tuple[Replica, Replica]
) -> None:
    node_a, node_b = livekit_cluster.nodes
    replica_a, _ = replicas
    code = f"CL{uuid.uuid4().hex[:8].upper()}"
    async with fleet_on(livekit_cluster, [node_a, node_a], code) as on_a:
        async with fleet_on(livekit_cluster, [node_b, node_b], code) as on_b:
            status, body, _ = await speak_via(replica_a, code, "Before the restart.")
            assert status == 200, body
            assert body["data"]["delivered_to_rooms"] == 4  # replica A has pooled all four
            await asyncio.to_thread(node_b.restart, crash=True)
        # node B's agents went with it; their jobs start again in the same rooms
        async with fleet_on(
            livekit_cluster, [node_b, node_b], code, names=list(on_b.agents)
        ) as again:
            key = f"restart-{uuid.uuid4().hex}"
            deadline = time.monotonic() + 60
            while True:
                status, body, _ = await speak_via(replica_a, code, "After the restart.", key=key)
                delivered = body.get("data", {}).get("delivered_to_rooms")
                if (status == 200 and delivered == 4) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            assert status == 200, body
            assert delivered == 4, body
            for agent in [*on_a.agents.values(), *again.agents.values()]:
                await wait_until(lambda agent=agent: agent.said()[-1:] == ["After the restart."])  # type: ignore[misc]
            assert all(said.count("After the restart.") == 1 for said in on_a.said().values())
            assert all(said == ["After the restart."] for said in again.said().values())
