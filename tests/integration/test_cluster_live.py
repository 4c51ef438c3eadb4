"""A real two-node LiveKit cluster (``livekit_cluster``: two ``livekit-server`` processes on one
Redis): rooms on both nodes, a sender on one node reaching an agent hosted on the other, and the
gateway fanning out to agents on both nodes.

Rooms are pinned to a node with ``CreateRoomRequest.node_id`` (see ``cluster.py``) and where
they live is read back from LiveKit's own ``room_node_map`` in Redis, so "on both nodes" is
checked, not hoped for.
"""

from __future__ import annotations

import uuid

from livekit import api

from imaginex_context_plugin.protocol import SuccessAck
from tests.helpers import wait_until
from tests.integration.cluster import LiveKitCluster
from tests.integration.live import live_agent, room_name


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
