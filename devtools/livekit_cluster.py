"""A real two-node LiveKit cluster: two ``livekit-server`` processes sharing one Redis.

LiveKit's multi-node mode (checked in the v1.13.5 source) needs only a shared ``redis`` section:

- each node makes up its own node id at start (``guid.New("ND_")``, ``pkg/routing/node.go``) and
  registers it in the Redis hash ``nodes``; we read it from the node's start-up log line
  (``"nodeID"``) rather than decoding that hash's protobufs;
- rooms are placed by the node selector (default ``any`` / ``random``) when a room is first
  joined or created, and the choice lives in the Redis hash ``room_node_map`` (room -> node
  id). ``CreateRoomRequest.node_id`` pins a room to a node (``roomservice.go`` passes it to
  ``SelectRoomNode``), which is how the tests put rooms on a known node without relying on luck;
- a client may connect to either node: its signal connection is relayed over Redis (psrpc) to
  the node hosting the room, and its media goes straight to that node's own ICE candidates, so
  each node needs its own HTTP port and UDP range (``LiveKitServer`` picks free ones) but the
  same API keys;
- ``--dev`` does not conflict: with ``keys`` given it only turns on dev logging and the
  loopback binding we override anyway. A node is "available" to the selector while its stats in
  Redis are younger than 5 s (``AvailableSeconds``), so a crashed node's rooms move to the live
  one about 5 s after the crash.

Shared by the live suite (``tests/integration/cluster.py``: the ``livekit_cluster`` fixture)
and the benchmarks (``benchmarks/bench_fanout.py``). The cluster has its own Redis: LiveKit keeps
its routing state there, and the tests' ``redis_url`` database is flushed after every test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from livekit import api

from devtools.livekit_server import LiveKitServer, ServerInfo, find_binary
from devtools.redis_server import RedisServer, find_redis_binary

NODE_ID_TIMEOUT_S: Final = 10.0
NODE_UDP_PORTS: Final = 128
"""ICE ports per node: one per peer connection, two per participant, so 64 participants."""
ROOM_NODE_MAP: Final = "room_node_map"
"""LiveKit's Redis hash: room name -> id of the node hosting it (``pkg/routing/redisrouter.go``)."""


def read_node_id(log_path: Path, *, previous: str = "") -> str:
    """The node id of the newest start-up line in a ``livekit-server`` log, when it is not
    ``previous`` (a restarted node appends to the same log and comes back with a new id)."""
    deadline = time.monotonic() + NODE_ID_TIMEOUT_S
    while time.monotonic() < deadline:
        found = [
            word
            for line in log_path.read_text(errors="replace").splitlines()
            if '"nodeID"' in line
            for word in line.replace('"', " ").replace(",", " ").split()
            if word.startswith("ND_")
        ]
        if found and found[-1] != previous:
            return found[-1]
        time.sleep(0.05)
    raise RuntimeError(f"no new nodeID in {log_path}")


@dataclass
class ClusterNode:
    """One node of the cluster: its process, its URL and keys, its LiveKit node id."""

    server: LiveKitServer
    node_id: str = ""

    @property
    def info(self) -> ServerInfo:
        assert self.server.info is not None
        return self.server.info

    def restart(self, *, crash: bool = False) -> None:
        """Stop it (SIGTERM, or SIGKILL with ``crash``) and start it again on the same ports;
        it comes back as a new node (a new id), without the rooms it hosted."""
        self.server.stop(crash=crash)
        self.server.start_again()
        assert self.info.log_path is not None
        self.node_id = read_node_id(self.info.log_path, previous=self.node_id)


@dataclass
class LiveKitCluster:
    """Two (or more) ``livekit-server`` nodes sharing one Redis, on loopback."""

    redis: RedisServer
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return self.nodes[0].info.api_key

    @property
    def api_secret(self) -> str:
        return self.nodes[0].info.api_secret

    def node(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def create_room(self, name: str, *, on: ClusterNode, via: ClusterNode) -> None:
        """Create ``name`` on node ``on``, asking node ``via``'s RoomService."""
        async with api.LiveKitAPI(via.info.url, self.api_key, self.api_secret) as lkapi:
            await lkapi.room.create_room(
                api.CreateRoomRequest(name=name, node_id=on.node_id, empty_timeout=60)
            )

    async def room_nodes(self) -> dict[str, str]:
        """Where every room lives, as LiveKit itself records it in Redis (room -> node id)."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.redis.url, decode_responses=True)
        try:
            placed = await client.hgetall(ROOM_NODE_MAP)
        finally:
            await client.aclose()
        return {str(room): str(node) for room, node in placed.items()}

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()
        self.redis.stop()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- node {n.node_id}\n{n.info.log_tail(40)}" for n in self.nodes if n.server.info
        )


def start_cluster(
    workdir: Path, *, size: int = 2, udp_ports: int = NODE_UDP_PORTS, build: bool = True
) -> LiveKitCluster:
    """Start one Redis and ``size`` LiveKit nodes on it; the caller stops them (``stop()``).

    ``udp_ports``: each node's ICE port range (two ports per participant it hosts).
    """
    redis = RedisServer(find_redis_binary(), workdir / "redis")
    redis.start()
    cluster = LiveKitCluster(redis)
    try:
        binary = find_binary(build=build)
        for index in range(size):
            server = LiveKitServer(
                binary, workdir / f"node-{index}", redis_address=redis.address, udp_ports=udp_ports
            )
            node = ClusterNode(server)
            cluster.nodes.append(node)
            info = server.start()
            assert info.log_path is not None
            node.node_id = read_node_id(info.log_path)
    except BaseException:
        cluster.stop()
        raise
    return cluster


